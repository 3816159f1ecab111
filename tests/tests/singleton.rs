//! Singleton plugins through the gateway (2 workers), with the `tp-singleton` test plugin
//! in both of its roles under one `vm_id`: the singleton `aggregator` and the route plugin
//! `reporter` on route `usage`, which enqueues onto the singleton's queue and reports the
//! shared values in response headers.
//!
//! - one VM for the gateway: a single `on_vm_start`, before the gateway serves;
//! - it ticks with no traffic, its HTTP and gRPC callouts reach their backends;
//! - 20 requests over several connections: it dequeues exactly 20 items;
//! - it is in no route chain and `/plugins` lists it as a singleton;
//! - a module swap and a policy edit each start a new singleton, then retire the old one
//!   with `proxy_on_done`; SIGTERM retires it too;
//! - a trap in `on_tick` is counted, a fresh VM runs and ticks go on;
//! - `tollgate check` starts it like any plugin and reports its failures.

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};
use tollgate_tests::backends::Backend;
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{assert_rejected, check_plugins, PluginSpec, TP_SINGLETON};
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario};

/// Both roles of `tp-singleton` under one `vm_id`; `${AGGREGATOR}` is the singleton's
/// configuration.
const PLUGINS: &str = r#"
plugins:
  - name: aggregator
    module: aggregator.wasm
    singleton: true
    vm_id: usage
    vm_config: { role: singleton }
    config: ${AGGREGATOR}
  - name: reporter
    module: reporter.wasm
    vm_id: usage
    vm_config: { role: route }
    apply_to: { routes: [usage] }
"#;

/// How long anything the singleton does in the background may take to show.
const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    gateway: Running,
    plugins: PathBuf,
}

async fn start(aggregator: Value) -> Setup {
    let gateway = Scenario::new()
        .server("drain_timeout: 10s")
        .echo("echo")
        .grpc("grpc")
        .forward("plain", "/plain", "echo")
        .route("{ name: usage, forward: { cluster: echo } }")
        .set("AGGREGATOR", aggregator)
        .policy_file("plugins.yaml", PLUGINS)
        .plugin_module("aggregator.wasm", TP_SINGLETON)
        .plugin_module("reporter.wasm", TP_SINGLETON)
        .start()
        .await;
    let plugins = gateway.plugins_folder().to_path_buf();
    Setup { gateway, plugins }
}

fn aggregator_config() -> Value {
    json!({ "cluster": "echo", "grpc_cluster": "grpc", "tick_ms": 50 })
}

/// A request on route `usage` (the reporter), enqueueing `amount` when given.
async fn report(client: &HttpClient, setup: &Setup, amount: Option<u64>) -> HttpResponse {
    let mut builder = request("GET", setup.gateway.listener("public"), "gw.test", "/usage");
    if let Some(amount) = amount {
        builder = builder.header("x-sg-enqueue", amount.to_string());
    }
    let response = client
        .send(builder.body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response
}

/// A shared value as the reporter shows it (`-` when missing).
fn shared(response: &HttpResponse, key: &str) -> String {
    response
        .header(&format!("x-{key}"))
        .unwrap_or_else(|| panic!("the reporter sets x-{key}: {:?}", response.headers))
        .to_string()
}

fn number(response: &HttpResponse, key: &str) -> u64 {
    shared(response, key).parse().unwrap_or(0)
}

/// Polls the reporter until `done` holds for its response; returns the last response.
async fn report_until(setup: &Setup, done: impl Fn(&HttpResponse) -> bool) -> HttpResponse {
    let client = HttpClient::http1();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = report(&client, setup, None).await;
        if done(&response) || tokio::time::Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `backend` saw a request for `path` (path and query); panics with what it saw
/// and the gateway's log otherwise.
async fn wait_for_path(backend: &Backend, gateway: &Gateway, path: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !backend.requests().iter().any(|seen| seen.path == path) {
        if tokio::time::Instant::now() > deadline {
            let seen: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
            panic!(
                "no request for {path}; seen {seen:?}; log:\n{}",
                gateway.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn paths_with_prefix(backend: &Backend, prefix: &str) -> Vec<String> {
    backend
        .requests()
        .into_iter()
        .map(|request| request.path)
        .filter(|path| path.starts_with(prefix))
        .collect()
}

/// The `/plugins` entry of a plugin.
async fn plugin_entry(gateway: &Gateway, name: &str) -> Value {
    let plugins = gateway.admin_get("/plugins").await.json();
    plugins["plugins"]
        .as_array()
        .expect("a plugin list")
        .iter()
        .find(|plugin| plugin["name"] == name)
        .unwrap_or_else(|| panic!("{name} in /plugins: {plugins}"))
        .clone()
}

/// The module with a custom section appended: valid, same behaviour, another sha256.
fn another_build_of(module: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(module).unwrap();
    // Section id 0 (custom), size 7: name length 2, name "v2", payload "swap".
    bytes.extend_from_slice(&[0, 7, 2, b'v', b'2', b's', b'w', b'a', b'p']);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_singleton_ticks_calls_out_and_aggregates_what_route_plugins_enqueue() {
    let setup = start(aggregator_config()).await;
    // Started before the gateway served: its on_vm_start logged before the listeners did.
    // The gateway is ready before its log line reaches the file, so wait for the line.
    let mut log = setup.gateway.log();
    for _ in 0..100 {
        if log.contains("listening") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = setup.gateway.log();
    }
    let started = log.find("on_vm_start of VM 1").expect("on_vm_start logged");
    let listening = log.find("listening").expect("listening logged");
    assert!(started < listening, "singleton before serving:\n{log}");

    // With no traffic at all: its first tick calls out over HTTP and gRPC.
    wait_for_path(
        setup.gateway.backend("echo"),
        &setup.gateway,
        "/singleton/tick/1",
    )
    .await;
    wait_for_path(
        setup.gateway.backend("grpc"),
        &setup.gateway,
        "/tollgate.test.Singleton/Tick",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let first = report(&HttpClient::http1(), &setup, None).await;
    assert_eq!(
        shared(&first, "sg-starts"),
        "1",
        "one on_vm_start for 2 workers"
    );
    assert!(
        number(&first, "sg-ticks") >= 5,
        "ticks ran before any request: {:?}",
        first.headers
    );
    let answered = report_until(&setup, |r| {
        shared(r, "sg-http-status") == "200" && shared(r, "sg-grpc-status") == "0"
    })
    .await;
    assert_eq!(shared(&answered, "sg-http-status"), "200");
    assert_eq!(shared(&answered, "sg-grpc-status"), "0");

    // 20 requests over 4 connections (each client its own pool), amounts 1..=20.
    let mut requests = Vec::new();
    for connection in 0..4u64 {
        let setup = &setup;
        requests.push(async move {
            let client = HttpClient::http1();
            for index in 0..5 {
                let response = report(&client, setup, Some(connection * 5 + index + 1)).await;
                assert_eq!(response.header("x-sg-enqueue-failed"), None);
            }
        });
    }
    futures_util::future::join_all(requests).await;
    let totals = report_until(&setup, |r| number(r, "sg-dequeued") >= 20).await;
    assert_eq!(shared(&totals, "sg-dequeued"), "20", "{:?}", totals.headers);
    assert_eq!(shared(&totals, "sg-sum"), "210", "1 + 2 + ... + 20");
    assert_eq!(shared(&totals, "sg-starts"), "1", "still the one VM");

    // In no chain: a route without the reporter runs nothing of the singleton.
    let plain = HttpClient::http1()
        .get(setup.gateway.listener("public"), "gw.test", "/plain")
        .await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.header("x-sg-singleton"), None);
    let after = report(&HttpClient::http1(), &setup, None).await;
    assert_eq!(
        shared(&after, "sg-in-chain"),
        "-",
        "the singleton saw no request"
    );
    assert_eq!(after.header("x-sg-singleton"), None);

    let aggregator = plugin_entry(&setup.gateway, "aggregator").await;
    assert_eq!(aggregator["singleton"], true, "{aggregator}");
    assert_eq!(aggregator["routes"], json!([]), "{aggregator}");
    let reporter = plugin_entry(&setup.gateway, "reporter").await;
    assert_eq!(reporter["singleton"], false, "{reporter}");
    assert_eq!(reporter["routes"], json!(["usage"]), "{reporter}");
    assert_eq!(
        paths_with_prefix(setup.gateway.backend("echo"), "/singleton/on-done"),
        Vec::<String>::new(),
        "not retired while running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_or_an_edit_starts_the_new_singleton_then_retires_the_old() {
    let mut setup = start(aggregator_config()).await;
    wait_for_path(
        setup.gateway.backend("echo"),
        &setup.gateway,
        "/singleton/tick/1",
    )
    .await;
    let before = plugin_entry(&setup.gateway, "aggregator").await;

    // A new build of its module in the watched folder.
    let staged = setup.plugins.join(".aggregator.wasm.new");
    std::fs::write(&staged, another_build_of(TP_SINGLETON)).unwrap();
    std::fs::rename(&staged, setup.plugins.join("aggregator.wasm")).unwrap();
    // on_done of VM 1 came after VM 2's on_vm_start (starts=2), and VM 2 ticks.
    wait_for_path(
        setup.gateway.backend("echo"),
        &setup.gateway,
        "/singleton/on-done/1?starts=2",
    )
    .await;
    wait_for_path(
        setup.gateway.backend("echo"),
        &setup.gateway,
        "/singleton/tick/2",
    )
    .await;
    let after = plugin_entry(&setup.gateway, "aggregator").await;
    assert_ne!(before["sha256"], after["sha256"], "the new module runs");
    assert_eq!(after["singleton"], true);
    let swapped = report_until(&setup, |r| shared(r, "sg-done-1") == "2").await;
    assert_eq!(shared(&swapped, "sg-starts"), "2", "one new VM");
    assert_eq!(shared(&swapped, "sg-done-1"), "2");

    // A policy edit of its configuration replaces it the same way.
    let mut edited = aggregator_config();
    edited["tick_ms"] = json!(60);
    let policies = setup.gateway.policy_file("plugins.yaml");
    let text = std::fs::read_to_string(&policies).unwrap();
    let text = text.replace(&aggregator_config().to_string(), &edited.to_string());
    let staged = policies.with_file_name(".plugins.yaml.tmp");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, &policies).unwrap();
    wait_for_path(
        setup.gateway.backend("echo"),
        &setup.gateway,
        "/singleton/on-done/2?starts=3",
    )
    .await;
    wait_for_path(
        setup.gateway.backend("echo"),
        &setup.gateway,
        "/singleton/tick/3",
    )
    .await;
    assert_eq!(
        paths_with_prefix(setup.gateway.backend("echo"), "/singleton/on-done"),
        [
            "/singleton/on-done/1?starts=2",
            "/singleton/on-done/2?starts=3"
        ],
        "each retired once"
    );

    // At SIGTERM the running one is retired too.
    setup.gateway.terminate();
    let status = setup.gateway.wait_for_exit(WAIT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        setup.gateway.log()
    );
    assert_eq!(
        paths_with_prefix(setup.gateway.backend("echo"), "/singleton/on-done"),
        [
            "/singleton/on-done/1?starts=2",
            "/singleton/on-done/2?starts=3",
            "/singleton/on-done/3?starts=3"
        ],
        "log:\n{}",
        setup.gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_retires_the_singleton_with_on_done() {
    let mut setup = start(aggregator_config()).await;
    wait_for_path(
        setup.gateway.backend("echo"),
        &setup.gateway,
        "/singleton/tick/1",
    )
    .await;
    setup.gateway.terminate();
    let status = setup.gateway.wait_for_exit(WAIT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        setup.gateway.log()
    );
    // on_done answered false and waited for its callout: the request got out before exit.
    assert_eq!(
        paths_with_prefix(setup.gateway.backend("echo"), "/singleton/on-done"),
        ["/singleton/on-done/1?starts=1"],
        "log:\n{}",
        setup.gateway.log()
    );
    assert!(
        setup.gateway.log().contains("on_done callout answered"),
        "{}",
        setup.gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_on_tick_gets_a_fresh_vm_and_ticks_go_on() {
    let mut config = aggregator_config();
    config["trap_at_tick"] = json!(3);
    let setup = start(config).await;
    let restarted = report_until(&setup, |r| {
        shared(r, "sg-starts") == "2" && number(r, "sg-ticks") >= 8
    })
    .await;
    assert_eq!(
        shared(&restarted, "sg-trapped"),
        "1",
        "{:?}",
        restarted.headers
    );
    assert_eq!(shared(&restarted, "sg-starts"), "2", "one fresh VM");
    assert!(number(&restarted, "sg-ticks") >= 8, "ticks went on");
    wait_for_path(
        setup.gateway.backend("echo"),
        &setup.gateway,
        "/singleton/tick/2",
    )
    .await;

    let aggregator = plugin_entry(&setup.gateway, "aggregator").await;
    assert_eq!(aggregator["traps"], 1, "{aggregator}");
    assert_eq!(aggregator["vm_restarts"], 1, "{aggregator}");
    let metrics = setup.gateway.metrics().await;
    assert_eq!(
        sample_sum(
            &metrics,
            "tollgate_plugin_traps_total",
            &[("plugin", "aggregator")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        setup.gateway.log().contains("plugin trapped"),
        "{}",
        setup.gateway.log()
    );
    // Still aggregating after the restart: the new VM registered the queue again.
    let client = HttpClient::http1();
    for amount in [4, 5] {
        report(&client, &setup, Some(amount)).await;
    }
    let totals = report_until(&setup, |r| number(r, "sg-sum") >= 9).await;
    assert_eq!(shared(&totals, "sg-sum"), "9", "{:?}", totals.headers);
}

#[test]
fn check_starts_a_singleton_like_any_plugin() {
    let singleton = |config: Value| {
        PluginSpec::new("aggregator", TP_SINGLETON)
            .field("singleton", json!(true))
            .vm_config(json!({ "role": "singleton" }))
            .config(config)
    };
    let ok = check_plugins(&[singleton(json!({ "cluster": "echo" }))]);
    assert_eq!(ok.code, Some(0), "{}", ok.output);
    // on_configure refuses a configuration without `cluster`.
    let refused = check_plugins(&[singleton(json!({}))]);
    assert_rejected(&refused, &["aggregator", "bad configuration"]);
    let routed = check_plugins(&[singleton(json!({ "cluster": "echo" })).routes(&["all"])]);
    assert_rejected(&routed, &["apply_to", "applies to no route"]);
}
