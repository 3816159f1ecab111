//! Route matching: plain data and pure functions, testable without sockets.
//!
//! A [`RouteTable`] is built per listener from the virtual hosts bound to it. A request is
//! matched by host first (exact, then the longest `*.suffix`, then the longest `prefix.*`,
//! then `*` — Envoy's order), then by the virtual host's routes in order. Hosts and paths
//! are made canonical by [`normalize`] before they get here.

pub mod normalize;

use rustc_hash::FxHashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::{PathMatch, Route, ValueMatch, ValueRule, VirtualHost};

/// The virtual hosts of one listener, indexed for host lookup.
#[derive(Debug, Default)]
pub struct RouteTable {
    virtual_hosts: Vec<Arc<VirtualHost>>,
    /// Each virtual host's route names, shared: a request takes its route's name (for the
    /// access log and the metrics) without allocating.
    route_names: Vec<Vec<Arc<str>>>,
    exact: FxHashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`; `*-api.example.com` as `-api.example.com`;
    /// longest first.
    suffixes: Vec<(String, usize)>,
    /// `example.*` stored as `example.`; longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

/// What the router needs to see of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Host as [`normalize::host`] returns it.
    pub host: &'a str,
    /// Path without the query, as [`normalize::path`] returns it.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// A successful match.
#[derive(Debug, Clone)]
pub struct RouteMatch<'a> {
    pub virtual_host: &'a Arc<VirtualHost>,
    pub route: &'a Route,
    /// `route.name`, shared.
    pub route_name: &'a Arc<str>,
}

/// Why no route matched; both answer 404 but the access log says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatch {
    UnknownHost,
    NoRoute,
}

impl RouteTable {
    pub fn new(virtual_hosts: Vec<Arc<VirtualHost>>) -> Self {
        let mut table = RouteTable::default();
        for (index, vhost) in virtual_hosts.iter().enumerate() {
            for domain in &vhost.domains {
                // The first virtual host to claim a name keeps it, like Envoy's rejection of
                // duplicates but without failing the whole folder for it.
                if domain == "*" {
                    table.any.get_or_insert(index);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    table.suffixes.push((suffix.to_string(), index));
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    table.prefixes.push((prefix.to_string(), index));
                } else {
                    table.exact.entry(domain.clone()).or_insert(index);
                }
            }
        }
        table
            .suffixes
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        table.route_names = virtual_hosts
            .iter()
            .map(|vhost| {
                vhost
                    .routes
                    .iter()
                    .map(|route| Arc::from(route.name.as_str()))
                    .collect()
            })
            .collect();
        table.virtual_hosts = virtual_hosts;
        table
    }

    pub fn virtual_host(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        self.virtual_host_index(host)
            .and_then(|index| self.virtual_hosts.get(index))
    }

    fn virtual_host_index(&self, host: &str) -> Option<usize> {
        self.exact
            .get(host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, index)| *index)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(prefix, _)| {
                        host.len() > prefix.len() && host.starts_with(prefix.as_str())
                    })
                    .map(|(_, index)| *index)
            })
            .or(self.any)
    }

    pub fn find(&self, request: &RequestHead<'_>) -> Result<RouteMatch<'_>, NoMatch> {
        let index = self
            .virtual_host_index(request.host)
            .ok_or(NoMatch::UnknownHost)?;
        let virtual_host = &self.virtual_hosts[index];
        let position = virtual_host
            .routes
            .iter()
            .position(|route| route_matches(route, request))
            .ok_or(NoMatch::NoRoute)?;
        Ok(RouteMatch {
            virtual_host,
            route: &virtual_host.routes[position],
            route_name: &self.route_names[index][position],
        })
    }
}

pub fn route_matches(route: &Route, request: &RequestHead<'_>) -> bool {
    let matcher = &route.matcher;
    let path_ok = match &matcher.path {
        PathMatch::Any => true,
        PathMatch::Prefix(prefix) => request.path.starts_with(prefix.as_str()),
        PathMatch::Exact(exact) => request.path == exact,
        PathMatch::Regex(regex) => regex.is_match(request.path),
    };
    path_ok
        && (matcher.methods.is_empty() || matcher.methods.contains(request.method))
        && matcher
            .headers
            .iter()
            .all(|rule| header_matches(rule, request.headers))
        && matcher
            .query
            .iter()
            .all(|rule| query_matches(rule, request.query))
}

fn header_matches(rule: &ValueMatch, headers: &HeaderMap) -> bool {
    let value = headers
        .get(rule.name.as_str())
        .and_then(|value| value.to_str().ok());
    value_matches(&rule.rule, value)
}

fn query_matches(rule: &ValueMatch, query: Option<&str>) -> bool {
    let value = query.and_then(|query| query_param(query, &rule.name));
    value_matches(&rule.rule, value.as_deref())
}

fn value_matches(rule: &ValueRule, value: Option<&str>) -> bool {
    match (rule, value) {
        (ValueRule::Present(wanted), value) => value.is_some() == *wanted,
        (ValueRule::Exact(exact), Some(value)) => value == exact,
        (ValueRule::Regex(regex), Some(value)) => regex.is_match(value),
        (_, None) => false,
    }
}

/// The first value of a query parameter, percent-decoded (`+` as space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, DirectResponse, RouteMatch as Matcher};
    use regex::Regex;

    fn route(name: &str, matcher: Matcher) -> Route {
        Route {
            name: name.into(),
            matcher,
            action: Action::DirectResponse(DirectResponse {
                status: http::StatusCode::OK,
                body: bytes::Bytes::new(),
                headers: vec![],
            }),
            fault: None,
        }
    }

    fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> Arc<VirtualHost> {
        Arc::new(VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            listeners: None,
            routes,
        })
    }

    fn any_route(name: &str) -> Route {
        route(name, Matcher::default())
    }

    fn head<'a>(
        host: &'a str,
        path: &'a str,
        method: &'a Method,
        headers: &'a HeaderMap,
    ) -> RequestHead<'a> {
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        RequestHead {
            host,
            path,
            query,
            method,
            headers,
        }
    }

    #[test]
    fn host_precedence_is_exact_then_suffix_then_prefix_then_any() {
        let table = RouteTable::new(vec![
            vhost("any", &["*"], vec![any_route("any")]),
            vhost("prefix", &["api.*"], vec![any_route("prefix")]),
            vhost("short-suffix", &["*.com"], vec![any_route("short")]),
            vhost("suffix", &["*.example.com"], vec![any_route("suffix")]),
            vhost("exact", &["www.example.com"], vec![any_route("exact")]),
        ]);
        let name = |host: &str| table.virtual_host(host).map(|v| v.name.clone()).unwrap();
        assert_eq!(name("www.example.com"), "exact");
        assert_eq!(name("shop.example.com"), "suffix");
        assert_eq!(name("other.com"), "short-suffix");
        assert_eq!(name("api.internal"), "prefix");
        assert_eq!(name("localhost"), "any");
        // A wildcard never matches the bare suffix itself.
        assert_eq!(name("example.com"), "short-suffix");
    }

    #[test]
    fn unknown_host_without_catch_all() {
        let table = RouteTable::new(vec![vhost("exact", &["a.test"], vec![any_route("r")])]);
        let headers = HeaderMap::new();
        let method = Method::GET;
        assert_eq!(
            table
                .find(&head("b.test", "/", &method, &headers))
                .unwrap_err(),
            NoMatch::UnknownHost
        );
    }

    #[test]
    fn routes_match_in_order_on_path_method_headers_and_query() {
        let table = RouteTable::new(vec![vhost(
            "v",
            &["*"],
            vec![
                route(
                    "exact",
                    Matcher {
                        path: PathMatch::Exact("/health".into()),
                        ..Default::default()
                    },
                ),
                route(
                    "post-orders",
                    Matcher {
                        path: PathMatch::Prefix("/orders".into()),
                        methods: vec![Method::POST],
                        ..Default::default()
                    },
                ),
                route(
                    "canary",
                    Matcher {
                        path: PathMatch::Prefix("/orders".into()),
                        headers: vec![ValueMatch {
                            name: "x-canary".into(),
                            rule: ValueRule::Exact("1".into()),
                        }],
                        ..Default::default()
                    },
                ),
                route(
                    "beta",
                    Matcher {
                        path: PathMatch::Prefix("/orders".into()),
                        query: vec![ValueMatch {
                            name: "beta".into(),
                            rule: ValueRule::Exact("yes please".into()),
                        }],
                        ..Default::default()
                    },
                ),
                route(
                    "no-auth",
                    Matcher {
                        path: PathMatch::Regex(Regex::new("^(?:/orders/[0-9]+)$").unwrap()),
                        headers: vec![ValueMatch {
                            name: "authorization".into(),
                            rule: ValueRule::Present(false),
                        }],
                        ..Default::default()
                    },
                ),
                route(
                    "orders",
                    Matcher {
                        path: PathMatch::Prefix("/orders".into()),
                        ..Default::default()
                    },
                ),
            ],
        )]);
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", "1".parse().unwrap());
        let mut auth = HeaderMap::new();
        auth.insert("authorization", "Bearer x".parse().unwrap());
        let none = HeaderMap::new();
        let find = |path: &str, method: Method, headers: &HeaderMap| {
            table
                .find(&head("h", path, &method, headers))
                .map(|m| m.route.name.clone())
                .unwrap_or_default()
        };
        assert_eq!(find("/health", Method::GET, &none), "exact");
        assert_eq!(find("/health/x", Method::GET, &none), "");
        assert_eq!(find("/orders", Method::POST, &none), "post-orders");
        assert_eq!(find("/orders", Method::GET, &canary), "canary");
        assert_eq!(find("/orders?beta=yes+please", Method::GET, &none), "beta");
        assert_eq!(
            find("/orders?beta=yes%20please", Method::GET, &none),
            "beta"
        );
        assert_eq!(find("/orders/42", Method::GET, &none), "no-auth");
        assert_eq!(find("/orders/42", Method::GET, &auth), "orders");
        assert_eq!(find("/orders/abc", Method::GET, &none), "orders");
    }

    #[test]
    fn percent_decoding_tolerates_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
