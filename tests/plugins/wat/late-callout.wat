;; A plugin that declares (section `tollgate.callbacks`, bit 0) only `on_request_headers`,
;; where it calls `GET /check` on cluster `callee` and lets the request go on at once. When
;; the answer comes, the request has gone upstream: `on_http_call_response` reads the request
;; header `:path` and logs it at warn level as `late-path=<path>`, or `late-path-missing`
;; when the host has no request headers to give.
(module
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (@custom "tollgate.callbacks" "\01")
  (memory (export "memory") 1)
  (data (i32.const 64) "callee")
  ;; the call's headers, serialized: 3 pairs, their name and value lengths, then each name
  ;; and value followed by a NUL
  (data (i32.const 128)
    "\03\00\00\00"
    "\07\00\00\00\03\00\00\00"
    "\05\00\00\00\06\00\00\00"
    "\0a\00\00\00\06\00\00\00"
    ":method\00GET\00:path\00/check\00:authority\00callee\00")
  (data (i32.const 256) ":path")
  (data (i32.const 272) "late-path-missing")
  ;; `late-path=` followed by the path, built at 512
  (data (i32.const 512) "late-path=")
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
    ;; headers at 128 (71 bytes), no body or trailers, 5 s, the token written at 32
    (drop (call $http_call
      (i32.const 64) (i32.const 6)
      (i32.const 128) (i32.const 71)
      (i32.const 0) (i32.const 0)
      (i32.const 0) (i32.const 0)
      (i32.const 5000) (i32.const 32)))
    (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (local $ptr i32)
    (local $len i32)
    ;; map 0: the request headers; the value's pointer and length written at 16 and 20
    (if (i32.ne
          (call $get_header (i32.const 0) (i32.const 256) (i32.const 5) (i32.const 16) (i32.const 20))
          (i32.const 0))
      (then
        (drop (call $log (i32.const 3) (i32.const 272) (i32.const 17)))
        (return)))
    (local.set $ptr (i32.load (i32.const 16)))
    (local.set $len (i32.load (i32.const 20)))
    (memory.copy (i32.const 522) (local.get $ptr) (local.get $len))
    (drop (call $log (i32.const 3) (i32.const 512) (i32.add (i32.const 10) (local.get $len)))))
  (func (export "proxy_on_delete") (param i32))
)
