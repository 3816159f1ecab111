//! Pure request logic: which bucket a request draws from, and the headers and bodies.

use tollgate_sdk::shared::{header_seconds, Decision};

use crate::config::{KeySource, Plan, Rules, WhenMissing};

/// What the host told us about the request (gathered by the glue).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    pub consumer: Option<&'a str>,
    pub ip: Option<&'a str>,
    /// The value of the rules' key header, if the key is a header.
    pub header: Option<&'a str>,
    pub route: Option<&'a str>,
}

/// A request's bucket key, `rate-limit|{plugin}|{scope}|{plan}|{kind}|{value}`, in one
/// buffer the glue keeps for every request (a VM runs one callback at a time). Its start, up
/// to the plan's name, depends only on the plan and its rules, so it stays in the buffer
/// while requests keep to one plan (commonly every request: one default plan), and a key
/// then costs its last two parts: no allocation and one short copy.
#[derive(Debug)]
pub struct BucketKey {
    plugin: String,
    key: String,
    /// The plan whose start `key` holds (`Plan::id`), and that start's length.
    start: Option<(u64, usize)>,
}

impl BucketKey {
    pub fn new(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
            key: String::new(),
            start: None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    fn write(&mut self, rules: &Rules, plan: &Plan, kind: &str, value: &str) {
        match self.start {
            Some((id, length)) if id == plan.id => self.key.truncate(length),
            _ => {
                self.key.clear();
                self.key.push_str("rate-limit");
                for part in [&self.plugin, &rules.scope, &plan.name] {
                    self.key.push('|');
                    self.key.push_str(part);
                }
                self.key.push('|');
                self.start = Some((plan.id, self.key.len()));
            }
        }
        self.key.push_str(kind);
        self.key.push('|');
        self.key.push_str(value);
    }
}

/// The bucket for a request under `rules`: its plan, with its key written into `key`.
/// `None` when the request is not limited (rules disabled, `when_missing: allow` without a
/// key, or no plan applies).
pub fn target<'a>(
    rules: &'a Rules,
    facts: &RequestFacts<'_>,
    key: &mut BucketKey,
) -> Option<&'a Plan> {
    if !rules.enabled {
        return None;
    }
    let (kind, value) = match &rules.key {
        KeySource::Consumer => ("consumer", facts.consumer),
        KeySource::Ip => ("ip", facts.ip),
        KeySource::Header(_) => ("header", facts.header),
        KeySource::Route => ("route", Some(facts.route.unwrap_or("-"))),
    };
    let (kind, value) = match value.filter(|v| !v.is_empty()) {
        Some(value) => (kind, value),
        None => match rules.when_missing {
            WhenMissing::Allow => return None,
            WhenMissing::Shared => ("missing", "-"),
            WhenMissing::Ip => ("ip", facts.ip.unwrap_or("-")),
        },
    };
    let plan = rules.consumers.get(value).or(rules.default_plan.as_ref())?;
    key.write(rules, plan, kind, value);
    Some(plan)
}

/// Headers for an allowed request's response.
pub fn allow_headers(decision: &Decision) -> [(&'static str, u64); 3] {
    [
        ("ratelimit-limit", decision.limit),
        ("ratelimit-remaining", decision.remaining),
        ("ratelimit-reset", header_seconds(decision.reset_after)),
    ]
}

pub fn deny_response(decision: &Decision, plan: &str) -> (Vec<(&'static str, String)>, String) {
    let retry_after = header_seconds(decision.retry_after).max(1);
    let headers = vec![
        ("retry-after", retry_after.to_string()),
        ("ratelimit-limit", decision.limit.to_string()),
        ("ratelimit-remaining", "0".to_owned()),
        (
            "ratelimit-reset",
            header_seconds(decision.reset_after).to_string(),
        ),
        ("content-type", "application/json".to_owned()),
    ];
    let body = serde_json::json!({
        "error": "rate_limited",
        "message": "rate limit exceeded",
        "plan": plan,
        "retry_after": retry_after,
    })
    .to_string();
    (headers, body)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::parse;

    /// A bucket as the tests look at it: the plan and the key.
    struct Target<'a> {
        plan: &'a Plan,
        key: String,
    }

    fn target<'a>(rules: &'a Rules, plugin: &str, facts: &RequestFacts<'_>) -> Option<Target<'a>> {
        let mut key = BucketKey::new(plugin);
        super::target(rules, facts, &mut key).map(|plan| Target {
            plan,
            key: key.as_str().to_owned(),
        })
    }

    fn limits() -> crate::config::Limits {
        parse(
            br#"{
            "plans": {"gold": {"requests_per_second": 10, "burst": 20}, "free": {"requests_per_second": 1}},
            "default_plan": "free", "consumers": {"alice": "gold"},
            "routes": {
                "by-ip": {"key": "ip", "default_plan": "free"},
                "by-header": {"key": {"header": "x-api-key"}, "default_plan": "free",
                              "consumers": {"k-gold": "gold"}, "when_missing": "allow"},
                "whole-route": {"key": "route", "default_plan": "gold"},
                "shared-anon": {"default_plan": "free", "when_missing": "shared"},
                "off": {"enabled": false}
            }
        }"#,
        )
        .unwrap()
    }

    fn facts<'a>(
        consumer: Option<&'a str>,
        header: Option<&'a str>,
        route: &'a str,
    ) -> RequestFacts<'a> {
        RequestFacts {
            consumer,
            ip: Some("10.0.0.1"),
            header,
            route: Some(route),
        }
    }

    #[test]
    fn consumers_get_their_plan_and_anonymous_fall_back_to_ip() {
        let limits = limits();
        let rules = limits.rules.get(Some("api"));
        let alice = target(rules, "rl", &facts(Some("alice"), None, "api")).unwrap();
        assert_eq!(alice.plan.name, "gold");
        assert_eq!(alice.key, "rate-limit|rl|*|gold|consumer|alice");
        let bob = target(rules, "rl", &facts(Some("bob"), None, "api")).unwrap();
        assert_eq!(bob.key, "rate-limit|rl|*|free|consumer|bob");
        let anonymous = target(rules, "rl", &facts(None, None, "api")).unwrap();
        assert_eq!(anonymous.key, "rate-limit|rl|*|free|ip|10.0.0.1");
    }

    #[test]
    fn route_rules_scope_their_buckets() {
        let limits = limits();
        let by_ip = target(
            limits.rules.get(Some("by-ip")),
            "rl",
            &facts(Some("alice"), None, "by-ip"),
        )
        .unwrap();
        assert_eq!(by_ip.key, "rate-limit|rl|by-ip|free|ip|10.0.0.1");
        let header_rules = limits.rules.get(Some("by-header"));
        let gold = target(
            header_rules,
            "rl",
            &facts(None, Some("k-gold"), "by-header"),
        )
        .unwrap();
        assert_eq!(gold.plan.name, "gold");
        assert!(target(header_rules, "rl", &facts(None, None, "by-header")).is_none());
        let route = target(
            limits.rules.get(Some("whole-route")),
            "rl",
            &facts(Some("x"), None, "whole-route"),
        )
        .unwrap();
        assert_eq!(
            route.key,
            "rate-limit|rl|whole-route|gold|route|whole-route"
        );
        let shared = target(
            limits.rules.get(Some("shared-anon")),
            "rl",
            &facts(None, None, "shared-anon"),
        )
        .unwrap();
        assert_eq!(shared.key, "rate-limit|rl|shared-anon|free|missing|-");
        assert!(target(
            limits.rules.get(Some("off")),
            "rl",
            &facts(Some("alice"), None, "off")
        )
        .is_none());
    }

    #[test]
    fn one_buffer_for_every_request_writes_the_keys_fresh_buffers_do() {
        // The buffer keeps a key's start from one request to the next: requests that
        // change plan, rules (the same plan name under another scope) or configuration
        // (a reload validates the same plans again) must not keep a start that is not theirs.
        let first = limits();
        let reloaded = limits();
        let requests = [
            (&first, "api", Some("alice")),
            (&first, "api", Some("alice")),
            (&first, "api", Some("bob")),
            (&first, "by-ip", Some("bob")),
            (&first, "api", Some("carol")),
            (&reloaded, "api", Some("carol")),
            (&first, "shared-anon", None),
            (&reloaded, "whole-route", None),
            (&first, "api", Some("alice")),
        ];
        let mut kept = BucketKey::new("rl");
        for (limits, route, consumer) in requests {
            let rules = limits.rules.get(Some(route));
            let facts = facts(consumer, None, route);
            let plan = super::target(rules, &facts, &mut kept).unwrap();
            let fresh = target(rules, "rl", &facts).unwrap();
            assert_eq!(
                (kept.as_str(), &plan.name),
                (fresh.key.as_str(), &fresh.plan.name)
            );
        }
    }

    #[test]
    fn headers_and_429_body() {
        let decision = Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset_after: Duration::from_millis(4500),
            retry_after: Duration::from_millis(900),
        };
        let (headers, body) = deny_response(&decision, "free");
        assert!(headers.contains(&("retry-after", "1".to_owned())));
        assert!(headers.contains(&("ratelimit-reset", "5".to_owned())));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["retry_after"], 1);
        let allowed = allow_headers(&Decision {
            allowed: true,
            remaining: 4,
            ..decision
        });
        assert_eq!(allowed[1], ("ratelimit-remaining", 4));
    }
}
