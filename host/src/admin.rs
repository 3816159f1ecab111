//! The admin listener (loopback by default): health, readiness, the effective configuration
//! and Prometheus metrics.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready` while serving, `503 draining` after SIGTERM |
//! | `GET /config` | the merged policies as JSON, plugin secrets redacted |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /plugins` | every plugin instance: module file, sha256, ABI, loaded at, status, last error, routes |
//! | `POST /reload` | rebuild from the folders now; `200` when live, `422` with the error otherwise |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::server::GatewayState;
use crate::telemetry::metrics::metrics;

/// Binds the admin address now (so that errors surface at start-up) and serves it on its
/// own thread.
pub fn start(address: SocketAddr, state: Arc<GatewayState>) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|error| anyhow::anyhow!("admin listener: cannot bind {address}: {error}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the admin runtime");
            runtime.block_on(serve(listener, state));
        })?;
    Ok(bound)
}

async fn serve(listener: std::net::TcpListener, state: Arc<GatewayState>) {
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
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&request, &state).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: &Request<Incoming>, state: &GatewayState) -> Response<Full<Bytes>> {
    if request.uri().path() == "/reload" {
        if request.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
        }
        return reload(state).await;
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
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/config" => {
            let config = &state.snapshot().config.effective;
            let body = serde_json::to_string_pretty(config).unwrap_or_default();
            with_type(StatusCode::OK, body, "application/json")
        }
        "/metrics" => {
            let mut body = metrics().render();
            render_plugin_stats(&mut body, state);
            with_type(StatusCode::OK, body, "text/plain; version=0.0.4")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /healthz /readyz /config /metrics /plugins, POST /reload\n",
        ),
    }
}

/// `POST /reload`: rebuilds from the folders now and answers whether it went live.
async fn reload(state: &GatewayState) -> Response<Full<Bytes>> {
    let Some(answer) = state.request_reload() else {
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
        Ok(Err(error)) => with_type(
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
fn plugins(state: &GatewayState) -> serde_json::Value {
    use std::sync::atomic::Ordering;
    let snapshot = state.snapshot();
    let status = state.reload_status();
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
                "traps": plugin.stats.traps.load(Ordering::Relaxed),
                "vm_restarts": plugin.stats.vm_restarts.load(Ordering::Relaxed),
                "shared_data": crate::wasm::shared::store().usage(plugin.vm_id()),
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

/// Callback counts and time of the running plugins (the current snapshot's instances).
fn render_plugin_stats(out: &mut String, state: &GatewayState) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering;
    let snapshot = state.snapshot();
    out.push_str("# HELP tollgate_plugin_callbacks_total Plugin callbacks run, by plugin.\n");
    out.push_str("# TYPE tollgate_plugin_callbacks_total counter\n");
    for plugin in &snapshot.plugins {
        let _ = writeln!(
            out,
            "tollgate_plugin_callbacks_total{{plugin=\"{}\"}} {}",
            plugin.name,
            plugin.stats.callbacks.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP tollgate_plugin_memory_bytes Linear memory of a plugin's VMs, summed over workers.\n");
    out.push_str("# TYPE tollgate_plugin_memory_bytes gauge\n");
    for plugin in &snapshot.plugins {
        let _ = writeln!(
            out,
            "tollgate_plugin_memory_bytes{{plugin=\"{}\"}} {}",
            plugin.name,
            plugin.stats.memory_bytes.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP tollgate_plugin_callback_seconds_total Time spent in plugin callbacks, by plugin.\n");
    out.push_str("# TYPE tollgate_plugin_callback_seconds_total counter\n");
    for plugin in &snapshot.plugins {
        let seconds = plugin.stats.callback_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "tollgate_plugin_callback_seconds_total{{plugin=\"{}\"}} {seconds}",
            plugin.name
        );
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
