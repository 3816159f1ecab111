;; A proxy-wasm module (ABI 0.2.1) whose WASI functions come from `wasi_unstable`, the older
;; module name some toolchains still emit (AssemblyScript's, for one). Its contract, checked
;; by tests/tests/wasm_sdk_conventions.rs:
;; - every request: `fd_write` to stdout of "wasi_unstable fd_write reached the log" (the
;;   gateway log shows it) and the request header `x-wasi: unstable`;
;; - a request body: `proc_exit(3)`, which ends the VM: the request fails as a trap would.
(module
  (import "wasi_unstable" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_unstable" "proc_exit" (func $proc_exit (param i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..8: one iovec; 8..12: the byte count fd_write reports.
  (data (i32.const 16) "wasi_unstable fd_write reached the log\n")
  (data (i32.const 64) "x-wasi")
  (data (i32.const 72) "unstable")
  (global $next (mut i32) (i32.const 4096))
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
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 39))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; map type 0: the request headers.
    (drop (call $add_header_map_value
      (i32.const 0) (i32.const 64) (i32.const 6) (i32.const 72) (i32.const 8)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (call $proc_exit (i32.const 3))
    (i32.const 0))
)
