//! The key set of `jwks`: its settings, and the fetch schedule that every VM of the plugin
//! shares through shared data.
//!
//! Every worker's VM may fetch, so the plugin needs no singleton and runs as it is in
//! Envoy. The schedule ([`FetchState`]) sits beside the key set in shared data and is only
//! changed by compare-and-swap: a VM that finds a fetch due takes a lease on it, and the
//! others see the lease and wait. One fetch per `refresh_interval` per gateway (per Envoy
//! worker pool) is the result, whatever the number of workers.

use std::time::Duration;

use serde::Deserialize;
use tollgate_sdk::config::{ensure, join_path, parse_duration, ConfigError};

/// `jwks` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// The cluster serving the key set.
    pub cluster: String,
    /// The path of the key set on that cluster.
    pub path: String,
    /// How often the key set is fetched again; `10m` by default.
    #[serde(default)]
    pub refresh_interval: Option<String>,
    /// How long a fetch may take, and how long a request waits for the first key set;
    /// `5s` by default.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// The validated `jwks` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwks {
    pub cluster: String,
    pub path: String,
    pub refresh_interval: Duration,
    pub timeout: Duration,
}

/// How long after one refetch for an unknown `kid` the next may happen.
pub const KID_MISS_INTERVAL: Duration = Duration::from_secs(10);

/// How soon a failed fetch is tried again while no key set was ever loaded.
pub const FIRST_LOAD_RETRY: Duration = Duration::from_secs(1);

fn duration_field(
    text: Option<&str>,
    field: &str,
    default: Duration,
    range: (Duration, Duration),
    example: &str,
) -> Result<Duration, ConfigError> {
    let Some(text) = text else {
        return Ok(default);
    };
    parse_duration(text)
        .filter(|duration| (range.0..=range.1).contains(duration))
        .ok_or_else(|| {
            ConfigError::new(
                field,
                format!(
                    "{text:?} is not a duration between {:?} and {:?} (like {example})",
                    range.0, range.1
                ),
            )
        })
}

impl JwksConfig {
    /// Checks the settings found at `field` (`jwks`).
    pub fn validate(&self, field: &str) -> Result<Jwks, ConfigError> {
        ensure(
            !self.cluster.trim().is_empty(),
            &join_path(field, "cluster"),
            "must name the cluster serving the key set",
        )?;
        ensure(
            self.path.starts_with('/'),
            &join_path(field, "path"),
            "must start with /",
        )?;
        let refresh_interval = duration_field(
            self.refresh_interval.as_deref(),
            &join_path(field, "refresh_interval"),
            Duration::from_secs(600),
            (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600)),
            "10m",
        )?;
        let timeout = duration_field(
            self.timeout.as_deref(),
            &join_path(field, "timeout"),
            Duration::from_secs(5),
            (Duration::from_millis(1), Duration::from_secs(60)),
            "5s",
        )?;
        Ok(Jwks {
            cluster: self.cluster.clone(),
            path: self.path.clone(),
            refresh_interval,
            timeout,
        })
    }
}

/// The fetch schedule every VM shares; times are host milliseconds since the epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchState {
    /// When the next scheduled fetch is due (0: at once).
    pub next_fetch_at: u64,
    /// Until when the VM that took the lease is fetching (0: nobody).
    pub lease_until: u64,
    /// A token with an unknown `kid` asked for a fetch before the schedule's.
    pub refetch_wanted: bool,
    /// When a token with an unknown `kid` last asked for a fetch.
    pub kid_miss_at: u64,
    /// Fetches finished so far, successful or not: requests waiting for keys watch it.
    pub completed: u64,
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A usable key set was stored.
    Loaded,
    /// The fetch failed; `keys_loaded` tells whether an earlier key set is still there.
    Failed { keys_loaded: bool },
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

impl FetchState {
    /// The state stored as text; a missing or unreadable value is a fresh schedule.
    pub fn decode(bytes: Option<&[u8]>) -> FetchState {
        let numbers: Vec<u64> = bytes
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .map(|text| text.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        match numbers[..] {
            [next_fetch_at, lease_until, refetch_wanted, kid_miss_at, completed] => FetchState {
                next_fetch_at,
                lease_until,
                refetch_wanted: refetch_wanted == 1,
                kid_miss_at,
                completed,
            },
            _ => FetchState::default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {} {}",
            self.next_fetch_at,
            self.lease_until,
            u8::from(self.refetch_wanted),
            self.kid_miss_at,
            self.completed
        )
        .into_bytes()
    }

    /// Takes the lease for `lease` when a fetch is due and no other VM holds it; `true`
    /// if this VM is now the one to fetch.
    pub fn claim(&mut self, now: u64, lease: Duration) -> bool {
        if self.lease_until > now || !(self.refetch_wanted || now >= self.next_fetch_at) {
            return false;
        }
        self.lease_until = now + millis(lease);
        self.refetch_wanted = false;
        true
    }

    /// A token's `kid` is unknown: asks for a fetch unless one was asked for within
    /// [`KID_MISS_INTERVAL`]; `true` if this one was.
    pub fn ask_refetch(&mut self, now: u64) -> bool {
        if self.kid_miss_at != 0 && now < self.kid_miss_at + millis(KID_MISS_INTERVAL) {
            return false;
        }
        self.kid_miss_at = now;
        self.refetch_wanted = true;
        true
    }

    /// Records the end of this VM's fetch and schedules the next one.
    pub fn finish(&mut self, now: u64, outcome: Outcome, refresh_interval: Duration) {
        self.completed += 1;
        self.lease_until = 0;
        let wait = match outcome {
            Outcome::Loaded | Outcome::Failed { keys_loaded: true } => refresh_interval,
            Outcome::Failed { keys_loaded: false } => FIRST_LOAD_RETRY,
        };
        self.next_fetch_at = now + millis(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const LEASE: Duration = Duration::from_secs(6);
    const REFRESH: Duration = Duration::from_secs(600);

    #[test]
    fn one_vm_fetches_per_interval() {
        let mut state = FetchState::default();
        assert!(state.claim(NOW, LEASE), "the first key set is due at once");
        let mut other = FetchState::decode(Some(&state.encode()));
        assert_eq!(other, state);
        assert!(!other.claim(NOW + 10, LEASE), "the lease is held");
        state.finish(NOW + 50, Outcome::Loaded, REFRESH);
        assert!(!state.claim(NOW + 60, LEASE), "not due before the interval");
        assert!(state.claim(NOW + 50 + 600_000, LEASE));
    }

    #[test]
    fn an_abandoned_lease_expires() {
        let mut state = FetchState::default();
        assert!(state.claim(NOW, LEASE));
        assert!(!state.claim(NOW + 5_999, LEASE));
        assert!(state.claim(NOW + 6_001, LEASE));
    }

    #[test]
    fn failures_retry_soon_only_without_keys() {
        let mut state = FetchState::default();
        state.claim(NOW, LEASE);
        state.finish(NOW, Outcome::Failed { keys_loaded: false }, REFRESH);
        assert_eq!(state.next_fetch_at, NOW + 1_000);
        assert_eq!(state.completed, 1);
        state.claim(NOW + 1_000, LEASE);
        state.finish(NOW + 1_000, Outcome::Failed { keys_loaded: true }, REFRESH);
        assert_eq!(state.next_fetch_at, NOW + 601_000);
    }

    #[test]
    fn unknown_kids_refetch_at_most_every_ten_seconds() {
        let mut state = FetchState::default();
        state.claim(NOW, LEASE);
        state.finish(NOW, Outcome::Loaded, REFRESH);
        assert!(state.ask_refetch(NOW + 1));
        assert!(!state.ask_refetch(NOW + 2), "within 10 s of the last");
        assert!(state.claim(NOW + 3, LEASE), "wanted before the schedule");
        state.finish(NOW + 4, Outcome::Loaded, REFRESH);
        assert!(!state.claim(NOW + 5, LEASE));
        assert!(!state.ask_refetch(NOW + 9_999));
        assert!(state.ask_refetch(NOW + 10_001));
    }

    #[test]
    fn settings_are_checked() {
        let config = |refresh: Option<&str>, timeout: Option<&str>| JwksConfig {
            cluster: "idp".into(),
            path: "/jwks.json".into(),
            refresh_interval: refresh.map(str::to_owned),
            timeout: timeout.map(str::to_owned),
        };
        let jwks = config(None, None).validate("jwks").unwrap();
        assert_eq!(jwks.refresh_interval, Duration::from_secs(600));
        assert_eq!(jwks.timeout, Duration::from_secs(5));
        let jwks = config(Some("30s"), Some("1500ms"))
            .validate("jwks")
            .unwrap();
        assert_eq!(jwks.refresh_interval, Duration::from_secs(30));
        assert_eq!(jwks.timeout, Duration::from_millis(1500));
        let error = config(Some("soon"), None).validate("jwks").unwrap_err();
        assert_eq!(error.path(), "jwks.refresh_interval");
        let error = config(None, Some("0s")).validate("jwks").unwrap_err();
        assert_eq!(error.path(), "jwks.timeout");
        let mut bad = config(None, None);
        bad.path = "jwks.json".into();
        assert_eq!(bad.validate("jwks").unwrap_err().path(), "jwks.path");
    }
}
