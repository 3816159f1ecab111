//! Distributed tracing (`server.tracing`): spans exported over OTLP/HTTP to a test collector
//! on loopback, W3C trace context continued from the client and sent upstream, parent-based
//! sampling, the trace id in the access log and as a plugin property, and requests that
//! never wait on the collector.

use std::time::Duration;

use http_body_util::Full;
use serde_json::json;
use tollgate_tests::backends::{self, Failure};
use tollgate_tests::clients::request;
use tollgate_tests::otlp::{self, CollectedSpan, KIND_CLIENT, KIND_INTERNAL, KIND_SERVER};
use tollgate_tests::plugins::{PluginSpec, TP_PROPERTIES};
use tollgate_tests::prometheus::sample_sum;
use tollgate_tests::scenario::{Running, Scenario, HOST};

/// Long enough for a batch (sent half a second after its first span) on a busy machine.
const SPANS_ARRIVE: Duration = Duration::from_secs(10);

/// A client's trace and span, as `traceparent` carries them.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn tracing_server(collector: std::net::SocketAddr, extra: &str) -> String {
    format!("tracing:\n  otlp_endpoint: http://{collector}/v1/traces\n{extra}")
}

/// A gateway tracing to `collector`, with the `echo` backend on `/api` and a plugin that
/// answers the trace id property in `x-prop-tracing-trace-id`.
async fn traced_gateway(collector: std::net::SocketAddr, extra: &str) -> Running {
    let plugin = PluginSpec::new("props", TP_PROPERTIES).config(json!({
        "properties": [{ "path": ["tracing", "trace_id"], "type": "string" }]
    }));
    Scenario::new()
        .server(&tracing_server(collector, extra))
        .echo("echo")
        .forward("api", "/api", "echo")
        .plugin(plugin)
        .start()
        .await
}

async fn get_with(running: &Running, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut builder = request("GET", running.addr(), HOST, path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = running
        .client()
        .send(builder.body(Full::default()).unwrap())
        .await
        .expect("the gateway answers");
    let trace_id = response
        .header("x-prop-tracing-trace-id")
        .unwrap_or("-")
        .to_string();
    (response.status.as_u16(), trace_id)
}

fn of_kind(spans: &[CollectedSpan], kind: i32) -> Vec<&CollectedSpan> {
    spans.iter().filter(|span| span.kind == kind).collect()
}

/// `traceparent` as `(trace id, parent span id, flags)`.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(parts[0], "00", "traceparent {value:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The `trace_id` of the access-log lines, in order.
fn logged_trace_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let at = line.find("trace_id=")? + "trace_id=".len();
            Some(
                line[at..]
                    .trim_start_matches('"')
                    .chars()
                    .take(32)
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_request_gives_a_server_span_with_plugin_phase_and_upstream_children() {
    let (collector, spans) = otlp::collector().await;
    let running = traced_gateway(collector.addr(), "  service_name: edge\n").await;

    let (status, plugin_trace_id) = get_with(&running, "/api/orders?page=2", &[]).await;
    assert_eq!(status, 200);

    let collected = spans.wait_for(4, SPANS_ARRIVE).await;
    let servers = of_kind(&collected, KIND_SERVER);
    assert_eq!(
        servers.len(),
        1,
        "one server span per request: {collected:#?}"
    );
    let server = servers[0];
    assert_eq!(server.name, "GET api");
    assert_eq!(
        server.parent_span_id, "",
        "a request without traceparent starts a trace"
    );
    assert_eq!(server.service_name, "edge");
    assert_eq!(server.attribute("http.request.method"), "GET");
    assert_eq!(server.attribute("http.route"), "api");
    assert_eq!(server.attribute("url.path"), "/api/orders");
    assert_eq!(server.attribute("http.response.status_code"), "200");
    assert_eq!(server.attribute("client.address"), "127.0.0.1");
    assert_ne!(server.attribute("network.peer.port"), "-");

    let phases = of_kind(&collected, KIND_INTERNAL);
    let phase_names: Vec<&str> = phases.iter().map(|span| span.name.as_str()).collect();
    assert!(
        phase_names.contains(&"plugin props request_headers")
            && phase_names.contains(&"plugin props response_headers"),
        "{phase_names:?}"
    );
    for phase in &phases {
        assert_eq!(phase.trace_id, server.trace_id);
        assert_eq!(phase.parent_span_id, server.span_id, "{phase:#?}");
        assert_eq!(phase.attribute("tollgate.plugin.verdict"), "continue");
    }

    let attempts = of_kind(&collected, KIND_CLIENT);
    assert_eq!(attempts.len(), 1, "{collected:#?}");
    let attempt = attempts[0];
    assert_eq!(attempt.trace_id, server.trace_id);
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(attempt.attribute("http.response.status_code"), "200");
    assert_eq!(
        attempt.attribute("network.peer.address"),
        running.backend("echo").addr().to_string()
    );

    // The backend continues the trace from the attempt's span.
    let forwarded = running.backend("echo").requests();
    let sent = forwarded[0]
        .header("traceparent")
        .expect("traceparent upstream");
    let (trace_id, parent, flags) = traceparent(sent);
    assert_eq!(trace_id, server.trace_id);
    assert_eq!(parent, attempt.span_id);
    assert_eq!(flags, "01");

    // The plugin and the access log see the exported trace id.
    assert_eq!(plugin_trace_id, server.trace_id);
    assert_eq!(
        logged_trace_ids(&running.log()),
        vec![server.trace_id.clone()]
    );
}

#[tokio::test]
async fn retries_give_one_attempt_span_each_and_the_backend_sees_each_attempts_parent() {
    let (collector, spans) = otlp::collector().await;
    let running = Scenario::new()
        .server(&tracing_server(collector.addr(), ""))
        .flaky("flaky", 1, Failure::Status503)
        .route(
            "{ name: retried, match: { path: { prefix: /retried } }, forward: { cluster: flaky, retries: { attempts: 1, on: [5xx] } } }",
        )
        .start()
        .await;
    let response = running.get("/retried").await;
    assert_eq!(response.status, 200);

    let collected = spans.wait_for(3, SPANS_ARRIVE).await;
    let server = of_kind(&collected, KIND_SERVER)[0].clone();
    let mut attempts = of_kind(&collected, KIND_CLIENT);
    attempts.sort_by_key(|span| span.attribute("http.request.resend_count").to_string());
    assert_eq!(attempts.len(), 2, "{collected:#?}");
    assert_eq!(attempts[0].attribute("http.response.status_code"), "503");
    assert_eq!(attempts[1].attribute("http.response.status_code"), "200");
    assert_eq!(attempts[1].attribute("http.request.resend_count"), "1");
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(attempt.trace_id, server.trace_id);
    }
    let parents: Vec<String> = running
        .backend("flaky")
        .requests()
        .iter()
        .map(|request| traceparent(request.header("traceparent").expect("traceparent")).1)
        .collect();
    let mut attempt_ids: Vec<String> = attempts.iter().map(|span| span.span_id.clone()).collect();
    let mut parents_sorted = parents.clone();
    attempt_ids.sort();
    parents_sorted.sort();
    assert_eq!(
        parents_sorted, attempt_ids,
        "each attempt sends its own span as parent"
    );
}

#[tokio::test]
async fn a_client_traceparent_is_continued_and_a_malformed_one_starts_a_new_trace() {
    let (collector, spans) = otlp::collector().await;
    let running = traced_gateway(collector.addr(), "").await;
    let client = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, plugin_trace_id) = get_with(
        &running,
        "/api/continued",
        &[("traceparent", &client), ("tracestate", "vendor=value")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(plugin_trace_id, CLIENT_TRACE);
    let (status, fresh_trace_id) = get_with(
        &running,
        "/api/malformed",
        &[("traceparent", "00-not-a-trace-01")],
    )
    .await;
    assert_eq!(status, 200, "a malformed traceparent is never an error");
    assert_ne!(fresh_trace_id, CLIENT_TRACE);
    assert_eq!(fresh_trace_id.len(), 32);

    let collected = spans.wait_for(8, SPANS_ARRIVE).await;
    let servers = of_kind(&collected, KIND_SERVER);
    let continued = servers
        .iter()
        .find(|span| span.attribute("url.path") == "/api/continued")
        .expect("the continued request's span");
    assert_eq!(continued.trace_id, CLIENT_TRACE);
    assert_eq!(continued.parent_span_id, CLIENT_SPAN);
    let fresh = servers
        .iter()
        .find(|span| span.attribute("url.path") == "/api/malformed")
        .expect("the malformed request's span");
    assert_eq!(fresh.trace_id, fresh_trace_id);
    assert_eq!(fresh.parent_span_id, "");

    let upstream = &running.backend("echo").requests()[0];
    let (trace_id, parent, flags) = traceparent(upstream.header("traceparent").unwrap());
    assert_eq!((trace_id.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
    assert_ne!(
        parent, CLIENT_SPAN,
        "the backend's parent is the gateway's attempt"
    );
    assert!(collected
        .iter()
        .any(|span| span.span_id == parent && span.kind == KIND_CLIENT));
    assert_eq!(upstream.header("tracestate"), Some("vendor=value"));
}

#[tokio::test]
async fn sample_percent_zero_exports_only_what_a_sampled_parent_asks_for() {
    let (collector, spans) = otlp::collector().await;
    let running = traced_gateway(collector.addr(), "  sample_percent: 0\n").await;
    for _ in 0..5 {
        assert_eq!(get_with(&running, "/api/unsampled", &[]).await.0, 200);
    }
    // A client that did not sample its trace is honoured the same way.
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let (status, _) = get_with(&running, "/api/declined", &[("traceparent", &unsampled)]).await;
    assert_eq!(status, 200);
    let upstream = running.backend("echo").requests();
    let (_, _, flags) = traceparent(upstream[5].header("traceparent").unwrap());
    assert_eq!(flags, "00", "the decision not to sample goes upstream");

    // A sampled parent is followed whatever sample_percent says.
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, _) = get_with(&running, "/api/sampled", &[("traceparent", &sampled)]).await;
    assert_eq!(status, 200);
    spans.wait_for(4, SPANS_ARRIVE).await;
    // Spans of the unsampled requests, had there been any, would have come first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let collected = spans.all();
    assert!(
        collected.iter().all(|span| span.trace_id == CLIENT_TRACE),
        "only the sampled parent's trace: {collected:#?}"
    );
    let servers = of_kind(&collected, KIND_SERVER);
    assert_eq!(servers.len(), 1, "{collected:#?}");
    assert_eq!(servers[0].attribute("url.path"), "/api/sampled");
}

#[tokio::test]
async fn an_unreachable_collector_never_fails_or_slows_requests() {
    let nobody = backends::refusing_address();
    let running = traced_gateway(nobody, "").await;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(get_with(&running, "/api/x", &[]).await.0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "20 requests took {:?}",
        started.elapsed()
    );
    // The failed exports are counted.
    let deadline = tokio::time::Instant::now() + SPANS_ARRIVE;
    loop {
        let metrics = running.metrics().await;
        let failed = sample_sum(
            &metrics,
            "tollgate_tracing_spans_total",
            &[("result", "failed")],
        )
        .unwrap_or(0.0);
        if failed > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed export counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sigterm_sends_the_last_spans_before_exit() {
    let (collector, spans) = otlp::collector().await;
    let mut running = traced_gateway(collector.addr(), "").await;
    assert_eq!(get_with(&running, "/api/last", &[]).await.0, 200);
    running.terminate();
    let exit = running.wait_for_exit(Duration::from_secs(15)).await;
    assert!(exit.is_some(), "the gateway exits within its bounds");
    let collected = spans.all();
    assert!(
        of_kind(&collected, KIND_SERVER)
            .iter()
            .any(|span| span.attribute("url.path") == "/api/last"),
        "the last request's span was sent before exit: {collected:#?}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_server_tracing_sends_spans_as_it_now_says() {
    let (collector, spans) = otlp::collector().await;
    let tracing_yaml = |service: &str| {
        format!(
            "server:\n  tracing: {{ otlp_endpoint: 'http://{}/v1/traces', service_name: {service} }}\n",
            collector.addr()
        )
    };
    let running = Scenario::new()
        .echo("echo")
        .forward("api", "/api", "echo")
        .policy_file("tracing.yaml", &tracing_yaml("before"))
        .start()
        .await;
    assert_eq!(running.get("/api/before").await.status, 200);
    spans.wait_for(2, SPANS_ARRIVE).await;

    let generation = |plugins: serde_json::Value| plugins["generation"].as_u64().unwrap();
    let first = generation(running.admin_get("/plugins").await.json());
    let path = running.policy_file("tracing.yaml");
    let temporary = path.with_file_name(".tracing.yaml.tmp");
    std::fs::write(&temporary, tracing_yaml("after")).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    let deadline = tokio::time::Instant::now() + SPANS_ARRIVE;
    while generation(running.admin_get("/plugins").await.json()) == first {
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(running.get("/api/after").await.status, 200);
    let collected = spans.wait_for(4, SPANS_ARRIVE).await;
    let service_of = |path: &str| {
        of_kind(&collected, KIND_SERVER)
            .iter()
            .find(|span| span.attribute("url.path") == path)
            .map(|span| span.service_name.clone())
    };
    assert_eq!(service_of("/api/before").as_deref(), Some("before"));
    assert_eq!(
        service_of("/api/after").as_deref(),
        Some("after"),
        "{collected:#?}"
    );
}
