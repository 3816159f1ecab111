//! Clusters: endpoints with their labels as `envoy.lb` metadata, subsets, load balancing,
//! HTTP/2, upstream TLS, outlier detection (Tollgate's passive health checking) and
//! circuit breakers (its limits).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{json, Value};

use super::sources::{field, Sources};
use super::{duration, file_source, socket_address, typed, Losses};
use crate::config::{
    Action, ActiveHealthSettings, Cluster, Config, EjectOn, LoadBalancing, SubjectAltName,
};
use crate::upstream::POINTS_PER_ENDPOINT;

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const UPSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// Tollgate lengthens an endpoint's ejection with each repeated ejection up to this many
/// times `ejection_time`.
const MAX_EJECTION_FACTOR: u32 = 10;

pub(super) fn clusters(config: &Config, sources: &Sources, losses: &mut Losses) -> Vec<Value> {
    let subsets = subset_keys(config);
    config
        .clusters
        .iter()
        .zip(&sources.clusters)
        .map(|(cluster, (origin, written))| {
            if written
                .limits
                .as_ref()
                .is_some_and(|l| l.max_idle_per_endpoint.is_some())
            {
                losses.add(
                    field(origin, "limits.max_idle_per_endpoint"),
                    "Envoy does not bound the idle connections it pools per endpoint",
                );
            }
            let mut value = json!({
                "name": cluster.name,
                "type": if cluster.endpoints.iter().all(|e| e.host.parse::<IpAddr>().is_ok()) {
                    "STATIC"
                } else {
                    "STRICT_DNS"
                },
                "connect_timeout": duration(cluster.connect_timeout),
                "lb_policy": match cluster.load_balancing {
                    LoadBalancing::RoundRobin => "ROUND_ROBIN",
                    LoadBalancing::LeastRequest => "LEAST_REQUEST",
                    LoadBalancing::RingHash => "RING_HASH",
                },
                "load_assignment": load_assignment(cluster),
                "typed_extension_protocol_options": {
                    HTTP_OPTIONS: http_options(cluster),
                },
                "outlier_detection": outlier_detection(cluster),
                "common_lb_config": {
                    "healthy_panic_threshold": { "value": cluster.health.panic_threshold },
                },
                "circuit_breakers": circuit_breakers(cluster),
            });
            if cluster.load_balancing == LoadBalancing::RingHash {
                value["ring_hash_lb_config"] = json!({
                    "minimum_ring_size": POINTS_PER_ENDPOINT * cluster.endpoints.len(),
                    "hash_function": "XX_HASH",
                });
            }
            if let Some(active) = &cluster.health.active {
                value["health_checks"] = json!([health_check(cluster, active)]);
            }
            if let Some(keys) = subsets.get(cluster.name.as_str()) {
                value["lb_subset_config"] = json!({
                    "fallback_policy": "NO_FALLBACK",
                    "subset_selectors": keys
                        .iter()
                        .map(|keys| json!({ "keys": keys }))
                        .collect::<Vec<_>>(),
                });
            }
            if cluster.tls.is_some() {
                value["transport_socket"] = upstream_tls(cluster, &field(origin, "tls"), losses);
            }
            value
        })
        .collect()
}

/// For each cluster, the label sets routes select subsets by.
fn subset_keys(config: &Config) -> BTreeMap<&str, BTreeSet<Vec<&str>>> {
    let mut keys: BTreeMap<&str, BTreeSet<Vec<&str>>> = BTreeMap::new();
    for route in config.virtual_hosts.iter().flat_map(|vhost| &vhost.routes) {
        let Action::Forward(forward) = &route.action else {
            continue;
        };
        for target in forward.targets.iter().filter(|t| !t.subset.is_empty()) {
            keys.entry(target.cluster.as_str())
                .or_default()
                .insert(target.subset.keys().map(String::as_str).collect());
        }
    }
    keys
}

/// `health.active`. Envoy checks a cluster without traffic only each `no_traffic_interval`
/// (60 s by default); Tollgate checks at `interval` whatever the traffic. The `Host` of a
/// check is the TLS server name, else the endpoint's address (its `hostname`).
fn health_check(cluster: &Cluster, active: &ActiveHealthSettings) -> Value {
    let mut http = json!({ "path": active.path });
    if let Some(server_name) = cluster
        .tls
        .as_ref()
        .and_then(|tls| tls.server_name.as_ref())
    {
        http["host"] = json!(server_name);
    }
    if cluster.http2 {
        http["codec_client_type"] = json!("HTTP2");
    }
    json!({
        "timeout": duration(active.timeout),
        "interval": duration(active.interval),
        "no_traffic_interval": duration(active.interval),
        "healthy_threshold": active.healthy_threshold,
        "unhealthy_threshold": active.unhealthy_threshold,
        "http_health_check": http,
    })
}

fn load_assignment(cluster: &Cluster) -> Value {
    let endpoints: Vec<Value> = cluster
        .endpoints
        .iter()
        .map(|endpoint| {
            let mut value = json!({
                "endpoint": { "address": socket_address(&endpoint.host, endpoint.port) },
            });
            if cluster.health.active.is_some() {
                value["endpoint"]["health_check_config"] = json!({ "hostname": endpoint.address });
            }
            if !endpoint.labels.is_empty() {
                value["metadata"] = json!({ "filter_metadata": { "envoy.lb": endpoint.labels } });
            }
            value
        })
        .collect();
    json!({
        "cluster_name": cluster.name,
        "endpoints": [{ "lb_endpoints": endpoints }],
    })
}

fn http_options(cluster: &Cluster) -> Value {
    let protocol = if cluster.http2 {
        json!({ "http2_protocol_options": {} })
    } else {
        json!({ "http_protocol_options": {} })
    };
    typed(
        HTTP_OPTIONS,
        json!({
            "common_http_protocol_options": { "idle_timeout": duration(cluster.limits.idle_timeout) },
            "explicit_http_config": protocol,
        }),
    )
}

/// Tollgate's passive health checking. `gateway_errors` is Envoy's gateway failure count
/// (connect failures, resets, timeouts, 502/503/504), `5xx` its 5xx count; success-rate
/// ejection, which Tollgate does not do, is off.
fn outlier_detection(cluster: &Cluster) -> Value {
    let health = &cluster.health;
    let mut value = json!({
        "base_ejection_time": duration(health.ejection_time),
        "max_ejection_time": duration(health.ejection_time * MAX_EJECTION_FACTOR),
        "max_ejection_percent": envoy_ejection_percent(health.max_ejection_percent, cluster.endpoints.len()),
        "enforcing_success_rate": 0,
    });
    match health.eject_on {
        EjectOn::GatewayErrors => {
            value["consecutive_gateway_failure"] = json!(health.consecutive_failures);
            value["enforcing_consecutive_gateway_failure"] = json!(100);
            value["enforcing_consecutive_5xx"] = json!(0);
        }
        EjectOn::Any5xx => {
            value["consecutive_5xx"] = json!(health.consecutive_failures);
            value["enforcing_consecutive_5xx"] = json!(100);
            value["enforcing_consecutive_gateway_failure"] = json!(0);
        }
    }
    value
}

/// Envoy's `max_ejection_percent` that ejects as many of `endpoints` as Tollgate's
/// `percent` does. Tollgate ejects an endpoint only if the ejected share stays within the
/// percentage (at most ⌊percent × n / 100⌋ endpoints); Envoy ejects one more while the
/// share already ejected is below it (⌈percent × n / 100⌉), so the percentage is lowered
/// to the largest one that allows the same count.
fn envoy_ejection_percent(percent: u32, endpoints: usize) -> u32 {
    let endpoints = endpoints.max(1) as u64;
    let allowed = u64::from(percent.min(100)) * endpoints / 100;
    (allowed * 100 / endpoints) as u32
}

/// Tollgate bounds the requests in flight to a cluster and nothing else; Envoy's other
/// thresholds (connections, pending requests, retries) get the same bound so that their
/// own defaults do not refuse what Tollgate would send.
fn circuit_breakers(cluster: &Cluster) -> Value {
    let limit = cluster.limits.max_requests;
    json!({
        "thresholds": [{
            "priority": "DEFAULT",
            "max_requests": limit,
            "max_pending_requests": limit,
            "max_connections": limit,
            "max_retries": limit,
        }],
    })
}

/// HTTPS to the endpoints: the SNI and the name verified are `tls.server_name`, else the
/// endpoints' host (Envoy verifies one name per cluster), or the names verified are
/// `tls.subject_alt_names`; the CA is `tls.ca`, else the system's roots; `tls.cert` and
/// `tls.key` are the client certificate.
fn upstream_tls(cluster: &Cluster, tls_field: &str, losses: &mut Losses) -> Value {
    let tls = cluster.tls.as_ref().expect("called for TLS clusters");
    let hosts: BTreeSet<&str> = cluster.endpoints.iter().map(|e| e.host.as_str()).collect();
    let name = match &tls.server_name {
        Some(name) => Some(name.as_str()),
        None => {
            if hosts.len() > 1 {
                losses.add(
                    format!("{tls_field}.server_name"),
                    "Envoy verifies one name per cluster and the endpoints have several hosts; \
                     the first is verified for all (set server_name to choose)",
                );
            }
            hosts.iter().next().copied()
        }
    };
    let mut validation = match &tls.ca {
        Some(ca) => json!({ "trusted_ca": file_source(ca) }),
        None => json!({ "system_root_certs": {} }),
    };
    let mut context = json!({});
    if let Some(name) = name {
        let san_type = if name.parse::<IpAddr>().is_ok() {
            "IP_ADDRESS"
        } else {
            context["sni"] = json!(name);
            "DNS"
        };
        validation["match_typed_subject_alt_names"] =
            json!([{ "san_type": san_type, "matcher": { "exact": name } }]);
    }
    // Expected names replace the server name's check, as they do in Tollgate.
    if !tls.subject_alt_names.is_empty() {
        let names: Vec<Value> = tls
            .subject_alt_names
            .iter()
            .map(|name| {
                let san_type = match name {
                    SubjectAltName::Dns(_) => "DNS",
                    SubjectAltName::Uri(_) => "URI",
                };
                json!({ "san_type": san_type, "matcher": { "exact": name.as_str() } })
            })
            .collect();
        validation["match_typed_subject_alt_names"] = json!(names);
    }
    context["common_tls_context"] = json!({
        "validation_context": validation,
        "alpn_protocols": if cluster.http2 { ["h2"] } else { ["http/1.1"] },
    });
    if let Some(client) = &tls.client_certificate {
        context["common_tls_context"]["tls_certificates"] = json!([{
            "certificate_chain": file_source(&client.cert),
            "private_key": file_source(&client.key),
        }]);
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(UPSTREAM_TLS, context),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_percent_allows_the_same_count_as_tollgate() {
        // Tollgate at 50 %: one endpoint never ejected, two → one, four → two.
        assert_eq!(envoy_ejection_percent(50, 1), 0);
        assert_eq!(envoy_ejection_percent(50, 2), 50);
        assert_eq!(envoy_ejection_percent(50, 4), 50);
        // Three endpoints at 50 %: Tollgate ejects one; Envoy at 33 % ejects one
        // (0 % < 33 %) and stops there (33.3 % ≥ 33 %).
        assert_eq!(envoy_ejection_percent(50, 3), 33);
        assert_eq!(envoy_ejection_percent(100, 3), 100);
    }
}
