//! Upstream clusters: endpoints, load balancing, passive health (outlier ejection), active
//! health checks, concurrency limits and the per-worker connection pools that carry
//! requests to them.

mod call;
mod connector;
pub mod health;
pub mod http1;
mod pool;
mod ring;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;

use crate::config::{self, ClusterLimits, ConfigError, HealthSettings};
use crate::config::{EjectOn, HashOn, LoadBalancing};
use crate::telemetry::metrics::Metrics;
pub use call::CallBody;
pub use connector::{tls_failure, Connector};
pub use http1::Upgraded;
pub use pool::{PooledBody, UpstreamError};
use ring::Ring;
pub use ring::{hash_key, POINTS_PER_ENDPOINT};

/// The request body type sent upstream.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;
pub use crate::body::BoxError;

/// A request body with nothing in it. Boxing it allocates nothing (it has no size): a
/// request without a body costs no box.
pub fn empty_body() -> UpstreamBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A cluster as the gateway runs it.
pub struct Cluster {
    pub name: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Every index into `endpoints`: the candidates of a pick among all of them (a
    /// plugin's callout, a mirrored request), kept so that a pick does not collect them
    /// each time.
    all_endpoints: Box<[usize]>,
    load_balancing: LoadBalancing,
    /// What `ring_hash` hashes.
    pub hash_on: HashOn,
    /// The endpoints' ring under `ring_hash`.
    ring: Option<Ring>,
    health: HealthSettings,
    /// The `tls.server_name`, which health checks send as `Host`.
    server_name: Option<String>,
    max_requests: usize,
    active_requests: AtomicUsize,
    next: AtomicUsize,
    pub http2: bool,
    pub tls: bool,
    /// What the TLS configuration was built from (see `UpstreamTlsConfig::digest`).
    tls_digest: Option<[u8; 32]>,
    connector: Connector,
    limits: ClusterLimits,
    /// The key to the cluster's connection pools, one per worker thread, so that a
    /// worker's connections are driven by its own runtime.
    pools: pool::Pools,
    /// The gateway's metrics, which ejections and panic picks count into.
    metrics: Arc<Metrics>,
}

/// One endpoint and its live state.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`, the authority of HTTP/2 upstream requests.
    pub address: String,
    /// `address` parsed as a URI authority once, for every HTTP/2 request to the endpoint;
    /// `None` when it is not one (such a request fails as it always did).
    authority: Option<http::uri::Authority>,
    /// The position in the cluster's `endpoints`, which keys the pools.
    index: usize,
    host: String,
    port: u16,
    pub labels: BTreeMap<String, String>,
    active_requests: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since `epoch()` until which the endpoint is ejected; 0 when healthy.
    ejected_until_ms: AtomicU64,
    /// What active health checks found; shared with the endpoint of the same address in
    /// the snapshots that follow, so that a reload keeps it.
    pub active: Arc<ActiveState>,
}

/// An endpoint's standing with active health checks. Endpoints of clusters without them
/// are always healthy here.
#[derive(Debug)]
pub struct ActiveState {
    healthy: AtomicBool,
    /// No check has answered yet: the first answer decides, whatever the thresholds.
    unchecked: AtomicBool,
    consecutive_successes: AtomicU32,
    consecutive_failures: AtomicU32,
}

impl ActiveState {
    /// A new endpoint's state: without active checks healthy; with them unhealthy until a
    /// check succeeds, as Envoy does.
    fn new(checked: bool) -> Self {
        Self {
            healthy: AtomicBool::new(!checked),
            unchecked: AtomicBool::new(checked),
            consecutive_successes: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_unchecked(&self) -> bool {
        self.unchecked.load(Ordering::Relaxed)
    }
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

// === impl Cluster ===

impl Cluster {
    /// Builds the running cluster; with `previous` (the same cluster in the snapshot being
    /// replaced), endpoints it had keep their active health state. `metrics` are the
    /// gateway's, which the cluster's ejections and panic picks count into.
    pub fn new(
        config: &config::Cluster,
        previous: Option<&Cluster>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let tls = match &config.tls {
            Some(tls) => Some((
                crate::tls::client_config(tls, config.http2, &config.origin)?,
                tls.server_name.clone(),
            )),
            None => None,
        };
        let tls_digest = tls.as_ref().map(|(tls, _)| tls.digest);
        let tls = tls.map(|(tls, server_name)| (tls.config, server_name));
        let checked = config.health.active.is_some();
        let previous_state = |address: &str| {
            previous
                .filter(|previous| checked && previous.health.active.is_some())?
                .endpoints
                .iter()
                .find(|endpoint| endpoint.address == address)
                .map(|endpoint| endpoint.active.clone())
        };
        let endpoints: Vec<Arc<Endpoint>> = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                Arc::new(Endpoint {
                    active: previous_state(&endpoint.address)
                        .unwrap_or_else(|| Arc::new(ActiveState::new(checked))),
                    address: endpoint.address.clone(),
                    authority: endpoint.address.parse().ok(),
                    index,
                    host: endpoint.host.clone(),
                    port: endpoint.port,
                    labels: endpoint.labels.clone(),
                    active_requests: AtomicUsize::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejections: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                })
            })
            .collect();
        let pools = pool::Pools::new(config.endpoints.len());
        let ring = (config.load_balancing == LoadBalancing::RingHash).then(|| {
            Ring::new(
                config
                    .endpoints
                    .iter()
                    .map(|endpoint| endpoint.address.as_str()),
            )
        });
        Ok(Self {
            name: config.name.as_str().into(),
            all_endpoints: (0..endpoints.len()).collect(),
            endpoints,
            load_balancing: config.load_balancing,
            hash_on: config.hash_on.clone(),
            ring,
            health: config.health.clone(),
            server_name: config.tls.as_ref().and_then(|tls| tls.server_name.clone()),
            max_requests: config.limits.max_requests,
            active_requests: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            http2: config.http2,
            tls: tls.is_some(),
            tls_digest,
            connector: Connector::new(config.connect_timeout, tls),
            limits: config.limits.clone(),
            pools,
            metrics,
        })
    }

    /// Whether the TLS files were the same (same certificates, not only the same paths)
    /// when `other` was built.
    pub fn same_tls_files(&self, other: &Cluster) -> bool {
        self.tls_digest == other.tls_digest
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Every endpoint's index, as candidates for [`Cluster::pick`].
    pub fn all_endpoints(&self) -> &[usize] {
        &self.all_endpoints
    }

    /// Chooses an endpoint among `candidates` (indexes into `endpoints`) and reserves a
    /// request slot on the cluster; the slot is released when the guard drops. `hash` is
    /// the request's key under `ring_hash`; without one the pick is round robin, as in Envoy.
    ///
    /// An endpoint is healthy when active checks (if any) find it so and passive health
    /// checking has not ejected it. Unhealthy endpoints are skipped unless fewer than
    /// `panic_threshold` percent of the candidates are healthy: then the cluster is in panic
    /// and every candidate gets traffic again, as in Envoy, because a few healthy endpoints
    /// would be overrun by the whole load and ejection may be wrong (the failures may have
    /// been caused by the requests).
    pub fn pick(
        self: &Arc<Self>,
        candidates: &[usize],
        hash: Option<u64>,
    ) -> Result<RequestGuard, PickError> {
        if self.active_requests.fetch_add(1, Ordering::Relaxed) >= self.max_requests {
            self.active_requests.fetch_sub(1, Ordering::Relaxed);
            return Err(PickError::Overflow);
        }
        let now = now_ms();
        let is_healthy = |index: &usize| self.endpoints[*index].is_healthy(now);
        let healthy_count = candidates.iter().filter(|i| is_healthy(i)).count();
        let panic = (healthy_count * 100) < candidates.len() * self.health.panic_threshold as usize;
        let everyone = |_: &usize| true;
        let eligible: &dyn Fn(&usize) -> bool = if panic { &everyone } else { &is_healthy };
        let eligible_count = if panic {
            candidates.len()
        } else {
            healthy_count
        };
        let chosen = if eligible_count == 0 {
            None
        } else {
            let round_robin = || {
                let turn = self.next.fetch_add(1, Ordering::Relaxed) % eligible_count;
                candidates.iter().copied().filter(eligible).nth(turn)
            };
            // The ring exists exactly when the cluster balances by `ring_hash`.
            match (&self.ring, hash) {
                (Some(ring), Some(hash)) => ring.find(hash, |index| {
                    candidates.contains(&index) && eligible(&index)
                }),
                _ if self.load_balancing == LoadBalancing::LeastRequest => {
                    self.least_request(candidates, eligible_count, eligible)
                }
                _ => round_robin(),
            }
        };
        let Some(index) = chosen else {
            self.active_requests.fetch_sub(1, Ordering::Relaxed);
            return Err(PickError::NoHealthy);
        };
        if panic {
            self.metrics.upstream_panic_pick(&self.name);
        }
        let endpoint = self.endpoints[index].clone();
        endpoint.active_requests.fetch_add(1, Ordering::Relaxed);
        Ok(RequestGuard {
            cluster: self.clone(),
            endpoint,
        })
    }

    /// Power of two choices: two eligible endpoints at random, the less busy one wins.
    fn least_request(
        &self,
        candidates: &[usize],
        eligible_count: usize,
        eligible: &dyn Fn(&usize) -> bool,
    ) -> Option<usize> {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let first = rng.gen_range(0..eligible_count);
        let second = rng.gen_range(0..eligible_count);
        let nth = |n| candidates.iter().copied().filter(eligible).nth(n);
        let (a, b) = (nth(first)?, nth(second)?);
        let load = |i: usize| self.endpoints[i].active_requests.load(Ordering::Relaxed);
        Some(if load(b) < load(a) { b } else { a })
    }

    /// Whether requests are hashed (`ring_hash`), so that the caller computes a key.
    pub fn hashes(&self) -> bool {
        self.ring.is_some()
    }

    fn ejected_count(&self, now: u64) -> usize {
        self.endpoints
            .iter()
            .filter(|endpoint| endpoint.is_ejected(now))
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

// === impl Endpoint ===

impl Endpoint {
    /// Active checks (if any) find it healthy and passive checking has not ejected it.
    fn is_healthy(&self, now: u64) -> bool {
        self.active.is_healthy() && !self.is_ejected(now)
    }

    fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Whether passive health checking has ejected the endpoint now.
    pub fn ejected(&self) -> bool {
        self.is_ejected(now_ms())
    }
}

/// How a try ended, as passive health checking sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Answered(http::StatusCode),
    /// No connection could be opened.
    ConnectFailure,
    /// The connection or stream ended before the response headers.
    Reset,
    /// No response headers before the deadline.
    Timeout,
}

impl Outcome {
    /// Whether this outcome counts towards ejection under `eject_on`. With
    /// `gateway_errors`, an endpoint that answers — even 500 — is reachable and counts as a
    /// success: a client that finds a URL answering 500 cannot eject it for everyone.
    fn is_failure(self, eject_on: EjectOn) -> bool {
        match self {
            Self::ConnectFailure | Self::Reset | Self::Timeout => true,
            Self::Answered(status) => match eject_on {
                EjectOn::GatewayErrors => matches!(status.as_u16(), 502..=504),
                EjectOn::Any5xx => status.is_server_error(),
            },
        }
    }
}

/// A reserved request on a cluster's endpoint. Report how it ended with
/// [`RequestGuard::report`]; dropping it releases the reservation.
pub struct RequestGuard {
    cluster: Arc<Cluster>,
    pub endpoint: Arc<Endpoint>,
}

impl RequestGuard {
    /// Feeds passive health checking: a failure (as `health.eject_on` defines it) counts
    /// towards ejection, anything else resets the count.
    pub fn report(&self, outcome: Outcome) {
        if outcome.is_failure(self.cluster.health.eject_on) {
            self.failure();
        } else {
            self.success();
        }
    }

    /// Resets the endpoint's count of consecutive failures.
    pub fn success(&self) {
        self.endpoint
            .consecutive_failures
            .store(0, Ordering::Relaxed);
    }

    /// Counts a failure whatever `eject_on` says (for callers that only know that the
    /// exchange failed, such as plugin callouts); ejects the endpoint after `consecutive_failures` of them, unless
    /// that would put more than `max_ejection_percent` of the cluster's endpoints out. Unlike
    /// Envoy, which always allows one ejection, the percentage holds for small clusters too:
    /// at the default 50 % the only endpoint of a cluster is never ejected.
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
        if endpoint.is_ejected(now) {
            return;
        }
        let total = self.cluster.endpoints.len();
        let ejected = self.cluster.ejected_count(now);
        if (ejected + 1) * 100 > total * health.max_ejection_percent as usize {
            return;
        }
        let ejections = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let period = health.ejection_time.as_millis() as u64 * u64::from(ejections.min(10));
        endpoint
            .ejected_until_ms
            .store(now + period, Ordering::Relaxed);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
        self.cluster.metrics.upstream_ejection(&self.cluster.name);
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
    use std::time::Duration;

    pub(super) fn health(
        failures: u32,
        max_ejection_percent: u32,
        panic_threshold: u32,
    ) -> HealthSettings {
        HealthSettings {
            consecutive_failures: failures,
            ejection_time: Duration::from_secs(30),
            max_ejection_percent,
            panic_threshold,
            eject_on: EjectOn::GatewayErrors,
            active: None,
        }
    }

    fn cluster(
        endpoints: usize,
        lb: LoadBalancing,
        failures: u32,
        max_requests: usize,
    ) -> Arc<Cluster> {
        cluster_with(endpoints, lb, max_requests, health(failures, 50, 0))
    }

    fn cluster_with(
        endpoints: usize,
        lb: LoadBalancing,
        max_requests: usize,
        health: HealthSettings,
    ) -> Arc<Cluster> {
        let config = config_with(endpoints, lb, max_requests, health);
        Arc::new(Cluster::new(&config, None, Default::default()).unwrap())
    }

    pub(super) fn config_with(
        endpoints: usize,
        lb: LoadBalancing,
        max_requests: usize,
        health: HealthSettings,
    ) -> config::Cluster {
        config::Cluster {
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
            hash_on: HashOn::ClientIp,
            connect_timeout: Duration::from_secs(1),
            http2: false,
            tls: None,
            health,
            limits: ClusterLimits {
                max_requests,
                max_idle_per_endpoint: 1,
                idle_timeout: Duration::from_secs(1),
            },
            origin: Origin::default(),
        }
    }

    pub(super) fn checked_health() -> HealthSettings {
        let mut checked = health(5, 50, 0);
        checked.active = Some(crate::config::ActiveHealthSettings {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        });
        checked
    }

    fn set_active_health(cluster: &Cluster, endpoint: usize, healthy: bool) {
        let state = &cluster.endpoints[endpoint].active;
        state.healthy.store(healthy, Ordering::Relaxed);
        state.unchecked.store(false, Ordering::Relaxed);
    }

    #[test]
    fn ring_hash_keeps_a_key_and_walks_past_unhealthy_endpoints() {
        let cluster = cluster(3, LoadBalancing::RingHash, 5, 100);
        let all = [0, 1, 2];
        let hash = hash_key(b"alice");
        let pick =
            |candidates: &[usize]| cluster.pick(candidates, Some(hash)).unwrap().endpoint.index;
        let owner = pick(&all);
        assert!((0..20).all(|_| pick(&all) == owner));
        set_active_health(&cluster, owner, false);
        let stand_in = pick(&all);
        assert_ne!(stand_in, owner);
        assert!((0..20).all(|_| pick(&all) == stand_in));
        // A subset without the owner gets the same stand-in.
        let others: Vec<usize> = all.iter().copied().filter(|i| *i != owner).collect();
        set_active_health(&cluster, owner, true);
        assert_eq!(pick(&others), stand_in);
        assert_eq!(pick(&all), owner);
        // No key: round robin.
        let mut seen: Vec<usize> = (0..3)
            .map(|_| cluster.pick(&all, None).unwrap().endpoint.index)
            .collect();
        seen.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn active_checks_and_ejection_both_count_for_the_panic_threshold() {
        let cluster = cluster_with(4, LoadBalancing::RoundRobin, 100, health(1, 100, 50));
        let all = [0, 1, 2, 3];
        set_active_health(&cluster, 0, false);
        fail(&cluster, 1, Outcome::ConnectFailure, 1);
        for _ in 0..20 {
            let picked = cluster.pick(&all, None).unwrap().endpoint.index;
            assert!([2, 3].contains(&picked), "{picked}");
        }
        // Three of four out, one by each kind of check: in panic, all serve again.
        set_active_health(&cluster, 2, false);
        let mut seen: Vec<usize> = (0..40)
            .map(|_| cluster.pick(&all, None).unwrap().endpoint.index)
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, all);
    }

    #[test]
    fn endpoints_start_unhealthy_under_active_checks_and_keep_their_state_when_rebuilt() {
        let config = config_with(2, LoadBalancing::RoundRobin, 100, checked_health());
        let first = Cluster::new(&config, None, Default::default()).unwrap();
        assert!(first
            .endpoints
            .iter()
            .all(|e| e.active.is_unchecked() && !e.active.is_healthy()));
        set_active_health(&first, 1, true);
        let rebuilt = Cluster::new(&config, Some(&first), Default::default()).unwrap();
        assert!(Arc::ptr_eq(
            &rebuilt.endpoints[1].active,
            &first.endpoints[1].active
        ));
        assert!(rebuilt.endpoints[1].active.is_healthy());
        assert!(rebuilt.endpoints[0].active.is_unchecked());
        // Without active checks an endpoint is healthy, and nothing is carried over.
        let unchecked = config_with(2, LoadBalancing::RoundRobin, 100, health(5, 50, 0));
        let plain = Cluster::new(&unchecked, Some(&first), Default::default()).unwrap();
        assert!(plain
            .endpoints
            .iter()
            .all(|e| e.active.is_healthy() && !e.active.is_unchecked()));
    }

    #[test]
    fn round_robin_visits_every_endpoint() {
        let cluster = cluster(3, LoadBalancing::RoundRobin, 5, 100);
        let all = [0, 1, 2];
        let picked: Vec<String> = (0..6)
            .map(|_| cluster.pick(&all, None).unwrap().endpoint.address.clone())
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
        let busy = cluster.pick(&[0], None).unwrap();
        let _also_busy = cluster.pick(&[0], None).unwrap();
        let picks: Vec<_> = (0..50)
            .map(|_| {
                cluster
                    .pick(&[0, 1], None)
                    .unwrap()
                    .endpoint
                    .address
                    .clone()
            })
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

    fn fail(cluster: &Arc<Cluster>, endpoint: usize, outcome: Outcome, times: usize) {
        for _ in 0..times {
            cluster.pick(&[endpoint], None).unwrap().report(outcome);
        }
    }

    const BAD_GATEWAY: Outcome = Outcome::Answered(http::StatusCode::BAD_GATEWAY);
    const SERVER_ERROR: Outcome = Outcome::Answered(http::StatusCode::INTERNAL_SERVER_ERROR);

    #[test]
    fn consecutive_failures_eject_until_none_is_healthy() {
        let cluster = cluster_with(1, LoadBalancing::RoundRobin, 100, health(2, 100, 0));
        fail(&cluster, 0, Outcome::ConnectFailure, 2);
        assert_eq!(cluster.pick(&[0], None).err(), Some(PickError::NoHealthy));
    }

    #[test]
    fn a_success_resets_the_count() {
        let cluster = cluster_with(1, LoadBalancing::RoundRobin, 100, health(2, 100, 0));
        fail(&cluster, 0, Outcome::Reset, 1);
        fail(&cluster, 0, Outcome::Answered(http::StatusCode::OK), 1);
        fail(&cluster, 0, Outcome::Timeout, 1);
        assert!(cluster.pick(&[0], None).is_ok());
    }

    #[test]
    fn max_ejection_percent_keeps_endpoints_serving() {
        let cluster = cluster(2, LoadBalancing::RoundRobin, 1, 100);
        fail(&cluster, 0, BAD_GATEWAY, 1);
        // 50% of 2 endpoints: the second one may not be ejected as well.
        fail(&cluster, 1, BAD_GATEWAY, 1);
        assert_eq!(
            cluster.pick(&[0, 1], None).unwrap().endpoint.address,
            "127.0.0.1:9001"
        );
    }

    #[test]
    fn the_only_endpoint_is_never_ejected_below_100_percent() {
        let cluster = cluster_with(1, LoadBalancing::RoundRobin, 100, health(1, 99, 0));
        fail(&cluster, 0, Outcome::ConnectFailure, 10);
        assert!(cluster.pick(&[0], None).is_ok());
        assert_eq!(cluster.ejected_count(now_ms()), 0);
    }

    #[test]
    fn gateway_errors_ignore_500_but_5xx_counts_it() {
        let lenient = cluster_with(2, LoadBalancing::RoundRobin, 100, health(1, 100, 0));
        fail(&lenient, 0, SERVER_ERROR, 5);
        assert_eq!(lenient.ejected_count(now_ms()), 0);
        fail(&lenient, 0, BAD_GATEWAY, 1);
        assert_eq!(lenient.ejected_count(now_ms()), 1);

        let mut strict_health = health(1, 100, 0);
        strict_health.eject_on = EjectOn::Any5xx;
        let strict = cluster_with(2, LoadBalancing::RoundRobin, 100, strict_health);
        fail(&strict, 0, SERVER_ERROR, 1);
        assert_eq!(strict.ejected_count(now_ms()), 1);
    }

    #[test]
    fn below_the_panic_threshold_every_endpoint_gets_traffic() {
        for lb in [LoadBalancing::RoundRobin, LoadBalancing::LeastRequest] {
            let cluster = cluster_with(4, lb, 100, health(1, 100, 50));
            // Two of four ejected: 50 % healthy is not below the threshold.
            fail(&cluster, 0, Outcome::ConnectFailure, 1);
            fail(&cluster, 1, Outcome::ConnectFailure, 1);
            let all = [0, 1, 2, 3];
            for _ in 0..20 {
                let picked = cluster.pick(&all, None).unwrap();
                assert!(["127.0.0.1:9002", "127.0.0.1:9003"]
                    .contains(&picked.endpoint.address.as_str()));
            }
            // Three of four ejected: 25 % healthy, so the ejected ones are used again.
            fail(&cluster, 2, Outcome::ConnectFailure, 1);
            let mut seen: Vec<String> = (0..40)
                .map(|_| cluster.pick(&all, None).unwrap().endpoint.address.clone())
                .collect();
            seen.sort();
            seen.dedup();
            assert!(seen.len() >= 3, "{lb:?} in panic picked only {seen:?}");
        }
    }

    #[test]
    fn panic_threshold_zero_lets_every_endpoint_be_ejected() {
        let cluster = cluster_with(2, LoadBalancing::RoundRobin, 100, health(1, 100, 0));
        fail(&cluster, 0, Outcome::ConnectFailure, 1);
        fail(&cluster, 1, Outcome::ConnectFailure, 1);
        assert_eq!(
            cluster.pick(&[0, 1], None).err(),
            Some(PickError::NoHealthy)
        );
    }

    #[test]
    fn max_requests_overflows() {
        let cluster = cluster(1, LoadBalancing::RoundRobin, 5, 1);
        let held = cluster.pick(&[0], None).unwrap();
        assert_eq!(cluster.pick(&[0], None).err(), Some(PickError::Overflow));
        drop(held);
        assert!(cluster.pick(&[0], None).is_ok());
    }
}
