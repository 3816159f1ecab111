//! The configuration.

use std::collections::BTreeMap;

use serde::Deserialize;
use tollgate_sdk::config::{ensure, ConfigError};
use tollgate_sdk::global_limit::{Global, RawGlobal};
use tollgate_sdk::route::RouteRules;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default)]
    pub per_day: Option<u64>,
    #[serde(default)]
    pub per_month: Option<u64>,
}

/// Requests without a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenMissing {
    /// Count them per client IP address, under the default plan.
    #[default]
    Ip,
    /// Do not count them.
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// `false`: requests on this route are not counted.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How many units of quota a request on this route uses.
    #[serde(default = "one")]
    pub cost: u64,
}

impl Default for RouteRule {
    fn default() -> Self {
        Self {
            enabled: true,
            cost: 1,
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> u64 {
    1
}
fn default_header() -> String {
    "x-quota-remaining".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub plans: BTreeMap<String, Plan>,
    #[serde(default)]
    pub consumers: BTreeMap<String, String>,
    /// Plan of consumers not listed; without one they are not limited.
    #[serde(default)]
    pub default_plan: Option<String>,
    #[serde(default)]
    pub when_missing: WhenMissing,
    /// Route name → rule (default: counted, cost 1).
    #[serde(default)]
    pub routes: BTreeMap<String, RouteRule>,
    /// The response header with the remaining quota.
    #[serde(default = "default_header")]
    pub header: String,
    /// Count in a rate limit service shared by every gateway replica instead of in this
    /// gateway's shared data (see `tollgate_sdk::global_limit`).
    #[serde(default)]
    pub global: Option<RawGlobal>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Quotas {
    pub plans: BTreeMap<String, Plan>,
    pub consumers: BTreeMap<String, String>,
    pub default_plan: Option<String>,
    pub when_missing: WhenMissing,
    pub routes: RouteRules<RouteRule>,
    pub header: String,
    pub global: Option<Global>,
}

impl RawConfig {
    pub fn validate(self) -> Result<Quotas, ConfigError> {
        ensure(
            !self.plans.is_empty(),
            "plans",
            "at least one plan is required",
        )?;
        let global = match self.global {
            Some(raw) => Some(raw.validate("global")?),
            None => None,
        };
        for (name, plan) in &self.plans {
            ensure(
                plan.per_day.is_some() || plan.per_month.is_some(),
                &format!("plans.{name}"),
                "per_day or per_month (or both) is required",
            )?;
            for (field, limit) in [("per_day", plan.per_day), ("per_month", plan.per_month)] {
                ensure(
                    global.is_none() || limit.is_none_or(|limit| limit <= u64::from(u32::MAX)),
                    &format!("plans.{name}.{field}"),
                    "must be at most 4294967295 with global",
                )?;
            }
        }
        let known = || self.plans.keys().cloned().collect::<Vec<_>>().join(", ");
        for (consumer, plan) in &self.consumers {
            ensure(
                self.plans.contains_key(plan),
                &format!("consumers.{consumer}"),
                &format!("unknown plan {plan:?}; plans are: {}", known()),
            )?;
        }
        if let Some(plan) = &self.default_plan {
            ensure(
                self.plans.contains_key(plan),
                "default_plan",
                &format!("unknown plan {plan:?}; plans are: {}", known()),
            )?;
        }
        for (route, rule) in &self.routes {
            ensure(
                rule.cost >= 1,
                &format!("routes.{route}.cost"),
                "must be at least 1",
            )?;
        }
        let header = self.header.to_ascii_lowercase();
        ensure(
            !header.is_empty()
                && header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "header",
            "must be a header name",
        )?;
        Ok(Quotas {
            plans: self.plans,
            consumers: self.consumers,
            default_plan: self.default_plan,
            when_missing: self.when_missing,
            routes: RouteRules::new(RouteRule::default(), self.routes),
            header,
            global,
        })
    }
}

pub fn parse(bytes: &[u8]) -> Result<Quotas, ConfigError> {
    tollgate_sdk::config::parse::<RawConfig>(bytes)?.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let error = |json: &str| parse(json.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            error(r#"{"plans": {"basic": {}}}"#),
            "field \"plans.basic\": per_day or per_month (or both) is required"
        );
        assert_eq!(
            error(r#"{"plans": {"basic": {"per_day": 5}}, "consumers": {"al": "gold"}}"#),
            "field \"consumers.al\": unknown plan \"gold\"; plans are: basic"
        );
        assert!(error(r#"{"plans": {"basic": {"per_dya": 5}}}"#)
            .starts_with("field \"plans.basic.per_dya\": unknown field `per_dya`"));
        assert_eq!(
            error(r#"{"plans": {"basic": {"per_day": -1}}}"#),
            "field \"plans.basic.per_day\": invalid value: integer `-1`, expected u64"
        );
        let ok =
            parse(br#"{"plans": {"b": {"per_month": 9}}, "routes": {"x": {"cost": 3}}}"#).unwrap();
        assert_eq!(ok.routes.get(Some("x")).cost, 3);
        assert_eq!(ok.header, "x-quota-remaining");
    }
}
