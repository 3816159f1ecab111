//! `server.tracing` as Envoy's OpenTelemetry tracer: the connection manager's `tracing`
//! (`envoy.tracers.opentelemetry`, OTLP/HTTP to the collector through a cluster of its own)
//! with `random_sampling` from `sample_percent`. Envoy, like Tollgate, continues a client's
//! `traceparent` and its sampling decision, and gives each upstream attempt its own span.

use serde_json::{json, Value};

use super::{duration, socket_address, typed};
use crate::config::{Config, TracingSettings};

const OPENTELEMETRY_CONFIG: &str = "envoy.config.trace.v3.OpenTelemetryConfig";

/// How long Envoy waits for the collector to take one export, as Tollgate does.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The collector's cluster name, made distinct from every policy cluster's.
fn collector_cluster_name(config: &Config) -> String {
    let mut name = "tollgate-tracing-collector".to_string();
    while config.clusters.iter().any(|cluster| cluster.name == name) {
        name.push('_');
    }
    name
}

/// The HTTP connection manager's `tracing` field.
pub(super) fn connection_manager_tracing(tracing: &TracingSettings, config: &Config) -> Value {
    json!({
        "random_sampling": { "value": tracing.sample_percent },
        "spawn_upstream_span": true,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": typed(OPENTELEMETRY_CONFIG, json!({
                "http_service": {
                    "http_uri": {
                        "uri": tracing.otlp_endpoint,
                        "cluster": collector_cluster_name(config),
                        "timeout": duration(EXPORT_TIMEOUT),
                    },
                },
                "service_name": tracing.service_name,
            })),
        },
    })
}

/// The cluster Envoy sends spans through.
pub(super) fn collector_cluster(tracing: &TracingSettings, config: &Config) -> Value {
    let name = collector_cluster_name(config);
    json!({
        "name": name,
        "type": if tracing.collector_host.parse::<std::net::IpAddr>().is_ok() {
            "STATIC"
        } else {
            "STRICT_DNS"
        },
        "connect_timeout": duration(EXPORT_TIMEOUT),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{
                "endpoint": {
                    "address": socket_address(&tracing.collector_host, tracing.collector_port),
                },
            }] }],
        },
    })
}
