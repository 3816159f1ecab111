;; A plugin that reads request headers only: it exports no body or trailers callback (as a
;; plugin written against a lean SDK does), so the host never calls it per body piece. It
;; adds the request header `x-headers-only: seen`.
(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "x-headers-only")
  (data (i32.const 96) "seen")
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
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; map 0: the request headers
    (drop (call $add_header (i32.const 0) (i32.const 64) (i32.const 14) (i32.const 96) (i32.const 4)))
    (i32.const 0))
)
