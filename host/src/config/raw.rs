//! The policy files as written: serde structs that mirror the YAML/JSON documents field for
//! field. Nothing here is validated beyond its shape; `config::validate` turns these into the
//! typed model the gateway runs on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One policy document. Every section is optional so that a folder can split its
/// configuration across files as it likes.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default)]
    pub server: Option<Server>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(default)]
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub max_request_header_bytes: Option<usize>,
    pub max_request_body_bytes: Option<u64>,
    /// What the gateway holds for one plugin while it pauses a body (either direction).
    pub max_buffered_body_bytes: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    /// A request body with no progress for this long is answered 408 and its connection closed.
    pub body_read_timeout: Option<String>,
    /// An HTTP/2 stream (or HTTP/1.1 request) with no activity either way for this long is
    /// reset.
    pub stream_idle_timeout: Option<String>,
    /// Open connections per listener; more are accepted and closed at once.
    pub max_connections: Option<usize>,
    /// RFC 3986 dot-segment removal and decoding of percent-encoded unreserved characters.
    pub normalize_path: Option<bool>,
    /// `//` in a path becomes `/`.
    pub merge_slashes: Option<bool>,
    /// What to do with `%2F` and `%5C` in a path.
    pub path_with_escaped_slashes_action: Option<EscapedSlashesAction>,
    /// `api.example.com.` matches `api.example.com`.
    pub strip_trailing_host_dot: Option<bool>,
    pub access_log: Option<AccessLog>,
    pub plugin_limits: Option<PluginLimits>,
    /// Who this gateway is, as plugins read it (`node`, `xds.node`).
    pub node: Option<Node>,
    /// Distributed tracing: spans sent to an OpenTelemetry collector. Absent: off.
    pub tracing: Option<Tracing>,
}

/// Where and how often the gateway reports spans.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The collector's OTLP/HTTP traces URL, `http://host:port/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// Share of requests without a sampled-or-not parent that are traced, 0 to 100.
    pub sample_percent: Option<f64>,
    /// The `service.name` the spans carry.
    pub service_name: Option<String>,
}

/// The gateway's identity as a proxy: Envoy's node, which plugins written for Envoy and
/// Istio read (`node.id`, `node.metadata.KEY`).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: Option<String>,
    pub cluster: Option<String>,
    /// Any JSON object.
    pub metadata: Option<serde_json::Value>,
    pub locality: Option<Locality>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub sub_zone: String,
}

/// What the gateway does with `%2F` / `%5C` (encoded `/` and `\`) in a request path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesAction {
    /// Answer 400.
    #[default]
    Reject,
    /// Leave them encoded: routing and the upstream see `%2F`.
    Keep,
    /// Decode them to `/` and `\` before normalizing, routing and forwarding.
    Unescape,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// Query parameters whose values are logged as `REDACTED`.
    #[serde(default)]
    pub redact_query_params: Vec<String>,
    /// Headers whose values are logged as `REDACTED`.
    #[serde(default)]
    pub redact_headers: Vec<String>,
}

/// Bounds on what plugins may make the host hold, per `vm_id` unless said otherwise.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    pub shared_data_bytes: Option<u64>,
    pub shared_data_keys: Option<usize>,
    pub shared_queue_length: Option<usize>,
    /// Metrics a plugin may define.
    pub metrics: Option<usize>,
    /// Largest HTTP or gRPC callout response body a plugin receives.
    pub callout_response_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub protocol: Protocol,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Https,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub certificates: Vec<Certificate>,
    pub min_version: Option<String>,
    pub alpn: Option<Vec<String>>,
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    pub ca: String,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// What `ring_hash` hashes: a header, a cookie or the client's address.
    pub hash_on: Option<HashOn>,
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub http2: bool,
    pub tls: Option<UpstreamTls>,
    pub health: Option<Health>,
    pub limits: Option<ClusterLimits>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    LeastRequest,
    RingHash,
}

/// The request property `ring_hash` hashes: `{ header: NAME }`, `{ cookie: NAME }` or
/// `client_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "`client_ip`, `{ header: NAME }` or `{ cookie: NAME }`"
)]
pub enum HashOn {
    Keyword(HashOnKeyword),
    Header { header: String },
    Cookie { cookie: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOnKeyword {
    ClientIp,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    /// The client certificate chain presented to the endpoints (mutual TLS), with `key`.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Names the endpoints' certificates must carry one of: DNS names, or URIs (`://`).
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub consecutive_failures: Option<u32>,
    pub ejection_time: Option<String>,
    pub max_ejection_percent: Option<u32>,
    /// Below this percentage of healthy endpoints, ejection is ignored and every endpoint
    /// gets traffic (Envoy's panic threshold).
    pub panic_threshold: Option<u32>,
    /// Which answers count as failures toward `consecutive_failures`.
    pub eject_on: Option<EjectOn>,
    /// Active health checks: the gateway asks each endpoint itself.
    pub active: Option<ActiveHealth>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealth {
    pub path: String,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

/// What counts as an endpoint failure for outlier ejection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectOn {
    /// Connect failures, resets, timeouts and 502, 503, 504 answers.
    #[default]
    GatewayErrors,
    /// The above and every other 5xx answer.
    #[serde(rename = "5xx")]
    Any5xx,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLimits {
    pub max_requests: Option<usize>,
    pub max_idle_per_endpoint: Option<usize>,
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub listeners: Option<Vec<String>>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    pub forward: Option<Forward>,
    pub redirect: Option<Redirect>,
    pub direct_response: Option<DirectResponse>,
    pub fault: Option<Fault>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query: Vec<ValueMatch>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    pub prefix: Option<String>,
    pub exact: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    pub exact: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub cluster: Option<String>,
    pub split: Option<Vec<WeightedTarget>>,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<String>,
    pub retries: Option<Retries>,
    pub mirror: Option<Mirror>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    pub cluster: String,
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub prefix: Option<String>,
    pub regex: Option<RegexRewrite>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    pub attempts: u32,
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default)]
    pub status_codes: Vec<u16>,
    /// Retry POST, PATCH and other non-idempotent requests on every condition in `on`, not
    /// only when the upstream cannot have received them.
    #[serde(default)]
    pub non_idempotent: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub cluster: String,
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub code: Option<u16>,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub percent: f64,
    pub fixed: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub percent: f64,
    pub status: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    pub name: String,
    pub module: String,
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default)]
    pub vm_config: serde_json::Value,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default)]
    pub priority: i32,
    pub apply_to: Option<ApplyTo>,
    #[serde(default)]
    pub route_config: BTreeMap<String, serde_json::Value>,
    pub callback_timeout: Option<String>,
    pub memory_limit: Option<u64>,
    pub vm_id: Option<String>,
    pub max_traps_per_minute: Option<u32>,
    pub circuit_open_time: Option<String>,
    /// One VM and root context for the whole gateway, attached to no route (Envoy's
    /// `WasmService` with `singleton: true`).
    #[serde(default)]
    pub singleton: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyTo {
    #[serde(default)]
    pub virtual_hosts: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
}

/// One parsed policy file.
pub(crate) struct SourceFile {
    /// The name shown in errors: relative to the policies folder.
    pub name: String,
    pub document: Document,
}
