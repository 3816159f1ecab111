//! Pure api-lifecycle logic: per-route lifecycle states, dates and the headers they produce.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::route::RouteRules;
use tollgate_sdk::time::{civil_from_days, days_from_civil};

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Lifecycle of routes not listed in `routes` (none by default).
    #[serde(default)]
    pub default: Option<Lifecycle>,
    /// Route name (`xds.route_name`) → lifecycle.
    #[serde(default)]
    pub routes: BTreeMap<String, Lifecycle>,
}

/// The lifecycle state of one route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// Still served, announced as deprecated.
    #[serde(default)]
    pub deprecated: Option<Deprecated>,
    /// No longer served: `410 Gone`.
    #[serde(default)]
    pub retired: bool,
    /// In design: answered locally, the upstream is never called.
    #[serde(default)]
    pub mock: Option<Mock>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deprecated {
    /// When it was deprecated (RFC 3339): `Deprecation: @<unix seconds>` (RFC 9745);
    /// without it `Deprecation: true`.
    #[serde(default)]
    pub since: Option<String>,
    /// When it stops being served (RFC 3339): `Sunset: <HTTP-date>` (RFC 8594).
    #[serde(default)]
    pub sunset: Option<String>,
    /// Documentation of the deprecation: `Link: <url>; rel="deprecation"`.
    #[serde(default)]
    pub link: Option<String>,
    /// After the sunset date the route answers `410 Gone` as if retired.
    #[serde(default)]
    pub enforce_sunset: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mock {
    #[serde(default = "default_mock_status")]
    pub status: u32,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A string is sent as it is (`text/plain` unless a content-type header is given), any
    /// other JSON value as JSON (`application/json`).
    #[serde(default)]
    pub body: Option<Value>,
}

fn default_mock_status() -> u32 {
    200
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward it; add these response headers.
    Forward(Vec<(String, String)>),
    /// Answer locally: status, headers, body.
    Answer(u32, Vec<(String, String)>, Vec<u8>),
}

/// A local answer: status, headers, body.
type LocalAnswer = (u32, Vec<(String, String)>, Vec<u8>);

/// A validated lifecycle with parsed dates.
#[derive(Debug, Clone, Default)]
pub struct State {
    retired: bool,
    mock: Option<LocalAnswer>,
    deprecation: Option<String>,
    sunset: Option<u64>,
    link: Option<String>,
    enforce_sunset: bool,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ApiLifecycle {
    pub rules: RouteRules<State>,
}

impl ApiLifecycle {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let rules = RouteRules::new(config.default.unwrap_or_default(), config.routes);
        let rules = rules.try_map(|route, lifecycle| {
            let base = route.map_or_else(|| "default".to_owned(), |name| format!("routes.{name}"));
            State::new(lifecycle).map_err(|e| e.within(&base))
        })?;
        Ok(Self { rules })
    }
}

impl State {
    fn new(lifecycle: Lifecycle) -> Result<Self, ConfigError> {
        if lifecycle.retired && lifecycle.mock.is_some() {
            return Err(ConfigError::new(
                "mock",
                "a retired route cannot also be mocked",
            ));
        }
        let mut state = State {
            retired: lifecycle.retired,
            ..State::default()
        };
        if let Some(deprecated) = lifecycle.deprecated {
            state.deprecation = Some(match &deprecated.since {
                Some(since) => format!(
                    "@{}",
                    parse_rfc3339(since).map_err(|e| ConfigError::new("deprecated.since", e))?
                ),
                None => "true".into(),
            });
            if let Some(sunset) = &deprecated.sunset {
                state.sunset = Some(
                    parse_rfc3339(sunset).map_err(|e| ConfigError::new("deprecated.sunset", e))?,
                );
            } else if deprecated.enforce_sunset {
                return Err(ConfigError::new(
                    "deprecated.enforce_sunset",
                    "needs deprecated.sunset",
                ));
            }
            if let Some(link) = &deprecated.link {
                if link.is_empty() || link.contains(['<', '>', '"', '\r', '\n', ' ']) {
                    return Err(ConfigError::new(
                        "deprecated.link",
                        "must be a URL (no spaces, quotes or angle brackets)",
                    ));
                }
            }
            state.link = deprecated.link;
            state.enforce_sunset = deprecated.enforce_sunset;
        }
        if let Some(mock) = lifecycle.mock {
            if !(200..=599).contains(&mock.status) {
                return Err(ConfigError::new("mock.status", "must be 200 to 599"));
            }
            let mut headers = Vec::new();
            for (name, value) in &mock.headers {
                let lower = name.to_ascii_lowercase();
                if lower.is_empty()
                    || lower.starts_with(':')
                    || lower == "content-length"
                    || lower == "transfer-encoding"
                {
                    return Err(ConfigError::new(
                        format!("mock.headers.{name}"),
                        "not a header a mock can set",
                    ));
                }
                if value.contains(['\r', '\n', '\0']) {
                    return Err(ConfigError::new(
                        format!("mock.headers.{name}"),
                        "header values cannot contain CR, LF or NUL",
                    ));
                }
                headers.push((lower, value.clone()));
            }
            let has_type = headers.iter().any(|(name, _)| name == "content-type");
            let body = match mock.body {
                None => Vec::new(),
                Some(Value::String(text)) => {
                    if !has_type {
                        headers.push(("content-type".into(), "text/plain; charset=utf-8".into()));
                    }
                    text.into_bytes()
                }
                Some(value) => {
                    if !has_type {
                        headers.push(("content-type".into(), "application/json".into()));
                    }
                    value.to_string().into_bytes()
                }
            };
            state.mock = Some((mock.status, headers, body));
        }
        Ok(state)
    }

    /// What to do with a request at `now` (unix seconds).
    pub fn outcome(&self, now: u64) -> Outcome {
        let sunset_passed = self.enforce_sunset && self.sunset.is_some_and(|sunset| now >= sunset);
        if self.retired || sunset_passed {
            let mut body = serde_json::json!({ "message": "this API version is retired" });
            if let Some(sunset) = self.sunset {
                body["sunset"] = Value::String(tollgate_sdk::time::rfc3339(sunset));
            }
            if let Some(link) = &self.link {
                body["link"] = Value::String(link.clone());
            }
            let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
            headers.extend(self.deprecation_headers());
            return Outcome::Answer(410, headers, body.to_string().into_bytes());
        }
        if let Some((status, headers, body)) = &self.mock {
            let mut headers = headers.clone();
            headers.extend(self.deprecation_headers());
            return Outcome::Answer(*status, headers, body.clone());
        }
        Outcome::Forward(self.deprecation_headers())
    }

    /// `Deprecation`, `Sunset` and `Link` response headers.
    pub fn deprecation_headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        if let Some(deprecation) = &self.deprecation {
            headers.push(("deprecation".to_owned(), deprecation.clone()));
        }
        if let Some(sunset) = self.sunset {
            headers.push(("sunset".to_owned(), http_date(sunset)));
        }
        if let Some(link) = &self.link {
            headers.push((
                "link".to_owned(),
                format!("<{link}>; rel=\"deprecation\"; type=\"text/html\""),
            ));
        }
        headers
    }
}

/// Parses an RFC 3339 timestamp (`2027-01-01T00:00:00Z`, `...+02:00`, fractions ignored)
/// into unix seconds.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time like 2027-01-01T00:00:00Z");
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<u64, String> {
        let part = text.get(range).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if year < 1970 || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &fraction[digits..];
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            // Compared as a byte: a character of several bytes may straddle byte 3.
            && rest.as_bytes()[3] == b':' =>
        {
            let h: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let m: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year as i64, month as u32, day as u32) as i64;
    let local = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    u64::try_from(local - offset).map_err(|_| bad())
}

/// An IMF-fixdate (`Fri, 01 Jan 2027 00:00:00 GMT`), the form of HTTP dates.
pub fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let (year, month, day) = civil_from_days(days);
    let secs = unix_secs % 86_400;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lifecycle(config: Value) -> Result<ApiLifecycle, ConfigError> {
        tollgate_sdk::config::parse::<Config>(config.to_string().as_bytes())
            .and_then(ApiLifecycle::new)
    }

    const SUNSET: u64 = 1_798_761_600; // 2027-01-01T00:00:00Z

    #[test]
    fn dates() {
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Ok(SUNSET));
        assert_eq!(parse_rfc3339("2027-01-01T02:00:00.123+02:00"), Ok(SUNSET));
        assert!(parse_rfc3339("2027-02-30T00:00:00Z").is_err());
        assert!(parse_rfc3339("2027-01-01").is_err());
        // A character of two bytes where the offset's colon goes: refused, not a panic.
        assert!(parse_rfc3339("2027-01-01T00:00:00+0é00").is_err());
        assert_eq!(http_date(SUNSET), "Fri, 01 Jan 2027 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn deprecated_retired_and_mocked_routes() {
        let l = lifecycle(json!({"routes": {
            "v1": {"deprecated": {"since": "2026-01-01T00:00:00Z", "sunset": "2027-01-01T00:00:00Z",
                                  "link": "https://docs.test/v1", "enforce_sunset": true}},
            "v0": {"retired": true},
            "v3": {"mock": {"status": 201, "headers": {"X-Mock": "1"}, "body": {"id": 7}}}
        }}))
        .unwrap();
        let Outcome::Forward(headers) = l.rules.get(Some("v1")).outcome(SUNSET - 1) else {
            panic!()
        };
        assert_eq!(
            headers,
            [
                ("deprecation".to_string(), "@1767225600".to_string()),
                (
                    "sunset".to_string(),
                    "Fri, 01 Jan 2027 00:00:00 GMT".to_string()
                ),
                (
                    "link".to_string(),
                    "<https://docs.test/v1>; rel=\"deprecation\"; type=\"text/html\"".to_string()
                ),
            ]
        );
        assert!(matches!(
            l.rules.get(Some("v1")).outcome(SUNSET),
            Outcome::Answer(410, _, _)
        ));
        let Outcome::Answer(410, _, body) = l.rules.get(Some("v0")).outcome(0) else {
            panic!()
        };
        assert_eq!(body, br#"{"message":"this API version is retired"}"#);
        let Outcome::Answer(201, headers, body) = l.rules.get(Some("v3")).outcome(0) else {
            panic!()
        };
        assert_eq!(
            headers,
            [
                ("x-mock".to_string(), "1".to_string()),
                ("content-type".to_string(), "application/json".to_string())
            ]
        );
        assert_eq!(body, br#"{"id":7}"#);
        assert_eq!(
            l.rules.get(Some("other")).outcome(0),
            Outcome::Forward(vec![])
        );
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let e = lifecycle(json!({"routes": {"v1": {"deprecated": {"sunset": "next year"}}}}))
            .unwrap_err();
        assert_eq!(e.path(), "routes.v1.deprecated.sunset");
        let e = lifecycle(json!({"routes": {"v1": {"retired": true, "mock": {}}}})).unwrap_err();
        assert_eq!(e.path(), "routes.v1.mock");
        let e = lifecycle(json!({"default": {"mock": {"status": 99}}})).unwrap_err();
        assert_eq!(e.path(), "default.mock.status");
        let e = lifecycle(json!({"routes": {"v1": {"retird": true}}})).unwrap_err();
        assert!(e.to_string().contains("retird"), "{e}");
    }
}
