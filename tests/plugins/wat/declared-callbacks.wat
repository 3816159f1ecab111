;; A plugin that exports every request callback, as one built with the Rust proxy-wasm crate
;; does, and declares in its `tollgate.callbacks` section (one byte, bit 0:
;; `on_request_headers`) that it implements only the request headers one. Each callback it
;; exports adds a header naming itself: `x-request-seen` to the request, `x-response-seen`
;; to the response; `on_log` and `on_done` count their calls in the global `calls`, which
;; `on_request_headers` writes into its header. The host must enter only the declared one.
(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (@custom "tollgate.callbacks" "\01")
  (memory (export "memory") 1)
  (data (i32.const 64) "x-request-seen")
  (data (i32.const 96) "x-response-seen")
  (data (i32.const 128) "0")
  (global $next (mut i32) (i32.const 1024))
  (global $calls (mut i32) (i32.const 0))
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
    ;; the calls of on_log and on_done so far, as one digit (0 to 9)
    (i32.store8 (i32.const 128) (i32.add (i32.const 48) (i32.rem_u (global.get $calls) (i32.const 10))))
    (drop (call $add_header (i32.const 0) (i32.const 64) (i32.const 14) (i32.const 128) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    ;; map 2: the response headers
    (drop (call $add_header (i32.const 2) (i32.const 96) (i32.const 15) (i32.const 128) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1))))
  (func (export "proxy_on_done") (param i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
)
