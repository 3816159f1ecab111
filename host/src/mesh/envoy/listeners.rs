//! Listeners: one Envoy listener per policy listener, each with the HTTP connection manager
//! carrying the server settings Envoy has, its routes and the HTTP filters. A TLS listener
//! has one filter chain per certificate, chosen by SNI, and the first certificate's chain
//! again as the default for clients without SNI or with another name, as Tollgate chooses.

use std::collections::HashSet;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Map, Value};

use super::plugins::Filters;
use super::routes::VirtualHostEntry;
use super::sources::{field, Sources};
use super::{duration, file_source, socket_address, typed, Losses};
use crate::config::{self, Config, EscapedSlashesAction, Listener, ListenerTls, TlsVersion};

const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const DOWNSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// Streams per HTTP/2 connection, as Tollgate caps them.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Envoy's largest `max_request_headers_kb`.
const MAX_REQUEST_HEADERS_KB: usize = 8192;

/// Losses of the `server` section: settings Envoy has no field for.
pub(super) fn server_losses(config: &Config, sources: &Sources, losses: &mut Losses) {
    let Some((origin, server)) = &sources.server else {
        return;
    };
    let mut lose = |name: &str, reason: &str| losses.add(field(origin, name), reason);
    if server.drain_timeout.is_some() {
        // Envoy's option takes whole seconds.
        let seconds = config.server.drain_timeout.as_secs_f64().ceil();
        lose(
            "drain_timeout",
            &format!(
                "Envoy takes its drain time from the command line, not the bootstrap: start it with --drain-time-s {seconds}"
            ),
        );
    }
    if server.body_read_timeout.is_some() {
        lose(
            "body_read_timeout",
            "Envoy has no timeout for a stalled request body; only stream_idle_timeout resets it",
        );
    }
    if server.max_request_body_bytes.is_some() {
        lose(
            "max_request_body_bytes",
            "Envoy has no limit on the size of a request body it streams; only what it buffers \
             is capped (max_buffered_body_bytes, exported as per_connection_buffer_limit_bytes)",
        );
    }
    if let Some(bytes) = server.max_request_header_bytes {
        if bytes % 1024 != 0 || bytes / 1024 > MAX_REQUEST_HEADERS_KB {
            lose(
                "max_request_header_bytes",
                &format!(
                    "Envoy counts request headers in KiB (1 to {MAX_REQUEST_HEADERS_KB}); written as {} KiB",
                    header_kb(bytes)
                ),
            );
        }
    }
    if let Some(access_log) = &server.access_log {
        let reason = "Envoy's access logs cannot redact values; the export configures no access \
                      log, and one added by hand must leave these values out of its format";
        if !access_log.redact_query_params.is_empty() {
            lose("access_log.redact_query_params", reason);
        }
        if !access_log.redact_headers.is_empty() {
            lose("access_log.redact_headers", reason);
        }
    }
    if let Some(limits) = &server.plugin_limits {
        let reason = "Envoy does not bound what plugins make the host hold";
        let written = [
            (
                "plugin_limits.shared_data_bytes",
                limits.shared_data_bytes.is_some(),
            ),
            (
                "plugin_limits.shared_data_keys",
                limits.shared_data_keys.is_some(),
            ),
            (
                "plugin_limits.shared_queue_length",
                limits.shared_queue_length.is_some(),
            ),
            ("plugin_limits.metrics", limits.metrics.is_some()),
            (
                "plugin_limits.callout_response_bytes",
                limits.callout_response_bytes.is_some(),
            ),
        ];
        for (name, _) in written.iter().filter(|(_, written)| *written) {
            lose(name, reason);
        }
    }
}

/// The runtime keys the bootstrap's static layer sets: each listener's connection limit.
pub(super) fn runtime(config: &Config) -> Value {
    let mut keys = Map::new();
    for listener in &config.listeners {
        keys.insert(
            format!(
                "envoy.resource_limits.listener.{}.connection_limit",
                listener.name
            ),
            json!(config.server.max_connections),
        );
    }
    Value::Object(keys)
}

/// Every listener, with the virtual hosts bound to it.
pub(super) fn listeners(
    config: &Config,
    virtual_hosts: &[VirtualHostEntry],
    filters: &Filters,
) -> Vec<Value> {
    config
        .listeners
        .iter()
        .map(|listener| {
            let bound = unique_domains(
                virtual_hosts
                    .iter()
                    .zip(&config.virtual_hosts)
                    .filter(|(_, vhost)| {
                        config::vhost_listeners(vhost, &config.listeners)
                            .contains(listener.name.as_str())
                    })
                    .map(|(entry, _)| entry.value.clone()),
            );
            let largest_body = virtual_hosts
                .iter()
                .map(|entry| entry.largest_direct_body)
                .max()
                .unwrap_or(0);
            let manager = connection_manager(config, listener, bound, largest_body, filters);
            envoy_listener(config, listener, manager)
        })
        .collect()
}

/// The virtual hosts of one listener with each domain left to the first that names it:
/// Tollgate routes a name to the first virtual host that claims it, and Envoy refuses a
/// route configuration that names a domain twice. A virtual host left with no domain is
/// never chosen, and is left out.
fn unique_domains(virtual_hosts: impl Iterator<Item = Value>) -> Vec<Value> {
    let mut claimed = HashSet::new();
    virtual_hosts
        .filter_map(|mut vhost| {
            let domains: Vec<Value> = vhost["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|domain| claimed.insert(domain.as_str().unwrap_or_default().to_string()))
                .cloned()
                .collect();
            if domains.is_empty() {
                return None;
            }
            vhost["domains"] = Value::Array(domains);
            Some(vhost)
        })
        .collect()
}

fn envoy_listener(config: &Config, listener: &Listener, manager: Value) -> Value {
    let filters = json!([{ "name": "envoy.filters.network.http_connection_manager", "typed_config": manager }]);
    let mut value = json!({
        "name": listener.name,
        "address": socket_address(&listener.address.ip().to_string(), listener.address.port()),
        // What a paused plugin may make the proxy hold, refused 413 past it in both.
        "per_connection_buffer_limit_bytes": config.server.max_buffered_body_bytes.min(u64::from(u32::MAX)),
    });
    match &listener.tls {
        None => value["filter_chains"] = json!([{ "filters": filters }]),
        Some(tls) => {
            let chains = tls_filter_chains(tls, &filters);
            value["default_filter_chain"] = json!({
                "name": format!("{}-default", listener.name),
                "transport_socket": downstream_tls(tls, &tls.certificates[0].cert, &tls.certificates[0].key),
                "filters": filters,
            });
            value["filter_chains"] = Value::Array(chains);
            value["listener_filters"] = json!([{
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": typed("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector", json!({})),
            }]);
        }
    }
    value
}

/// One filter chain per certificate, matched by SNI. A name a former certificate already
/// answers for stays with it (Tollgate picks the first), and a certificate left with no
/// name of its own is never chosen, so it gets no chain.
fn tls_filter_chains(tls: &ListenerTls, filters: &Value) -> Vec<Value> {
    let mut taken = HashSet::new();
    let mut chains = Vec::new();
    for (i, certificate) in tls.certificates.iter().enumerate() {
        let names = if certificate.server_names.is_empty() {
            certificate_dns_names(&certificate.cert)
        } else {
            certificate.server_names.clone()
        };
        let names: Vec<String> = names
            .into_iter()
            .filter(|name| taken.insert(name.to_ascii_lowercase()))
            .collect();
        if names.is_empty() {
            continue;
        }
        chains.push(json!({
            "name": format!("certificate-{i}"),
            "filter_chain_match": { "server_names": names },
            "transport_socket": downstream_tls(tls, &certificate.cert, &certificate.key),
            "filters": filters,
        }));
    }
    chains
}

fn downstream_tls(tls: &ListenerTls, cert: &Path, key: &Path) -> Value {
    let mut common = json!({
        "tls_params": {
            "tls_minimum_protocol_version": match tls.min_version {
                TlsVersion::Tls12 => "TLSv1_2",
                TlsVersion::Tls13 => "TLSv1_3",
            },
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [{
            "certificate_chain": file_source(cert),
            "private_key": file_source(key),
        }],
        "alpn_protocols": tls.alpn,
    });
    let mut context = json!({});
    if let Some(auth) = &tls.client_auth {
        common["validation_context"] = json!({ "trusted_ca": file_source(&auth.ca) });
        context["require_client_certificate"] = json!(auth.required);
    }
    context["common_tls_context"] = common;
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(DOWNSTREAM_TLS, context),
    })
}

/// The DNS names of a certificate file's first certificate: the names it answers for
/// when the policies list none.
fn certificate_dns_names(path: &Path) -> Vec<String> {
    let Ok(pem) = std::fs::read(path) else {
        return Vec::new();
    };
    let Some(Ok(cert)) = CertificateDer::pem_slice_iter(&pem).next() else {
        return Vec::new();
    };
    match webpki::EndEntityCert::try_from(&cert) {
        Ok(cert) => cert
            .valid_dns_names()
            .map(|name| name.to_ascii_lowercase())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn connection_manager(
    config: &Config,
    listener: &Listener,
    virtual_hosts: Vec<Value>,
    largest_direct_body: usize,
    filters: &Filters,
) -> Value {
    let server = &config.server;
    let normalization = server.normalization;
    let mut route_config = json!({
        "name": listener.name,
        "virtual_hosts": virtual_hosts,
        // Tollgate sets the port aside when it matches a host.
        "ignore_port_in_host_matching": true,
    });
    // Envoy refuses direct response bodies over 4 KiB unless told otherwise.
    if largest_direct_body > 4096 {
        route_config["max_direct_response_body_size_bytes"] = json!(largest_direct_body);
    }
    let mut manager = typed(
        HCM,
        json!({
            "stat_prefix": listener.name,
            "codec_type": "AUTO",
            // Tollgate is the front door: the client's address is the peer's, appended to
            // X-Forwarded-For.
            "use_remote_address": true,
            "normalize_path": normalization.normalize_path,
            "merge_slashes": normalization.merge_slashes,
            "path_with_escaped_slashes_action": match normalization.escaped_slashes {
                EscapedSlashesAction::Reject => "REJECT_REQUEST",
                EscapedSlashesAction::Keep => "KEEP_UNCHANGED",
                EscapedSlashesAction::Unescape => "UNESCAPE_AND_FORWARD",
            },
            "strip_trailing_host_dot": normalization.strip_trailing_host_dot,
            "max_request_headers_kb": header_kb(server.max_request_header_bytes),
            "request_headers_timeout": duration(server.header_read_timeout),
            "stream_idle_timeout": duration(server.stream_idle_timeout),
            "common_http_protocol_options": { "idle_timeout": duration(server.idle_timeout) },
            "http2_protocol_options": { "max_concurrent_streams": MAX_CONCURRENT_STREAMS },
            "route_config": route_config,
            "http_filters": filters.http_filters(),
        }),
    );
    if let Some(tracing) = &server.tracing {
        manager["tracing"] = super::tracing::connection_manager_tracing(tracing, config);
    }
    manager
}

/// Request header bytes in Envoy's unit, rounded up, within Envoy's range.
fn header_kb(bytes: usize) -> usize {
    bytes.div_ceil(1024).clamp(1, MAX_REQUEST_HEADERS_KB)
}
