//! The admin listener (loopback by default): health, readiness, the effective configuration
//! and Prometheus metrics.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready` while serving, `503 draining` after SIGTERM |
//! | `GET /config` | the merged policies as JSON, plugin secrets redacted |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /plugins` | every plugin instance: module file, sha256, ABI, loaded at, status, last error, routes, singleton, traps, trap circuit |
//! | `POST /reload` | rebuild from the folders now; `200` when live, `422` with the error otherwise |
//!
//! Admin changes what the gateway serves, so it is guarded even on loopback:
//! - with `--admin-token-file`, every `POST` needs `Authorization: Bearer TOKEN` (`401`
//!   otherwise);
//! - bound to a loopback address, it answers only requests whose Host is a loopback name
//!   (`403` otherwise), so that a web page cannot reach it through DNS rebinding;
//! - a connection that does not finish its request head within `server.header_read_timeout`
//!   is closed.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::reload;
use crate::server::GatewayState;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::{self, encode_values, PluginLabels, ValueKind};
use crate::wasm::plugin::Plugin;

/// The secret a client must present to change anything through admin.
pub struct AdminToken {
    /// Only the digest is kept: comparing digests takes the same time whatever the
    /// presented token is, including its length.
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token from `path`, surrounding whitespace trimmed; it must not be empty.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("admin token file {}: {error}", path.display()))?;
        Self::new(text.trim())
            .ok_or_else(|| anyhow::anyhow!("admin token file {} holds no token", path.display()))
    }

    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `Authorization` carries this token as a bearer token.
    fn admits(&self, authorization: Option<&header::HeaderValue>) -> bool {
        let Some(presented) = authorization
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
        else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented
            .iter()
            .zip(&self.digest)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
    }
}

/// How admin requests are checked, fixed at start-up.
struct Guard {
    token: Option<AdminToken>,
    /// Bound to a loopback address: only loopback Host names are answered.
    loopback_only: bool,
}

/// What the admin endpoints read and act on.
pub struct Targets {
    pub gateway: Arc<GatewayState>,
    pub reload: Arc<reload::Handle>,
}

/// Binds the admin address now (so that errors surface at start-up) and serves it on its
/// own thread.
pub fn start(
    address: SocketAddr,
    targets: Targets,
    token: Option<AdminToken>,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|error| anyhow::anyhow!("admin listener: cannot bind {address}: {error}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let guard = Arc::new(Guard {
        token,
        loopback_only: bound.ip().is_loopback(),
    });
    std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the admin runtime");
            runtime.block_on(serve(listener, Arc::new(targets), guard));
        })?;
    Ok(bound)
}

async fn serve(listener: std::net::TcpListener, state: Arc<Targets>, guard: Arc<Guard>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "admin listener unusable");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let guard = guard.clone();
        let header_read_timeout = state.gateway.snapshot().config.server.header_read_timeout;
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                let guard = guard.clone();
                async move {
                    let response = match guard.refusal(&request) {
                        Some(refusal) => refusal,
                        None => answer(&request, &state).await,
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            // The header timeout also bounds the wait for the next request on a kept-alive
            // connection, so an idle or slow client cannot hold admin connections open.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Guard {
    /// The answer to a request that may not go further, if it may not.
    fn refusal(&self, request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        if self.loopback_only && !names_loopback(request) {
            tracing::warn!(
                host = ?request.headers().get(header::HOST),
                "admin: refused a request for a non-loopback host"
            );
            return Some(text(
                StatusCode::FORBIDDEN,
                "admin answers only loopback host names (localhost, 127.0.0.1, [::1])\n",
            ));
        }
        let changes_state = request.method() != Method::GET && request.method() != Method::HEAD;
        if let (true, Some(token)) = (changes_state, &self.token) {
            if !token.admits(request.headers().get(header::AUTHORIZATION)) {
                tracing::warn!(method = %request.method(), path = request.uri().path(), "admin: refused a request without the admin token");
                let mut response = text(StatusCode::UNAUTHORIZED, "admin token required\n");
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
                );
                return Some(response);
            }
        }
        None
    }
}

/// Whether the request's host (absolute-form authority, else Host) is `localhost`, an
/// address in 127.0.0.0/8 or `[::1]`, with or without a port.
fn names_loopback<B>(request: &Request<B>) -> bool {
    let host = match request.uri().authority() {
        Some(authority) => authority.host().to_string(),
        None => {
            let Some(host) = request
                .headers()
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
            else {
                return false;
            };
            match host.parse::<http::uri::Authority>() {
                Ok(authority) => authority.host().to_string(),
                Err(_) => return false,
            }
        }
    };
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    literal
        .parse::<IpAddr>()
        .is_ok_and(|address| address.is_loopback())
}

async fn answer(request: &Request<Incoming>, state: &Targets) -> Response<Full<Bytes>> {
    if request.uri().path() == "/reload" {
        if request.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
        }
        return reload(&state.reload).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match request.uri().path() {
        "/plugins" => with_type(
            StatusCode::OK,
            plugins(state).to_string(),
            "application/json",
        ),
        "/clusters" => with_type(
            StatusCode::OK,
            clusters(&state.gateway).to_string(),
            "application/json",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.gateway.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/config" => {
            let config = &state.gateway.snapshot().config.effective;
            let body = serde_json::to_string_pretty(config).unwrap_or_default();
            with_type(StatusCode::OK, body, "application/json")
        }
        "/metrics" => {
            let snapshot = state.gateway.snapshot();
            let mut registry = Registry::default();
            snapshot.registries.gateway_metrics.register(&mut registry);
            registry.register_collector(Box::new(PluginsCollector(snapshot)));
            with_type(
                StatusCode::OK,
                metrics::encode(&registry),
                metrics::CONTENT_TYPE,
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /healthz /readyz /config /metrics /plugins /clusters, POST /reload\n",
        ),
    }
}

/// `POST /reload`: rebuilds from the folders now and answers whether it went live.
async fn reload(handle: &reload::Handle) -> Response<Full<Bytes>> {
    let Some(answer) = handle.request() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "hot reload is not running\n",
        );
    };
    match answer.await {
        Ok(Ok(generation)) => with_type(
            StatusCode::OK,
            serde_json::json!({ "status": "live", "generation": generation }).to_string(),
            "application/json",
        ),
        Ok(Err(reload::Rejected(error))) => with_type(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "status": "rejected", "error": error }).to_string(),
            "application/json",
        ),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the reload thread stopped\n",
        ),
    }
}

fn unix_seconds(time: Option<std::time::SystemTime>) -> serde_json::Value {
    time.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(serde_json::Value::Null, |d| {
            serde_json::json!(d.as_secs_f64())
        })
}

/// `GET /plugins`: every plugin instance of the live snapshot and the last reload's outcome.
fn plugins(state: &Targets) -> serde_json::Value {
    use std::sync::atomic::Ordering;
    let snapshot = state.gateway.snapshot();
    let status = state.reload.status();
    let plugins: Vec<serde_json::Value> = snapshot
        .plugins
        .iter()
        .map(|plugin| {
            let module = &plugin.module;
            let mut routes: Vec<&String> = snapshot
                .chains
                .iter()
                .filter(|(_, chain)| chain.iter().any(|p| std::sync::Arc::ptr_eq(p, plugin)))
                .map(|(route, _)| route)
                .collect();
            routes.sort();
            let file = module.path.display().to_string();
            let last_error = status.last_error.as_ref().filter(|error| {
                error.contains(&format!("{:?}", plugin.name)) || error.contains(&file)
            });
            serde_json::json!({
                "name": plugin.name,
                "file": file,
                "sha256": module.sha256,
                "abi_version": module.abi.as_str(),
                "loaded_at": unix_seconds(Some(module.loaded_at)),
                "status": if last_error.is_some() { "serving last good version" } else { "active" },
                "last_error": last_error,
                "routes": routes,
                "singleton": plugin.singleton,
                "traps": plugin.stats.traps.load(Ordering::Relaxed),
                "vm_restarts": plugin.stats.vm_restarts.load(Ordering::Relaxed),
                "circuit": circuit_json(&plugin.circuit.view()),
                "shared_data": snapshot.registries.shared_data.usage(plugin.vm_id()),
            })
        })
        .collect();
    serde_json::json!({
        "generation": status.generation,
        "last_reload": {
            "attempted_at": unix_seconds(status.last_attempt),
            "succeeded_at": unix_seconds(status.last_success),
            "error": status.last_error,
            "successes": status.successes,
            "failures": status.failures,
        },
        "plugins": plugins,
    })
}

/// A plugin's trap circuit: its state, the traps of the last minute, when it opened.
fn circuit_json(view: &crate::wasm::circuit::CircuitView) -> serde_json::Value {
    serde_json::json!({
        "state": view.state,
        "traps_in_window": view.traps_in_window,
        "opened_at": unix_seconds(view.opened_at),
    })
}

/// `GET /clusters`: every endpoint of the live snapshot's clusters and whether it gets
/// traffic: `active_healthy` (what active health checks found; true without them) and
/// `ejected` (by passive health checking).
fn clusters(state: &GatewayState) -> serde_json::Value {
    let snapshot = state.snapshot();
    let mut names: Vec<&String> = snapshot.clusters.keys().collect();
    names.sort();
    let clusters: Vec<serde_json::Value> = names
        .into_iter()
        .map(|name| {
            let cluster = &snapshot.clusters[name];
            let endpoints: Vec<serde_json::Value> = cluster
                .endpoints
                .iter()
                .map(|endpoint| {
                    serde_json::json!({
                        "address": endpoint.address,
                        "active_healthy": endpoint.active.is_healthy(),
                        "ejected": endpoint.ejected(),
                    })
                })
                .collect();
            serde_json::json!({ "name": name, "endpoints": endpoints })
        })
        .collect();
    serde_json::json!({ "clusters": clusters })
}

/// The labels of `tollgate_upstream_endpoint_healthy`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct EndpointHealthLabels {
    cluster: String,
    endpoint: String,
    check: &'static str,
}

/// What `/metrics` shows beyond the gateway's own families, read from one snapshot when
/// scraped: the plugins' statistics, their shared data and the metrics they define.
struct PluginsCollector(Arc<Snapshot>);

impl std::fmt::Debug for PluginsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginsCollector(..)")
    }
}

impl Collector for PluginsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use std::sync::atomic::Ordering;
        let snapshot = &self.0;
        // The running plugins: the snapshot's instances.
        let by_plugin = |value: fn(&Plugin) -> u64| {
            snapshot.plugins.iter().map(move |plugin| {
                let labels = PluginLabels {
                    plugin: plugin.name.clone(),
                };
                (labels, value(plugin))
            })
        };
        encode_values(
            &mut encoder,
            "tollgate_plugin_callbacks",
            "Plugin callbacks run, by plugin.",
            ValueKind::Counter,
            by_plugin(|plugin| plugin.stats.callback_counts.callbacks()),
        )?;
        encode_values(
            &mut encoder,
            "tollgate_plugin_memory_bytes",
            "Linear memory of a plugin's VMs, summed over workers.",
            ValueKind::Gauge,
            by_plugin(|plugin| plugin.stats.memory_bytes.load(Ordering::Relaxed)),
        )?;
        encode_values(
            &mut encoder,
            "tollgate_plugin_circuit_open",
            "Whether a plugin's trap circuit is open or half-open (1) or closed (0).",
            ValueKind::Gauge,
            by_plugin(|plugin| u64::from(plugin.circuit.is_open())),
        )?;
        encode_values(
            &mut encoder,
            "tollgate_plugin_callback_seconds",
            "Time spent in plugin callbacks, by plugin.",
            ValueKind::Counter,
            snapshot.plugins.iter().map(|plugin| {
                let seconds = plugin.stats.callback_counts.nanos() as f64 / 1e9;
                let labels = PluginLabels {
                    plugin: plugin.name.clone(),
                };
                (labels, seconds)
            }),
        )?;
        // Per endpoint, one gauge per kind of health check: 1 healthy, 0 not.
        let mut clusters: Vec<_> = snapshot.clusters.iter().collect();
        clusters.sort_by(|a, b| a.0.cmp(b.0));
        encode_values(
            &mut encoder,
            "tollgate_upstream_endpoint_healthy",
            "Whether an endpoint is healthy (1) or not (0), by cluster, endpoint and check: \
             `active` for active health checks, `passive` for ejection.",
            ValueKind::Gauge,
            clusters.into_iter().flat_map(|(name, cluster)| {
                cluster.endpoints.iter().flat_map(move |endpoint| {
                    [
                        ("active", endpoint.active.is_healthy()),
                        ("passive", !endpoint.ejected()),
                    ]
                    .map(|(check, healthy)| {
                        let labels = EndpointHealthLabels {
                            cluster: name.clone(),
                            endpoint: endpoint.address.clone(),
                            check,
                        };
                        (labels, u64::from(healthy))
                    })
                })
            }),
        )?;
        snapshot.registries.shared_data.encode(&mut encoder)?;
        snapshot.registries.metrics.encode(&mut encoder)
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(status, body.to_string(), "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> Request<()> {
        Request::builder()
            .uri("/healthz")
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn loopback_names_with_or_without_port() {
        for host in [
            "localhost",
            "LOCALHOST:9901",
            "127.0.0.1",
            "127.3.4.5:80",
            "[::1]",
            "[::1]:9901",
        ] {
            assert!(names_loopback(&with_host(host)), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]",
            "127.0.0.1.nip.io",
        ] {
            assert!(!names_loopback(&with_host(host)), "{host}");
        }
        let no_host = Request::builder().uri("/").body(()).unwrap();
        assert!(!names_loopback(&no_host));
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let token = AdminToken::new("s3cret").unwrap();
        let value = |text: &str| header::HeaderValue::from_str(text).unwrap();
        assert!(token.admits(Some(&value("Bearer s3cret"))));
        assert!(token.admits(Some(&value("bearer s3cret"))));
        assert!(!token.admits(Some(&value("Bearer s3cre"))));
        assert!(!token.admits(Some(&value("Bearer s3cretx"))));
        assert!(!token.admits(Some(&value("Basic s3cret"))));
        assert!(!token.admits(Some(&value("s3cret"))));
        assert!(!token.admits(None));
        assert!(AdminToken::new("").is_none());
    }
}
