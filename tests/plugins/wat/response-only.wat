;; A plugin that declares (section `tollgate.callbacks`, bit 3) only
;; `proxy_on_response_headers`, as a response transformer does, and there reads the request
;; head: it copies the request's `x-who` and `:path` into the response headers
;; `x-request-who` and `x-request-path`: the request head, which the upstream has consumed by
;; then, is still there for it to read.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (@custom "tollgate.callbacks" "\08")
  (memory (export "memory") 1)
  (data (i32.const 64) "x-who")
  (data (i32.const 72) ":path")
  (data (i32.const 96) "x-request-who")
  (data (i32.const 128) "x-request-path")
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    ;; what the host allocated for the last request's values is free again
    (global.set $next (i32.const 1024))
    ;; map 0: the request headers; map 2: the response headers
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 64) (i32.const 5) (i32.const 200) (i32.const 204)))
      (then
        (drop (call $add_header (i32.const 2) (i32.const 96) (i32.const 13)
          (i32.load (i32.const 200)) (i32.load (i32.const 204))))))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 72) (i32.const 5) (i32.const 208) (i32.const 212)))
      (then
        (drop (call $add_header (i32.const 2) (i32.const 128) (i32.const 14)
          (i32.load (i32.const 208)) (i32.load (i32.const 212))))))
    (i32.const 0))
  (func (export "proxy_on_delete") (param i32))
)
