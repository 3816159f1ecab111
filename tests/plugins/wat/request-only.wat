;; A plugin with a request-headers callback and no response callback: the host must never
;; enter its VM in the response phase. A request carrying `x-break` makes it record
;; `broken` in the shared data and trap; from then on its VMs refuse to start
;; (`on_vm_start` reads `broken`), so a worker has no VM of it left. A request that passed
;; it before still gets its response: nothing in the response phase is the plugin's.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data"
    (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data"
    (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "x-break")
  (data (i32.const 96) "broken")
  (data (i32.const 128) "1")
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    ;; status 0 (OK): `broken` is set, and this VM refuses to start.
    (i32.ne
      (call $get_shared (i32.const 96) (i32.const 6) (i32.const 200) (i32.const 204) (i32.const 208))
      (i32.const 0)))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz
          (call $get_header (i32.const 0) (i32.const 64) (i32.const 7) (i32.const 200) (i32.const 204)))
      (then
        (drop (call $set_shared (i32.const 96) (i32.const 6) (i32.const 128) (i32.const 1) (i32.const 0)))
        unreachable))
    (i32.const 0))
)
