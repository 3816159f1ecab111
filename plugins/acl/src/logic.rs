//! Pure acl logic: rule tables per route and the allow / deny decision.

use std::collections::BTreeMap;

use serde::Deserialize;
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer::Consumer;
use tollgate_sdk::route::RouteRules;

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests without a consumer are answered 401 (true) or judged as a consumer without
    /// groups (false).
    #[serde(default = "yes")]
    pub require_consumer: bool,
    /// Rules for routes not listed in `routes`.
    #[serde(default)]
    pub default: Vec<Rule>,
    /// Route name (`xds.route_name`) → rules.
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<Rule>>,
}

fn yes() -> bool {
    true
}

/// One rule: for the listed methods (all when empty), the consumer must not be in a `deny`
/// group and, when `allow` is not empty, must be in an `allow` group. `allow_consumers` /
/// `deny_consumers` do the same by consumer name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub allow_consumers: Vec<String>,
    #[serde(default)]
    pub deny_consumers: Vec<String>,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401: no consumer and one is required.
    Unauthenticated,
    /// 403 with the reason.
    Forbidden(&'static str),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Acl {
    pub require_consumer: bool,
    pub rules: RouteRules<Vec<Rule>>,
}

impl Acl {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let rules = RouteRules::new(config.default, config.routes);
        let rules = rules.try_map(|route, mut rules| {
            let base = match route {
                None => "default".to_owned(),
                Some(name) => format!("routes.{name}"),
            };
            for (i, rule) in rules.iter_mut().enumerate() {
                for (j, method) in rule.methods.iter_mut().enumerate() {
                    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(ConfigError::new(
                            format!("{base}[{i}].methods[{j}]"),
                            format!("{method:?} is not an HTTP method"),
                        ));
                    }
                    *method = method.to_ascii_uppercase();
                }
                for (field, list) in [("allow", &rule.allow), ("deny", &rule.deny)] {
                    if let Some(j) = list.iter().position(|g| g.is_empty() || g.contains(',')) {
                        return Err(ConfigError::new(
                            format!("{base}[{i}].{field}[{j}]"),
                            "group names are non-empty and contain no comma",
                        ));
                    }
                }
            }
            Ok(rules)
        })?;
        Ok(Self {
            require_consumer: config.require_consumer,
            rules,
        })
    }

    /// Judges a request on `route` with `method` by `consumer`.
    pub fn decide(
        &self,
        route: Option<&str>,
        method: &str,
        consumer: Option<&Consumer>,
    ) -> Decision {
        if consumer.is_none() && self.require_consumer {
            return Decision::Unauthenticated;
        }
        let rules = self.rules.get(route);
        if rules.is_empty() {
            return Decision::Allow;
        }
        let Some(rule) = rules.iter().find(|rule| {
            rule.methods.is_empty() || rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        }) else {
            return Decision::Forbidden("method not allowed for any consumer");
        };
        let name = consumer.map(|c| c.name.as_str());
        let groups: &[String] = consumer.map_or(&[], |c| &c.groups);
        let in_any = |list: &[String]| groups.iter().any(|g| list.contains(g));
        if in_any(&rule.deny) || name.is_some_and(|n| rule.deny_consumers.iter().any(|d| d == n)) {
            return Decision::Forbidden("consumer denied");
        }
        let restricted = !rule.allow.is_empty() || !rule.allow_consumers.is_empty();
        if restricted
            && !in_any(&rule.allow)
            && !name.is_some_and(|n| rule.allow_consumers.iter().any(|a| a == n))
        {
            return Decision::Forbidden("consumer not allowed");
        }
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn acl(config: serde_json::Value) -> Result<Acl, ConfigError> {
        tollgate_sdk::config::parse::<Config>(config.to_string().as_bytes()).and_then(Acl::new)
    }

    fn who(name: &str, groups: &[&str]) -> Consumer {
        Consumer::new(name, groups.iter().map(|g| g.to_string()).collect())
    }

    #[test]
    fn rules_per_route_and_method() {
        let acl = acl(json!({
            "default": [{"deny": ["blocked"]}],
            "routes": {"orders": [
                {"methods": ["get", "HEAD"], "allow": ["readers", "admins"]},
                {"methods": ["POST", "DELETE"], "allow": ["admins"], "deny_consumers": ["mallory"]}
            ]}
        }))
        .unwrap();
        let reader = who("ann", &["readers"]);
        let admin = who("bob", &["admins"]);
        let mallory = who("mallory", &["admins"]);
        let route = Some("orders");
        assert_eq!(acl.decide(route, "GET", Some(&reader)), Decision::Allow);
        assert_eq!(
            acl.decide(route, "POST", Some(&reader)),
            Decision::Forbidden("consumer not allowed")
        );
        assert_eq!(acl.decide(route, "POST", Some(&admin)), Decision::Allow);
        assert_eq!(
            acl.decide(route, "DELETE", Some(&mallory)),
            Decision::Forbidden("consumer denied")
        );
        assert_eq!(
            acl.decide(route, "PUT", Some(&admin)),
            Decision::Forbidden("method not allowed for any consumer")
        );
        assert_eq!(acl.decide(route, "GET", None), Decision::Unauthenticated);
        assert_eq!(
            acl.decide(Some("other"), "PUT", Some(&reader)),
            Decision::Allow
        );
        assert_eq!(
            acl.decide(None, "GET", Some(&who("x", &["blocked"]))),
            Decision::Forbidden("consumer denied")
        );
    }

    #[test]
    fn anonymous_requests_when_not_required() {
        let acl = acl(json!({"require_consumer": false, "routes": {"open": [{"deny": ["x"]}], "closed": [{"allow": ["a"]}]}})).unwrap();
        assert_eq!(acl.decide(Some("open"), "GET", None), Decision::Allow);
        assert_eq!(
            acl.decide(Some("closed"), "GET", None),
            Decision::Forbidden("consumer not allowed")
        );
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let e = acl(json!({"routes": {"orders": [{"methods": ["G ET"]}]}})).unwrap_err();
        assert_eq!(e.path(), "routes.orders[0].methods[0]");
        let e = acl(json!({"default": [{"allow": ["a,b"]}]})).unwrap_err();
        assert_eq!(e.path(), "default[0].allow[0]");
        let e = acl(json!({"default": [{"alow": ["a"]}]})).unwrap_err();
        assert!(e.to_string().contains("alow"), "{e}");
    }
}
