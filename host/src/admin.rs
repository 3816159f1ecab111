//! The admin listener (loopback by default): health, readiness, the effective configuration
//! and Prometheus metrics.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready` while serving, `503 draining` after SIGTERM |
//! | `GET /config` | the merged policies as JSON, plugin secrets redacted |
//! | `GET /metrics` | Prometheus text format |

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
                async move { Ok::<_, Infallible>(answer(&request, &state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(request: &Request<Incoming>, state: &GatewayState) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match request.uri().path() {
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
            "admin endpoints: /healthz /readyz /config /metrics\n",
        ),
    }
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
    out.push_str("# HELP tollgate_plugin_callback_seconds_total Time spent in plugin callbacks, by plugin.\n");
    out.push_str("# TYPE tollgate_plugin_callback_seconds_total counter\n");
    for plugin in &snapshot.plugins {
        let seconds = plugin.stats.callback_micros.load(Ordering::Relaxed) as f64 / 1e6;
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
