//! Virtual hosts and routes: matches, actions (forward, redirect, direct response), faults
//! and the per-route enabling of plugin filters.

use serde_json::{json, Map, Value};

use super::plugins::{Filters, FAULT_FILTER};
use super::sources::{field, Sources};
use super::{duration, fraction, typed, Losses};
use crate::config::{
    Action, Config, DirectResponse, Fault, Forward, HashOn, LoadBalancing, Origin, PathMatch,
    Redirect, Route, RouteMatch, ValueMatch, ValueRule,
};

const HTTP_FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";

/// Methods that may be sent twice with the effect of once (RFC 9110 §9.2.2): the ones
/// Tollgate retries on every condition.
const IDEMPOTENT_METHODS: &str = "GET|HEAD|OPTIONS|TRACE|PUT|DELETE";

/// A virtual host in Envoy's terms, and what its routes need of the route configuration.
pub(super) struct VirtualHostEntry {
    pub value: Value,
    /// The largest direct response body of its routes.
    pub largest_direct_body: usize,
}

/// Every virtual host, in the order of `config.virtual_hosts`.
pub(super) fn virtual_hosts(
    config: &Config,
    sources: &Sources,
    filters: &Filters,
    losses: &mut Losses,
) -> Vec<VirtualHostEntry> {
    config
        .virtual_hosts
        .iter()
        .zip(&sources.virtual_hosts)
        .map(|(vhost, (origin, _))| {
            let routes: Vec<Value> = vhost
                .routes
                .iter()
                .enumerate()
                .map(|(i, route)| {
                    let origin = origin.child(&format!("routes[{i}]"));
                    self::route(route, &origin, config, filters, losses)
                })
                .collect();
            let mut value = json!({
                "name": vhost.name,
                "domains": vhost.domains,
                "routes": routes,
            });
            let enabled = filters.enabled_on_virtual_host(&vhost.name);
            if !enabled.is_empty() {
                value["typed_per_filter_config"] = Value::Object(enabled.into_iter().collect());
            }
            let largest_direct_body = vhost
                .routes
                .iter()
                .filter_map(|route| match &route.action {
                    Action::DirectResponse(answer) => Some(answer.body.len()),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            VirtualHostEntry {
                value,
                largest_direct_body,
            }
        })
        .collect()
}

fn route(
    route: &Route,
    origin: &Origin,
    config: &Config,
    filters: &Filters,
    losses: &mut Losses,
) -> Value {
    let mut value = json!({
        "name": route.name,
        "match": route_match(&route.matcher, origin, losses),
    });
    match &route.action {
        Action::Forward(forward) => {
            value["route"] = forward_action(forward, origin, losses);
            if let Some(policy) = hash_policy(forward, config, origin, losses) {
                value["route"]["hash_policy"] = policy;
            }
        }
        Action::Redirect(redirect) => value["redirect"] = redirect_action(redirect),
        Action::DirectResponse(answer) => {
            value["direct_response"] = direct_response(answer);
            if !answer.headers.is_empty() {
                value["response_headers_to_add"] = answer
                    .headers
                    .iter()
                    .map(|(name, header)| {
                        json!({
                            "header": {
                                "key": name.as_str(),
                                "value": String::from_utf8_lossy(header.as_bytes()),
                            },
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        })
                    })
                    .collect();
            }
        }
    }
    let mut per_filter: Map<String, Value> =
        filters.enabled_on_route(&route.name).into_iter().collect();
    if let Some(fault) = &route.fault {
        per_filter.insert(FAULT_FILTER.to_string(), fault_config(fault));
    }
    if !per_filter.is_empty() {
        value["typed_per_filter_config"] = Value::Object(per_filter);
    }
    value
}

fn route_match(matcher: &RouteMatch, origin: &Origin, losses: &mut Losses) -> Value {
    let mut value = match &matcher.path {
        PathMatch::Any => json!({ "prefix": "/" }),
        PathMatch::Prefix(prefix) => json!({ "prefix": prefix }),
        PathMatch::Exact(path) => json!({ "path": path }),
        PathMatch::Regex(regex) => json!({ "safe_regex": { "regex": unanchored(regex.as_str()) } }),
    };
    let mut headers: Vec<Value> = Vec::new();
    match matcher.methods.as_slice() {
        [] => {}
        [method] => {
            headers.push(json!({ "name": ":method", "string_match": { "exact": method.as_str() } }))
        }
        methods => {
            let alternatives: Vec<&str> = methods.iter().map(|method| method.as_str()).collect();
            headers.push(json!({
                "name": ":method",
                "string_match": { "safe_regex": { "regex": alternatives.join("|") } },
            }));
        }
    }
    headers.extend(matcher.headers.iter().map(header_matcher));
    if !headers.is_empty() {
        value["headers"] = Value::Array(headers);
    }
    let mut query = Vec::new();
    for (i, parameter) in matcher.query.iter().enumerate() {
        match &parameter.rule {
            ValueRule::Present(false) => losses.add(
                field(origin, &format!("match.query[{i}].present")),
                "Envoy cannot require a query parameter to be absent; the route matches whether or not it is there",
            ),
            rule => query.push(merged(json!({ "name": parameter.name }), rule_json(rule))),
        }
    }
    if !query.is_empty() {
        value["query_parameters"] = Value::Array(query);
    }
    value
}

/// The matcher fields of a rule: `string_match` or `present_match`.
fn rule_json(rule: &ValueRule) -> Value {
    match rule {
        ValueRule::Exact(text) => json!({ "string_match": { "exact": text } }),
        ValueRule::Regex(regex) => {
            json!({ "string_match": { "safe_regex": { "regex": unanchored(regex.as_str()) } } })
        }
        ValueRule::Present(present) => json!({ "present_match": present }),
    }
}

fn header_matcher(header: &ValueMatch) -> Value {
    let name = json!({ "name": header.name });
    match &header.rule {
        ValueRule::Present(false) => {
            merged(name, json!({ "present_match": true, "invert_match": true }))
        }
        rule => merged(name, rule_json(rule)),
    }
}

/// The fields of both objects.
fn merged(mut value: Value, more: Value) -> Value {
    if let (Some(value), Value::Object(more)) = (value.as_object_mut(), more) {
        value.extend(more);
    }
    value
}

/// The pattern as written: the model anchors it (`^(?:…)$`) to match whole values, which
/// Envoy's `safe_regex` does by itself.
fn unanchored(pattern: &str) -> &str {
    pattern
        .strip_prefix("^(?:")
        .and_then(|rest| rest.strip_suffix(")$"))
        .unwrap_or(pattern)
}

fn forward_action(forward: &Forward, origin: &Origin, losses: &mut Losses) -> Value {
    let mut value = json!({ "timeout": duration(forward.timeout) });
    match forward.targets.as_slice() {
        [target] => {
            value["cluster"] = json!(target.cluster);
            if !target.subset.is_empty() {
                value["metadata_match"] = subset_metadata(&target.subset);
            }
        }
        targets => {
            let clusters: Vec<Value> = targets
                .iter()
                .map(|target| {
                    let mut weighted = json!({ "name": target.cluster, "weight": target.weight });
                    if !target.subset.is_empty() {
                        weighted["metadata_match"] = subset_metadata(&target.subset);
                    }
                    weighted
                })
                .collect();
            value["weighted_clusters"] = json!({ "clusters": clusters });
        }
    }
    if let Some(prefix) = &forward.rewrite_prefix {
        value["prefix_rewrite"] = json!(prefix);
    }
    if let Some(rewrite) = &forward.rewrite_regex {
        value["regex_rewrite"] = json!({
            "pattern": { "regex": rewrite.pattern.as_str() },
            "substitution": rewrite.substitution,
        });
    }
    if let Some(host) = &forward.rewrite_host {
        value["host_rewrite_literal"] = json!(host);
    }
    if let Some(retries) = &forward.retries {
        let conditions = &retries.conditions;
        let mut retry_on: Vec<&str> = [
            (conditions.any_5xx, "5xx"),
            (conditions.gateway_error, "gateway-error"),
            (conditions.connect_failure, "connect-failure"),
            (conditions.reset, "reset"),
            (conditions.retriable_4xx, "retriable-4xx"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if !conditions.status_codes.is_empty() {
            retry_on.push("retriable-status-codes");
        }
        let mut policy = json!({
            "retry_on": retry_on.join(","),
            "num_retries": retries.attempts,
        });
        if let Some(per_try) = retries.per_try_timeout {
            policy["per_try_timeout"] = json!(duration(per_try));
        }
        if !conditions.status_codes.is_empty() {
            policy["retriable_status_codes"] = json!(conditions.status_codes);
        }
        // A try whose connection could not be opened never reached the upstream: retrying
        // it is safe for every method, in Envoy as here.
        let unsent_only = conditions.connect_failure
            && !(conditions.any_5xx
                || conditions.gateway_error
                || conditions.reset
                || conditions.retriable_4xx)
            && conditions.status_codes.is_empty();
        if !retries.non_idempotent && !unsent_only {
            // Envoy cannot tell a try the upstream never received from one it may have
            // acted on, so non-idempotent requests are not retried at all: the safe side.
            policy["retriable_request_headers"] = json!([{
                "name": ":method",
                "string_match": { "safe_regex": { "regex": IDEMPOTENT_METHODS } },
            }]);
            losses.add(
                field(origin, "forward.retries"),
                "Envoy cannot retry POST, PATCH and other non-idempotent requests only when the \
                 upstream never received them; the export retries idempotent methods only \
                 (retriable_request_headers), or set non_idempotent: true to retry every method",
            );
        }
        value["retry_policy"] = policy;
    }
    if let Some(mirror) = &forward.mirror {
        value["request_mirror_policies"] = json!([{
            "cluster": mirror.cluster,
            "runtime_fraction": { "default_value": fraction(mirror.percent) },
        }]);
    }
    value
}

/// `metadata_match` selecting the endpoints whose labels (`envoy.lb` metadata) match.
/// What Envoy hashes for the route's `ring_hash` clusters: their `hash_on`. Envoy keeps the
/// hash policy on the route, so the targets of a split must hash alike.
fn hash_policy(
    forward: &Forward,
    config: &Config,
    origin: &Origin,
    losses: &mut Losses,
) -> Option<Value> {
    let mut policies: Vec<&HashOn> = forward
        .targets
        .iter()
        .filter_map(|target| config.clusters.iter().find(|c| c.name == target.cluster))
        .filter(|cluster| cluster.load_balancing == LoadBalancing::RingHash)
        .map(|cluster| &cluster.hash_on)
        .collect();
    policies.dedup();
    if policies.len() > 1 {
        losses.add(
            field(origin, "forward.split"),
            "Envoy hashes a route one way: the split's ring_hash clusters hash_on differently; the first one's is kept",
        );
    }
    let policy = match policies.first()? {
        HashOn::Header(name) => json!({ "header": { "header_name": name } }),
        HashOn::Cookie(name) => json!({ "cookie": { "name": name } }),
        HashOn::ClientIp => json!({ "connection_properties": { "source_ip": true } }),
    };
    Some(json!([policy]))
}

fn subset_metadata(subset: &std::collections::BTreeMap<String, String>) -> Value {
    json!({ "filter_metadata": { "envoy.lb": subset } })
}

fn redirect_action(redirect: &Redirect) -> Value {
    let mut value = json!({
        "response_code": match redirect.code.as_u16() {
            302 => "FOUND",
            303 => "SEE_OTHER",
            307 => "TEMPORARY_REDIRECT",
            308 => "PERMANENT_REDIRECT",
            _ => "MOVED_PERMANENTLY",
        },
        "strip_query": redirect.strip_query,
    });
    if let Some(scheme) = &redirect.scheme {
        value["scheme_redirect"] = json!(scheme);
    }
    if let Some(host) = &redirect.host {
        value["host_redirect"] = json!(host);
    }
    if let Some(port) = redirect.port {
        value["port_redirect"] = json!(port);
    }
    if let Some(path) = &redirect.path {
        value["path_redirect"] = json!(path);
    } else if let Some(prefix) = &redirect.prefix {
        value["prefix_rewrite"] = json!(prefix);
    }
    value
}

fn direct_response(answer: &DirectResponse) -> Value {
    let mut value = json!({ "status": answer.status.as_u16() });
    if !answer.body.is_empty() {
        value["body"] = match std::str::from_utf8(&answer.body) {
            Ok(text) => json!({ "inline_string": text }),
            Err(_) => json!({ "inline_bytes": base64(&answer.body) }),
        };
    }
    value
}

/// The route's fault as the fault filter's per-route configuration.
fn fault_config(fault: &Fault) -> Value {
    let mut value = json!({});
    if let Some((percent, delay)) = fault.delay {
        value["delay"] = json!({ "fixed_delay": duration(delay), "percentage": fraction(percent) });
    }
    if let Some((percent, status)) = fault.abort {
        value["abort"] = json!({ "http_status": status.as_u16(), "percentage": fraction(percent) });
    }
    typed(HTTP_FAULT, value)
}

/// Standard base64 with padding, as protobuf's JSON form writes `bytes`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = chunk.iter().enumerate().fold(0u32, |group, (i, byte)| {
            group | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(group >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_as_protobuf_json_expects() {
        assert_eq!(base64(b"pong"), "cG9uZw==");
        assert_eq!(base64(b"\xff\x00\x01"), "/wAB");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn the_model_anchors_are_taken_off_regexes() {
        assert_eq!(unanchored("^(?:/orders/[0-9]+)$"), "/orders/[0-9]+");
        assert_eq!(unanchored("abc"), "abc");
    }
}
