//! Active health checks (`health.active`) alone, over TLS and with passive ejection, across
//! reloads; consistent hashing (`load_balancing: ring_hash`) on a header, a cookie and the
//! client's address, within one gateway and across two.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tollgate_tests::backends::{self, Backend, Switches, HEALTH_PATH};
use tollgate_tests::certs::CertAuthority;
use tollgate_tests::clients::{get_request, HttpClient};
use tollgate_tests::scenario::{Running, Scenario};

const HOST: &str = "shop.test";

/// Three checked backends, `a`, `b` and `c`.
async fn trio() -> Vec<(Backend, Switches)> {
    let mut trio = Vec::new();
    for name in ["a", "b", "c"] {
        trio.push(backends::checked(name).await);
    }
    trio
}

/// The policies of one cluster `trio` over `endpoints` and a route to it; `cluster_fields`
/// are more fields of the cluster (YAML, indented for it).
fn policies(endpoints: &[SocketAddr], cluster_fields: &str) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|addr| format!("{{ address: \"{addr}\" }}"))
        .collect();
    format!(
        "
clusters:
  - name: trio
    endpoints: [{}]
{cluster_fields}
virtual_hosts:
  - name: shop
    domains: [{HOST}]
    routes:
      - name: all
        match: {{ path: {{ prefix: / }} }}
        forward: {{ cluster: trio }}
",
        endpoints.join(", ")
    )
}

/// Checks every 100 ms; two answers in a row change an endpoint's state.
const ACTIVE: &str = "
    health:
      panic_threshold: 0
      active: { path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }";

async fn start(policies: &str) -> Running {
    Scenario::new()
        .policy_file("policies.yaml", policies)
        .start()
        .await
}

fn addrs(backends: &[(Backend, Switches)]) -> Vec<SocketAddr> {
    backends.iter().map(|(backend, _)| backend.addr()).collect()
}

/// Health checks a backend received.
fn checks(backend: &Backend) -> usize {
    backend
        .requests()
        .iter()
        .filter(|request| request.path == HEALTH_PATH)
        .count()
}

/// Requests other than health checks a backend received.
fn traffic(backend: &Backend) -> usize {
    backend.request_count() - checks(backend)
}

/// `active_healthy` and `ejected` of an endpoint, from the admin `/clusters`.
async fn endpoint_state(gateway: &Running, addr: SocketAddr) -> (bool, bool) {
    let clusters = gateway.admin_get("/clusters").await.json();
    let endpoint = clusters["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|cluster| cluster["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|endpoint| endpoint["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} is in no cluster: {clusters}"));
    (
        endpoint["active_healthy"].as_bool().unwrap(),
        endpoint["ejected"].as_bool().unwrap(),
    )
}

/// Waits until the admin API shows `addr` active-healthy as `healthy`.
async fn wait_until_active_healthy(gateway: &Running, addr: SocketAddr, healthy: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoint_state(gateway, addr).await.0 != healthy {
        assert!(
            Instant::now() < deadline,
            "{addr} never became {}",
            if healthy { "healthy" } else { "unhealthy" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `count` requests one after the other and counts them by answering backend
/// (`status NNN` for answers without one).
async fn tally(gateway: &Running, count: usize) -> BTreeMap<String, usize> {
    tollgate_tests::clients::tally_by_header(
        &HttpClient::http1(),
        gateway.addr(),
        HOST,
        "/",
        count,
        1,
        "x-backend",
    )
    .await
}

/// `POST /reload` after a policy edit; the reload must go live.
async fn reload(gateway: &Running, policies: &str) {
    std::fs::write(gateway.policy_file("policies.yaml"), policies).unwrap();
    let answer = HttpClient::http1()
        .send(
            http::Request::post(format!("http://{}/reload", gateway.admin_addr()))
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_serves_from_the_start_and_a_failing_health_path_takes_one_out() {
    let trio = trio().await;
    let gateway = start(&policies(&addrs(&trio), ACTIVE)).await;
    // Checked before ready: the first requests already reach every endpoint.
    let counts = tally(&gateway, 30).await;
    assert_eq!(counts.values().sum::<usize>(), 30, "{counts:?}");
    for name in ["a", "b", "c"] {
        assert_eq!(counts.get(name), Some(&10), "{counts:?}");
    }

    let (b, b_switches) = &trio[1];
    let checks_before = checks(b);
    b_switches.set_health(false);
    wait_until_active_healthy(&gateway, b.addr(), false).await;
    assert!(
        checks(b) - checks_before >= 2,
        "unhealthy after unhealthy_threshold failed checks, not fewer"
    );
    let traffic_before = traffic(b);
    let counts = tally(&gateway, 30).await;
    assert_eq!(traffic(b), traffic_before, "{counts:?}");
    assert_eq!(counts.get("a"), Some(&15), "{counts:?}");
    assert_eq!(counts.get("c"), Some(&15), "{counts:?}");

    let checks_before = checks(b);
    b_switches.set_health(true);
    wait_until_active_healthy(&gateway, b.addr(), true).await;
    assert!(
        checks(b) - checks_before >= 2,
        "healthy after healthy_threshold good checks, not fewer"
    );
    let counts = tally(&gateway, 30).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");

    let metrics = gateway.metrics().await;
    let gauge = format!(
        "tollgate_upstream_endpoint_healthy{{cluster=\"trio\",endpoint=\"{}\",check=\"active\"}} 1",
        b.addr()
    );
    assert!(metrics.contains(&gauge), "{gauge} not in\n{metrics}");
    // Every endpoint is checked by one checker, not one per worker: about 10 checks a second.
    let (a, _) = &trio[0];
    let (checks_at_start, started) = (checks(a), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = (checks(a) - checks_at_start) as f64 / started.elapsed().as_secs_f64();
    assert!(
        (5.0..=13.0).contains(&per_second),
        "{per_second} checks a second at a 100 ms interval"
    );
    // Health checks name the endpoint as Host and say what they are.
    let check = a
        .requests()
        .into_iter()
        .find(|request| request.path == HEALTH_PATH)
        .unwrap();
    assert_eq!(check.host, a.addr().to_string());
    assert_eq!(check.header("user-agent"), Some("tollgate-health-check"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_endpoint_is_taken_out_and_back_in_when_it_answers_again() {
    let trio = trio().await;
    let gateway = start(&policies(&addrs(&trio), ACTIVE)).await;
    let (b, _) = &trio[1];
    let b_addr = b.addr();
    b.stop();
    wait_until_active_healthy(&gateway, b_addr, false).await;
    let counts = tally(&gateway, 20).await;
    assert_eq!(counts.get("a"), Some(&10), "no request fails: {counts:?}");
    assert_eq!(counts.get("c"), Some(&10), "no request fails: {counts:?}");

    let listener = tokio::net::TcpListener::bind(b_addr).await.unwrap();
    let (_restarted, _) = backends::checked_on(listener, "b");
    wait_until_active_healthy(&gateway, b_addr, true).await;
    let counts = tally(&gateway, 30).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_and_passive_ejection_both_take_endpoints_out() {
    let trio = trio().await;
    let fields = "
    health:
      consecutive_failures: 2
      eject_on: 5xx
      max_ejection_percent: 100
      panic_threshold: 0
      active: { path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }";
    let gateway = start(&policies(&addrs(&trio), fields)).await;
    let ((a, a_switches), (b, b_switches), (c, _)) = (&trio[0], &trio[1], &trio[2]);
    // a fails its health checks; b passes them but fails the requests it gets.
    a_switches.set_health(false);
    wait_until_active_healthy(&gateway, a.addr(), false).await;
    b_switches.set_traffic(false);
    let answers = tally(&gateway, 10).await;
    assert_eq!(
        endpoint_state(&gateway, b.addr()).await,
        (true, true),
        "b is active-healthy but ejected: {answers:?}"
    );
    let traffic_before = (traffic(a), traffic(b), traffic(c));
    let counts = tally(&gateway, 20).await;
    assert_eq!(counts.get("c"), Some(&20), "{counts:?}");
    assert_eq!(
        (traffic(a), traffic(b)),
        (traffic_before.0, traffic_before.1)
    );
    let metrics = gateway.metrics().await;
    for (addr, check, value) in [
        (a.addr(), "active", 0),
        (b.addr(), "passive", 0),
        (c.addr(), "active", 1),
    ] {
        let gauge = format!(
            "tollgate_upstream_endpoint_healthy{{cluster=\"trio\",endpoint=\"{addr}\",check=\"{check}\"}} {value}"
        );
        assert!(metrics.contains(&gauge), "{gauge} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_health_state_and_a_removed_cluster_is_no_longer_checked() {
    let trio = trio().await;
    // Slow to recover: three good checks a second apart.
    let slow = "
    health:
      panic_threshold: 0
      active: { path: /healthz, interval: 1s, timeout: 500ms, healthy_threshold: 3, unhealthy_threshold: 1 }";
    let first = policies(&addrs(&trio), slow);
    let gateway = start(&first).await;
    let (b, b_switches) = &trio[1];
    b_switches.set_health(false);
    wait_until_active_healthy(&gateway, b.addr(), false).await;
    b_switches.set_health(true);

    // A reload that keeps the cluster (another timeout): b stays out. Had the reload
    // started b afresh, its first check would have put it back at once.
    reload(&gateway, &first.replace("name: all", "name: everything")).await;
    assert_eq!(endpoint_state(&gateway, b.addr()).await, (false, false));
    let traffic_before = traffic(b);
    let counts = tally(&gateway, 20).await;
    assert_eq!(traffic(b), traffic_before, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 20, "{counts:?}");
    assert!(
        !counts.keys().any(|k| k.starts_with("status")),
        "{counts:?}"
    );
    // It comes back after three good checks.
    wait_until_active_healthy(&gateway, b.addr(), true).await;

    // Without the cluster, its endpoints are no longer checked.
    let others = backends::echo("other").await;
    reload(&gateway, &policies(&[others.addr()], "")).await;
    let checks_after_reload = checks(b);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        checks(b),
        checks_after_reload,
        "the removed cluster is still checked"
    );
}

// === ring_hash ===

fn ring_hash(hash_on: &str) -> String {
    format!("    load_balancing: ring_hash\n    hash_on: {hash_on}\n{ACTIVE}")
}

/// The backend that answers a request carrying `header: value`.
async fn backend_for(gateway: &Running, header: &str, value: &str) -> String {
    let mut request = get_request(gateway.addr(), HOST, "/");
    request.headers_mut().insert(
        http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    let response = HttpClient::http1().send(request).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    response.header("x-backend").unwrap().to_owned()
}

/// The backend of each of `keys` keys, sent in `header`.
async fn placement(gateway: &Running, header: &str, keys: usize) -> HashMap<usize, String> {
    let mut placed = HashMap::new();
    for key in 0..keys {
        placed.insert(
            key,
            backend_for(gateway, header, &format!("user-{key}")).await,
        );
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_a_header_keeps_keys_on_their_endpoint() {
    let trio = trio().await;
    let fields = ring_hash("{ header: x-user }");
    let gateway = start(&policies(&addrs(&trio), &fields)).await;

    let mut seen: Vec<String> = Vec::new();
    for _ in 0..50 {
        seen.push(backend_for(&gateway, "x-user", "alice").await);
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "alice went to {seen:?}");

    let placed = placement(&gateway, "x-user", 300).await;
    let mut shares: BTreeMap<&str, usize> = BTreeMap::new();
    for backend in placed.values() {
        *shares.entry(backend).or_default() += 1;
    }
    for name in ["a", "b", "c"] {
        let share = shares.get(name).copied().unwrap_or(0);
        assert!((60..=141).contains(&share), "20–47 % each: {shares:?}");
    }

    // Without the header: round robin.
    let counts = tally(&gateway, 30).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");

    // b fails its checks: its keys go elsewhere, the others stay; then they come back.
    let (b, b_switches) = &trio[1];
    b_switches.set_health(false);
    wait_until_active_healthy(&gateway, b.addr(), false).await;
    let without_b = placement(&gateway, "x-user", 300).await;
    for (key, backend) in &placed {
        if backend == "b" {
            assert_ne!(without_b[key], "b", "user-{key}");
        } else {
            assert_eq!(&without_b[key], backend, "user-{key} moved off {backend}");
        }
    }
    b_switches.set_health(true);
    wait_until_active_healthy(&gateway, b.addr(), true).await;
    assert_eq!(placement(&gateway, "x-user", 300).await, placed);

    // Removing c by a reload moves only c's keys.
    let addresses = addrs(&trio);
    reload(&gateway, &policies(&addresses[..2], &fields)).await;
    let without_c = placement(&gateway, "x-user", 300).await;
    for (key, backend) in &placed {
        if backend == "c" {
            assert_ne!(without_c[key], "c", "user-{key}");
        } else {
            assert_eq!(&without_c[key], backend, "user-{key} moved off {backend}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_a_cookie_and_on_the_client_address() {
    let trio = trio().await;
    let gateway = start(&policies(&addrs(&trio), &ring_hash("{ cookie: session }"))).await;
    let mut by_session: BTreeMap<String, String> = BTreeMap::new();
    for session in 0..30 {
        let cookie = format!("theme=dark; session=s{session}; lang=en");
        let first = backend_for(&gateway, "cookie", &cookie).await;
        for _ in 0..3 {
            assert_eq!(backend_for(&gateway, "cookie", &cookie).await, first);
        }
        by_session.insert(format!("s{session}"), first);
    }
    let mut used: Vec<&String> = by_session.values().collect();
    used.sort();
    used.dedup();
    assert!(
        used.len() >= 2,
        "30 sessions on one endpoint: {by_session:?}"
    );
    // Another cookie alone is no key: round robin.
    let counts = tally(&gateway, 30).await;
    assert_eq!(counts.get("c"), Some(&10), "{counts:?}");
    drop(gateway);

    let gateway = start(&policies(&addrs(&trio), &ring_hash("client_ip"))).await;
    let counts = tally(&gateway, 30).await;
    assert_eq!(counts.len(), 1, "one client, one endpoint: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 30, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_map_a_key_to_the_same_endpoint() {
    let trio = trio().await;
    let fields = ring_hash("{ header: x-user }");
    let first = start(&policies(&addrs(&trio), &fields)).await;
    let second = start(&policies(&addrs(&trio), &fields)).await;
    let (one, two) = (
        placement(&first, "x-user", 50).await,
        placement(&second, "x-user", 50).await,
    );
    assert_eq!(one, two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_a_tls_cluster_go_over_tls_and_name_its_server_name() {
    let upstream_ca = CertAuthority::new("upstream CA");
    let secure = backends::tls_echo("secure", &upstream_ca.server_cert(&["backend.test"])).await;
    let gateway = Scenario::new()
        .ca_cert("upstream-ca.crt", &upstream_ca)
        .policy_file(
            "policies.yaml",
            &policies(
                &[secure.addr()],
                "    tls: { ca: certs/upstream-ca.crt, server_name: backend.test }\n    health: { active: { path: /healthz, interval: 100ms } }",
            ),
        )
        .start()
        .await;
    assert_eq!(endpoint_state(&gateway, secure.addr()).await, (true, false));
    let check = secure
        .requests()
        .into_iter()
        .find(|request| request.path == HEALTH_PATH)
        .expect("a check before ready");
    assert_eq!(check.host, "backend.test");
}
