//! The cost of crossing the guest/host boundary, measured on a hand-written module so that
//! nothing but the crossing is timed:
//! - `callback`: the host calling an (empty) `proxy_on_request_headers`;
//! - `get_time`, `add_header`, `get_header`: one guest→host call each (the guest loops 100
//!   times per callback; the figure is per call).
//!
//! Run with `cargo bench -p tollgate --bench host_calls` (part of `just bench`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate::wasm::callbacks::StreamCallback;
use tollgate::wasm::engine::runtime;
use tollgate::wasm::header_map::PseudoHeaderMap;
use tollgate::wasm::host::{PluginIdentity, StreamInfo};
use tollgate::wasm::vm::Vm;

/// `proxy_on_request_headers` does, 100 times, what its `mode` (a global set per benchmark)
/// says: 0 nothing, 1 get time, 2 add a header, 3 read a header.
const MODULE: &str = r#"
(module
  (import "env" "proxy_get_current_time_nanoseconds" (func $time (param i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "x-bench")
  (data (i32.const 32) "value")
  (global $heap (mut i32) (i32.const 4096))
  (global $mode (export "mode") (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    ;; A bump allocator that starts over each time it reaches the end of the first page pair.
    (local $ptr i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $size)) (i32.const 120000))
      (then (global.set $heap (i32.const 4096))))
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "set_mode") (param i32) (global.set $mode (local.get 0)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (if (i32.eqz (global.get $mode)) (then (return (i32.const 0))))
    (loop $again
      (if (i32.eq (global.get $mode) (i32.const 1))
        (then (drop (call $time (i32.const 64)))))
      (if (i32.eq (global.get $mode) (i32.const 2))
        (then
          (drop (call $add (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 32) (i32.const 5)))
          (drop (call $remove (i32.const 0) (i32.const 16) (i32.const 7)))))
      (if (i32.eq (global.get $mode) (i32.const 3))
        (then (drop (call $get (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 80) (i32.const 84)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 100))))
    (i32.const 0))
)
"#;

fn setup(mode: i32) -> (Vm, u32) {
    let module = runtime()
        .load_bytes(Path::new("bench.wat"), MODULE.as_bytes())
        .expect("the bench module loads");
    let identity = Arc::new(PluginIdentity {
        name: "bench".into(),
        root_id: "bench".into(),
        ..Default::default()
    });
    let mut vm =
        Vm::new(&module, identity, 64 << 20, Duration::from_secs(1)).expect("instantiates");
    vm.set_global_i32("mode", mode);
    let root = vm.create_root(0, Default::default()).expect("root context");
    let info = Arc::new(StreamInfo {
        request_id: http::HeaderValue::from_static("bench"),
        started: std::time::SystemTime::now(),
        protocol: "HTTP/1.1",
        downstream_remote: "127.0.0.1:1".parse().unwrap(),
        downstream_local: "127.0.0.1:2".parse().unwrap(),
        connection_id: 1,
        route_name: "bench".into(),
        cluster_name: Some("bench".into()),
        ..StreamInfo::blank()
    });
    let (context, _wake, _callbacks) = vm.create_stream(root, info).expect("stream context");
    let mut headers = http::HeaderMap::new();
    headers.insert("x-bench", http::HeaderValue::from_static("value"));
    let head = PseudoHeaderMap::request(&http::Method::GET, "http", "bench", "/", headers);
    if let Some(stream) = vm.state().streams.get_mut(&context) {
        stream.request_headers = Some(Box::new(head));
    }
    (vm, context)
}

fn host_calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_calls");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let (mut vm, context) = setup(0);
    group.bench_function("callback", |b| {
        b.iter(|| {
            vm.stream_callback(context, StreamCallback::RequestHeaders, 3, true)
                .unwrap()
        })
    });
    for (mode, name) in [
        (1, "get_time"),
        (2, "add_and_remove_header"),
        (3, "get_header"),
    ] {
        let (mut vm, context) = setup(mode);
        group.throughput(Throughput::Elements(100));
        group.bench_function(name, |b| {
            b.iter(|| {
                vm.stream_callback(context, StreamCallback::RequestHeaders, 3, true)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, host_calls);
criterion_main!(benches);
