//! Hot swap while traffic flows: plugin modules swapped back and forth under continuous load
//! (zero failed requests, every response from exactly one version, each new version serving
//! within the deadline), invalid and truncated modules dropped in mid-load (ignored, the last
//! good version keeps serving and the admin API shows the error), a request paused on a
//! callout that spans a swap, memory over many swaps, a policy edit adding a route, a
//! certificate rotation seen by new handshakes, and `POST /reload`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use tollgate_tests::certs::CertAuthority;
use tollgate_tests::clients::{get_request, tls_connect, HttpClient, TlsOptions};
use tollgate_tests::plugins::{PluginSpec, TP_CALLOUT, TP_HEADERS, TP_METRICS};
use tollgate_tests::scenario::{Running, Scenario};

/// Which module answered: `tp-headers` marks responses with `x-tp-response`, `tp-metrics`
/// with `x-tp-requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Headers,
    Metrics,
}

struct Setup {
    gateway: Running,
    plugins: PathBuf,
}

async fn start() -> Setup {
    let gateway = Scenario::new()
        .echo("echo")
        .echo("slow")
        .route("{ name: paused, match: { path: { prefix: /paused } }, forward: { cluster: echo, timeout: 10s } }")
        .route("{ name: main, forward: { cluster: echo } }")
        .plugin_module("marker.wasm", TP_HEADERS)
        .plugin_module("waiter.wasm", TP_CALLOUT)
        .plugin(
            PluginSpec::new("marker", "marker.wasm")
                .config(json!({ "tag": "swap" }))
                .routes(&["main"]),
        )
        .plugin(
            PluginSpec::new("waiter", "waiter.wasm")
                .config(json!({ "cluster": "slow", "path": "/wait?delay_ms=1500", "timeout_ms": 5000 }))
                .routes(&["paused"]),
        )
        .start()
        .await;
    let plugins = gateway.plugins_folder().to_path_buf();
    Setup { gateway, plugins }
}

/// Replaces a file the way editors and `cp` do: `atomic` writes a temporary file and renames
/// it over; otherwise the file is rewritten in place.
fn replace_file(target: &Path, source: &str, atomic: bool) {
    let bytes = std::fs::read(source).unwrap();
    if atomic {
        let temporary = target.with_extension("tmp-upload");
        std::fs::write(&temporary, &bytes).unwrap();
        std::fs::rename(&temporary, target).unwrap();
    } else {
        std::fs::write(target, &bytes).unwrap();
    }
}

fn version_of(response: &tollgate_tests::clients::HttpResponse) -> Result<Version, String> {
    if response.status != StatusCode::OK {
        return Err(format!("status {}: {}", response.status, response.text()));
    }
    match (
        response.header("x-tp-response"),
        response.header("x-tp-requests"),
    ) {
        (Some(_), None) => Ok(Version::Headers),
        (None, Some(_)) => Ok(Version::Metrics),
        (a, b) => Err(format!(
            "not exactly one version: x-tp-response={a:?} x-tp-requests={b:?}"
        )),
    }
}

/// When each response arrived and which version served it (or why it failed).
type Outcomes = Arc<Mutex<Vec<(Instant, Result<Version, String>)>>>;

/// Sends requests from `clients` concurrent loops until `stop`; records every outcome.
fn load(
    setup: &Setup,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Outcomes, Vec<tokio::task::JoinHandle<()>>) {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let addr = setup.gateway.listener("public");
    let tasks = (0..clients)
        .map(|_| {
            let outcomes = outcomes.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = HttpClient::http1();
                // Bounded: at most 20 000 requests per client even if `stop` never comes.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let outcome = match client.send(get_request(addr, "swap.test", "/")).await {
                        Ok(response) => version_of(&response),
                        Err(error) => Err(format!("transport error: {error:#}")),
                    };
                    outcomes.lock().unwrap().push((Instant::now(), outcome));
                }
            })
        })
        .collect();
    (outcomes, tasks)
}

async fn wait_for_version(
    outcomes: &Mutex<Vec<(Instant, Result<Version, String>)>>,
    since: Instant,
    wanted: Version,
    deadline: Duration,
) -> Option<Duration> {
    let limit = since + deadline;
    while Instant::now() < limit {
        let seen = outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, outcome)| *at > since && *outcome == Ok(wanted))
            .map(|(at, _)| *at)
            .min();
        if let Some(at) = seen {
            return Some(at - since);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_swap_back_and_forth_under_load_without_a_failed_request() {
    let setup = start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (outcomes, tasks) = load(&setup, 4, stop.clone());
    let marker = setup.plugins.join("marker.wasm");
    let mut latencies = Vec::new();
    for round in 0..6 {
        for (source, version) in [
            (TP_METRICS, Version::Metrics),
            (TP_HEADERS, Version::Headers),
        ] {
            let since = Instant::now();
            replace_file(&marker, source, round % 2 == 0);
            let took = wait_for_version(&outcomes, since, version, Duration::from_secs(3)).await;
            let took = took.unwrap_or_else(|| {
                panic!(
                    "round {round}: {version:?} not serving within 3 s\n{}",
                    setup.gateway.log()
                )
            });
            latencies.push(took);
        }
        // A broken module and a truncated one: ignored, the current version keeps serving.
        if round == 2 {
            std::fs::write(&marker, b"this is not wasm").unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let plugins = setup.gateway.admin_get("/plugins").await.json();
            assert!(
                plugins["last_reload"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("marker")),
                "{plugins}"
            );
            let truncated = std::fs::read(TP_METRICS).unwrap();
            std::fs::write(&marker, &truncated[..truncated.len() / 2]).unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            replace_file(&marker, TP_HEADERS, true);
            let since = Instant::now();
            assert!(
                wait_for_version(&outcomes, since, Version::Headers, Duration::from_secs(3))
                    .await
                    .is_some()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let failures: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, outcome)| outcome.as_ref().err())
        .collect();
    assert!(
        outcomes.len() > 200,
        "the load ran: {} requests",
        outcomes.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}\n{}",
        failures.len(),
        outcomes.len(),
        failures.first(),
        setup.gateway.log()
    );
    let slowest = latencies.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(1),
        "a new version served after {slowest:?}"
    );
    let metrics = setup.gateway.metrics().await;
    assert!(
        metrics.contains("tollgate_reloads_total{result=\"failure\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_paused_on_a_callout_finishes_across_a_swap() {
    let setup = start().await;
    let addr = setup.gateway.listener("public");
    let paused = tokio::spawn(async move {
        HttpClient::http1()
            .send(get_request(addr, "swap.test", "/paused"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Swap the paused request's own plugin (a new configuration) and another module.
    let policies = setup.gateway.policy_file("plugins.json");
    let text = std::fs::read_to_string(&policies)
        .unwrap()
        .replace("delay_ms=1500", "delay_ms=1");
    std::fs::write(&policies, text).unwrap();
    replace_file(&setup.plugins.join("marker.wasm"), TP_METRICS, true);
    let response = tokio::time::timeout(Duration::from_secs(8), paused)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{}\n{}",
        response.text(),
        setup.gateway.log()
    );
    let upstream = response.json();
    assert_eq!(
        upstream["headers"]["x-callout-status"], "200",
        "the old VM delivered the callout: {upstream}"
    );
    // New requests run the new configuration (a 1 ms callout instead of 1.5 s).
    let started = Instant::now();
    loop {
        let asked = Instant::now();
        let response = HttpClient::http1().get(addr, "swap.test", "/paused").await;
        assert_eq!(response.status, StatusCode::OK);
        if asked.elapsed() < Duration::from_millis(1000) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the new configuration never served\n{}",
            setup.gateway.log()
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_over_many_swaps() {
    let setup = start().await;
    let addr = setup.gateway.listener("public");
    let client = HttpClient::http1();
    let marker = setup.plugins.join("marker.wasm");
    let mut before = 0;
    let swap = |i: usize| {
        let source = if i.is_multiple_of(2) {
            TP_METRICS
        } else {
            TP_HEADERS
        };
        replace_file(&marker, source, true);
    };
    // Warm up: a few swaps with traffic, then measure over many more.
    for i in 0..36 {
        if i == 6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        swap(i);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            client.get(addr, "swap.test", "/").await.status,
            StatusCode::OK,
            "swap {i}"
        );
        if i == 5 {
            before = rss_kib(setup.gateway.pid());
        }
    }
    let after = rss_kib(setup.gateway.pid());
    let plugins = setup.gateway.admin_get("/plugins").await.json();
    assert!(plugins["generation"].as_u64().unwrap() >= 30, "{plugins}");
    assert!(
        after < before + 40 * 1024,
        "resident memory grew from {before} KiB to {after} KiB over 30 swaps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_edits_and_reload_requests_apply_live() {
    let setup = start().await;
    let addr = setup.gateway.listener("public");
    let client = HttpClient::http1();
    assert_eq!(
        client.get(addr, "new.test", "/").await.status,
        StatusCode::OK,
        "the catch-all answers first"
    );
    let dir = setup.gateway.policies().path();
    std::fs::write(
        dir.join("more.yaml"),
        "virtual_hosts:\n  - name: added\n    domains: [new.test]\n    routes:\n      - name: added\n        direct_response: { status: 203, body: added }\n",
    )
    .unwrap();
    let started = Instant::now();
    while client.get(addr, "new.test", "/").await.status
        != StatusCode::NON_AUTHORITATIVE_INFORMATION
    {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the new route never served\n{}",
            setup.gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A broken edit is rejected; the route keeps serving.
    std::fs::write(dir.join("broken.yaml"), "virtual_hosts: [ { name: x } ]\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.get(addr, "new.test", "/").await.status,
        StatusCode::NON_AUTHORITATIVE_INFORMATION
    );
    let reload = HttpClient::http1()
        .send(
            http::Request::post(format!("http://{}/reload", setup.gateway.admin_addr()))
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        reload.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reload.text()
    );
    assert!(reload.text().contains("broken.yaml"), "{}", reload.text());
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plugins = setup.gateway.admin_get("/plugins").await.json();
    assert!(plugins["last_reload"]["error"].is_null(), "{plugins}");
    let names: Vec<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["marker", "waiter"]);
    let marker = &plugins["plugins"][0];
    assert_eq!(marker["abi_version"], "0.2.1");
    assert_eq!(marker["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(marker["routes"], json!(["main"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_presented_to_new_handshakes() {
    let ca = CertAuthority::new("rotation CA");
    let gateway = Scenario::new()
        .without_public_listener()
        .https_listener("tls", "server")
        .server_cert("server", &ca.server_cert(&["rot.test", "v1.rot.test"]))
        .echo("echo")
        .route("{ name: all, forward: { cluster: echo } }")
        .start()
        .await;
    let certs = gateway.policies().certs_dir();
    let options = TlsOptions::new("rot.test", &ca.cert_pem());
    let names = tls_connect(gateway.listener("tls"), &options)
        .await
        .unwrap()
        .info
        .peer_dns_names;
    assert!(names.contains(&"v1.rot.test".to_string()), "{names:?}");
    // Rotate: a new key and certificate, written over the old files.
    ca.server_cert(&["rot.test", "v2.rot.test"])
        .write(&certs, "server");
    let started = Instant::now();
    loop {
        let names = tls_connect(gateway.listener("tls"), &options)
            .await
            .unwrap()
            .info
            .peer_dns_names;
        if names.contains(&"v2.rot.test".to_string()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still {names:?}\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
