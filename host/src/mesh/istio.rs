//! What `export istio` and `import istio` agree on, so that an import of an export (and
//! the other way round) gives back what went in: the API versions, the names derived from
//! one side for the other (cluster hosts, subset and secret names), the plugin phases and
//! the duration formats.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

pub const NETWORKING_API: &str = "networking.istio.io/v1";
pub const EXTENSIONS_API: &str = "extensions.istio.io/v1alpha1";

/// The Gateway every VirtualService is bound to.
pub const GATEWAY_NAME: &str = "tollgate";

/// The labels of Istio's ingress gateway workload, which the Gateway and the WasmPlugins
/// select.
pub fn gateway_selector() -> Value {
    json!({ "istio": "ingressgateway" })
}

/// A cluster whose name is not a DNS name gets a host under this domain: the ServiceEntry
/// declares it, the DestinationRule and the routes name it.
const CLUSTER_HOST_DOMAIN: &str = "tollgate.internal";

/// The Istio host of a cluster: its name when that is already a DNS name, else
/// `NAME.tollgate.internal`.
pub fn cluster_host(cluster: &str) -> String {
    if cluster.contains('.') {
        cluster.to_string()
    } else {
        format!("{cluster}.{CLUSTER_HOST_DOMAIN}")
    }
}

/// The cluster a host names: the inverse of [`cluster_host`].
pub fn host_cluster(host: &str) -> String {
    host.strip_suffix(&format!(".{CLUSTER_HOST_DOMAIN}"))
        .filter(|name| !name.contains('.'))
        .unwrap_or(host)
        .to_string()
}

/// The name of the DestinationRule subset of endpoints with these labels: the label values
/// in key order, joined by `-`, as a DNS label (`{version: v1}` is `v1`).
pub fn subset_name(labels: &BTreeMap<String, String>) -> String {
    let joined: Vec<String> = labels.values().map(|value| dns_label(value)).collect();
    let name = joined.join("-");
    if name.is_empty() {
        "all".to_string()
    } else {
        name
    }
}

/// Lower-case letters, digits and `-`, as Kubernetes names and Istio subsets need them.
pub fn dns_label(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').to_string()
}

/// The Kubernetes secret that holds a certificate and its key for Istio: the certificate
/// file's name without its extension (`certs/demo.crt` is `demo`).
pub fn credential_name(cert_path: &str) -> String {
    let file = cert_path.rsplit('/').next().unwrap_or(cert_path);
    let stem = file.split_once('.').map_or(file, |(stem, _)| stem);
    dns_label(stem)
}

/// Where an imported listener reads the files of a secret: `certs/NAME.crt`, `.key`, and
/// for mutual TLS the CA of `NAME-cacert` (Istio's own naming of a gateway's CA secret).
pub fn credential_files(credential: &str) -> (String, String) {
    (
        format!("certs/{credential}.crt"),
        format!("certs/{credential}.key"),
    )
}

pub fn client_ca_file(credential: &str) -> String {
    format!("certs/{credential}-cacert.crt")
}

/// The CA a cluster verifies its endpoints with, as the secret a DestinationRule names.
pub fn upstream_ca_file(credential: &str) -> String {
    format!("certs/{credential}.crt")
}

/// Istio runs a gateway's plugins in phases: AUTHN first, then AUTHZ, STATS and last
/// UNSPECIFIED_PHASE; within a phase, higher priority first. Tollgate runs plugins by
/// priority alone, so each phase stands for a band of priorities, higher bands earlier.
pub const PHASES: [(&str, i32); 4] = [
    ("AUTHN", 100),
    ("AUTHZ", 50),
    ("STATS", 1),
    ("UNSPECIFIED_PHASE", i32::MIN),
];

/// The phase of a Tollgate priority.
pub fn phase_of(priority: i32) -> &'static str {
    PHASES
        .iter()
        .find(|(_, lowest)| priority >= *lowest)
        .map_or("UNSPECIFIED_PHASE", |(phase, _)| phase)
}

/// Whether an Istio priority keeps its meaning as a Tollgate priority in this phase.
pub fn priority_fits_phase(phase: &str, priority: i32) -> bool {
    phase_of(priority) == phase
}

/// The lowest Tollgate priority of a phase (0 for UNSPECIFIED_PHASE).
pub fn phase_floor(phase: &str) -> i32 {
    PHASES
        .iter()
        .find(|(name, _)| *name == phase)
        .map_or(0, |(_, lowest)| (*lowest).max(0))
}

/// Whether a Gateway server host accepts a VirtualService host.
pub fn host_covers(accepted: &str, host: &str) -> bool {
    accepted == "*"
        || accepted == host
        || accepted
            .strip_prefix('*')
            .is_some_and(|suffix| host.ends_with(suffix))
}

/// A duration as Istio writes them: seconds with a fraction if needed (`5s`, `0.250s`).
pub fn istio_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{}.{:03}s", millis / 1000, millis % 1000)
    }
}

/// Parses the durations Istio accepts: a sequence of numbers with units (`1.5s`, `250ms`,
/// `1m30s`, `1h`).
pub fn parse_istio_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_hosts_go_both_ways() {
        assert_eq!(cluster_host("shop"), "shop.tollgate.internal");
        assert_eq!(host_cluster("shop.tollgate.internal"), "shop");
        assert_eq!(cluster_host("api.example.com"), "api.example.com");
        assert_eq!(host_cluster("api.example.com"), "api.example.com");
    }

    #[test]
    fn phases_keep_the_priority_order() {
        assert_eq!(phase_of(100), "AUTHN");
        assert_eq!(phase_of(90), "AUTHZ");
        assert_eq!(phase_of(10), "STATS");
        assert_eq!(phase_of(0), "UNSPECIFIED_PHASE");
        assert_eq!(phase_of(-5), "UNSPECIFIED_PHASE");
        assert!(priority_fits_phase("AUTHZ", 50));
        assert!(!priority_fits_phase("AUTHN", 5));
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(istio_duration(Duration::from_millis(250)), "0.250s");
        assert_eq!(istio_duration(Duration::from_secs(90)), "90s");
        assert_eq!(parse_istio_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_istio_duration("0.250s"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_istio_duration("5"), None);
    }

    #[test]
    fn server_hosts_cover_virtual_service_hosts() {
        assert!(host_covers("*", "a.example.com"));
        assert!(host_covers("*.example.com", "a.example.com"));
        assert!(!host_covers("*.example.com", "example.org"));
        assert!(host_covers("a.example.com", "a.example.com"));
    }

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(credential_name("certs/Demo_Site.crt"), "demo-site");
        let labels = BTreeMap::from([("version".to_string(), "v1".to_string())]);
        assert_eq!(subset_name(&labels), "v1");
    }
}
