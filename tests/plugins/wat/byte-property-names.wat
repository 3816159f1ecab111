;; Per-request properties (`proxy_set_property`) under names that differ only in a byte that
;; is not UTF-8: on request headers, sets `tp\ff` to `first` and `tp\fe` to `second`, reads
;; each back with `proxy_get_property` and adds what it read as the request headers
;; `x-first` and `x-second` (`<missing>` when not found). Envoy keys filter state by the
;; name's bytes, so the two are apart.
(module
  (import "env" "proxy_set_property"
    (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property"
    (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "tp\ff")
  (data (i32.const 24) "tp\fe")
  (data (i32.const 32) "first")
  (data (i32.const 40) "second")
  (data (i32.const 64) "x-first")
  (data (i32.const 80) "x-second")
  (data (i32.const 96) "<missing>")
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
  ;; Reads the property named by (path, 3 bytes) and adds it to the request headers
  ;; (map 0) under (name, name_len).
  (func $copy_property (param $path i32) (param $name i32) (param $name_len i32)
    (if (i32.eqz (call $get_property (local.get $path) (i32.const 3) (i32.const 200) (i32.const 204)))
      (then
        (drop (call $add_header (i32.const 0) (local.get $name) (local.get $name_len)
          (i32.load (i32.const 200)) (i32.load (i32.const 204)))))
      (else
        (drop (call $add_header (i32.const 0) (local.get $name) (local.get $name_len)
          (i32.const 96) (i32.const 9))))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $set_property (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5)))
    (drop (call $set_property (i32.const 24) (i32.const 3) (i32.const 40) (i32.const 6)))
    (call $copy_property (i32.const 16) (i32.const 64) (i32.const 7))
    (call $copy_property (i32.const 24) (i32.const 80) (i32.const 8))
    (i32.const 0))
  (func (export "proxy_on_delete") (param i32))
)
