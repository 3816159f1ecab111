//! No usage record is lost when plugin VMs go away, and none is billed twice: the bundled
//! `metering` plugin (2 workers) delivering to the demo billing collector (`demo-backend
//! billing`, run as a process) across
//! - SIGTERM with requests in flight: every request answered `200` is billed once, though
//!   the flush interval (a minute) never came — the records go out from `on_done`;
//! - a module swap and a policy reload under load: the retired VMs flush in `on_done`
//!   before the process stops; totals exact, no duplicates;
//! - a billing outage, then recovery: the backlog is delivered, totals exact;
//! - a billing service that stores batches but answers too late: each such batch is sent
//!   again under its key, whole, and billed once;
//! - the collector itself storing a batch sent twice under one key once.
//!
//! And the host side of retirement, with the `tp-retire` test plugin: a root context that
//! returns false from `on_done` keeps its VM — a callout, its answer and a tick still run —
//! until it calls `proxy_done`, and the gateway exits then, long before the drain timeout;
//! one that never calls it is cut at the drain timeout; a reload retires only the plugin
//! whose configuration changed, without waiting for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use tollgate_tests::backends::{self, Backend};
use tollgate_tests::billing::BillingCollector;
use tollgate_tests::bundled::METERING;
use tollgate_tests::clients::{get_request, request, HttpClient};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{plugins_file, PluginSpec, TP_RETIRE};
use tollgate_tests::scenario::{Running, Scenario};

/// The metering plugin, from `module`, flushing every `flush_interval_ms`.
fn metering(module: &str, flush_interval_ms: u64) -> PluginSpec {
    PluginSpec::new("metering", module).config(json!({
        "billing_cluster": "billing",
        "path": "/v1/usage",
        "flush_interval_ms": flush_interval_ms,
        "max_batch": 20,
        "timeout_ms": 500
    }))
}

/// A long flush interval: no record leaves a VM on a tick during a test, only from
/// `on_done` (or when a full batch waits after a delivered one).
const NO_TICKS_MS: u64 = 60_000;

struct Setup {
    gateway: Running,
    plugins_dir: PathBuf,
}

/// A gateway with `plugins` (module paths relative to its plugins folder, which holds
/// `metering.wasm`) and the given drain timeout.
async fn start(billing: SocketAddr, plugins: &[PluginSpec], drain: &str) -> Setup {
    let gateway = Scenario::new()
        .server(&format!("drain_timeout: {drain}"))
        .echo("echo")
        .cluster_at("billing", billing)
        .route("{ name: api, forward: { cluster: echo, timeout: 10s } }")
        .plugin_module("metering.wasm", METERING)
        .plugins(plugins)
        .start()
        .await;
    let plugins_dir = gateway.plugins_folder().to_path_buf();
    Setup {
        gateway,
        plugins_dir,
    }
}

/// Writes a file by renaming a complete temporary one over it.
fn write_atomically(target: &Path, bytes: &[u8]) {
    let temporary = target.with_extension("tmp-upload");
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, target).unwrap();
}

/// `module` with a custom section appended: another module file (another hash) with the
/// same code, as a rebuilt plugin would be.
fn rebuilt(module: &[u8], tag: &str) -> Vec<u8> {
    let name = b"tollgate-test";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(tag.as_bytes());
    let mut bytes = module.to_vec();
    bytes.push(0);
    // The section size as unsigned LEB128.
    let mut size = section.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&section);
    bytes
}

/// Waits (bounded) until the gateway logged `count` reloads that went live.
async fn wait_for_reloads(gateway: &Gateway, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.log().matches("new configuration is live").count() < count {
        assert!(
            Instant::now() < deadline,
            "no reload went live; log:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests answered `200` and every other outcome, counted by `clients` loops that stop at
/// `stop` (or after 3000 requests each).
#[derive(Default)]
struct Tally {
    ok: u64,
    failures: Vec<String>,
}

fn load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = HttpClient::http1();
                let mut tally = Tally::default();
                for _ in 0..3000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match client
                        .send(get_request(addr, "api.test", "/api/load"))
                        .await
                    {
                        Ok(response) if response.status == StatusCode::OK => tally.ok += 1,
                        Ok(response) => tally.failures.push(format!("status {}", response.status)),
                        Err(error) => tally.failures.push(format!("{error:#}")),
                    }
                }
                tally
            })
        })
        .collect()
}

async fn finish(loops: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for task in loops {
        let tally = task.await.expect("a load loop");
        total.ok += tally.ok;
        total.failures.extend(tally.failures);
    }
    total
}

/// Sends SIGTERM and waits (bounded) for a clean exit.
async fn terminate(gateway: &mut Gateway) {
    gateway.terminate();
    let status = gateway
        .wait_for_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still running 15s after SIGTERM; log:\n{}", gateway.log()));
    assert!(status.success(), "exit {status}; log:\n{}", gateway.log());
}

/// After the expected total arrived, a little longer: nothing more may come (no repeats).
async fn assert_billed_exactly(collector: &BillingCollector, expected: u64, gateway: &Gateway) {
    let billed = collector
        .wait_for_billed(expected, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = collector.billed();
    assert_eq!(
        billed,
        expected,
        "requests answered 200 vs billed; gateway log:\n{}",
        gateway.log()
    );
    assert_eq!(after, expected, "a record was billed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight_bills_every_answered_request_once() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let mut setup = start(
        collector.addr(),
        &[metering("metering.wasm", NO_TICKS_MS)],
        "10s",
    )
    .await;
    let addr = setup.gateway.listener("public");
    let stop = Arc::new(AtomicBool::new(false));
    let loops = load(addr, 3, stop.clone());
    let slow: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                HttpClient::http1()
                    .send(get_request(addr, "api.test", "/api/slow?delay_ms=1000"))
                    .await
                    .map(|response| response.status)
            })
        })
        .collect();
    // Slow requests on the backend and a steady flow: SIGTERM lands mid-traffic.
    setup
        .gateway
        .backend("echo")
        .wait_for_requests(60, Duration::from_secs(10))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while setup
        .gateway
        .backend("echo")
        .requests()
        .iter()
        .filter(|request| request.path.starts_with("/api/slow"))
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "the slow requests reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    setup.gateway.terminate();
    let mut slow_ok = 0;
    for request in slow {
        let status = request
            .await
            .unwrap()
            .expect("a request in flight is answered");
        assert_eq!(status, StatusCode::OK, "the request in flight completes");
        slow_ok += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let tally = finish(loops).await;
    let status = setup
        .gateway
        .wait_for_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still running after SIGTERM; log:\n{}", setup.gateway.log()));
    assert!(status.success(), "exit {status}");
    assert!(tally.ok > 20, "the load was served: {} answered", tally.ok);
    // Every request answered 200 was billed, though no flush tick ever came.
    assert_billed_exactly(&collector, tally.ok + slow_ok, &setup.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_swap_under_load_loses_no_record() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let mut setup = start(
        collector.addr(),
        &[metering("metering.wasm", NO_TICKS_MS)],
        "10s",
    )
    .await;
    let addr = setup.gateway.listener("public");
    let stop = Arc::new(AtomicBool::new(false));
    let loops = load(addr, 2, stop.clone());
    setup
        .gateway
        .backend("echo")
        .wait_for_requests(40, Duration::from_secs(10))
        .await;
    let before_swap = setup.gateway.backend("echo").request_count() as u64;
    let module = std::fs::read(METERING).unwrap();
    write_atomically(
        &setup.plugins_dir.join("metering.wasm"),
        &rebuilt(&module, "v2"),
    );
    wait_for_reloads(&setup.gateway, 1).await;
    // The old VMs flushed from on_done (no tick came): at least what they served arrives.
    let billed = collector
        .wait_for_billed(before_swap, Duration::from_secs(10))
        .await;
    assert!(
        billed >= before_swap,
        "the retired VMs billed {billed} of at least {before_swap} requests; log:\n{}",
        setup.gateway.log()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = finish(loops).await;
    assert!(tally.failures.is_empty(), "failures: {:?}", tally.failures);
    terminate(&mut setup.gateway).await;
    assert_billed_exactly(&collector, tally.ok, &setup.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_under_load_loses_no_record() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let mut setup = start(
        collector.addr(),
        &[metering("metering.wasm", NO_TICKS_MS)],
        "10s",
    )
    .await;
    let addr = setup.gateway.listener("public");
    let stop = Arc::new(AtomicBool::new(false));
    let loops = load(addr, 2, stop.clone());
    setup
        .gateway
        .backend("echo")
        .wait_for_requests(40, Duration::from_secs(10))
        .await;
    let before_reload = setup.gateway.backend("echo").request_count() as u64;
    let changed = metering("metering.wasm", NO_TICKS_MS - 1);
    write_atomically(
        &setup.gateway.policy_file("plugins.json"),
        plugins_file(&[changed]).as_bytes(),
    );
    wait_for_reloads(&setup.gateway, 1).await;
    let billed = collector
        .wait_for_billed(before_reload, Duration::from_secs(10))
        .await;
    assert!(
        billed >= before_reload,
        "the retired VMs billed {billed} of at least {before_reload} requests; log:\n{}",
        setup.gateway.log()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = finish(loops).await;
    assert!(tally.failures.is_empty(), "failures: {:?}", tally.failures);
    terminate(&mut setup.gateway).await;
    assert_billed_exactly(&collector, tally.ok, &setup.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_outage_then_recovery_delivers_the_backlog_once() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    std::fs::write(collector.down_marker(), b"").unwrap();
    let mut setup = start(collector.addr(), &[metering("metering.wasm", 100)], "10s").await;
    let client = HttpClient::http1();
    let addr = setup.gateway.listener("public");
    for i in 0..45 {
        let response = client
            .send(get_request(addr, "api.test", &format!("/api/{i}")))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
    }
    // Several flushes fail meanwhile (503), each batch kept under its key.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        collector.billed(),
        0,
        "nothing is stored while billing is down"
    );
    std::fs::remove_file(collector.down_marker()).unwrap();
    assert_billed_exactly(&collector, 45, &setup.gateway).await;
    let metrics = setup.gateway.metrics().await;
    assert!(
        metrics.contains("metering_batches_failed"),
        "the failed batches are counted:\n{metrics}"
    );
    terminate(&mut setup.gateway).await;
    assert_eq!(collector.billed(), 45, "shutdown sends nothing again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answered_too_late_is_sent_again_under_its_key_and_billed_once() {
    // The first two batches are stored but answered after 1.5 s; the plugin gives up at
    // 500 ms and sends them again.
    let (billing, ledger) = backends::usage_collector(2, Duration::from_millis(1500)).await;
    let mut setup = start(billing.addr(), &[metering("metering.wasm", 100)], "10s").await;
    let client = HttpClient::http1();
    let addr = setup.gateway.listener("public");
    for i in 0..30 {
        let response = client
            .send(get_request(addr, "api.test", &format!("/api/{i}")))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.billed() < 30 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(&mut setup.gateway).await;
    assert_eq!(ledger.billed(), 30, "every request billed once");
    let posts = billing.requests();
    assert!(
        posts.len() > ledger.batches(),
        "some batch was sent more than once: {} requests, {} batches",
        posts.len(),
        ledger.batches()
    );
    for post in &posts {
        let key = post
            .header("idempotency-key")
            .expect("every batch has a key");
        let copies: Vec<_> = posts
            .iter()
            .filter(|other| other.header("idempotency-key") == Some(key))
            .collect();
        assert!(
            copies.iter().all(|copy| copy.body_len == post.body_len),
            "a re-sent batch is the same batch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_stores_a_batch_sent_twice_under_one_key_once() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let client = HttpClient::http1();
    let batch = json!({
        "batch_id": "vm-1",
        "records": [{ "consumer": "alice", "route": "api", "requests": 1 }]
    })
    .to_string();
    let post = |key: &str| {
        request("POST", collector.addr(), "billing", "/v1/usage")
            .header("idempotency-key", key)
            .body(Full::from(batch.clone()))
            .unwrap()
    };
    for key in ["vm-1", "vm-1", "vm-2"] {
        let response = client.send(post(key)).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    }
    assert_eq!(
        collector.billed(),
        2,
        "the repeat of vm-1 is answered but not stored"
    );
}

/// The `tp-retire` plugin under `name`, calling out to the echo cluster under `tag`.
fn retiring(name: &str, tag: &str, finish: bool) -> PluginSpec {
    PluginSpec::new(name, TP_RETIRE).config(json!({
        "cluster": "echo",
        "tag": tag,
        "finish": finish
    }))
}

/// Paths the echo backend saw under `/retire/<tag>/`.
fn retire_calls(echo: &Backend, tag: &str) -> Vec<String> {
    let prefix = format!("/retire/{tag}/");
    echo.requests()
        .into_iter()
        .map(|request| request.path)
        .filter(|path| path.starts_with(&prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_context_not_done_keeps_its_vm_until_proxy_done() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let mut setup = start(collector.addr(), &[retiring("late", "late", true)], "20s").await;
    assert!(
        retire_calls(setup.gateway.backend("echo"), "late").is_empty(),
        "nothing before on_done"
    );
    let signalled = Instant::now();
    terminate(&mut setup.gateway).await;
    let elapsed = signalled.elapsed();
    let mut calls = retire_calls(setup.gateway.backend("echo"), "late");
    calls.sort();
    // Each worker's VM: on_done's callout, its answer, a tick, the tick's callout, its
    // answer, proxy_done — all after on_done returned false.
    assert_eq!(
        calls,
        [
            "/retire/late/on-done",
            "/retire/late/on-done",
            "/retire/late/tick",
            "/retire/late/tick"
        ],
        "log:\n{}",
        setup.gateway.log()
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "the gateway exits once the plugin called proxy_done, not at the 20s drain timeout \
         (took {elapsed:?})"
    );
    assert!(!setup
        .gateway
        .log()
        .contains("before the plugin called proxy_done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_context_that_never_calls_proxy_done_is_cut_at_the_drain_timeout() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let mut setup = start(collector.addr(), &[retiring("stuck", "stuck", false)], "3s").await;
    let signalled = Instant::now();
    terminate(&mut setup.gateway).await;
    let elapsed = signalled.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(8),
        "the VM is kept until the 3s drain timeout, no longer (took {elapsed:?})"
    );
    let calls = retire_calls(setup.gateway.backend("echo"), "stuck");
    assert_eq!(
        calls.iter().filter(|path| path.ends_with("/tick")).count(),
        2,
        "each worker's VM kept running after on_done: {calls:?}"
    );
    let log = setup.gateway.log();
    assert!(
        log.contains("drain timeout passed before the plugin called proxy_done"),
        "log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_retires_only_the_changed_plugin_and_does_not_wait_for_it() {
    let collector = BillingCollector::start(env!("CARGO_BIN_EXE_demo-backend")).await;
    let setup = start(
        collector.addr(),
        &[
            retiring("kept", "kept", false),
            retiring("changed", "old", false),
        ],
        "30s",
    )
    .await;
    let edited = [
        retiring("kept", "kept", false),
        retiring("changed", "new", false),
    ];
    let written = Instant::now();
    write_atomically(
        &setup.gateway.policy_file("plugins.json"),
        plugins_file(&edited).as_bytes(),
    );
    wait_for_reloads(&setup.gateway, 1).await;
    assert!(
        written.elapsed() < Duration::from_secs(15),
        "the reload did not wait for the retiring VMs (30s drain timeout)"
    );
    let client = HttpClient::http1();
    let response = client
        .send(get_request(
            setup.gateway.listener("public"),
            "api.test",
            "/api/after",
        ))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK, "serving while VMs retire");
    // Both workers' old VMs of `changed` got on_done and run on in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while retire_calls(setup.gateway.backend("echo"), "old").len() < 4 && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut old = retire_calls(setup.gateway.backend("echo"), "old");
    old.sort();
    assert_eq!(
        old,
        [
            "/retire/old/on-done",
            "/retire/old/on-done",
            "/retire/old/tick",
            "/retire/old/tick"
        ],
        "log:\n{}",
        setup.gateway.log()
    );
    assert!(
        retire_calls(setup.gateway.backend("echo"), "kept").is_empty(),
        "the unchanged plugin kept its VMs and got no on_done"
    );
    assert!(retire_calls(setup.gateway.backend("echo"), "new").is_empty());
}
