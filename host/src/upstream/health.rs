//! Active health checks (`health.active`): one checker per gateway, on a thread of its own,
//! sends `GET path` to every endpoint of every cluster that asks for it, each `interval`.
//! A 2xx answer within `timeout` is a success; `unhealthy_threshold` failures in a row make
//! a healthy endpoint unhealthy and `healthy_threshold` successes in a row make it healthy
//! again. An endpoint no check has answered yet is unhealthy, as in Envoy; the first answer
//! decides its state whatever the thresholds. The gateway checks new endpoints once before
//! it reports ready, and before a reload that adds endpoints goes live, so that endpoints
//! that answer never see a gap.
//!
//! The state lives in each endpoint's [`ActiveState`], which a reload hands on to the same
//! endpoint of the same cluster; the checker only drives the checks of the snapshot it was
//! last given, so a removed cluster's checks stop with the next snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{header, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use super::{ActiveState, BoxError, Cluster, Endpoint};
use crate::config::ActiveHealthSettings;

/// The `User-Agent` of health checks, so that endpoints can tell them from traffic.
const USER_AGENT: &str = "tollgate-health-check";

/// The gateway's one health checker.
pub struct HealthChecker {
    clusters: watch::Sender<Vec<Arc<Cluster>>>,
}

impl HealthChecker {
    /// Starts the checker's thread, with nothing to check yet.
    pub fn start() -> Self {
        let (clusters, followed) = watch::channel(Vec::new());
        let started = std::thread::Builder::new()
            .name("tollgate-health".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the health check runtime");
                runtime.block_on(run(followed));
            });
        if let Err(error) = started {
            tracing::error!(%error, "cannot start the health checker; active health checks stop");
        }
        Self { clusters }
    }

    /// Checks the clusters of a new snapshot from now on, and those of the one before no
    /// more.
    pub fn follow<'a>(&self, clusters: impl Iterator<Item = &'a Arc<Cluster>>) {
        let checked = clusters
            .filter(|cluster| cluster.health.active.is_some())
            .cloned()
            .collect();
        // No receiver: the checker's thread could not start, which was logged.
        let _ = self.clusters.send(checked);
    }
}

/// Checks once, concurrently, every endpoint of `clusters` that no check has answered yet,
/// and returns when all have answered or timed out (within the longest `timeout`).
pub fn check_new_endpoints<'a>(clusters: impl Iterator<Item = &'a Arc<Cluster>>) {
    let clusters: Vec<&Arc<Cluster>> = clusters
        .filter(|cluster| {
            cluster.health.active.is_some()
                && cluster
                    .endpoints
                    .iter()
                    .any(|endpoint| endpoint.active.is_unchecked())
        })
        .collect();
    if clusters.is_empty() {
        return;
    }
    // A thread of its own, so that callers inside a runtime may wait for it too.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot run the first health checks");
                    return;
                }
            };
            runtime.block_on(join_all(
                clusters.iter().map(|cluster| check_round(cluster, true)),
            ));
        });
    });
}

/// Runs the checks of the clusters last sent, restarting them on every new snapshot.
async fn run(mut followed: watch::Receiver<Vec<Arc<Cluster>>>) {
    let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        let clusters = followed.borrow_and_update().clone();
        for task in running.drain(..) {
            task.abort();
        }
        running = clusters
            .into_iter()
            .map(|c| tokio::spawn(check_forever(c)))
            .collect();
        if followed.changed().await.is_err() {
            break;
        }
    }
}

/// Checks `cluster`'s endpoints each `interval`, the first time one interval from now (new
/// endpoints were checked before the snapshot went live).
async fn check_forever(cluster: Arc<Cluster>) {
    let Some(interval) = cluster.health.active.as_ref().map(|active| active.interval) else {
        return;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        check_round(&cluster, false).await;
    }
}

/// Checks the cluster's endpoints at once (only the unchecked ones with `only_unchecked`).
async fn check_round(cluster: &Cluster, only_unchecked: bool) {
    let Some(settings) = &cluster.health.active else {
        return;
    };
    join_all(
        cluster
            .endpoints
            .iter()
            .filter(|endpoint| !only_unchecked || endpoint.active.is_unchecked())
            .map(|endpoint| async move {
                let success = check(cluster, endpoint, settings).await;
                record(cluster, endpoint, settings, success);
            }),
    )
    .await;
}

/// One check: a 2xx answer to `GET path` within `timeout`, on a new connection.
async fn check(cluster: &Cluster, endpoint: &Endpoint, settings: &ActiveHealthSettings) -> bool {
    match tokio::time::timeout(
        settings.timeout,
        exchange(cluster, endpoint, &settings.path),
    )
    .await
    {
        Ok(Ok(status)) => status.is_success(),
        Ok(Err(error)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, %error, "health check failed");
            false
        }
        Err(_) => false,
    }
}

async fn exchange(
    cluster: &Cluster,
    endpoint: &Endpoint,
    path: &str,
) -> Result<StatusCode, BoxError> {
    let stream = cluster
        .connector
        .connect(&endpoint.host, endpoint.port)
        .await?;
    let host = cluster.server_name.as_deref().unwrap_or(&endpoint.address);
    let request = |uri: Uri| {
        Request::get(uri)
            .header(header::HOST, host)
            .header(header::USER_AGENT, USER_AGENT)
            .body(Empty::<Bytes>::new())
    };
    // The connection task ends when this function returns: the sender and the task go.
    if cluster.http2 {
        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        let driving = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let uri = Uri::builder()
            .scheme(cluster.scheme())
            .authority(host)
            .path_and_query(path)
            .build()?;
        let response = sender.send_request(request(uri)?).await?;
        drop(driving);
        Ok(response.status())
    } else {
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let driving = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender.send_request(request(path.parse()?)?).await?;
        drop(driving);
        Ok(response.status())
    }
}

/// Stops a spawned task when dropped (a check that timed out leaves no connection behind).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts a check's result towards the thresholds and changes the endpoint's state when
/// one is reached (or when it is the endpoint's first answer).
fn record(cluster: &Cluster, endpoint: &Endpoint, settings: &ActiveHealthSettings, success: bool) {
    let state: &ActiveState = &endpoint.active;
    let first = state.unchecked.swap(false, Ordering::Relaxed);
    let was_healthy = state.is_healthy();
    let becomes_healthy = if success {
        state.consecutive_failures.store(0, Ordering::Relaxed);
        let successes = state.consecutive_successes.fetch_add(1, Ordering::Relaxed) + 1;
        was_healthy || first || successes >= settings.healthy_threshold
    } else {
        state.consecutive_successes.store(0, Ordering::Relaxed);
        let failures = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        !first && was_healthy && failures < settings.unhealthy_threshold
    };
    if becomes_healthy == was_healthy {
        return;
    }
    state.healthy.store(becomes_healthy, Ordering::Relaxed);
    if becomes_healthy {
        tracing::info!(cluster = %cluster.name, endpoint = %endpoint.address, "active health checks: endpoint healthy");
    } else {
        tracing::warn!(cluster = %cluster.name, endpoint = %endpoint.address, path = %settings.path, "active health checks: endpoint unhealthy");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadBalancing;
    use crate::upstream::tests::{checked_health, config_with};

    #[test]
    fn the_first_answer_decides_then_the_thresholds_do() {
        let config = config_with(2, LoadBalancing::RoundRobin, 100, checked_health());
        let cluster = Cluster::new(&config, None, Default::default()).unwrap();
        let settings = cluster.health.active.clone().unwrap();
        let (up, down) = (&cluster.endpoints[0], &cluster.endpoints[1]);
        record(&cluster, up, &settings, true);
        record(&cluster, down, &settings, false);
        assert!(up.active.is_healthy() && !up.active.is_unchecked());
        assert!(!down.active.is_healthy() && !down.active.is_unchecked());

        // unhealthy_threshold 3: two failures keep it, the third takes it out; a success
        // in between starts the count again.
        for success in [false, false, true, false, false] {
            record(&cluster, up, &settings, success);
            assert!(up.active.is_healthy());
        }
        record(&cluster, up, &settings, false);
        assert!(!up.active.is_healthy());
        // healthy_threshold 2.
        record(&cluster, up, &settings, true);
        assert!(!up.active.is_healthy());
        record(&cluster, up, &settings, true);
        assert!(up.active.is_healthy());
    }
}
