//! The bundled plugins' callbacks, timed natively against the in-memory host of
//! `plugin-bench`, with the allocations each call makes.
//!
//! `cargo bench --manifest-path plugins/Cargo.toml -p plugin-bench` (from `just bench`).
//! Each case configures one plugin as the demo policies (policies/plugins.yaml) or its
//! README do, sets up a representative request (an authenticated consumer whose request
//! is allowed), and times one callback; the earlier callbacks of the same request run in
//! the untimed setup. Criterion's results land in `$CRITERION_HOME` (group `plugins`);
//! the allocations per call go to `$CRITERION_HOME/plugins/allocations.json` (and, with
//! `--save-baseline NAME`, to `allocations-NAME.json` too), which bench/criterion_report.py
//! reads beside them.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::Criterion;
use hmac::{Hmac, Mac};
use plugin_bench::{allocations, with_host, CountingAllocator, Host};
use serde_json::{json, Value};
use sha2::Sha256;
use tollgate_sdk::proxy_wasm::traits::{HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::Action;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Calls per case when counting allocations (outside criterion's timing).
const COUNTED_CALLS: u64 = 1000;
/// 2026-01-15T00:00:00Z: inside every window the configurations below name.
const NOW_NANOS: u64 = 1_768_435_200 * 1_000_000_000;

type NewRoot = fn() -> Box<dyn RootContext>;
type Callback = fn(&mut dyn HttpContext) -> Action;

fn request_headers(http: &mut dyn HttpContext) -> Action {
    http.on_http_request_headers(8, true)
}

fn response_headers(http: &mut dyn HttpContext) -> Action {
    http.on_http_response_headers(4, false)
}

fn response_body(http: &mut dyn HttpContext) -> Action {
    let size = with_host(|host| host.response_body.len());
    http.on_http_response_body(size, true)
}

fn http_call_response(http: &mut dyn HttpContext) -> Action {
    let (token, headers) = with_host(|host| (host.http_calls, host.call_response_headers.len()));
    http.on_http_call_response(token, headers, 0, 0);
    Action::Continue
}

fn log(http: &mut dyn HttpContext) -> Action {
    http.on_log();
    Action::Continue
}

/// One plugin under test: its configuration and the request it sees.
struct Plugin {
    name: &'static str,
    new_root: NewRoot,
    config: Value,
    /// Sets up the host for one request (headers, properties, body).
    request: fn(&mut Host),
    /// The callbacks to time, in the order they run for a request, each with the action a
    /// representative (allowed) request gets.
    callbacks: &'static [(&'static str, Callback, Action)],
}

fn api_request(host: &mut Host) {
    host.set_request_headers(&[
        (":method", "GET"),
        (":path", "/orders?page=2"),
        (":authority", "api.demo.local"),
        (":scheme", "http"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-request-id", "5f0c6a86-0d8e-4d5b-9bd4-7c1f4b0e3a11"),
    ]);
    host.set_response_headers(&[
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", "231"),
        ("date", "Thu, 15 Jan 2026 00:00:00 GMT"),
    ]);
    host.set_property(&["xds", "route_name"], b"orders");
    host.set_property(&["source", "address"], b"203.0.113.7:51234");
    host.set_property(&["request", "time"], &NOW_NANOS.to_le_bytes());
    host.set_property(&["request", "size"], &0u64.to_le_bytes());
    host.set_property(&["response", "code"], &200u64.to_le_bytes());
    host.set_property(&["response", "size"], &231u64.to_le_bytes());
    host.request_body.clear();
    host.response_body.clear();
    host.local_response = None;
}

/// A request an auth plugin earlier in the chain has identified as alice (group gold).
fn consumer_request(host: &mut Host) {
    api_request(host);
    host.request_headers
        .push(("x-tollgate-consumer".into(), "alice".into()));
    host.request_headers
        .push(("x-tollgate-consumer-groups".into(), "gold".into()));
    host.set_property(&["tollgate_consumer"], b"alice");
    host.set_property(&["tollgate_consumer_groups"], b"gold");
}

const JWT_SECRET: &[u8] = b"a-secret-of-at-least-32-bytes-long!!";

fn jwt() -> String {
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT", "kid": "h1"}).to_string());
    let claims = URL_SAFE_NO_PAD.encode(
        json!({
            "iss": "https://id.example.com", "aud": "shop", "sub": "alice",
            "email": "alice@example.com", "groups": ["gold"],
            "iat": NOW_NANOS / 1_000_000_000, "exp": NOW_NANOS / 1_000_000_000 + 3600,
        })
        .to_string(),
    );
    let input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(JWT_SECRET).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

thread_local! {
    static JWT: String = jwt();
}

fn plugins() -> Vec<Plugin> {
    vec![
        Plugin {
            name: "key-auth",
            new_root: key_auth::plugin::root_context,
            config: json!({
                "key_names": ["x-api-key", "apikey"],
                "consumers": [
                    {"name": "alice", "keys": ["alice-key"], "groups": ["gold"]},
                    {"name": "bob", "keys": ["bob-key"], "groups": ["free"]},
                ],
            }),
            request: |host| {
                api_request(host);
                host.request_headers
                    .push(("x-api-key".into(), "alice-key".into()));
            },
            callbacks: &[("on_http_request_headers", request_headers, Action::Continue)],
        },
        Plugin {
            name: "rate-limit",
            new_root: rate_limit::plugin::root_context,
            config: json!({
                "key": "consumer",
                "plans": {
                    "gold": {"requests_per_second": 20, "burst": 20},
                    "free": {"requests_per_second": 2, "burst": 2},
                },
                "consumers": {"alice": "gold", "bob": "free"},
                "default_plan": "free",
            }),
            request: consumer_request,
            callbacks: &[
                ("on_http_request_headers", request_headers, Action::Continue),
                (
                    "on_http_response_headers",
                    response_headers,
                    Action::Continue,
                ),
            ],
        },
        Plugin {
            name: "transformer",
            new_root: transformer::plugin::root_context,
            config: json!({
                "request": {"headers": {"set": {"x-gateway": "tollgate"}}},
                "response": {"json": {"redact": ["headers.user-agent"]}},
            }),
            request: |host| {
                consumer_request(host);
                host.response_body = json!({
                    "backend": "v1", "method": "GET", "path": "/orders?page=2",
                    "headers": {"host": "api.demo.local", "user-agent": "curl/8.5.0",
                                "accept": "*/*", "x-gateway": "tollgate",
                                "x-tollgate-consumer": "alice"},
                })
                .to_string()
                .into_bytes();
            },
            callbacks: &[
                ("on_http_request_headers", request_headers, Action::Continue),
                (
                    "on_http_response_headers",
                    response_headers,
                    Action::Continue,
                ),
                ("on_http_response_body", response_body, Action::Continue),
            ],
        },
        Plugin {
            name: "metering",
            new_root: metering::plugin::root_context,
            config: json!({"billing_cluster": "billing", "path": "/v1/usage", "flush_interval_ms": 1000}),
            request: consumer_request,
            callbacks: &[
                ("on_http_request_headers", request_headers, Action::Continue),
                (
                    "on_http_response_headers",
                    response_headers,
                    Action::Continue,
                ),
                ("on_log", log, Action::Continue),
            ],
        },
        Plugin {
            name: "jwt-auth",
            new_root: jwt_auth::plugin::root_context,
            config: json!({
                "keys": [{"kid": "h1", "kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(JWT_SECRET)}],
                "issuers": ["https://id.example.com"],
                "audiences": ["shop"],
                "claims_to_headers": {"sub": "x-user-id", "email": "x-user-email"},
                "groups_claim": "groups",
            }),
            request: |host| {
                api_request(host);
                let token = JWT.with(|token| format!("Bearer {token}"));
                host.request_headers.push(("authorization".into(), token));
            },
            callbacks: &[("on_http_request_headers", request_headers, Action::Continue)],
        },
        Plugin {
            name: "basic-auth",
            new_root: basic_auth::plugin::root_context,
            config: json!({
                "realm": "shop",
                "consumers": [{"name": "ben", "password_sha256": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8", "groups": ["ops"]}],
            }),
            request: |host| {
                api_request(host);
                // ben:password
                host.request_headers
                    .push(("authorization".into(), "Basic YmVuOnBhc3N3b3Jk".into()));
            },
            callbacks: &[("on_http_request_headers", request_headers, Action::Continue)],
        },
        Plugin {
            name: "acl",
            new_root: acl::plugin::root_context,
            config: json!({
                "routes": {
                    "orders": [
                        {"methods": ["GET", "HEAD"], "allow": ["gold", "admins"]},
                        {"methods": ["POST", "DELETE"], "allow": ["admins"], "deny_consumers": ["mallory"]},
                    ],
                    "admin": [{"allow": ["admins"]}],
                },
            }),
            request: consumer_request,
            callbacks: &[("on_http_request_headers", request_headers, Action::Continue)],
        },
        Plugin {
            name: "cors",
            new_root: cors::plugin::root_context,
            config: json!({
                "allow_origins": ["https://app.example.com", "https://*.partner.example"],
                "allow_methods": ["GET", "POST", "DELETE"],
                "allow_headers": ["content-type", "authorization"],
                "expose_headers": ["x-request-id"],
                "allow_credentials": true,
                "max_age": 600,
            }),
            request: |host| {
                api_request(host);
                host.request_headers
                    .push(("origin".into(), "https://app.example.com".into()));
            },
            callbacks: &[
                ("on_http_request_headers", request_headers, Action::Continue),
                (
                    "on_http_response_headers",
                    response_headers,
                    Action::Continue,
                ),
            ],
        },
        Plugin {
            name: "ip-restriction",
            new_root: ip_restriction::plugin::root_context,
            config: json!({
                "allow": ["203.0.113.0/24", "2001:db8::/32"],
                "deny": ["203.0.113.66"],
                "trusted_hops": 1,
            }),
            request: |host| {
                api_request(host);
                host.request_headers
                    .push(("x-forwarded-for".into(), "203.0.113.7".into()));
            },
            callbacks: &[("on_http_request_headers", request_headers, Action::Continue)],
        },
        Plugin {
            name: "quota",
            new_root: quota::plugin::root_context,
            config: json!({
                // Large enough that the bench's millions of requests stay within the quota.
                "plans": {
                    "basic": {"per_day": 1000},
                    "pro": {"per_day": 4_000_000_000u64, "per_month": 4_000_000_000u64},
                },
                "consumers": {"alice": "pro"},
                "default_plan": "basic",
                "routes": {"reports": {"cost": 10}, "health": {"enabled": false}},
            }),
            request: consumer_request,
            callbacks: &[
                ("on_http_request_headers", request_headers, Action::Continue),
                (
                    "on_http_response_headers",
                    response_headers,
                    Action::Continue,
                ),
            ],
        },
        Plugin {
            name: "api-lifecycle",
            new_root: api_lifecycle::plugin::root_context,
            config: json!({
                "routes": {
                    "orders": {"deprecated": {"since": "2026-01-01T00:00:00Z", "sunset": "2027-01-01T00:00:00Z", "link": "https://docs.example.com/orders/v2"}},
                    "orders-v0": {"retired": true},
                    "orders-v3": {"mock": {"status": 200, "body": {"orders": []}}},
                },
            }),
            request: api_request,
            callbacks: &[
                ("on_http_request_headers", request_headers, Action::Continue),
                (
                    "on_http_response_headers",
                    response_headers,
                    Action::Continue,
                ),
            ],
        },
        Plugin {
            name: "ext-authz",
            new_root: ext_authz::plugin::root_context,
            config: json!({
                "cluster": "authz",
                "path": "/check",
                "allowed_headers": ["authorization", "cookie"],
                "headers_to_upstream": ["x-user", "x-user-plan"],
                "consumer_header": "x-user",
                "timeout_ms": 250,
                "failure_mode_allow": false,
            }),
            request: |host| {
                api_request(host);
                host.request_headers
                    .push(("authorization".into(), "Bearer opaque-token".into()));
                host.call_response_headers = vec![
                    (":status".into(), "200".into()),
                    ("x-user".into(), "alice".into()),
                    ("x-user-plan".into(), "gold".into()),
                ];
            },
            callbacks: &[
                ("on_http_request_headers", request_headers, Action::Pause),
                (
                    "on_http_call_response",
                    http_call_response,
                    Action::Continue,
                ),
            ],
        },
    ]
}

/// Configures a fresh root context of `plugin`, as the host does when it loads it.
fn configure(plugin: &Plugin) -> Box<dyn RootContext> {
    with_host(|host| {
        *host = Host::default();
        host.now_nanos = NOW_NANOS;
        host.plugin_configuration = plugin.config.to_string().into_bytes();
        host.set_property(&["plugin_name"], plugin.name.as_bytes());
    });
    let mut root = (plugin.new_root)();
    let size = plugin.config.to_string().len();
    assert!(
        root.on_configure(size),
        "{}: configuration rejected",
        plugin.name
    );
    root
}

/// A new request's context, with `before` (the callbacks ahead of the timed one) run.
fn prepared(
    plugin: &Plugin,
    root: &dyn RootContext,
    before: &[(&str, Callback, Action)],
) -> Box<dyn HttpContext> {
    with_host(|host| {
        // A second per request keeps token buckets refilled: every request is allowed.
        host.now_nanos += 1_000_000_000;
        (plugin.request)(host);
    });
    let mut http = root.create_http_context(2).expect("an HTTP context");
    for (_, callback, _) in before {
        callback(&mut *http);
    }
    http
}

fn criterion_home() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map_or_else(|| PathBuf::from("target/criterion"), PathBuf::from)
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args();
    let mut allocations_per_call = BTreeMap::new();
    for plugin in plugins() {
        let root = configure(&plugin);
        for (index, (callback_name, callback, expected)) in plugin.callbacks.iter().enumerate() {
            let before = &plugin.callbacks[..index];
            let id = format!("{}/{callback_name}", plugin.name);

            // The case is what it claims to be: the expected action, no local response.
            let mut counted = 0;
            for _ in 0..COUNTED_CALLS {
                let mut http = prepared(&plugin, &*root, before);
                let start = allocations();
                let action = callback(&mut *http);
                counted += allocations() - start;
                assert_eq!(action, *expected, "{id}");
                let answered = with_host(|host| host.local_response);
                assert_eq!(
                    answered, None,
                    "{id}: the plugin answered the request itself"
                );
            }
            allocations_per_call.insert(id.clone(), counted as f64 / COUNTED_CALLS as f64);

            let mut group = criterion.benchmark_group("plugins");
            group.bench_function(&id, |bencher| {
                // The host is one per thread, so each request is set up right before its
                // call (criterion's batched setup would run many setups, then many calls).
                bencher.iter_custom(|iterations| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iterations {
                        let mut http = prepared(&plugin, &*root, before);
                        let start = Instant::now();
                        black_box(callback(&mut *http));
                        spent += start.elapsed();
                    }
                    spent
                })
            });
            group.finish();
        }
    }
    criterion.final_summary();
    // Like criterion's own figures: the latest run, and a named copy with --save-baseline.
    let dir = criterion_home().join("plugins");
    let args: Vec<String> = std::env::args().collect();
    let baseline = args
        .iter()
        .position(|arg| arg == "--save-baseline")
        .and_then(|at| args.get(at + 1));
    let names = std::iter::once("allocations.json".to_owned())
        .chain(baseline.map(|name| format!("allocations-{name}.json")));
    let json = serde_json::to_string_pretty(&allocations_per_call).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    for name in names {
        std::fs::write(dir.join(name), &json).unwrap();
    }
    for (id, count) in &allocations_per_call {
        println!("{id}: {count} allocations per call");
    }
}
