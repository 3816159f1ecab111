//! `tollgate ratelimit`: Envoy's rate limit service API with counters in a real Redis,
//! shared by every replica of the service; failures answered at once; recovery by itself.

use std::time::{Duration, Instant};

use tollgate_tests::ratelimit::proto::{Code, RateLimitRequest, UInt64Value, Unit};
use tollgate_tests::ratelimit::{descriptor, wait_for_fresh_minute, RateLimitService};
use tollgate_tests::redis::RedisServer;

/// gRPC status UNAVAILABLE.
const UNAVAILABLE: u32 = 14;

fn request(domain: &str, consumer: &str, per_minute: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![descriptor(
            &[("consumer", consumer)],
            per_minute,
            Unit::Minute,
        )],
        hits_addend: 0,
    }
}

#[tokio::test]
async fn two_replicas_share_one_limit_exactly() {
    let redis = RedisServer::start().await;
    let first = RateLimitService::start(&redis.url()).await;
    let second = RateLimitService::start(&redis.url()).await;
    wait_for_fresh_minute(Duration::from_secs(15)).await;

    let mut allowed = 0;
    let mut remaining = Vec::new();
    for call in 0..90 {
        let service = if call % 2 == 0 { &first } else { &second };
        let answer = service
            .should_rate_limit(&request("shop", "alice", 30))
            .await
            .expect("the call succeeds");
        let status = &answer.statuses[0];
        assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 30);
        assert_eq!(
            status.current_limit.as_ref().unwrap().unit,
            Unit::Minute as i32
        );
        let reset = status.duration_until_reset.as_ref().unwrap().seconds;
        assert!(
            (1..=60).contains(&reset),
            "resets within the minute: {reset}"
        );
        if answer.overall_code == Code::Ok as i32 {
            allowed += 1;
            remaining.push(status.limit_remaining);
        } else {
            assert_eq!(answer.overall_code, Code::OverLimit as i32);
            assert_eq!(status.limit_remaining, 0);
        }
    }
    assert_eq!(
        allowed, 30,
        "exactly the limit is allowed across both replicas"
    );
    assert_eq!(remaining, (0..30).rev().collect::<Vec<u32>>());

    // Another consumer and another domain count on their own.
    let bob = first
        .should_rate_limit(&request("shop", "bob", 30))
        .await
        .unwrap();
    assert_eq!(bob.overall_code, Code::Ok as i32);
    let other = second
        .should_rate_limit(&request("other", "alice", 30))
        .await
        .unwrap();
    assert_eq!(other.overall_code, Code::Ok as i32);

    // The key lives no longer than its window and a grace period.
    let keys = redis.command(&["DBSIZE"]).await.unwrap();
    assert_eq!(keys, ":3");
    let metrics = first.get("/metrics").await.text();
    assert!(
        metrics.contains("tollgate_ratelimit_calls_total{result=\"over_limit\"}"),
        "{metrics}"
    );
}

/// Calls that arrive together go to Redis in shared script runs, and each still gets the
/// count it would have got alone: 200 concurrent calls against 100 per minute allow exactly
/// 100, with every remaining count from 99 down to 0 given out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_batched_and_each_counted_in_order() {
    let redis = RedisServer::start().await;
    // What is tested is the batching, not the deadline: 200 calls at once on a machine busy
    // with other tests once took Redis past the default 100 ms.
    let service = RateLimitService::start_with_args(
        &redis.url(),
        &["--workers", "1", "--redis-timeout", "5s"],
    )
    .await;
    wait_for_fresh_minute(Duration::from_secs(15)).await;

    let carol = request("shop", "carol", 100);
    let calls = (0..200).map(|_| service.should_rate_limit(&carol));
    let answers = futures_util::future::join_all(calls).await;
    let mut remaining: Vec<u32> = answers
        .iter()
        .map(|answer| answer.as_ref().expect("the call succeeds"))
        .filter(|answer| answer.overall_code == Code::Ok as i32)
        .map(|answer| answer.statuses[0].limit_remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..100).collect::<Vec<u32>>());

    let metrics = service.get("/metrics").await.text();
    let script_runs: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("tollgate_ratelimit_redis_calls_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("a script run count in {metrics}"));
    assert!(
        (1..200).contains(&script_runs),
        "200 concurrent calls took {script_runs} script runs"
    );
}

#[tokio::test]
async fn hits_descriptors_and_keys_that_expire() {
    let redis = RedisServer::start().await;
    let service = RateLimitService::start(&redis.url()).await;
    wait_for_fresh_minute(Duration::from_secs(10)).await;

    // hits_addend counts several at once; a descriptor's own hits override it.
    let mut weighted = request("shop", "carol", 10);
    weighted.hits_addend = 4;
    let answer = service.should_rate_limit(&weighted).await.unwrap();
    assert_eq!(answer.statuses[0].limit_remaining, 6);
    let mut peek = request("shop", "carol", 10);
    peek.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    let answer = service.should_rate_limit(&peek).await.unwrap();
    assert_eq!(answer.statuses[0].limit_remaining, 6, "0 hits only reads");

    // Two descriptors: the request is over when either is.
    let both = RateLimitRequest {
        domain: "shop".into(),
        descriptors: vec![
            descriptor(&[("consumer", "dave")], 100, Unit::Hour),
            descriptor(&[("route", "orders")], 1, Unit::Second),
        ],
        hits_addend: 1,
    };
    let first = service.should_rate_limit(&both).await.unwrap();
    assert_eq!(first.overall_code, Code::Ok as i32);
    let second = service.should_rate_limit(&both).await.unwrap();
    if second.statuses[1]
        .duration_until_reset
        .as_ref()
        .unwrap()
        .seconds
        == 1
        && second.overall_code == Code::Ok as i32
    {
        // The second crossed into the next second: that is a fresh window, correctly.
    } else {
        assert_eq!(second.overall_code, Code::OverLimit as i32);
        assert_eq!(second.statuses[0].code, Code::Ok as i32);
        assert_eq!(second.statuses[1].code, Code::OverLimit as i32);
    }

    // A descriptor without a limit is answered OK and counts nothing.
    let unlimited = RateLimitRequest {
        domain: "shop".into(),
        descriptors: vec![tollgate_tests::ratelimit::proto::RateLimitDescriptor {
            entries: vec![],
            limit: None,
            hits_addend: None,
        }],
        hits_addend: 1,
    };
    let answer = service.should_rate_limit(&unlimited).await.unwrap();
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(answer.statuses[0].current_limit, None);

    // Every key expires: a per-second key within ~3 s (its second and the grace).
    let keys = redis.command(&["KEYS", "*"]).await.unwrap();
    assert!(keys.starts_with('*'), "{keys}");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let after = redis.command(&["DBSIZE"]).await.unwrap();
    assert_eq!(
        after, ":2",
        "the per-second key expired; minute and hour remain"
    );
}

#[tokio::test]
async fn redis_down_fails_fast_and_recovers_by_itself() {
    let mut redis = RedisServer::start().await;
    let service =
        RateLimitService::start_with_args(&redis.url(), &["--redis-timeout", "200ms"]).await;
    wait_for_fresh_minute(Duration::from_secs(20)).await;

    // Over the limit first: that answer is remembered until the window ends.
    for _ in 0..3 {
        service
            .should_rate_limit(&request("shop", "eve", 2))
            .await
            .unwrap();
    }
    assert_eq!(service.get("/healthz").await.status, 200);

    redis.kill();
    let started = Instant::now();
    let failed = service
        .should_rate_limit(&request("shop", "frank", 2))
        .await;
    assert_eq!(
        failed.as_ref().err().map(|(code, _)| *code),
        Some(UNAVAILABLE),
        "{failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a failed call answers within the timeout, took {:?}",
        started.elapsed()
    );
    let cached = service
        .should_rate_limit(&request("shop", "eve", 2))
        .await
        .unwrap();
    assert_eq!(
        cached.overall_code,
        Code::OverLimit as i32,
        "answered from the cache"
    );
    assert_eq!(service.get("/healthz").await.status, 503);

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match service
            .should_rate_limit(&request("shop", "frank", 2))
            .await
        {
            Ok(answer) => {
                assert_eq!(answer.overall_code, Code::Ok as i32);
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "no recovery: {error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(service.get("/healthz").await.status, 200);
    let metrics = service.get("/metrics").await.text();
    assert!(
        !metrics.contains("tollgate_ratelimit_calls_total{result=\"failed\"} 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tollgate_ratelimit_cache_hits_total 0"),
        "{metrics}"
    );
    let log = service.log();
    let lines = log.matches("ShouldRateLimit calls fail").count();
    assert!(
        (1..=2).contains(&lines),
        "one log line per 10 s interval, not one per failed call:\n{log}"
    );
}

#[tokio::test]
async fn a_restarted_service_continues_the_count() {
    let redis = RedisServer::start().await;
    wait_for_fresh_minute(Duration::from_secs(15)).await;
    let mut service = RateLimitService::start(&redis.url()).await;
    for _ in 0..5 {
        service
            .should_rate_limit(&request("shop", "grace", 8))
            .await
            .unwrap();
    }
    service.kill();
    let service = RateLimitService::start(&redis.url()).await;
    let answer = service
        .should_rate_limit(&request("shop", "grace", 8))
        .await
        .unwrap();
    assert_eq!(
        answer.statuses[0].limit_remaining, 2,
        "counted 6 of 8 across both"
    );
}

#[tokio::test]
async fn bad_calls_get_grpc_errors() {
    let redis = RedisServer::start().await;
    let service = RateLimitService::start(&redis.url()).await;
    let garbage = service
        .call(
            tollgate_tests::ratelimit::proto::SHOULD_RATE_LIMIT_PATH,
            bytes::Bytes::from_static(b"\x00\x00\x00\x00\x03\xff\xff\xff"),
        )
        .await;
    assert_eq!(garbage.header("grpc-status"), Some("3"), "INVALID_ARGUMENT");
    let unknown = service
        .call(
            "/envoy.service.ratelimit.v3.RateLimitService/Other",
            bytes::Bytes::from_static(b"\x00\x00\x00\x00\x00"),
        )
        .await;
    assert_eq!(unknown.header("grpc-status"), Some("12"), "UNIMPLEMENTED");
    assert_eq!(service.get("/nope").await.status, 404);
}
