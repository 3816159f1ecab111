//! Pure ip-restriction logic: CIDR parsing and matching, client address selection.

use std::net::IpAddr;

use serde::Deserialize;
use tollgate_sdk::config::ConfigError;

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// When not empty, only clients in one of these ranges pass.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Clients in one of these ranges are refused (checked before `allow`).
    #[serde(default)]
    pub deny: Vec<String>,
    /// 0: the client is the connection's peer (`source.address`). N > 0: the gateway sits
    /// behind N trusted proxies and the client is the Nth address from the right of
    /// `X-Forwarded-For` (every line of it, in order). `trusted_proxy_hops`, its former
    /// name, is still read so that existing policies keep working.
    #[serde(default, alias = "trusted_proxy_hops")]
    pub trusted_hops: usize,
    /// Status of the refusal.
    #[serde(default = "default_status")]
    pub status: u32,
    /// Message in the JSON body of the refusal.
    #[serde(default = "default_message")]
    pub message: String,
}

fn default_status() -> u32 {
    403
}
fn default_message() -> String {
    "your IP address is not allowed".into()
}

/// An address range: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32`, `/128`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let network = normalize(network);
        if mask(network, prefix) != network {
            return Err(format!(
                "{text:?}: host bits are set (did you mean {}/{prefix}?)",
                mask(network, prefix)
            ));
        }
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are treated as IPv4.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct IpRestriction {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub trusted_hops: usize,
    pub status: u32,
    pub message: String,
}

impl IpRestriction {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let parse = |field: &str, list: &[String]| -> Result<Vec<Cidr>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, text)| {
                    Cidr::parse(text).map_err(|e| ConfigError::new(format!("{field}[{i}]"), e))
                })
                .collect()
        };
        let allow = parse("allow", &config.allow)?;
        let deny = parse("deny", &config.deny)?;
        if allow.is_empty() && deny.is_empty() {
            return Err(ConfigError::new(
                "allow",
                "give at least one range in allow or deny",
            ));
        }
        if !(400..=599).contains(&config.status) {
            return Err(ConfigError::new("status", "must be a 4xx or 5xx status"));
        }
        if config.trusted_hops > 16 {
            return Err(ConfigError::new("trusted_hops", "must be at most 16"));
        }
        Ok(Self {
            allow,
            deny,
            trusted_hops: config.trusted_hops,
            status: config.status,
            message: config.message,
        })
    }

    /// The client address: the peer when no proxy is trusted; else the Nth entry from the
    /// right of `X-Forwarded-For` (all values joined); the peer again when the header has
    /// fewer entries than trusted hops (the request did not come through them).
    pub fn client_ip(&self, peer: Option<&str>, forwarded_for: &[String]) -> Option<IpAddr> {
        let parse = |text: &str| tollgate_sdk::strip_port(text.trim()).parse::<IpAddr>().ok();
        if self.trusted_hops == 0 {
            return parse(peer?);
        }
        let entries: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        if entries.len() < self.trusted_hops {
            return parse(peer?);
        }
        parse(entries[entries.len() - self.trusted_hops])
    }

    /// Whether `ip` may pass (`None`, an unknown address, passes only without an allow list).
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else {
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|range| range.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|range| range.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn restriction(config: serde_json::Value) -> Result<IpRestriction, ConfigError> {
        tollgate_sdk::config::parse::<Config>(config.to_string().as_bytes())
            .and_then(IpRestriction::new)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn ranges_match_v4_and_v6() {
        let r = restriction(
            json!({"allow": ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"], "deny": ["10.9.0.0/16"]}),
        )
        .unwrap();
        assert!(r.allows(ip("10.1.2.3")));
        assert!(!r.allows(ip("10.9.2.3")));
        assert!(!r.allows(ip("11.0.0.1")));
        assert!(r.allows(ip("2001:db8:1::5")));
        assert!(!r.allows(ip("2001:db9::1")));
        assert!(r.allows(ip("127.0.0.1")));
        assert!(r.allows(ip("::ffff:10.0.0.1")), "IPv4-mapped IPv6");
        assert!(!r.allows(None));
        let open = restriction(json!({"deny": ["0.0.0.0/0"]})).unwrap();
        assert!(!open.allows(ip("8.8.8.8")));
        assert!(open.allows(ip("::1")));
    }

    #[test]
    fn the_client_is_the_nth_forwarded_address_from_the_right() {
        let mut r = restriction(json!({"deny": ["1.1.1.1"]})).unwrap();
        let xff = vec!["9.9.9.9, 1.1.1.1".to_string(), "2.2.2.2".to_string()];
        assert_eq!(r.client_ip(Some("127.0.0.1:5000"), &xff), ip("127.0.0.1"));
        r.trusted_hops = 1;
        assert_eq!(r.client_ip(Some("127.0.0.1:5000"), &xff), ip("2.2.2.2"));
        r.trusted_hops = 2;
        assert_eq!(r.client_ip(Some("127.0.0.1:5000"), &xff), ip("1.1.1.1"));
        r.trusted_hops = 4;
        assert_eq!(
            r.client_ip(Some("[::1]:5000"), &xff),
            ip("::1"),
            "too few entries: the peer"
        );
        r.trusted_hops = 1;
        assert_eq!(
            r.client_ip(None, &["[2001:db8::1]:443".to_string()]),
            ip("2001:db8::1")
        );
        assert_eq!(r.client_ip(None, &["junk".to_string()]), None);
    }

    #[test]
    fn bad_configurations_name_the_field() {
        assert_eq!(
            restriction(json!({"allow": ["10.0.0.0/33"]}))
                .unwrap_err()
                .path(),
            "allow[0]"
        );
        let e = restriction(json!({"deny": ["1.2.3.4", "10.0.0.1/8"]})).unwrap_err();
        assert_eq!(e.path(), "deny[1]");
        assert!(e.message().contains("10.0.0.0/8"), "{e}");
        assert_eq!(
            restriction(json!({"allow": ["nope"]})).unwrap_err().path(),
            "allow[0]"
        );
        assert_eq!(restriction(json!({})).unwrap_err().path(), "allow");
        assert!(restriction(json!({"allow": ["::1"], "trusted_proxies": 1}))
            .unwrap_err()
            .to_string()
            .contains("trusted_proxies"));
        assert!(restriction(json!({"allow": ["::1"], "trusted_hops": 17}))
            .unwrap_err()
            .to_string()
            .contains("trusted_hops"));
    }

    #[test]
    fn trusted_hops_keeps_its_former_name_as_an_alias() {
        let named = restriction(json!({"allow": ["::1"], "trusted_hops": 2})).unwrap();
        assert_eq!(named.trusted_hops, 2);
        let former = restriction(json!({"allow": ["::1"], "trusted_proxy_hops": 3})).unwrap();
        assert_eq!(former.trusted_hops, 3);
    }
}
