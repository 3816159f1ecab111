//! Pure CORS logic: origin matching, preflight answers and response headers.

use serde::Deserialize;
use tollgate_sdk::config::ConfigError;

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Allowed origins: exact (`https://app.example.com`), wildcard host
    /// (`https://*.example.com`, or `*.example.com` for any scheme), or `*` (any).
    pub allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for; empty: whatever it asks for is allowed.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may show to scripts.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// Seconds a browser may cache a preflight answer.
    #[serde(default)]
    pub max_age: Option<u64>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    /// (scheme with "://", or empty for any; suffix starting with '.')
    Wildcard(String, String),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Cors {
    pub config: Config,
    origins: Vec<Pattern>,
}

/// The answer to a preflight request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    /// 204 with these headers.
    Allowed(Vec<(String, String)>),
    /// 403 with the reason.
    Refused(&'static str),
}

impl Cors {
    pub fn new(mut config: Config) -> Result<Self, ConfigError> {
        if config.allow_origins.is_empty() {
            return Err(ConfigError::new(
                "allow_origins",
                "list at least one origin (or \"*\")",
            ));
        }
        let mut origins = Vec::new();
        for (i, origin) in config.allow_origins.iter().enumerate() {
            let field = format!("allow_origins[{i}]");
            let lower = origin.to_ascii_lowercase();
            let pattern = if lower == "*" {
                Pattern::Any
            } else if let Some(star) = lower.find('*') {
                let (scheme, rest) = lower.split_at(star);
                let suffix = &rest[1..];
                let scheme_ok = scheme.is_empty() || (scheme.ends_with("://") && scheme.len() > 3);
                if !scheme_ok
                    || !suffix.starts_with('.')
                    || suffix.len() < 2
                    || suffix.contains('*')
                    || suffix.contains('/')
                {
                    return Err(ConfigError::new(field, format!("{origin:?}: a wildcard is written *.example.com or https://*.example.com")));
                }
                Pattern::Wildcard(scheme.to_owned(), suffix.to_owned())
            } else {
                if !lower.contains("://") || lower.ends_with('/') {
                    return Err(ConfigError::new(
                        field,
                        format!("{origin:?} is not an origin like https://app.example.com"),
                    ));
                }
                Pattern::Exact(lower)
            };
            origins.push(pattern);
        }
        for (i, method) in config.allow_methods.iter_mut().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ConfigError::new(
                    format!("allow_methods[{i}]"),
                    format!("{method:?} is not an HTTP method"),
                ));
            }
            *method = method.to_ascii_uppercase();
        }
        for (field, list) in [
            ("allow_headers", &mut config.allow_headers),
            ("expose_headers", &mut config.expose_headers),
        ] {
            for (i, name) in list.iter_mut().enumerate() {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                {
                    return Err(ConfigError::new(
                        format!("{field}[{i}]"),
                        format!("{name:?} is not a header name"),
                    ));
                }
                *name = name.to_ascii_lowercase();
            }
        }
        Ok(Self { config, origins })
    }

    /// Whether `origin` is allowed.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|pattern| match pattern {
            Pattern::Any => true,
            Pattern::Exact(exact) => *exact == origin,
            Pattern::Wildcard(scheme, suffix) => {
                let (origin_scheme, host) = match origin.split_once("://") {
                    Some((s, h)) => (s, h),
                    None => return false,
                };
                let host_only = host.split(':').next().unwrap_or(host);
                (scheme.is_empty() || scheme.trim_end_matches("://") == origin_scheme)
                    && host_only.len() > suffix.len()
                    && host_only.ends_with(suffix.as_str())
            }
        })
    }

    /// `Access-Control-Allow-Origin`: `*` only when any origin is allowed without credentials.
    fn allow_origin_value(&self, origin: &str) -> String {
        if self.origins.contains(&Pattern::Any) && !self.config.allow_credentials {
            "*".into()
        } else {
            origin.to_owned()
        }
    }

    /// The answer to `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub fn preflight(
        &self,
        origin: &str,
        method: &str,
        request_headers: Option<&str>,
    ) -> Preflight {
        if !self.origin_allowed(origin) {
            return Preflight::Refused("origin not allowed");
        }
        let method = method.trim().to_ascii_uppercase();
        if !self.config.allow_methods.contains(&method) {
            return Preflight::Refused("method not allowed");
        }
        let requested: Vec<String> = request_headers
            .unwrap_or("")
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let allow_headers = if self.config.allow_headers.is_empty() {
            requested.join(",")
        } else {
            if requested
                .iter()
                .any(|h| !self.config.allow_headers.contains(h))
            {
                return Preflight::Refused("header not allowed");
            }
            self.config.allow_headers.join(",")
        };
        let mut headers = vec![
            (
                "access-control-allow-origin".to_owned(),
                self.allow_origin_value(origin),
            ),
            (
                "access-control-allow-methods".to_owned(),
                self.config.allow_methods.join(","),
            ),
        ];
        if !allow_headers.is_empty() {
            headers.push(("access-control-allow-headers".into(), allow_headers));
        }
        if self.config.allow_credentials {
            headers.push(("access-control-allow-credentials".into(), "true".into()));
        }
        if let Some(max_age) = self.config.max_age {
            headers.push(("access-control-max-age".into(), max_age.to_string()));
        }
        headers.push((
            "vary".into(),
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".into(),
        ));
        Preflight::Allowed(headers)
    }

    /// Headers added to the response of an actual request from `origin` (none when the
    /// origin is not allowed: the browser then hides the response from the page).
    pub fn response_headers(&self, origin: &str) -> Vec<(String, String)> {
        if !self.origin_allowed(origin) {
            return Vec::new();
        }
        let mut headers = vec![(
            "access-control-allow-origin".to_owned(),
            self.allow_origin_value(origin),
        )];
        if self.config.allow_credentials {
            headers.push(("access-control-allow-credentials".into(), "true".into()));
        }
        if !self.config.expose_headers.is_empty() {
            headers.push((
                "access-control-expose-headers".into(),
                self.config.expose_headers.join(","),
            ));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cors(config: serde_json::Value) -> Result<Cors, ConfigError> {
        tollgate_sdk::config::parse::<Config>(config.to_string().as_bytes()).and_then(Cors::new)
    }

    #[test]
    fn origins_exact_and_wildcard() {
        let c = cors(json!({"allow_origins": ["https://app.example.com", "https://*.shop.test", "*.any.test"]})).unwrap();
        assert!(c.origin_allowed("https://app.example.com"));
        assert!(c.origin_allowed("HTTPS://APP.example.com"));
        assert!(!c.origin_allowed("http://app.example.com"));
        assert!(c.origin_allowed("https://a.b.shop.test"));
        assert!(c.origin_allowed("https://a.shop.test:8443"));
        assert!(!c.origin_allowed("https://shop.test"));
        assert!(!c.origin_allowed("https://evilshop.test"));
        assert!(!c.origin_allowed("http://a.shop.test"));
        assert!(c.origin_allowed("http://x.any.test"));
        assert!(!c.origin_allowed("null"));
    }

    #[test]
    fn preflights() {
        let c = cors(json!({"allow_origins": ["https://app.test"], "allow_headers": ["Content-Type", "authorization"],
                            "allow_credentials": true, "max_age": 600})).unwrap();
        let Preflight::Allowed(headers) =
            c.preflight("https://app.test", "put", Some("content-type"))
        else {
            panic!("refused")
        };
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("access-control-allow-origin"), Some("https://app.test"));
        assert_eq!(
            get("access-control-allow-headers"),
            Some("content-type,authorization")
        );
        assert_eq!(get("access-control-allow-credentials"), Some("true"));
        assert_eq!(get("access-control-max-age"), Some("600"));
        assert_eq!(
            c.preflight("https://evil.test", "GET", None),
            Preflight::Refused("origin not allowed")
        );
        assert_eq!(
            c.preflight("https://app.test", "TRACE", None),
            Preflight::Refused("method not allowed")
        );
        assert_eq!(
            c.preflight("https://app.test", "GET", Some("x-secret")),
            Preflight::Refused("header not allowed")
        );
    }

    #[test]
    fn any_origin_uses_a_star_unless_credentials() {
        let c = cors(json!({"allow_origins": ["*"], "expose_headers": ["x-total"]})).unwrap();
        assert_eq!(
            c.response_headers("https://x.test"),
            [
                ("access-control-allow-origin".to_string(), "*".to_string()),
                (
                    "access-control-expose-headers".to_string(),
                    "x-total".to_string()
                )
            ]
        );
        let c = cors(json!({"allow_origins": ["*"], "allow_credentials": true})).unwrap();
        assert_eq!(c.response_headers("https://x.test")[0].1, "https://x.test");
        let Preflight::Allowed(h) = c.preflight("https://x.test", "GET", Some("X-A, x-b")) else {
            panic!()
        };
        assert!(h.contains(&(
            "access-control-allow-headers".to_string(),
            "x-a,x-b".to_string()
        )));
    }

    #[test]
    fn bad_configurations_name_the_field() {
        assert_eq!(
            cors(json!({"allow_origins": ["https://app.test", "https://*"]}))
                .unwrap_err()
                .path(),
            "allow_origins[1]"
        );
        assert_eq!(
            cors(json!({"allow_origins": ["app.test"]}))
                .unwrap_err()
                .path(),
            "allow_origins[0]"
        );
        assert_eq!(
            cors(json!({"allow_origins": []})).unwrap_err().path(),
            "allow_origins"
        );
        assert_eq!(
            cors(json!({"allow_origins": ["*"], "allow_methods": ["G T"]}))
                .unwrap_err()
                .path(),
            "allow_methods[0]"
        );
        assert!(cors(json!({"allow_origins": ["*"], "maxage": 1}))
            .unwrap_err()
            .to_string()
            .contains("maxage"));
    }
}
