//! VirtualServices as virtual hosts and their routes.

use serde_json::Value;
use serde_norway::{Mapping, Value as Yaml};

use super::{entries, map, put, strings, Importer, Resource};
use crate::mesh::istio::host_covers;

impl Importer {
    pub(super) fn virtual_service(&mut self, service: &Resource) {
        let spec = &service.spec;
        self.only(service, "spec", spec, &["hosts", "gateways", "http"]);
        let hosts = strings(&spec["hosts"]);
        for (i, gateway) in strings(&spec["gateways"]).iter().enumerate() {
            let name = gateway
                .rsplit_once('/')
                .map_or(gateway.as_str(), |(_, n)| n);
            if !self.gateway_names.contains(name) {
                self.lose(
                    service.at(&format!("spec.gateways[{i}]")),
                    "not a Gateway of the imported files (or the mesh); the routes are served on the imported listeners",
                );
            }
        }
        let listeners = self.listeners_serving(&hosts);
        if listeners.as_ref().is_some_and(Vec::is_empty) {
            self.lose(
                service.at("spec.hosts"),
                "no server of the Gateway accepts these hosts; the virtual host is bound to every listener",
            );
        }
        let listeners = listeners.filter(|l| !l.is_empty());
        let mut routes = Vec::new();
        for (j, http) in entries(&spec["http"]).into_iter().enumerate() {
            routes.extend(self.http_route(service, j, http));
        }
        let mut vhost = map();
        put(&mut vhost, "name", &service.name);
        put(&mut vhost, "domains", &hosts);
        if let Some(names) = &listeners {
            put(&mut vhost, "listeners", names);
        }
        put(&mut vhost, "routes", routes);
        self.virtual_hosts.push(Yaml::Mapping(vhost));
        self.vhost_listeners.push((service.name.clone(), listeners));
    }

    /// The listeners whose server hosts cover one of `hosts`; `None` when that is all of them.
    pub(super) fn listeners_serving(&self, hosts: &[String]) -> Option<Vec<String>> {
        let serving: Vec<String> = self
            .listeners
            .iter()
            .filter(|listener| {
                hosts.iter().any(|host| {
                    listener
                        .hosts
                        .iter()
                        .any(|accepted| host_covers(accepted, host))
                })
            })
            .map(|listener| listener.name.clone())
            .collect();
        if serving.len() == self.listeners.len() {
            None
        } else {
            Some(serving)
        }
    }

    /// The routes of one HTTP route: one per match condition (they are alternatives).
    pub(super) fn http_route(&mut self, service: &Resource, j: usize, http: &Value) -> Vec<Yaml> {
        let at = format!("spec.http[{j}]");
        self.only(
            service,
            &at,
            http,
            &[
                "name",
                "match",
                "route",
                "redirect",
                "directResponse",
                "rewrite",
                "timeout",
                "retries",
                "fault",
                "mirror",
                "mirrorPercentage",
                "headers",
            ],
        );
        let base_name = http["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}-{j}", service.name));
        let matches = match http["match"].as_array() {
            Some(matches) if !matches.is_empty() => matches.iter().map(Some).collect(),
            _ => vec![None],
        };
        let mut routes = Vec::new();
        for (k, matcher) in matches.into_iter().enumerate() {
            let mut name = if k == 0 {
                base_name.clone()
            } else {
                format!("{base_name}-{}", k + 1)
            };
            if self.route_names.contains(&name) {
                name = format!("{}-{name}", service.name);
            }
            self.route_names.insert(name.clone());
            let mut route = map();
            put(&mut route, "name", &name);
            let mut prefix_match = false;
            if let Some(matcher) = matcher {
                let (fields, is_prefix) =
                    self.route_match(service, &format!("{at}.match[{k}]"), matcher);
                prefix_match = is_prefix;
                if !fields.is_empty() {
                    route.insert("match".into(), Yaml::Mapping(fields));
                }
            }
            let action = if http["route"].is_array() {
                self.forward(service, &at, http, prefix_match)
                    .map(|f| ("forward", f))
            } else if http["redirect"].is_object() {
                Some(("redirect", self.redirect(service, &at, &http["redirect"])))
            } else if http["directResponse"].is_object() {
                Some(("direct_response", self.direct_response(service, &at, http)))
            } else {
                None
            };
            let Some((action, fields)) = action else {
                self.lose(
                    service.at(&at),
                    "no route, redirect or directResponse Tollgate can follow; the route is left out",
                );
                continue;
            };
            if http["headers"].is_object() && action != "direct_response" {
                self.lose(
                    service.at(&format!("{at}.headers")),
                    "Tollgate routes do not change headers; a plugin (transformer) does",
                );
            }
            if let Some(fault) = self.fault(service, &at, &http["fault"]) {
                route.insert("fault".into(), Yaml::Mapping(fault));
            }
            route.insert(action.into(), Yaml::Mapping(fields));
            routes.push(Yaml::Mapping(route));
        }
        routes
    }

    /// A match condition; also whether it matches the path by prefix.
    pub(super) fn route_match(
        &mut self,
        service: &Resource,
        at: &str,
        matcher: &Value,
    ) -> (Mapping, bool) {
        self.only(
            service,
            at,
            matcher,
            &[
                "name",
                "uri",
                "method",
                "headers",
                "withoutHeaders",
                "queryParams",
            ],
        );
        let mut fields = map();
        let mut is_prefix = false;
        let uri = &matcher["uri"];
        if uri.is_object() {
            let mut path = map();
            if let Some(prefix) = uri["prefix"].as_str() {
                put(&mut path, "prefix", prefix);
                is_prefix = true;
            } else if let Some(exact) = uri["exact"].as_str() {
                put(&mut path, "exact", exact);
            } else if let Some(regex) = uri["regex"].as_str() {
                put(&mut path, "regex", regex);
            }
            fields.insert("path".into(), Yaml::Mapping(path));
        }
        let method = &matcher["method"];
        if let Some(exact) = method["exact"].as_str() {
            put(&mut fields, "methods", [exact]);
        } else if let Some(regex) = method["regex"].as_str() {
            let names: Vec<&str> = regex.split('|').collect();
            if names
                .iter()
                .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_uppercase()))
            {
                put(&mut fields, "methods", names);
            } else {
                self.lose(
                    service.at(&format!("{at}.method")),
                    "Tollgate matches a list of methods; only a regex of names joined by | becomes one",
                );
            }
        } else if method.is_object() {
            self.lose(
                service.at(&format!("{at}.method")),
                "Tollgate matches method names only",
            );
        }
        let mut headers = Vec::new();
        if let Some(conditions) = matcher["headers"].as_object() {
            for (name, condition) in conditions {
                if let Some(rule) =
                    self.value_match(service, &format!("{at}.headers.{name}"), name, condition)
                {
                    headers.push(rule);
                }
            }
        }
        if let Some(conditions) = matcher["withoutHeaders"].as_object() {
            for (name, condition) in conditions {
                if condition.as_object().is_some_and(|c| c.is_empty()) {
                    let mut rule = map();
                    put(&mut rule, "name", name);
                    put(&mut rule, "present", false);
                    headers.push(Yaml::Mapping(rule));
                } else {
                    self.lose(
                        service.at(&format!("{at}.withoutHeaders.{name}")),
                        "Tollgate matches a header's absence, not a value it must not have",
                    );
                }
            }
        }
        if !headers.is_empty() {
            put(&mut fields, "headers", headers);
        }
        let mut query = Vec::new();
        if let Some(conditions) = matcher["queryParams"].as_object() {
            for (name, condition) in conditions {
                if let Some(rule) = self.value_match(
                    service,
                    &format!("{at}.queryParams.{name}"),
                    name,
                    condition,
                ) {
                    query.push(rule);
                }
            }
        }
        if !query.is_empty() {
            put(&mut fields, "query", query);
        }
        (fields, is_prefix)
    }

    /// A header or query StringMatch; `{}` is presence, a prefix becomes a regex.
    pub(super) fn value_match(
        &mut self,
        service: &Resource,
        at: &str,
        name: &str,
        condition: &Value,
    ) -> Option<Yaml> {
        let mut rule = map();
        put(&mut rule, "name", name);
        if let Some(exact) = condition["exact"].as_str() {
            put(&mut rule, "exact", exact);
        } else if let Some(regex) = condition["regex"].as_str() {
            put(&mut rule, "regex", regex);
        } else if let Some(prefix) = condition["prefix"].as_str() {
            put(&mut rule, "regex", format!("{}.*", regex::escape(prefix)));
        } else if condition.as_object().is_some_and(|c| c.is_empty()) {
            put(&mut rule, "present", true);
        } else {
            self.lose(
                service.at(at),
                "not an exact, prefix, regex or presence match",
            );
            return None;
        }
        Some(Yaml::Mapping(rule))
    }

    pub(super) fn forward(
        &mut self,
        service: &Resource,
        at: &str,
        http: &Value,
        prefix_match: bool,
    ) -> Option<Mapping> {
        let mut fields = map();
        let destinations = entries(&http["route"]);
        let mut targets = Vec::new();
        for (i, destination) in destinations.iter().enumerate() {
            let at = format!("{at}.route[{i}]");
            self.only(service, &at, destination, &["destination", "weight"]);
            let target = &destination["destination"];
            self.only(
                service,
                &format!("{at}.destination"),
                target,
                &["host", "subset", "port"],
            );
            let Some(host) = target["host"].as_str() else {
                self.lose(
                    service.at(&format!("{at}.destination.host")),
                    "no host; the destination is left out",
                );
                continue;
            };
            let port = target["port"]["number"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok());
            let cluster = self.cluster(host, service.at(&format!("{at}.destination.host")));
            if cluster.port_guess.is_none() {
                cluster.port_guess = port;
            }
            let cluster_name = cluster.name.clone();
            let mut entry = map();
            put(&mut entry, "cluster", &cluster_name);
            if let Some(subset) = target["subset"].as_str() {
                match cluster.subsets.get(subset) {
                    Some(labels) => put(&mut entry, "subset", labels),
                    None => {
                        self.lose(
                            service.at(&format!("{at}.destination.subset")),
                            "no DestinationRule subset of that name; every endpoint of the cluster is used",
                        );
                    }
                }
            }
            if let Some(weight) = destination["weight"].as_u64() {
                put(&mut entry, "weight", weight);
            }
            targets.push((entry, destination["weight"].is_u64()));
        }
        match targets.as_slice() {
            [] => return None,
            [(only, false)] if only.len() == 1 => {
                fields.extend(only.clone());
            }
            _ => {
                let split: Vec<Yaml> = targets
                    .into_iter()
                    .map(|(mut entry, weighted)| {
                        if !weighted {
                            put(&mut entry, "weight", 100);
                        }
                        Yaml::Mapping(entry)
                    })
                    .collect();
                put(&mut fields, "split", split);
            }
        }
        let rewrite = &http["rewrite"];
        if rewrite.is_object() {
            self.only(
                service,
                &format!("{at}.rewrite"),
                rewrite,
                &["uri", "uriRegexRewrite", "authority"],
            );
            let mut settings = map();
            let regex = &rewrite["uriRegexRewrite"];
            if let (Some(pattern), Some(substitution)) =
                (regex["match"].as_str(), regex["rewrite"].as_str())
            {
                let mut rewrite_regex = map();
                put(&mut rewrite_regex, "pattern", pattern);
                put(&mut rewrite_regex, "substitution", substitution);
                settings.insert("regex".into(), Yaml::Mapping(rewrite_regex));
            }
            if let Some(uri) = rewrite["uri"].as_str() {
                if prefix_match {
                    put(&mut settings, "prefix", uri);
                } else {
                    self.lose(
                        service.at(&format!("{at}.rewrite.uri")),
                        "Tollgate rewrites the prefix of a prefix match only; the path is sent as received",
                    );
                }
            }
            if let Some(authority) = rewrite["authority"].as_str() {
                put(&mut settings, "host", authority);
            }
            if !settings.is_empty() {
                fields.insert("rewrite".into(), Yaml::Mapping(settings));
            }
        }
        match self.duration(service, &format!("{at}.timeout"), &http["timeout"]) {
            Some(timeout) => put(&mut fields, "timeout", timeout),
            None => self.lose(
                service.at(&format!("{at}.timeout")),
                "Istio waits without limit unless told; Tollgate's default of 15s applies",
            ),
        }
        let retries = &http["retries"];
        if retries.is_object() {
            self.only(
                service,
                &format!("{at}.retries"),
                retries,
                &["attempts", "perTryTimeout", "retryOn"],
            );
            let attempts = retries["attempts"].as_u64().unwrap_or(0);
            if attempts > 0 {
                let mut policy = map();
                put(&mut policy, "attempts", attempts);
                if let Some(per_try) = self.duration(
                    service,
                    &format!("{at}.retries.perTryTimeout"),
                    &retries["perTryTimeout"],
                ) {
                    put(&mut policy, "per_try_timeout", per_try);
                }
                let mut on = Vec::new();
                let mut status_codes = Vec::new();
                let conditions = retries["retryOn"]
                    .as_str()
                    .unwrap_or("connect-failure,reset");
                for condition in conditions
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                {
                    if let Ok(code) = condition.parse::<u16>() {
                        status_codes.push(code);
                    } else if [
                        "5xx",
                        "gateway-error",
                        "connect-failure",
                        "reset",
                        "retriable-4xx",
                    ]
                    .contains(&condition)
                    {
                        on.push(condition.to_string());
                    } else {
                        self.lose(
                            service.at(&format!("{at}.retries.retryOn")),
                            &format!("Tollgate retries on 5xx, gateway-error, connect-failure, reset, retriable-4xx and status codes; {condition:?} is left out"),
                        );
                    }
                }
                if !on.is_empty() {
                    put(&mut policy, "on", on);
                }
                if !status_codes.is_empty() {
                    put(&mut policy, "status_codes", status_codes);
                }
                // Istio retries every method on every condition.
                put(&mut policy, "non_idempotent", true);
                fields.insert("retries".into(), Yaml::Mapping(policy));
            }
        } else {
            self.lose(
                service.at(&format!("{at}.retries")),
                "Istio's default retries (2 attempts on connect-failure, refused-stream, ...) are not carried over: the route is not retried",
            );
        }
        let mirror = &http["mirror"];
        if mirror.is_object() {
            self.only(service, &format!("{at}.mirror"), mirror, &["host"]);
            if let Some(host) = mirror["host"].as_str() {
                let cluster = self
                    .cluster(host, service.at(&format!("{at}.mirror.host")))
                    .name
                    .clone();
                let mut settings = map();
                put(&mut settings, "cluster", cluster);
                if let Some(percent) = http["mirrorPercentage"]["value"].as_f64() {
                    put(&mut settings, "percent", percent);
                }
                fields.insert("mirror".into(), Yaml::Mapping(settings));
            }
        }
        Some(fields)
    }

    pub(super) fn redirect(&mut self, service: &Resource, at: &str, redirect: &Value) -> Mapping {
        self.only(
            service,
            &format!("{at}.redirect"),
            redirect,
            &["uri", "authority", "port", "scheme", "redirectCode"],
        );
        let mut fields = map();
        for (istio, tollgate) in [("scheme", "scheme"), ("authority", "host")] {
            if let Some(value) = redirect[istio].as_str() {
                put(&mut fields, tollgate, value);
            }
        }
        if let Some(port) = redirect["port"].as_u64() {
            put(&mut fields, "port", port);
        }
        if let Some(uri) = redirect["uri"].as_str() {
            put(&mut fields, "path", uri);
        }
        if let Some(code) = redirect["redirectCode"].as_u64() {
            put(&mut fields, "code", code);
        }
        fields
    }

    pub(super) fn direct_response(
        &mut self,
        service: &Resource,
        at: &str,
        http: &Value,
    ) -> Mapping {
        let response = &http["directResponse"];
        self.only(
            service,
            &format!("{at}.directResponse"),
            response,
            &["status", "body"],
        );
        let mut fields = map();
        put(
            &mut fields,
            "status",
            response["status"].as_u64().unwrap_or(200),
        );
        let body = &response["body"];
        self.only(
            service,
            &format!("{at}.directResponse.body"),
            body,
            &["string"],
        );
        if let Some(text) = body["string"].as_str() {
            put(&mut fields, "body", text);
        }
        let headers = &http["headers"];
        if headers.is_object() {
            self.only(service, &format!("{at}.headers"), headers, &["response"]);
            self.only(
                service,
                &format!("{at}.headers.response"),
                &headers["response"],
                &["set"],
            );
            if let Some(set) = headers["response"]["set"].as_object() {
                put(&mut fields, "headers", set);
            }
        }
        fields
    }

    pub(super) fn fault(&mut self, service: &Resource, at: &str, fault: &Value) -> Option<Mapping> {
        if !fault.is_object() {
            return None;
        }
        let at = format!("{at}.fault");
        self.only(service, &at, fault, &["delay", "abort"]);
        let mut fields = map();
        let delay = &fault["delay"];
        if delay.is_object() {
            self.only(
                service,
                &format!("{at}.delay"),
                delay,
                &["fixedDelay", "percentage", "percent"],
            );
            if let Some(fixed) = self.duration(
                service,
                &format!("{at}.delay.fixedDelay"),
                &delay["fixedDelay"],
            ) {
                let mut settings = map();
                put(&mut settings, "percent", percentage(delay));
                put(&mut settings, "fixed", fixed);
                fields.insert("delay".into(), Yaml::Mapping(settings));
            }
        }
        let abort = &fault["abort"];
        if abort.is_object() {
            self.only(
                service,
                &format!("{at}.abort"),
                abort,
                &["httpStatus", "percentage", "percent"],
            );
            if let Some(status) = abort["httpStatus"].as_u64() {
                let mut settings = map();
                put(&mut settings, "percent", percentage(abort));
                put(&mut settings, "status", status);
                fields.insert("abort".into(), Yaml::Mapping(settings));
            }
        }
        (!fields.is_empty()).then_some(fields)
    }
}

/// A fault's `percentage.value` (or the older integer `percent`); Istio's default is 100.
fn percentage(fault: &Value) -> f64 {
    fault["percentage"]["value"]
        .as_f64()
        .or_else(|| fault["percent"].as_f64())
        .unwrap_or(100.0)
}
