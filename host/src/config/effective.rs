//! The effective view of the policies, what admin `/config` shows: the merged documents with
//! plugin secrets redacted, and every value the gateway runs with (defaults included) written
//! in, so that it shows what runs rather than what was written.

use super::model::{Action, Config, HashOn, LoadBalancing, TlsVersion};
use super::raw::{self, SourceFile};
use super::{duration, redact};

/// The effective configuration of `config`, validated from `files`.
pub(super) fn view(files: &[SourceFile], config: &Config) -> serde_json::Value {
    let mut value = merged_documents(files);
    fill_defaults(&mut value, config);
    value
}

/// The merged documents as JSON, with plugin secrets redacted.
fn merged_documents(files: &[SourceFile]) -> serde_json::Value {
    let mut merged = raw::Document::default();
    for file in files {
        let doc = &file.document;
        if merged.server.is_none() {
            merged.server = doc.server.clone();
        }
        merged.listeners.extend(doc.listeners.iter().cloned());
        merged.clusters.extend(doc.clusters.iter().cloned());
        merged
            .virtual_hosts
            .extend(doc.virtual_hosts.iter().cloned());
        merged.plugins.extend(doc.plugins.iter().cloned());
    }
    let mut value = serde_json::to_value(&merged).unwrap_or_default();
    if let Some(plugins) = value.get_mut("plugins").and_then(|p| p.as_array_mut()) {
        for plugin in plugins {
            for field in ["config", "vm_config", "env", "route_config"] {
                if let Some(section) = plugin.get_mut(field) {
                    redact::redact_secrets(section);
                }
            }
        }
    }
    value
}

/// Writes the values the gateway actually uses (defaults included) into the effective
/// configuration, so that `/config` shows what runs rather than what was written.
fn fill_defaults(value: &mut serde_json::Value, config: &Config) {
    use serde_json::json;
    let server = &config.server;
    value["server"] = json!({
        "max_request_header_bytes": server.max_request_header_bytes,
        "max_request_body_bytes": server.max_request_body_bytes,
        "max_buffered_body_bytes": server.max_buffered_body_bytes,
        "header_read_timeout": duration::format(server.header_read_timeout),
        "idle_timeout": duration::format(server.idle_timeout),
        "drain_timeout": duration::format(server.drain_timeout),
        "body_read_timeout": duration::format(server.body_read_timeout),
        "stream_idle_timeout": duration::format(server.stream_idle_timeout),
        "max_connections": server.max_connections,
        "normalize_path": server.normalization.normalize_path,
        "merge_slashes": server.normalization.merge_slashes,
        "path_with_escaped_slashes_action": server.normalization.escaped_slashes.as_str(),
        "strip_trailing_host_dot": server.normalization.strip_trailing_host_dot,
        "access_log": {
            "redact_query_params": server.access_log.redact_query_params,
            "redact_headers": server.access_log.redact_headers,
        },
        "plugin_limits": {
            "shared_data_bytes": server.plugin_limits.shared_data_bytes,
            "shared_data_keys": server.plugin_limits.shared_data_keys,
            "shared_queue_length": server.plugin_limits.shared_queue_length,
            "metrics": server.plugin_limits.metrics,
            "callout_response_bytes": server.plugin_limits.callout_response_bytes,
        },
        "node": {
            "id": server.node.id,
            "cluster": server.node.cluster,
            "metadata": server.node.metadata,
            "locality": {
                "region": server.node.locality.region,
                "zone": server.node.locality.zone,
                "sub_zone": server.node.locality.sub_zone,
            },
        },
    });
    if let Some(tracing) = &server.tracing {
        value["server"]["tracing"] = json!({
            "otlp_endpoint": tracing.otlp_endpoint,
            "sample_percent": tracing.sample_percent,
            "service_name": tracing.service_name,
        });
    }
    for (i, cluster) in config.clusters.iter().enumerate() {
        let Some(entry) = value["clusters"].get_mut(i) else {
            break;
        };
        entry["load_balancing"] = json!(cluster.load_balancing.as_str());
        entry["connect_timeout"] = json!(duration::format(cluster.connect_timeout));
        entry["http2"] = json!(cluster.http2);
        entry["health"] = json!({
            "consecutive_failures": cluster.health.consecutive_failures,
            "ejection_time": duration::format(cluster.health.ejection_time),
            "max_ejection_percent": cluster.health.max_ejection_percent,
            "panic_threshold": cluster.health.panic_threshold,
            "eject_on": cluster.health.eject_on.as_str(),
        });
        if let Some(active) = &cluster.health.active {
            entry["health"]["active"] = json!({
                "path": active.path,
                "interval": duration::format(active.interval),
                "timeout": duration::format(active.timeout),
                "healthy_threshold": active.healthy_threshold,
                "unhealthy_threshold": active.unhealthy_threshold,
            });
        }
        if cluster.load_balancing == LoadBalancing::RingHash {
            entry["hash_on"] = match &cluster.hash_on {
                HashOn::Header(name) => json!({ "header": name }),
                HashOn::Cookie(name) => json!({ "cookie": name }),
                HashOn::ClientIp => json!("client_ip"),
            };
        }
        entry["limits"] = json!({
            "max_requests": cluster.limits.max_requests,
            "max_idle_per_endpoint": cluster.limits.max_idle_per_endpoint,
            "idle_timeout": duration::format(cluster.limits.idle_timeout),
        });
    }
    for (i, listener) in config.listeners.iter().enumerate() {
        let (Some(entry), Some(tls)) = (value["listeners"].get_mut(i), &listener.tls) else {
            continue;
        };
        entry["tls"]["min_version"] = json!(match tls.min_version {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        });
        entry["tls"]["alpn"] = json!(tls.alpn);
    }
    for (i, vhost) in config.virtual_hosts.iter().enumerate() {
        for (j, route) in vhost.routes.iter().enumerate() {
            let Action::Forward(forward) = &route.action else {
                continue;
            };
            if let Some(entry) = value["virtual_hosts"][i]["routes"].get_mut(j) {
                entry["forward"]["timeout"] = json!(duration::format(forward.timeout));
            }
        }
    }
    for (i, plugin) in config.plugins.iter().enumerate() {
        if let Some(entry) = value["plugins"].get_mut(i) {
            entry["failure_policy"] = json!(plugin.failure_policy.as_str());
            entry["callback_timeout"] = json!(duration::format(plugin.callback_timeout));
            entry["memory_limit"] = json!(plugin.memory_limit);
            entry["max_traps_per_minute"] = json!(plugin.max_traps_per_minute);
            entry["circuit_open_time"] = json!(duration::format(plugin.circuit_open_time));
        }
    }
}
