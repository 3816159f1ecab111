//! The validated, typed policy model. Everything here has been checked (see
//! [`super::validate`]): durations parsed, regexes compiled, names unique, references
//! resolved. Files (certificates, keys) are resolved to paths here and read when the gateway
//! builds its TLS state.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use regex::Regex;

use super::error::Origin;

/// The whole validated configuration of one policy folder.
#[derive(Debug, Clone)]
pub struct Config {
    /// The policies folder; relative file paths were resolved against it.
    pub base_dir: PathBuf,
    pub server: ServerSettings,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    pub virtual_hosts: Vec<VirtualHost>,
    pub plugins: Vec<Plugin>,
    /// The merged documents as JSON with secrets redacted, for the admin `/config` endpoint.
    pub effective: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_request_header_bytes: usize,
    pub max_request_body_bytes: u64,
    /// What one plugin may hold back of a body while it pauses: past it a request is
    /// answered 413, a response reset.
    pub max_buffered_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub body_read_timeout: Duration,
    pub stream_idle_timeout: Duration,
    /// Per listener.
    pub max_connections: usize,
    pub normalization: Normalization,
    pub access_log: AccessLogSettings,
    pub plugin_limits: PluginLimits,
    pub node: std::sync::Arc<NodeSettings>,
    /// `server.tracing`; `None`: tracing is off.
    pub tracing: Option<TracingSettings>,
}

/// `server.tracing`: spans exported over OTLP/HTTP to a collector.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// `http://host:port/v1/traces`, as written.
    pub otlp_endpoint: String,
    /// The collector's `host:port`, from the endpoint (what an Envoy cluster points at).
    pub collector_host: String,
    pub collector_port: u16,
    /// The endpoint's path (`/v1/traces` by convention).
    pub collector_path: String,
    /// Share of requests without a parent's decision that are traced (Envoy's
    /// `random_sampling` default, 100).
    pub sample_percent: f64,
    pub service_name: String,
}

impl TracingSettings {
    pub const DEFAULT_SAMPLE_PERCENT: f64 = 100.0;
    pub const DEFAULT_SERVICE_NAME: &'static str = "tollgate";
}

/// `server.node`: the gateway's identity as a proxy, what plugins read as `node`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    pub id: String,
    pub cluster: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub locality: Locality,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            id: "tollgate".into(),
            cluster: "tollgate".into(),
            metadata: serde_json::Map::new(),
            locality: Locality::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_request_header_bytes: 64 * 1024,
            max_request_body_bytes: 10 * 1024 * 1024,
            max_buffered_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            normalization: Normalization::default(),
            access_log: AccessLogSettings::default(),
            plugin_limits: PluginLimits::default(),
            tracing: None,
            node: Default::default(),
        }
    }
}

/// How request hosts and paths are made canonical before routing, plugins and forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalization {
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashesAction,
    pub strip_trailing_host_dot: bool,
}

impl Default for Normalization {
    fn default() -> Self {
        Self {
            normalize_path: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashesAction::Reject,
            strip_trailing_host_dot: true,
        }
    }
}

/// What the gateway does with `%2F` / `%5C` (encoded `/` and `\`) in a request path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashesAction {
    /// Answer 400.
    #[default]
    Reject,
    /// Leave them encoded: routing and the upstream see `%2F`.
    Keep,
    /// Decode them to `/` and `\` before normalizing, routing and forwarding.
    Unescape,
}

impl EscapedSlashesAction {
    /// The name policies write.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Keep => "keep",
            Self::Unescape => "unescape",
        }
    }
}

/// What the access log must not show. Names are lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// Query parameters logged as `REDACTED`; the key names of key-auth plugins are added
    /// to these when the snapshot is built.
    pub redact_query_params: Vec<String>,
    pub redact_headers: Vec<String>,
}

/// Bounds on what plugins may make the host hold, per `vm_id` unless said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    pub shared_data_bytes: u64,
    pub shared_data_keys: usize,
    /// Per queue.
    pub shared_queue_length: usize,
    /// Metric series (name and tags) one plugin may define.
    pub metrics: usize,
    pub callout_response_bytes: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            shared_data_bytes: 64 * 1024 * 1024,
            shared_data_keys: 100_000,
            shared_queue_length: 10_000,
            metrics: 10_000,
            callout_response_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub certificates: Vec<CertificateFiles>,
    pub min_version: TlsVersion,
    pub alpn: Vec<String>,
    pub client_auth: Option<ClientAuth>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names this certificate answers for; empty means "the DNS names in the certificate".
    pub server_names: Vec<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub ca: PathBuf,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub load_balancing: LoadBalancing,
    /// What `ring_hash` hashes; unused by the other policies.
    pub hash_on: HashOn,
    pub connect_timeout: Duration,
    pub http2: bool,
    pub tls: Option<UpstreamTls>,
    pub health: HealthSettings,
    pub limits: ClusterLimits,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` as written; the host may be an IP address or a DNS name.
    pub address: String,
    pub host: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
}

/// How a cluster picks an endpoint.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    LeastRequest,
    /// Consistent hashing on a ring of endpoint points: a key keeps its endpoint while
    /// the endpoint serves.
    RingHash,
}

impl LoadBalancing {
    /// The name policies write.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastRequest => "least_request",
            Self::RingHash => "ring_hash",
        }
    }
}

/// The request property `ring_hash` hashes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The value of this header (lower-case name).
    Header(String),
    /// The value of this cookie.
    Cookie(String),
    /// The client's IP address (the connection's peer).
    #[default]
    ClientIp,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// `None`: the system's root certificates.
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    /// The certificate the gateway presents to the endpoints (mutual TLS).
    pub client_certificate: Option<ClientCertificate>,
    /// When not empty, the endpoint's certificate must carry one of these names, and
    /// they replace the check of `server_name`.
    pub subject_alt_names: Vec<SubjectAltName>,
}

/// The files of the certificate the gateway presents to a cluster's endpoints.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A subject alternative name a cluster's endpoints may present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectAltName {
    /// Compared without regard to case; a certificate's `*.suffix` covers one label.
    Dns(String),
    /// Compared exactly, as a SPIFFE id is (`spiffe://cluster.local/ns/shop/sa/shop`).
    Uri(String),
}

impl SubjectAltName {
    /// An entry as policies write it: with `://` a URI, otherwise a DNS name.
    pub fn parse(written: &str) -> Self {
        if written.contains("://") {
            Self::Uri(written.to_string())
        } else {
            Self::Dns(written.to_ascii_lowercase())
        }
    }

    /// The name as policies write it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Dns(name) | Self::Uri(name) => name,
        }
    }
}

impl std::fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "DNS:{name}"),
            Self::Uri(uri) => write!(f, "URI:{uri}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Percent of healthy endpoints below which every endpoint gets traffic again.
    pub panic_threshold: u32,
    pub eject_on: EjectOn,
    /// Active health checks; `None`: endpoints are only judged by their answers to requests.
    pub active: Option<ActiveHealthSettings>,
}

/// Active health checking: a `GET path` to every endpoint each `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHealthSettings {
    pub path: String,
    pub interval: Duration,
    /// A check without a 2xx answer within it fails.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

/// What counts as an endpoint failure for outlier ejection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum EjectOn {
    /// Connect failures, resets, timeouts and 502, 503, 504 answers.
    #[default]
    GatewayErrors,
    /// The above and every other 5xx answer.
    Any5xx,
}

impl EjectOn {
    /// The name policies write.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GatewayErrors => "gateway_errors",
            Self::Any5xx => "5xx",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterLimits {
    pub max_requests: usize,
    pub max_idle_per_endpoint: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// `None`: every listener.
    pub listeners: Option<Vec<String>>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<Method>,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
}

#[derive(Debug, Clone, Default)]
pub enum PathMatch {
    #[default]
    Any,
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct ValueMatch {
    /// Lower-case header name or query parameter name.
    pub name: String,
    pub rule: ValueRule,
}

#[derive(Debug, Clone)]
pub enum ValueRule {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

#[derive(Debug, Clone)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

#[derive(Debug, Clone)]
pub struct Forward {
    /// One target for a plain forward, several for a weighted split.
    pub targets: Vec<WeightedTarget>,
    /// Written as `split:` (even with one target), not `cluster:`.
    pub is_split: bool,
    pub rewrite_prefix: Option<String>,
    /// The route's `match.path.prefix`, which `rewrite_prefix` replaces.
    pub matched_prefix: Option<String>,
    pub rewrite_regex: Option<RegexRewrite>,
    pub rewrite_host: Option<String>,
    pub timeout: Duration,
    pub retries: Option<RetryPolicy>,
    pub mirror: Option<Mirror>,
}

/// `rewrite.regex`: every match of `pattern` in the path (without the query) is replaced.
#[derive(Debug, Clone)]
pub struct RegexRewrite {
    pub pattern: Regex,
    /// The substitution as written, groups as `\1`.
    pub substitution: String,
    /// The same in the `regex` crate's syntax (`${1}`, a literal `$` doubled).
    pub replacement: String,
}

#[derive(Debug, Clone)]
pub struct WeightedTarget {
    pub cluster: String,
    /// Endpoint labels that select a subset of the cluster; empty: every endpoint.
    pub subset: BTreeMap<String, String>,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub conditions: RetryConditions,
    /// Non-idempotent requests are retried on every condition, not only on those where the
    /// upstream cannot have received them.
    pub non_idempotent: bool,
}

/// When a try is retried (Envoy's `retry_on` names).
#[derive(Debug, Clone, Default)]
pub struct RetryConditions {
    /// `5xx`: any 5xx answer, connect failures and resets.
    pub any_5xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub reset: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    pub status_codes: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: String,
    pub percent: f64,
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub code: StatusCode,
    pub strip_query: bool,
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: bytes::Bytes,
    pub headers: Vec<(HeaderName, http::HeaderValue)>,
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub delay: Option<(f64, Duration)>,
    pub abort: Option<(f64, StatusCode)>,
}

#[derive(Debug, Clone)]
pub struct Plugin {
    pub name: String,
    pub module: PathBuf,
    pub config: serde_json::Value,
    pub vm_config: serde_json::Value,
    pub env: BTreeMap<String, String>,
    pub failure_policy: FailurePolicy,
    pub priority: i32,
    /// `None`: everywhere.
    pub apply_to: Option<ApplyTo>,
    pub route_config: BTreeMap<String, serde_json::Value>,
    pub callback_timeout: Duration,
    pub memory_limit: u64,
    /// Shared data and queues are shared among plugins with the same `vm_id`.
    pub vm_id: Option<String>,
    /// More traps than this within a minute, across the workers, open the plugin's circuit.
    pub max_traps_per_minute: u32,
    /// How long an open circuit answers without running the plugin before a probe.
    pub circuit_open_time: Duration,
    /// One VM and root context for the gateway (not per worker), attached to no route.
    pub singleton: bool,
    pub origin: Origin,
}
// === impl Config ===

impl Config {
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|cluster| cluster.name == name)
    }
}

/// True when every label the subset asks for is on the endpoint with the same value.
pub fn subset_matches(
    subset: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    subset
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}
/// Names of the listeners a virtual host is bound to.
pub fn vhost_listeners<'a>(vhost: &'a VirtualHost, listeners: &'a [Listener]) -> HashSet<&'a str> {
    match &vhost.listeners {
        Some(names) => names.iter().map(String::as_str).collect(),
        None => listeners
            .iter()
            .map(|listener| listener.name.as_str())
            .collect(),
    }
}

/// What a plugin's trap does to the request that hit it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// A trap answers its request 503.
    #[default]
    FailClosed,
    /// A trap skips the plugin for the rest of its request.
    FailOpen,
    /// Envoy's FAIL_RELOAD, kept for existing policies: every policy now gets a fresh VM
    /// after a trap, so this answers like `FailClosed`.
    Reload,
}

impl FailurePolicy {
    /// The name policies write.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailClosed => "fail_closed",
            Self::FailOpen => "fail_open",
            Self::Reload => "reload",
        }
    }
}

/// Where a plugin runs when it does not run everywhere: the routes of these virtual hosts and
/// these routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyTo {
    pub virtual_hosts: Vec<String>,
    pub routes: Vec<String>,
}
