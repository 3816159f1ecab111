//! Route lookup (`tollgate::routing::RouteTable::find`) on a table built from the input —
//! exact, `*.suffix`, `prefix.*` and `*` domains; prefix, exact and regex paths; methods;
//! header and query rules — and a request head.
//!
//! Checks: nothing panics; the virtual host chosen is the one the host precedence names
//! (exact, then the longest suffix, then the longest prefix, then `*`; on a tie the first
//! written), worked out here independently; a route found satisfies `route_matches` and an
//! independent reading of its rules, and no earlier route of that virtual host does;
//! `NoRoute` means no route of the chosen virtual host matches.
//!
//! Names, hosts and paths are drawn from small alphabets so that rules and requests meet
//! often; header values are arbitrary bytes.

#![no_main]

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use regex::{Regex, RegexBuilder};
use tollgate::config::{
    Action, DirectResponse, PathMatch, Route, RouteMatch, ValueMatch, ValueRule, VirtualHost,
};
use tollgate::routing::{normalize, query_param, route_matches, NoMatch, RequestHead, RouteTable};

// Two letters are enough for domains and hosts to overlap in every way (a host under two
// wildcards of different lengths, an exact name shadowing a wildcard) within a few bytes.
const HOST_CHARS: &[u8] = b"a.A";
const AUTHORITY_CHARS: &[u8] = b"a.A:1[]";
const PATH_CHARS: &[u8] = b"/ab.%2F";
const QUERY_CHARS: &[u8] = b"ab=&%2+F";
const NAME_CHARS: &[u8] = b"xab-";
const VALUE_CHARS: &[u8] = b"ab1 %";
const REGEX_CHARS: &[u8] = b"ab/.*+?|()[]^$\\{}1-";
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PURGE",
];

/// Bytes read as text over `alphabet` (each byte picks a character), at most 24 long.
fn text(bytes: &[u8], alphabet: &[u8]) -> String {
    bytes
        .iter()
        .take(24)
        .map(|&byte| alphabet[usize::from(byte) % alphabet.len()] as char)
        .collect()
}

#[derive(Arbitrary, Debug)]
enum DomainSpec {
    Exact(Vec<u8>),
    /// `*` followed by the text: `*.example.com`, `*-api.example.com`.
    Suffix(Vec<u8>),
    /// The text followed by `*`: `api.*`.
    Prefix(Vec<u8>),
    Any,
}

#[derive(Arbitrary, Debug)]
enum PathSpec {
    Any,
    Prefix(Vec<u8>),
    Exact(Vec<u8>),
    Regex(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum RuleSpec {
    Exact(Vec<u8>),
    Regex(Vec<u8>),
    Present(bool),
}

#[derive(Arbitrary, Debug)]
struct ValueSpec {
    name: Vec<u8>,
    rule: RuleSpec,
}

#[derive(Arbitrary, Debug)]
struct RouteSpec {
    path: PathSpec,
    methods: Vec<u8>,
    headers: Vec<ValueSpec>,
    query: Vec<ValueSpec>,
}

#[derive(Arbitrary, Debug)]
struct VirtualHostSpec {
    domains: Vec<DomainSpec>,
    routes: Vec<RouteSpec>,
}

#[derive(Arbitrary, Debug)]
struct RequestSpec {
    authority: Vec<u8>,
    path: Vec<u8>,
    query: Option<Vec<u8>>,
    method: u8,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The request comes first: fields are read from the input in order, and the table, last,
/// takes what is left (the other way round, the request was starved to an empty one).
#[derive(Arbitrary, Debug)]
struct Input {
    request: RequestSpec,
    virtual_hosts: Vec<VirtualHostSpec>,
}

/// Route regexes as the policy validator compiles them (whole-value match), with a size
/// limit so that a pathological pattern costs an error, not the fuzzer's time.
fn regex(bytes: &[u8]) -> Option<Regex> {
    RegexBuilder::new(&format!("^(?:{})$", text(bytes, REGEX_CHARS)))
        .size_limit(1 << 16)
        .build()
        .ok()
}

fn header_name(bytes: &[u8]) -> Option<String> {
    let name = text(bytes, NAME_CHARS);
    HeaderName::from_bytes(name.as_bytes()).ok()?;
    Some(name)
}

fn value_rule(spec: &RuleSpec) -> Option<ValueRule> {
    Some(match spec {
        RuleSpec::Exact(bytes) => ValueRule::Exact(text(bytes, VALUE_CHARS)),
        RuleSpec::Regex(bytes) => ValueRule::Regex(regex(bytes)?),
        RuleSpec::Present(wanted) => ValueRule::Present(*wanted),
    })
}

/// The route of `spec`, or `None` for one the validator would refuse (a bad regex).
fn route(index: usize, spec: &RouteSpec) -> Option<Route> {
    let path = match &spec.path {
        PathSpec::Any => PathMatch::Any,
        PathSpec::Prefix(bytes) => PathMatch::Prefix(format!("/{}", text(bytes, PATH_CHARS))),
        PathSpec::Exact(bytes) => PathMatch::Exact(format!("/{}", text(bytes, PATH_CHARS))),
        PathSpec::Regex(bytes) => PathMatch::Regex(regex(bytes)?),
    };
    let methods = spec
        .methods
        .iter()
        .take(3)
        .map(|&m| Method::from_bytes(METHODS[usize::from(m) % METHODS.len()].as_bytes()).unwrap())
        .collect();
    let headers = spec
        .headers
        .iter()
        .take(3)
        .map(|rule| {
            Some(ValueMatch {
                name: header_name(&rule.name)?,
                rule: value_rule(&rule.rule)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let query = spec
        .query
        .iter()
        .take(3)
        .map(|rule| {
            Some(ValueMatch {
                name: text(&rule.name, QUERY_CHARS),
                rule: value_rule(&rule.rule)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Route {
        name: format!("r{index}"),
        matcher: RouteMatch {
            path,
            methods,
            headers,
            query,
        },
        action: Action::DirectResponse(DirectResponse {
            status: http::StatusCode::OK,
            body: Default::default(),
            headers: Vec::new(),
        }),
        fault: None,
    })
}

/// A domain as the validator lets it through (lower-cased, one `*` at most, at an end).
fn domain(spec: &DomainSpec) -> String {
    let name = |bytes: &[u8]| text(bytes, HOST_CHARS).to_ascii_lowercase();
    match spec {
        DomainSpec::Exact(bytes) => name(bytes),
        DomainSpec::Suffix(bytes) => format!("*{}", name(bytes)),
        DomainSpec::Prefix(bytes) => format!("{}*", name(bytes)),
        DomainSpec::Any => "*".into(),
    }
}

/// Host precedence, written out plainly: the index of the virtual host `host` selects.
fn expected_virtual_host(virtual_hosts: &[Arc<VirtualHost>], host: &str) -> Option<usize> {
    let claims = || {
        virtual_hosts.iter().enumerate().flat_map(|(index, vhost)| {
            vhost
                .domains
                .iter()
                .map(move |domain| (index, domain.as_str()))
        })
    };
    if let Some((index, _)) = claims().find(|(_, domain)| !domain.contains('*') && *domain == host)
    {
        return Some(index);
    }
    // Longest wildcard first; among equally long ones, the first written. A wildcard stands
    // for at least one character.
    let longest = |pick: &dyn Fn(&str) -> Option<&str>, covers: &dyn Fn(&str) -> bool| {
        let mut best: Option<(usize, usize)> = None;
        for (index, domain) in claims() {
            if domain == "*" {
                continue;
            }
            if let Some(fixed) = pick(domain) {
                if host.len() > fixed.len()
                    && covers(fixed)
                    && best.is_none_or(|(_, len)| fixed.len() > len)
                {
                    best = Some((index, fixed.len()));
                }
            }
        }
        best.map(|(index, _)| index)
    };
    longest(&|domain| domain.strip_prefix('*'), &|suffix| {
        host.ends_with(suffix)
    })
    .or_else(|| {
        longest(&|domain| domain.strip_suffix('*'), &|prefix| {
            host.starts_with(prefix)
        })
    })
    .or_else(|| {
        claims()
            .find(|(_, domain)| *domain == "*")
            .map(|(index, _)| index)
    })
}

/// A route's rules read directly against the request parts.
fn satisfies(route: &Route, head: &RequestHead<'_>, headers: &[(String, HeaderValue)]) -> bool {
    let matcher = &route.matcher;
    let path = match &matcher.path {
        PathMatch::Any => true,
        PathMatch::Prefix(prefix) => head.path.get(..prefix.len()) == Some(prefix.as_str()),
        PathMatch::Exact(exact) => head.path == exact,
        PathMatch::Regex(regex) => regex.is_match(head.path),
    };
    let value_ok = |rule: &ValueRule, value: Option<&str>| match rule {
        ValueRule::Present(wanted) => value.is_some() == *wanted,
        ValueRule::Exact(exact) => value == Some(exact.as_str()),
        ValueRule::Regex(regex) => value.is_some_and(|value| regex.is_match(value)),
    };
    // The first value of a header counts; one that is not visible ASCII counts as absent.
    let header = |name: &str| {
        headers
            .iter()
            .find(|(header, _)| header == name)
            .and_then(|(_, value)| value.to_str().ok())
    };
    path && (matcher.methods.is_empty() || matcher.methods.iter().any(|m| m == head.method))
        && matcher
            .headers
            .iter()
            .all(|rule| value_ok(&rule.rule, header(&rule.name)))
        && matcher.query.iter().all(|rule| {
            let value = head.query.and_then(|query| query_param(query, &rule.name));
            value_ok(&rule.rule, value.as_deref())
        })
}

fn check(input: Input) {
    let virtual_hosts: Vec<Arc<VirtualHost>> = input
        .virtual_hosts
        .iter()
        .take(6)
        .enumerate()
        .map(|(index, spec)| {
            Arc::new(VirtualHost {
                name: format!("v{index}"),
                domains: spec.domains.iter().take(4).map(domain).collect(),
                listeners: None,
                routes: spec
                    .routes
                    .iter()
                    .take(6)
                    .enumerate()
                    .filter_map(|(i, spec)| route(i, spec))
                    .collect(),
            })
        })
        .collect();
    let table = RouteTable::new(virtual_hosts.clone());

    let request = &input.request;
    // The pipeline answers 400 to an authority that cannot be normalized; routing never
    // sees it.
    let Ok(host) = normalize::host(
        &text(&request.authority, AUTHORITY_CHARS),
        &tollgate::config::Normalization::default(),
    ) else {
        return;
    };
    let path = format!("/{}", text(&request.path, PATH_CHARS));
    let query = request.query.as_ref().map(|bytes| text(bytes, QUERY_CHARS));
    let method =
        Method::from_bytes(METHODS[usize::from(request.method) % METHODS.len()].as_bytes())
            .unwrap();
    let mut header_list = Vec::new();
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers.iter().take(6) {
        let (Some(name), Ok(value)) = (header_name(name), HeaderValue::from_bytes(value)) else {
            continue;
        };
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.clone(),
        );
        header_list.push((name, value));
    }
    let head = RequestHead {
        host: &host,
        path: &path,
        query: query.as_deref(),
        method: &method,
        headers: &headers,
    };

    let expected = expected_virtual_host(&virtual_hosts, &host);
    let found = table.find(&head);
    let chosen = table.virtual_host(&host);
    assert_eq!(
        chosen.map(|vhost| vhost.name.as_str()),
        expected.map(|index| virtual_hosts[index].name.as_str()),
        "host {host:?}"
    );
    match (found, expected) {
        (Ok(found), Some(index)) => {
            assert!(
                Arc::ptr_eq(found.virtual_host, &virtual_hosts[index]),
                "host {host:?}"
            );
            assert!(
                route_matches(found.route, &head),
                "{} does not match",
                found.route.name
            );
            assert!(
                satisfies(found.route, &head, &header_list),
                "{} does not satisfy its rules",
                found.route.name
            );
            let earlier = virtual_hosts[index]
                .routes
                .iter()
                .take_while(|route| !std::ptr::eq(*route, found.route));
            for route in earlier {
                assert!(
                    !satisfies(route, &head, &header_list),
                    "{} matches before {}",
                    route.name,
                    found.route.name
                );
            }
        }
        (Err(NoMatch::NoRoute), Some(index)) => {
            for route in &virtual_hosts[index].routes {
                assert!(
                    !route_matches(route, &head),
                    "{} matches, yet no route was found",
                    route.name
                );
                assert!(
                    !satisfies(route, &head, &header_list),
                    "{} satisfies its rules, yet no route was found",
                    route.name
                );
            }
        }
        (Err(NoMatch::UnknownHost), None) => {}
        (found, expected) => {
            panic!("host {host:?}: found {found:?}, expected virtual host {expected:?}")
        }
    }
}

fuzz_target!(|input: Input| check(input));
