//! Pure logic: the windows a request counts against and the check over a [`Store`].

use tollgate_sdk::ratelimit_service::{Code, Descriptor, RateLimitResponse, Unit};
use tollgate_sdk::shared::{counter_add_within, counter_sub, SharedError, Store};
use tollgate_sdk::time;

use crate::config::{Plan, Quotas, WhenMissing};

/// Who a request is counted for, and under which plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `consumer:alice` or `ip:10.0.0.1`.
    pub id: String,
    pub plan: String,
}

/// The subject of a request, or `None` when it is not counted.
pub fn subject(quotas: &Quotas, consumer: Option<&str>, ip: Option<&str>) -> Option<Subject> {
    let (id, plan) = match consumer.filter(|c| !c.is_empty()) {
        Some(consumer) => (
            format!("consumer:{consumer}"),
            quotas
                .consumers
                .get(consumer)
                .or(quotas.default_plan.as_ref())?,
        ),
        None => match quotas.when_missing {
            WhenMissing::Allow => return None,
            WhenMissing::Ip => (
                format!("ip:{}", ip.unwrap_or("-")),
                quotas.default_plan.as_ref()?,
            ),
        },
    };
    Some(Subject {
        id,
        plan: plan.clone(),
    })
}

/// One window a request counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// `day` or `month`.
    pub name: &'static str,
    pub limit: u64,
    /// The shared-data key of the counter for this subject and window.
    pub key: String,
    /// Seconds until the window ends.
    pub reset_secs: u64,
}

/// The windows of `plan` at `now_secs` (Unix seconds).
pub fn windows(plugin: &str, subject: &Subject, plan: &Plan, now_secs: u64) -> Vec<Window> {
    let mut windows = Vec::new();
    if let Some(limit) = plan.per_day {
        windows.push(Window {
            name: "day",
            limit,
            key: format!(
                "quota|{plugin}|{}|{}|day|{}",
                subject.plan,
                subject.id,
                time::utc_day(now_secs)
            ),
            reset_secs: time::next_day_start_secs(now_secs) - now_secs,
        });
    }
    if let Some(limit) = plan.per_month {
        windows.push(Window {
            name: "month",
            limit,
            key: format!(
                "quota|{plugin}|{}|{}|month|{}",
                subject.plan,
                subject.id,
                time::month_index(now_secs)
            ),
            reset_secs: time::next_month_start_secs(now_secs) - now_secs,
        });
    }
    windows
}

/// Global mode: one descriptor per window of `plan`, each carrying the window's limit and
/// the request's cost, for the rate limit service shared by every replica. Returns the
/// window names in the same order.
pub fn descriptors(
    plugin: &str,
    subject: &Subject,
    plan: &Plan,
    cost: u64,
) -> (Vec<&'static str>, Vec<Descriptor>) {
    let mut names = Vec::new();
    let mut descriptors = Vec::new();
    for (name, limit, unit) in [
        ("day", plan.per_day, Unit::Day),
        ("month", plan.per_month, Unit::Month),
    ] {
        let Some(limit) = limit else { continue };
        names.push(name);
        descriptors.push(Descriptor {
            entries: vec![(
                "quota".to_owned(),
                format!("quota|{plugin}|{}|{}|{name}", subject.plan, subject.id),
            )],
            limit: Some((u32::try_from(limit).unwrap_or(u32::MAX), unit)),
            hits: Some(cost),
        });
    }
    (names, descriptors)
}

/// Global mode: the verdict in the service's answer to [`descriptors`]' call: the window
/// refused, or the one with the least left.
pub fn global_verdict(names: &[&'static str], response: &RateLimitResponse) -> Option<Verdict> {
    let mut binding: Option<Verdict> = None;
    for (name, status) in names.iter().zip(&response.statuses) {
        let verdict = Verdict {
            allowed: status.code != Some(Code::OverLimit),
            window: name,
            limit: u64::from(status.requests_per_unit),
            remaining: u64::from(status.limit_remaining),
            reset_secs: status.seconds_until_reset.unwrap_or(0),
        };
        if !verdict.allowed {
            return Some(verdict);
        }
        if binding
            .as_ref()
            .is_none_or(|b| verdict.remaining < b.remaining)
        {
            binding = Some(verdict);
        }
    }
    binding
}

/// The outcome of a quota check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The binding window: the one refused, or the one with the least left.
    pub window: &'static str,
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

/// Counts `cost` against every window; all or nothing (a window that refuses undoes the
/// ones counted before it).
pub fn check<S: Store + ?Sized>(
    store: &S,
    windows: &[Window],
    cost: u64,
) -> Result<Option<Verdict>, SharedError> {
    let mut counted: Vec<&Window> = Vec::new();
    let mut binding: Option<Verdict> = None;
    for window in windows {
        let (allowed, count) = counter_add_within(store, &window.key, cost, window.limit)?;
        if !allowed {
            for done in counted {
                counter_sub(store, &done.key, cost)?;
            }
            return Ok(Some(Verdict {
                allowed: false,
                window: window.name,
                limit: window.limit,
                remaining: window.limit.saturating_sub(count),
                reset_secs: window.reset_secs,
            }));
        }
        counted.push(window);
        let remaining = window.limit - count;
        if binding.as_ref().is_none_or(|b| remaining < b.remaining) {
            binding = Some(Verdict {
                allowed: true,
                window: window.name,
                limit: window.limit,
                remaining,
                reset_secs: window.reset_secs,
            });
        }
    }
    Ok(binding)
}

/// Headers for an allowed response.
pub fn allow_headers(header: &str, verdict: &Verdict) -> Vec<(String, String)> {
    vec![
        (header.to_owned(), verdict.remaining.to_string()),
        ("x-quota-limit".to_owned(), verdict.limit.to_string()),
        ("x-quota-reset".to_owned(), verdict.reset_secs.to_string()),
    ]
}

/// The `429` answer: headers and JSON body.
pub fn deny_response(header: &str, verdict: &Verdict) -> (Vec<(String, String)>, String) {
    let headers = vec![
        (
            "retry-after".to_owned(),
            verdict.reset_secs.max(1).to_string(),
        ),
        (header.to_owned(), "0".to_owned()),
        ("x-quota-limit".to_owned(), verdict.limit.to_string()),
        ("x-quota-reset".to_owned(), verdict.reset_secs.to_string()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    let body = serde_json::json!({
        "error": "quota_exceeded",
        "message": format!("the {} quota of {} requests is used up", verdict.window, verdict.limit),
        "window": verdict.window,
        "limit": verdict.limit,
        "retry_after": verdict.reset_secs.max(1),
    })
    .to_string();
    (headers, body)
}

#[cfg(test)]
mod tests {
    use tollgate_sdk::shared::MemoryStore;

    use super::*;
    use crate::config::parse;

    const NOW: u64 = 1_707_523_200 + 3600; // 2024-02-10T01:00:00Z

    fn quotas() -> Quotas {
        parse(
            br#"{"plans": {"basic": {"per_day": 3}, "pro": {"per_day": 5, "per_month": 6}},
                   "consumers": {"alice": "pro"}, "default_plan": "basic"}"#,
        )
        .unwrap()
    }

    #[test]
    fn subjects_and_windows() {
        let quotas = quotas();
        let alice = subject(&quotas, Some("alice"), Some("1.2.3.4")).unwrap();
        assert_eq!(
            alice,
            Subject {
                id: "consumer:alice".into(),
                plan: "pro".into()
            }
        );
        let anon = subject(&quotas, None, Some("1.2.3.4")).unwrap();
        assert_eq!(anon.id, "ip:1.2.3.4");
        assert_eq!(anon.plan, "basic");
        let w = windows("q", &alice, &quotas.plans["pro"], NOW);
        assert_eq!(
            w[0].key,
            format!("quota|q|pro|consumer:alice|day|{}", NOW / 86_400)
        );
        assert_eq!(w[0].reset_secs, 23 * 3600);
        assert_eq!(w[1].name, "month");
        assert_eq!(w[1].reset_secs, 19 * 86_400 + 23 * 3600, "until 2024-03-01");
    }

    #[test]
    fn exhaustion_and_the_binding_window() {
        let quotas = quotas();
        let store = MemoryStore::default();
        let alice = subject(&quotas, Some("alice"), None).unwrap();
        let today = windows("q", &alice, &quotas.plans["pro"], NOW);
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let v = check(&store, &today, 1).unwrap().unwrap();
            assert!(v.allowed);
            remaining.push((v.window, v.remaining));
        }
        assert_eq!(
            remaining,
            [("day", 4), ("day", 3), ("day", 2), ("day", 1), ("day", 0)]
        );
        let refused = check(&store, &today, 1).unwrap().unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.window, "day");
        // The next day: the day resets, the month has 1 left; a cost of 2 is refused by
        // the month and the day is not charged for it.
        let tomorrow = windows("q", &alice, &quotas.plans["pro"], NOW + 86_400);
        let refused = check(&store, &tomorrow, 2).unwrap().unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.window, "month");
        let v = check(&store, &tomorrow, 1).unwrap().unwrap();
        assert!(v.allowed);
        assert_eq!((v.window, v.remaining), ("month", 0));
    }

    #[test]
    fn concurrent_clients_get_exactly_the_quota() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let quotas = quotas();
        let subject = subject(&quotas, Some("bob"), None).unwrap();
        let plan = crate::config::Plan {
            per_day: Some(300),
            per_month: Some(1000),
        };
        let w = windows("q", &subject, &plan, NOW);
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let store = store.clone();
                let w = w.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| check(&*store, &w, 1).unwrap().unwrap().allowed)
                        .count()
                })
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, 300);
    }

    #[test]
    fn the_429_body() {
        let verdict = Verdict {
            allowed: false,
            window: "day",
            limit: 3,
            remaining: 0,
            reset_secs: 10,
        };
        let (headers, body) = deny_response("x-quota-remaining", &verdict);
        assert!(headers.contains(&("retry-after".into(), "10".into())));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "quota_exceeded");
    }
}
