//! Upstream clusters: endpoints, load balancing, passive health (outlier ejection),
//! concurrency limits and the pooled HTTP clients that carry requests to them.

mod connector;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::raw::LoadBalancing;
use crate::config::{self, ConfigError, HealthSettings};
pub use connector::Connector;

/// The request body type sent upstream.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type HttpClient = Client<Connector, UpstreamBody>;

/// A cluster as the gateway runs it.
pub struct Cluster {
    pub name: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    load_balancing: LoadBalancing,
    health: HealthSettings,
    max_requests: usize,
    active_requests: AtomicUsize,
    next: AtomicUsize,
    pub http2: bool,
    pub tls: bool,
    /// One pooled client per worker thread, created on first use on that thread, so that a
    /// worker's connections are driven by its own runtime.
    clients: Vec<OnceLock<HttpClient>>,
    client_settings: ClientSettings,
}

#[derive(Clone)]
struct ClientSettings {
    connector: Connector,
    max_idle_per_endpoint: usize,
    idle_timeout: Duration,
}

/// One endpoint and its live state.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`, used as the authority of upstream request URIs (and so as the pool key).
    pub address: String,
    pub labels: BTreeMap<String, String>,
    active_requests: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since `epoch()` until which the endpoint is ejected; 0 when healthy.
    ejected_until_ms: AtomicU64,
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Every candidate endpoint is ejected.
    NoHealthy,
    /// The cluster's `max_requests` is reached.
    Overflow,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Marks the current thread as worker `index`; threads that are not workers share one slot.
pub fn set_worker_index(index: usize) {
    WORKER.with(|worker| worker.set(index));
}

// === impl Cluster ===

impl Cluster {
    pub fn new(config: &config::Cluster, workers: usize) -> Result<Self, ConfigError> {
        let tls = match &config.tls {
            Some(tls) => Some((
                crate::tls::client_config(tls, config.http2, &config.origin)?,
                tls.server_name.clone(),
            )),
            None => None,
        };
        let endpoints = config
            .endpoints
            .iter()
            .map(|endpoint| {
                Arc::new(Endpoint {
                    address: endpoint.address.clone(),
                    labels: endpoint.labels.clone(),
                    active_requests: AtomicUsize::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejections: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                })
            })
            .collect();
        Ok(Self {
            name: config.name.as_str().into(),
            endpoints,
            load_balancing: config.load_balancing,
            health: config.health.clone(),
            max_requests: config.limits.max_requests,
            active_requests: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            http2: config.http2,
            tls: tls.is_some(),
            clients: (0..=workers).map(|_| OnceLock::new()).collect(),
            client_settings: ClientSettings {
                connector: Connector::new(config.connect_timeout, tls),
                max_idle_per_endpoint: config.limits.max_idle_per_endpoint,
                idle_timeout: config.limits.idle_timeout,
            },
        })
    }

    /// The pooled client of the calling worker.
    pub fn client(&self) -> &HttpClient {
        let slot = WORKER
            .with(|worker| worker.get())
            .min(self.clients.len() - 1);
        self.clients[slot].get_or_init(|| {
            let settings = &self.client_settings;
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_max_idle_per_host(settings.max_idle_per_endpoint)
                .pool_idle_timeout(settings.idle_timeout)
                .http2_only(self.http2)
                // The gateway sets Host itself (the original or rewritten one), never the
                // endpoint's address.
                .set_host(false);
            builder.build(settings.connector.clone())
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Chooses an endpoint among `candidates` (indexes into `endpoints`) and reserves a
    /// request slot on the cluster; the slot is released when the guard drops.
    pub fn pick(self: &Arc<Self>, candidates: &[usize]) -> Result<RequestGuard, PickError> {
        if self.active_requests.fetch_add(1, Ordering::Relaxed) >= self.max_requests {
            self.active_requests.fetch_sub(1, Ordering::Relaxed);
            return Err(PickError::Overflow);
        }
        let now = now_ms();
        let healthy = |index: &usize| {
            self.endpoints[*index]
                .ejected_until_ms
                .load(Ordering::Relaxed)
                <= now
        };
        let healthy_count = candidates.iter().filter(|i| healthy(i)).count();
        let chosen = if healthy_count == 0 {
            None
        } else {
            match self.load_balancing {
                LoadBalancing::RoundRobin => {
                    let turn = self.next.fetch_add(1, Ordering::Relaxed) % healthy_count;
                    candidates.iter().copied().filter(healthy).nth(turn)
                }
                LoadBalancing::LeastRequest => {
                    self.least_request(candidates, healthy_count, &healthy)
                }
            }
        };
        let Some(index) = chosen else {
            self.active_requests.fetch_sub(1, Ordering::Relaxed);
            return Err(PickError::NoHealthy);
        };
        let endpoint = self.endpoints[index].clone();
        endpoint.active_requests.fetch_add(1, Ordering::Relaxed);
        Ok(RequestGuard {
            cluster: self.clone(),
            endpoint,
        })
    }

    /// Power of two choices: two healthy endpoints at random, the less busy one wins.
    fn least_request(
        &self,
        candidates: &[usize],
        healthy_count: usize,
        healthy: &impl Fn(&usize) -> bool,
    ) -> Option<usize> {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let first = rng.gen_range(0..healthy_count);
        let second = rng.gen_range(0..healthy_count);
        let nth = |n| candidates.iter().copied().filter(healthy).nth(n);
        let (a, b) = (nth(first)?, nth(second)?);
        let load = |i: usize| self.endpoints[i].active_requests.load(Ordering::Relaxed);
        Some(if load(b) < load(a) { b } else { a })
    }

    fn ejected_count(&self, now: u64) -> usize {
        self.endpoints
            .iter()
            .filter(|endpoint| endpoint.ejected_until_ms.load(Ordering::Relaxed) > now)
            .count()
    }

    /// All endpoint indexes matching a subset's labels.
    pub fn subset(&self, labels: &BTreeMap<String, String>) -> Vec<usize> {
        self.endpoints
            .iter()
            .enumerate()
            .filter(|(_, endpoint)| config::subset_matches(labels, &endpoint.labels))
            .map(|(index, _)| index)
            .collect()
    }
}

/// A reserved request on a cluster's endpoint. Report the outcome with [`RequestGuard::success`]
/// or [`RequestGuard::failure`]; dropping it releases the reservation.
pub struct RequestGuard {
    cluster: Arc<Cluster>,
    pub endpoint: Arc<Endpoint>,
}

impl RequestGuard {
    pub fn success(&self) {
        self.endpoint
            .consecutive_failures
            .store(0, Ordering::Relaxed);
    }

    /// Counts a failure (connect error, reset or 5xx); ejects the endpoint after
    /// `consecutive_failures` of them, within `max_ejection_percent` — but, as in Envoy, one
    /// endpoint may always be ejected.
    pub fn failure(&self) {
        let endpoint = &self.endpoint;
        let health = &self.cluster.health;
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < health.consecutive_failures {
            return;
        }
        let now = now_ms();
        if endpoint.ejected_until_ms.load(Ordering::Relaxed) > now {
            return;
        }
        let total = self.cluster.endpoints.len();
        let ejected = self.cluster.ejected_count(now);
        if ejected > 0 && (ejected + 1) * 100 > total * health.max_ejection_percent as usize {
            return;
        }
        let ejections = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let period = health.ejection_time.as_millis() as u64 * u64::from(ejections.min(10));
        endpoint
            .ejected_until_ms
            .store(now + period, Ordering::Relaxed);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(
            cluster = %self.cluster.name,
            endpoint = %endpoint.address,
            failures,
            ejected_for_ms = period,
            "ejecting an endpoint after consecutive failures"
        );
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.endpoint
            .active_requests
            .fetch_sub(1, Ordering::Relaxed);
        self.cluster.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterLimits, Endpoint as EndpointConfig, Origin};

    fn cluster(
        endpoints: usize,
        lb: LoadBalancing,
        failures: u32,
        max_requests: usize,
    ) -> Arc<Cluster> {
        let config = config::Cluster {
            name: "c".into(),
            endpoints: (0..endpoints)
                .map(|i| EndpointConfig {
                    address: format!("127.0.0.1:{}", 9000 + i),
                    host: "127.0.0.1".into(),
                    port: 9000 + i as u16,
                    labels: [("version".to_string(), format!("v{}", i % 2 + 1))].into(),
                })
                .collect(),
            load_balancing: lb,
            connect_timeout: Duration::from_secs(1),
            http2: false,
            tls: None,
            health: HealthSettings {
                consecutive_failures: failures,
                ejection_time: Duration::from_secs(30),
                max_ejection_percent: 50,
                panic_threshold: 50,
                eject_on: crate::config::raw::EjectOn::GatewayErrors,
            },
            limits: ClusterLimits {
                max_requests,
                max_idle_per_endpoint: 1,
                idle_timeout: Duration::from_secs(1),
            },
            origin: Origin::default(),
        };
        Arc::new(Cluster::new(&config, 1).unwrap())
    }

    #[test]
    fn round_robin_visits_every_endpoint() {
        let cluster = cluster(3, LoadBalancing::RoundRobin, 5, 100);
        let all = [0, 1, 2];
        let picked: Vec<String> = (0..6)
            .map(|_| cluster.pick(&all).unwrap().endpoint.address.clone())
            .collect();
        assert_eq!(picked[0..3], picked[3..6]);
        let mut distinct = picked[0..3].to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn subsets_select_by_label() {
        let cluster = cluster(4, LoadBalancing::RoundRobin, 5, 100);
        let v2 = cluster.subset(&[("version".to_string(), "v2".to_string())].into());
        assert_eq!(v2, vec![1, 3]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let cluster = cluster(2, LoadBalancing::LeastRequest, 5, 100);
        let busy = cluster.pick(&[0]).unwrap();
        let _also_busy = cluster.pick(&[0]).unwrap();
        let picks: Vec<_> = (0..50)
            .map(|_| cluster.pick(&[0, 1]).unwrap().endpoint.address.clone())
            .collect();
        // Whenever the two random choices differ, the idle endpoint wins.
        assert!(
            picks
                .iter()
                .filter(|a| **a == busy.endpoint.address)
                .count()
                < 40
        );
    }

    #[test]
    fn consecutive_failures_eject_until_none_is_healthy() {
        let cluster = cluster(1, LoadBalancing::RoundRobin, 2, 100);
        for _ in 0..2 {
            cluster.pick(&[0]).unwrap().failure();
        }
        assert_eq!(cluster.pick(&[0]).err(), Some(PickError::NoHealthy));
    }

    #[test]
    fn max_ejection_percent_keeps_endpoints_serving() {
        let cluster = cluster(2, LoadBalancing::RoundRobin, 1, 100);
        cluster.pick(&[0]).unwrap().failure();
        // 50% of 2 endpoints: the second one may not be ejected as well.
        cluster.pick(&[1]).unwrap().failure();
        assert_eq!(
            cluster.pick(&[0, 1]).unwrap().endpoint.address,
            "127.0.0.1:9001"
        );
    }

    #[test]
    fn max_requests_overflows() {
        let cluster = cluster(1, LoadBalancing::RoundRobin, 5, 1);
        let held = cluster.pick(&[0]).unwrap();
        assert_eq!(cluster.pick(&[0]).err(), Some(PickError::Overflow));
        drop(held);
        assert!(cluster.pick(&[0]).is_ok());
    }
}
