//! The configuration: raw serde types, validated into [`Limits`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use tollgate_sdk::config::{ensure, ConfigError};
use tollgate_sdk::global_limit::{Global, RawGlobal};
use tollgate_sdk::ratelimit_service::Unit;
use tollgate_sdk::route::RouteRules;
use tollgate_sdk::shared::TokenBucket;

/// What a bucket is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// The consumer set by an auth plugin (`x-tollgate-consumer`).
    Consumer,
    /// The client's IP address (`source.address`).
    Ip,
    /// The value of a request header: `{ header: x-api-key }`.
    Header(String),
    /// The route: one bucket per route, shared by every client.
    Route,
}

/// What to do when the key is missing (no consumer, no such header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenMissing {
    /// Key by the client's IP address instead.
    #[default]
    Ip,
    /// One bucket shared by every request without a key.
    Shared,
    /// Do not limit such requests.
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    /// Tokens gained per second (may be fractional; 0: never refills).
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Alternatives to `requests_per_second`: one of the four is given.
    #[serde(default)]
    pub requests_per_minute: Option<f64>,
    #[serde(default)]
    pub requests_per_hour: Option<f64>,
    #[serde(default)]
    pub requests_per_day: Option<f64>,
    /// Bucket size: requests allowed at once. Default: the per-second rate rounded up, at
    /// least 1.
    #[serde(default)]
    pub burst: Option<u64>,
}

/// Rules for one route (or the default rules).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    #[serde(default = "default_key")]
    pub key: KeySource,
    #[serde(default)]
    pub when_missing: WhenMissing,
    /// Plan of consumers/keys not listed in `consumers`. Required unless every request is
    /// keyed by a listed consumer.
    #[serde(default)]
    pub default_plan: Option<String>,
    /// Consumer (or key value) → plan name.
    #[serde(default)]
    pub consumers: BTreeMap<String, String>,
    /// `false`: no limit on this route.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_key() -> KeySource {
    KeySource::Consumer
}

fn yes() -> bool {
    true
}

/// The whole configuration: plans, the default rules (flattened at the top level) and
/// per-route rules that replace them on the named routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub plans: BTreeMap<String, RawPlan>,
    #[serde(default = "default_key")]
    pub key: KeySource,
    #[serde(default)]
    pub when_missing: WhenMissing,
    #[serde(default)]
    pub default_plan: Option<String>,
    #[serde(default)]
    pub consumers: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Route name (`xds.route_name`) → rules for that route.
    #[serde(default)]
    pub routes: BTreeMap<String, RawRules>,
    /// Add the `RateLimit-*` headers to allowed responses (default true).
    #[serde(default = "yes")]
    pub headers: bool,
    /// Count in a rate limit service shared by every gateway replica instead of in this
    /// gateway's shared data (see `tollgate_sdk::global_limit`).
    #[serde(default)]
    pub global: Option<RawGlobal>,
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    /// Tells this plan of these rules from every other one the VM has validated, in any
    /// configuration: a [`BucketKey`](crate::logic::BucketKey) keeps the start of a key
    /// while requests keep to one plan.
    pub id: u64,
    /// Local mode: a token bucket in shared data.
    pub bucket: TokenBucket,
    /// Global mode: requests per window, in the unit the plan was written in.
    pub window: (u32, Unit),
}

/// Validated rules for a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// `"*"` for the default rules, else the route's name: part of the bucket key, so a
    /// route with its own rules has its own buckets.
    pub scope: String,
    pub key: KeySource,
    pub when_missing: WhenMissing,
    pub default_plan: Option<Plan>,
    pub consumers: BTreeMap<String, Plan>,
    pub enabled: bool,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub rules: RouteRules<Rules>,
    pub headers: bool,
    pub global: Option<Global>,
}

fn plan(name: &str, raw: &RawPlan, global: bool) -> Result<Plan, ConfigError> {
    let path = format!("plans.{name}");
    let given: Vec<(&str, f64, Unit)> = [
        ("requests_per_second", raw.requests_per_second, Unit::Second),
        ("requests_per_minute", raw.requests_per_minute, Unit::Minute),
        ("requests_per_hour", raw.requests_per_hour, Unit::Hour),
        ("requests_per_day", raw.requests_per_day, Unit::Day),
    ]
    .into_iter()
    .filter_map(|(field, value, unit)| value.map(|value| (field, value, unit)))
    .collect();
    let &[(field, count, unit)] = given.as_slice() else {
        return Err(ConfigError::new(
            path,
            if given.is_empty() {
                "one of requests_per_second, requests_per_minute, requests_per_hour or requests_per_day is required"
            } else {
                "give one of requests_per_second, requests_per_minute, requests_per_hour or requests_per_day, not several"
            },
        ));
    };
    ensure(
        count.is_finite() && count >= 0.0,
        &format!("{path}.{field}"),
        "must be a number >= 0",
    )?;
    if global {
        ensure(
            count.fract() == 0.0 && count <= f64::from(u32::MAX),
            &format!("{path}.{field}"),
            "must be a whole number with global (a window counts whole requests)",
        )?;
    }
    let seconds = match unit {
        Unit::Second => 1.0,
        Unit::Minute => 60.0,
        Unit::Hour => 3_600.0,
        _ => 86_400.0,
    };
    let rate = count / seconds;
    let burst = raw.burst.unwrap_or_else(|| (rate.ceil() as u64).max(1));
    ensure(burst >= 1, &format!("{path}.burst"), "must be at least 1")?;
    ensure(
        burst <= 1_000_000_000,
        &format!("{path}.burst"),
        "must be at most 1000000000",
    )?;
    if rate == 0.0 && raw.burst.is_none() {
        return Err(ConfigError::new(
            format!("{path}.burst"),
            "is required when the rate is 0",
        ));
    }
    Ok(Plan {
        name: name.to_owned(),
        id: 0, // given by `find_plan` to each copy in rules
        bucket: TokenBucket {
            capacity: burst,
            refill_per_sec: rate,
        },
        window: (count as u32, unit),
    })
}

/// A copy of a plan for a set of rules, with an id of its own: the rules' scope is part of
/// its bucket keys.
fn find_plan(plans: &BTreeMap<String, Plan>, name: &str, path: &str) -> Result<Plan, ConfigError> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let plan = plans.get(name).map(|plan| Plan {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        ..plan.clone()
    });
    plan.ok_or_else(|| {
        let known: Vec<&str> = plans.keys().map(String::as_str).collect();
        ConfigError::new(
            path,
            format!("unknown plan {name:?}; plans are: {}", known.join(", ")),
        )
    })
}

fn rules(
    raw: RawRules,
    scope: &str,
    path: &str,
    plans: &BTreeMap<String, Plan>,
) -> Result<Rules, ConfigError> {
    let at = |field: &str| tollgate_sdk::config::join_path(path, field);
    if let KeySource::Header(name) = &raw.key {
        ensure(!name.is_empty(), &at("key.header"), "must name a header")?;
    }
    let default_plan = match &raw.default_plan {
        Some(name) => Some(find_plan(plans, name, &at("default_plan"))?),
        None => None,
    };
    let mut consumers = BTreeMap::new();
    for (consumer, plan_name) in &raw.consumers {
        let plan = find_plan(plans, plan_name, &at(&format!("consumers.{consumer}")))?;
        consumers.insert(consumer.clone(), plan);
    }
    if raw.enabled && default_plan.is_none() && raw.key != KeySource::Consumer {
        return Err(ConfigError::new(
            at("default_plan"),
            "is required unless key is consumer",
        ));
    }
    Ok(Rules {
        scope: scope.to_owned(),
        key: match raw.key {
            KeySource::Header(name) => KeySource::Header(name.to_ascii_lowercase()),
            other => other,
        },
        when_missing: raw.when_missing,
        default_plan,
        consumers,
        enabled: raw.enabled,
    })
}

impl RawConfig {
    pub fn validate(self) -> Result<Limits, ConfigError> {
        ensure(
            !self.plans.is_empty(),
            "plans",
            "at least one plan is required",
        )?;
        let mut plans = BTreeMap::new();
        let global = match self.global {
            Some(raw) => Some(raw.validate("global")?),
            None => None,
        };
        for (name, raw) in &self.plans {
            plans.insert(name.clone(), plan(name, raw, global.is_some())?);
        }
        let default = rules(
            RawRules {
                key: self.key,
                when_missing: self.when_missing,
                default_plan: self.default_plan,
                consumers: self.consumers,
                enabled: self.enabled,
            },
            "*",
            "",
            &plans,
        )?;
        let mut routes = BTreeMap::new();
        for (route, raw) in self.routes {
            let validated = rules(raw, &route, &format!("routes.{route}"), &plans)?;
            routes.insert(route, validated);
        }
        Ok(Limits {
            rules: RouteRules::new(default, routes),
            headers: self.headers,
            global,
        })
    }
}

/// Parses and validates configuration bytes.
pub fn parse(bytes: &[u8]) -> Result<Limits, ConfigError> {
    tollgate_sdk::config::parse::<RawConfig>(bytes)?.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        parse(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn a_full_configuration_validates() {
        let limits = parse(
            br#"{
            "plans": {"gold": {"requests_per_second": 100, "burst": 200},
                      "free": {"requests_per_minute": 30}},
            "key": "consumer", "default_plan": "free", "consumers": {"alice": "gold"},
            "routes": {"search": {"key": {"header": "X-Api-Key"}, "default_plan": "gold"},
                       "health": {"enabled": false}}
        }"#,
        )
        .unwrap();
        let default = limits.rules.get(None);
        assert_eq!(default.scope, "*");
        assert_eq!(default.consumers["alice"].bucket.capacity, 200);
        let free = default.default_plan.as_ref().unwrap();
        assert_eq!(free.bucket.capacity, 1);
        assert!((free.bucket.refill_per_sec - 0.5).abs() < 1e-9);
        let search = limits.rules.get(Some("search"));
        assert_eq!(search.key, KeySource::Header("x-api-key".into()));
        assert!(!limits.rules.get(Some("health")).enabled);
        assert!(limits.headers);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            error(r#"{"plans": {"gold": {"requests_per_second": "fast"}}}"#),
            "field \"plans.gold.requests_per_second\": invalid type: string \"fast\", expected f64"
        );
        assert!(
            error(r#"{"plans": {"gold": {"requests_per_second": 1, "brust": 2}}}"#)
                .starts_with("field \"plans.gold.brust\": unknown field `brust`")
        );
        assert_eq!(
            error(
                r#"{"plans": {"gold": {"requests_per_second": 1}}, "consumers": {"bob": "silver"}}"#
            ),
            "field \"consumers.bob\": unknown plan \"silver\"; plans are: gold"
        );
        assert_eq!(
            error(
                r#"{"plans": {"g": {"requests_per_second": 1}}, "routes": {"r": {"key": "ip"}}}"#
            ),
            "field \"routes.r.default_plan\": is required unless key is consumer"
        );
        assert!(
            error(r#"{"plans": {"g": {"requests_per_second": 1}}, "key": "cookie"}"#)
                .starts_with("field \"key\": unknown variant `cookie`")
        );
        assert_eq!(
            error(r#"{"plans": {}}"#),
            "field \"plans\": at least one plan is required"
        );
        assert_eq!(
            error(r#"{"plans": {"g": {"requests_per_second": 0}}}"#),
            "field \"plans.g.burst\": is required when the rate is 0"
        );
        assert_eq!(
            error(r#"{"plans": {"g": {"requests_per_minute": 1.5}}, "global": {"cluster": "rl", "domain": "d"}}"#),
            "field \"plans.g.requests_per_minute\": must be a whole number with global (a window counts whole requests)"
        );
        assert_eq!(error(""), "configuration is required");
    }
}
