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

/// The bucket for a request under `rules`: its plan, and its shared-data key written into
/// `key` (cleared first: the glue passes the same buffer for every request, so a key costs
/// no allocation once the buffer has grown). `None` when the request is not limited (rules
/// disabled, `when_missing: allow` without a key, or no plan applies).
pub fn target<'a>(
    rules: &'a Rules,
    plugin: &str,
    facts: &RequestFacts<'_>,
    key: &mut String,
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
    // `rate-limit|{plugin}|{scope}|{plan}|{kind}|{value}`
    key.clear();
    key.push_str("rate-limit");
    for part in [plugin, &rules.scope, &plan.name, kind, value] {
        key.push('|');
        key.push_str(part);
    }
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
        let mut key = String::new();
        super::target(rules, plugin, facts, &mut key).map(|plan| Target { plan, key })
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
