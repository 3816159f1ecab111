//! Limits shared by gateway replicas: three gateway processes (two workers each) with the
//! bundled rate-limit and quota plugins in global mode, one `tollgate ratelimit` service and
//! a real Redis. Exact counts across replicas; Redis and the service stopped and started
//! mid-run, with the failure mode deciding meanwhile and recovery by itself.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};
use tollgate_tests::bundled::{KEY_AUTH, QUOTA, RATE_LIMIT};
use tollgate_tests::clients::{request, HttpClient, HttpResponse};
use tollgate_tests::plugins::PluginSpec;
use tollgate_tests::ratelimit::{wait_for_fresh_minute, RateLimitService};
use tollgate_tests::redis::RedisServer;
use tollgate_tests::scenario::{Running, Scenario};

const ALICE: &str = "k-alice";
const BOB: &str = "k-bob";

fn key_auth() -> PluginSpec {
    PluginSpec::new("auth", KEY_AUTH)
        .priority(100)
        .config(json!({
            "consumers": [
                { "name": "alice", "keys": [ALICE] },
                { "name": "bob", "keys": [BOB] }
            ]
        }))
}

fn global(failure_mode: &str) -> Value {
    json!({ "cluster": "ratelimit", "domain": "shop", "timeout": "200ms", "failure_mode": failure_mode })
}

/// A gateway whose plugins count in the service at `service`.
async fn replica(service: &RateLimitService, limiter: PluginSpec) -> Running {
    Scenario::new()
        .echo("echo")
        .forward("api", "/api", "echo")
        .cluster(&format!(
            "{{ name: ratelimit, endpoints: [{{ address: \"{}\" }}], http2: true }}",
            service.addr()
        ))
        .plugins(&[key_auth(), limiter])
        .workers(2)
        .start()
        .await
}

async fn get(client: &HttpClient, gateway: &Running, key: &str) -> HttpResponse {
    let req = request("GET", gateway.listener("public"), "api.test", "/api/x")
        .header("x-api-key", key)
        .body(Full::default())
        .expect("a valid request");
    client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("GET /api/x: {e:#}; gateway log:\n{}", gateway.log()))
}

fn rate_limit(per_minute: u32, failure_mode: &str) -> PluginSpec {
    PluginSpec::new("limit", RATE_LIMIT).config(json!({
        "plans": { "shared": { "requests_per_minute": per_minute } },
        "default_plan": "shared",
        "global": global(failure_mode)
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_allow_exactly_the_limit() {
    let redis = RedisServer::start().await;
    let service = RateLimitService::start(&redis.url()).await;
    let replicas = join_all((0..3).map(|_| replica(&service, rate_limit(30, "allow")))).await;
    wait_for_fresh_minute(Duration::from_secs(25)).await;

    // 90 requests from alice, nine at a time, spread over the three replicas.
    let client = HttpClient::http1();
    let mut statuses = Vec::new();
    for batch in 0..10 {
        let calls = (0..9).map(|i| get(&client, &replicas[(batch + i) % 3], ALICE));
        statuses.extend(join_all(calls).await);
    }
    let allowed: Vec<&HttpResponse> = statuses
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    let refused: Vec<&HttpResponse> = statuses
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(
        allowed.len(),
        30,
        "exactly the plan's 30 per minute across three replicas"
    );
    assert_eq!(refused.len(), 60);
    for response in &refused {
        assert_eq!(response.header("ratelimit-limit"), Some("30"));
        let retry: u64 = response.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=60).contains(&retry),
            "retry-after within the minute: {retry}"
        );
        assert_eq!(response.json()["error"], "rate_limited");
    }
    assert!(allowed
        .iter()
        .all(|r| r.header("ratelimit-limit") == Some("30")));
    let served: usize = replicas
        .iter()
        .map(|r| r.backend("echo").request_count())
        .sum();
    assert_eq!(served, 30, "refused requests never reach a backend");

    // Bob has a counter of his own.
    assert_eq!(get(&client, &replicas[1], BOB).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_per_consumer_per_day_are_exact_across_replicas() {
    let redis = RedisServer::start().await;
    let service = RateLimitService::start(&redis.url()).await;
    let quota = || {
        PluginSpec::new("quota", QUOTA).config(json!({
            "plans": { "basic": { "per_day": 12 }, "tiny": { "per_day": 5, "per_month": 100 } },
            "consumers": { "alice": "basic", "bob": "tiny" },
            "global": global("deny")
        }))
    };
    let replicas = join_all((0..3).map(|_| replica(&service, quota()))).await;
    let client = HttpClient::http1();
    let calls = (0..30).map(|i| get(&client, &replicas[i % 3], ALICE));
    let alice = join_all(calls).await;
    let calls = (0..15).map(|i| get(&client, &replicas[i % 3], BOB));
    let bob = join_all(calls).await;
    let ok = |responses: &[HttpResponse]| {
        responses
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count()
    };
    assert_eq!(ok(&alice), 12, "alice's daily quota, across replicas");
    assert_eq!(
        ok(&bob),
        5,
        "bob's daily quota, the tighter of his two windows"
    );
    let mut remaining: Vec<u64> = alice
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .map(|r| r.header("x-quota-remaining").unwrap().parse().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..12).collect::<Vec<u64>>(),
        "each allowed request saw its own count"
    );
    let refused = alice
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .unwrap();
    assert_eq!(refused.json()["error"], "quota_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_decided_by_the_failure_mode_and_recovers() {
    let mut redis = RedisServer::start().await;
    let service = RateLimitService::start(&redis.url()).await;
    let open = replica(&service, rate_limit(1000, "allow")).await;
    let closed = replica(&service, rate_limit(1000, "deny")).await;
    let client = HttpClient::http1();
    assert_eq!(get(&client, &open, ALICE).await.status, StatusCode::OK);
    assert_eq!(get(&client, &closed, ALICE).await.status, StatusCode::OK);

    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            get(&client, &open, ALICE).await.status,
            StatusCode::OK,
            "allow lets it through"
        );
        let refused = get(&client, &closed, BOB).await;
        assert_eq!(
            refused.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "deny refuses"
        );
        assert_eq!(refused.json()["error"], "rate_limit_unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "decided within the timeout, took {:?}",
            started.elapsed()
        );
    }
    let metrics = open.gateway().metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("global_limit_failures") && !line.ends_with(" 0")),
        "failures are counted:\n{metrics}"
    );
    let warnings = open.log().matches("global limit on cluster").count();
    assert!(
        (1..=4).contains(&warnings),
        "logged once per interval per worker, not per request: {warnings}"
    );

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&client, &closed, BOB).await.status != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the deny replica did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_keeps_the_count() {
    let redis = RedisServer::start().await;
    let mut service = RateLimitService::start(&redis.url()).await;
    let gateway = replica(&service, rate_limit(10, "allow")).await;
    wait_for_fresh_minute(Duration::from_secs(20)).await;
    let client = HttpClient::http1();
    for _ in 0..4 {
        assert_eq!(get(&client, &gateway, ALICE).await.status, StatusCode::OK);
    }
    service.kill();
    // Meanwhile failure_mode allow lets requests through, uncounted.
    assert_eq!(get(&client, &gateway, ALICE).await.status, StatusCode::OK);
    service.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut statuses = Vec::new();
    while statuses.len() < 8 {
        let response = get(&client, &gateway, ALICE).await;
        if response.header("ratelimit-limit").is_none() {
            // Not yet counted: the gateway's connection to the service is coming back.
            assert!(Instant::now() < deadline, "the service did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        statuses.push(response.status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 6, "4 counted before the restart, 6 after: {statuses:?}");
}
