//! `tollgate export istio`: the policies as Istio resources (multi-document YAML).
//!
//! One Gateway holds a server per listener (per certificate, when a listener has several);
//! each virtual host becomes a VirtualService bound to it; each cluster a ServiceEntry
//! (its endpoints, outside the mesh) and a DestinationRule (subsets, load balancing,
//! connection pool, outlier detection, TLS to the endpoints); each plugin a WasmPlugin on
//! the gateway workload. The folder is validated as `tollgate check` does, then read as
//! written, so that losses name the file and the path the user wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{json, Map, Value};

use super::istio::{
    cluster_host, credential_name, dns_label, gateway_selector, host_covers, istio_duration,
    phase_of, subset_name, EXTENSIONS_API, GATEWAY_NAME, NETWORKING_API,
};
use super::{Losses, Translation};
use crate::config::{self, duration, model, raw};

/// Choices the policies do not hold: where the resources go and where Istio fetches the
/// plugin modules.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// `metadata.namespace` of every resource; none: the namespace `kubectl apply` uses.
    pub namespace: Option<String>,
    /// Prefix of the plugin module URLs (`oci://`, `https://`, `file://`); none: a `file://`
    /// URL of the module in the plugins folder.
    pub module_url_prefix: Option<String>,
}

/// Translates the policies folder (validated as `tollgate check` does) into Istio's Gateway,
/// VirtualService, DestinationRule, ServiceEntry and WasmPlugin resources.
pub fn export(policies: &Path, plugins: &Path) -> anyhow::Result<Translation<String>> {
    export_with(policies, plugins, &ExportOptions::default())
}

/// [`export`] with the namespace and module URLs chosen.
pub fn export_with(
    policies: &Path,
    plugins: &Path,
    options: &ExportOptions,
) -> anyhow::Result<Translation<String>> {
    let config = config::load_dir(policies)
        .map_err(|errors| anyhow::anyhow!("the policies are not valid:\n{errors}"))?;
    let files = read_policy_files(policies)?;
    let mut exporter = Exporter {
        config: &config,
        files: &files,
        options,
        plugins_dir: plugins,
        losses: Losses::new(),
        documents: Vec::new(),
    };
    exporter.server_settings();
    exporter.gateway();
    exporter.virtual_services();
    exporter.clusters();
    exporter.plugins();
    let mut output = String::new();
    for document in &exporter.documents {
        output.push_str("---\n");
        output.push_str(&serde_norway::to_string(document).context("write YAML")?);
    }
    Ok(Translation {
        output,
        losses: exporter.losses,
    })
}

/// A policy file as written, with its name relative to the folder.
struct PolicyFile {
    name: String,
    document: raw::Document,
}

/// The folder's policy files in name order, as `tollgate check` reads them.
fn read_policy_files(dir: &Path) -> anyhow::Result<Vec<PolicyFile>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let extension = path.extension().and_then(|e| e.to_str());
            path.is_file()
                && !name.is_some_and(|name| name.starts_with('.'))
                && matches!(extension, Some("yaml" | "yml" | "json"))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            let document = if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text)?
            } else {
                serde_norway::from_str(&text)?
            };
            Ok(PolicyFile {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                document,
            })
        })
        .collect()
}

/// An item of a policy file and where it was written (`routes.yaml: virtual_hosts[0]`).
struct Located<'a, T> {
    at: String,
    item: &'a T,
}

struct Exporter<'a> {
    config: &'a model::Config,
    files: &'a [PolicyFile],
    options: &'a ExportOptions,
    plugins_dir: &'a Path,
    losses: Losses,
    documents: Vec<Value>,
}

impl<'a> Exporter<'a> {
    fn located<T>(
        &self,
        section: &str,
        items: impl Fn(&'a raw::Document) -> &'a [T],
    ) -> Vec<Located<'a, T>> {
        let files: &'a [PolicyFile] = self.files;
        files
            .iter()
            .flat_map(|file| {
                items(&file.document)
                    .iter()
                    .enumerate()
                    .map(move |(i, item)| Located {
                        at: format!("{}: {section}[{i}]", file.name),
                        item,
                    })
            })
            .collect()
    }

    fn resource(&mut self, api_version: &str, kind: &str, name: &str, spec: Value) {
        let mut metadata = json!({ "name": name });
        if let Some(namespace) = &self.options.namespace {
            metadata["namespace"] = json!(namespace);
        }
        self.documents.push(json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": metadata,
            "spec": spec,
        }));
    }

    fn lose(&mut self, field: String, reason: &str) {
        self.losses.add(field, reason);
    }

    // --- Server settings ---

    /// The `server` section has no place in these resources: Istio takes such settings
    /// from its mesh configuration and the gateway's deployment.
    fn server_settings(&mut self) {
        let files: &'a [PolicyFile] = self.files;
        for file in files {
            let Some(settings) = &file.document.server else {
                continue;
            };
            let Ok(Value::Object(fields)) = serde_json::to_value(settings) else {
                continue;
            };
            for (field, value) in fields {
                if !value.is_null() {
                    self.lose(
                        format!("{}: server.{field}", file.name),
                        "gateway-wide settings are Istio's mesh configuration and the gateway deployment, not these resources",
                    );
                }
            }
        }
    }

    // --- Gateway ---

    /// One Gateway; a server per listener, or per certificate of a listener with several.
    fn gateway(&mut self) {
        let mut servers = Vec::new();
        for Located { at, item: listener } in self.located("listeners", |d| &d.listeners) {
            let Some(address) = self
                .config
                .listeners
                .iter()
                .find(|l| l.name == listener.name)
                .map(|l| l.address)
            else {
                continue;
            };
            let hosts = self.listener_hosts(&listener.name);
            let mut server = json!({
                "port": {
                    "number": address.port(),
                    "name": listener.name,
                    "protocol": match listener.protocol {
                        raw::Protocol::Http => "HTTP",
                        raw::Protocol::Https => "HTTPS",
                    },
                },
                "name": listener.name,
            });
            if !address.ip().is_unspecified() {
                server["bind"] = json!(address.ip().to_string());
            }
            let Some(tls) = &listener.tls else {
                server["hosts"] = json!(hosts);
                servers.push(server);
                continue;
            };
            if let Some(alpn) = &tls.alpn {
                if alpn != &["h2", "http/1.1"] {
                    self.lose(
                        format!("{at}.tls.alpn"),
                        "an Istio gateway offers h2 and http/1.1; other ALPN lists have no field",
                    );
                }
            }
            let mut tls_settings = json!({
                "mode": match &tls.client_auth {
                    None => "SIMPLE",
                    Some(auth) if auth.required => "MUTUAL",
                    Some(_) => "OPTIONAL_MUTUAL",
                },
            });
            if let Some(version) = &tls.min_version {
                tls_settings["minProtocolVersion"] = json!(match version.as_str() {
                    "1.3" => "TLSV1_3",
                    _ => "TLSV1_2",
                });
            }
            // Istio picks a certificate by SNI with a server per certificate, each for the
            // hosts its names cover; hosts no certificate names go to the first, as
            // Tollgate's default certificate.
            let hosts_by_cert = self.hosts_by_certificate(&listener.name, &hosts);
            for (i, cert) in tls.certificates.iter().enumerate() {
                let mut cert_server = server.clone();
                let cert_hosts = &hosts_by_cert[i];
                if cert_hosts.is_empty() {
                    self.lose(
                        format!("{at}.tls.certificates[{i}]"),
                        "names no host of the listener's virtual hosts: no Istio server for it",
                    );
                    continue;
                }
                if i > 0 {
                    let name = format!("{}-{}", listener.name, i + 1);
                    cert_server["name"] = json!(name);
                    cert_server["port"]["name"] = json!(name);
                }
                cert_server["hosts"] = json!(cert_hosts);
                let mut settings = tls_settings.clone();
                settings["credentialName"] = json!(credential_name(&cert.cert));
                cert_server["tls"] = settings;
                servers.push(cert_server);
            }
        }
        let spec = json!({ "selector": gateway_selector(), "servers": servers });
        self.resource(NETWORKING_API, "Gateway", GATEWAY_NAME, spec);
    }

    /// The listener's hosts each certificate serves: the first certificate whose names
    /// (`server_names`, else the DNS names of the certificate) cover a host exactly, else by
    /// wildcard, else the first certificate.
    fn hosts_by_certificate(&self, listener: &str, hosts: &[String]) -> Vec<Vec<String>> {
        let certificates = self
            .config
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .and_then(|l| l.tls.as_ref())
            .map(|tls| tls.certificates.as_slice())
            .unwrap_or_default();
        let names: Vec<Vec<String>> = certificates
            .iter()
            .map(|cert| {
                if cert.server_names.is_empty() {
                    crate::tls::certificate_dns_names(&cert.cert).unwrap_or_default()
                } else {
                    cert.server_names.clone()
                }
            })
            .collect();
        let mut assigned = vec![Vec::new(); certificates.len().max(1)];
        for host in hosts {
            let exact = names.iter().position(|names| names.contains(host));
            let wildcard = || {
                names.iter().position(|names| {
                    names
                        .iter()
                        .any(|name| name.starts_with("*.") && host_covers(name, host))
                })
            };
            let index = exact.or_else(wildcard).unwrap_or(0);
            assigned[index].push(host.clone());
        }
        assigned
    }

    /// The domains of the virtual hosts bound to a listener, as Gateway server hosts.
    fn listener_hosts(&self, listener: &str) -> Vec<String> {
        let mut hosts = Vec::new();
        for vhost in &self.config.virtual_hosts {
            if !model::vhost_listeners(vhost, &self.config.listeners).contains(listener) {
                continue;
            }
            for domain in &vhost.domains {
                if !domain.ends_with(".*") && !hosts.contains(domain) {
                    hosts.push(domain.clone());
                }
            }
        }
        if hosts.is_empty() {
            // A listener without virtual hosts answers 404 to everything, as Istio does for
            // hosts no VirtualService claims.
            hosts.push("*".to_string());
        }
        hosts
    }

    // --- VirtualServices ---

    fn virtual_services(&mut self) {
        for Located { at, item: vhost } in self.located("virtual_hosts", |d| &d.virtual_hosts) {
            let mut hosts = Vec::new();
            for (i, domain) in vhost.domains.iter().enumerate() {
                if domain.ends_with(".*") {
                    self.lose(
                        format!("{at}.domains[{i}]"),
                        "Istio hosts have no `prefix.*` wildcard; the domain is left out",
                    );
                } else {
                    hosts.push(domain.clone());
                }
            }
            if hosts.is_empty() {
                self.lose(
                    format!("{at}.domains"),
                    "no domain Istio can express: no VirtualService for this virtual host",
                );
                continue;
            }
            self.check_listener_binding(&at, vhost);
            let http: Vec<Value> = vhost
                .routes
                .iter()
                .enumerate()
                .map(|(j, route)| self.http_route(&format!("{at}.routes[{j}]"), route))
                .collect();
            let spec = json!({ "hosts": hosts, "gateways": [GATEWAY_NAME], "http": http });
            self.resource(NETWORKING_API, "VirtualService", &vhost.name, spec);
        }
    }

    /// Istio exposes a VirtualService on every server of the Gateway whose hosts cover its
    /// own; a virtual host kept off a listener whose other virtual hosts' domains cover it
    /// (`*`, `*.example.com`) would be served there too.
    fn check_listener_binding(&mut self, at: &str, vhost: &raw::VirtualHost) {
        let Some(bound) = &vhost.listeners else {
            return;
        };
        for listener in &self.config.listeners {
            if bound.contains(&listener.name) {
                continue;
            }
            let hosts = self.listener_hosts(&listener.name);
            let exposed = vhost
                .domains
                .iter()
                .any(|domain| hosts.iter().any(|host| host_covers(host, domain)));
            if exposed {
                self.lose(
                    format!("{at}.listeners"),
                    &format!(
                        "the Gateway server of listener {:?} accepts these domains too, so Istio serves the virtual host there as well",
                        listener.name
                    ),
                );
            }
        }
    }

    fn http_route(&mut self, at: &str, route: &raw::Route) -> Value {
        let mut http = json!({ "name": route.name });
        let matcher = self.route_match(at, &route.matcher);
        if !matcher.is_empty() {
            http["match"] = json!([matcher]);
        }
        if let Some(fault) = &route.fault {
            let mut injected = Map::new();
            if let Some(delay) = &fault.delay {
                injected.insert(
                    "delay".into(),
                    json!({
                        "percentage": { "value": delay.percent },
                        "fixedDelay": self.duration(&delay.fixed),
                    }),
                );
            }
            if let Some(abort) = &fault.abort {
                injected.insert(
                    "abort".into(),
                    json!({ "percentage": { "value": abort.percent }, "httpStatus": abort.status }),
                );
            }
            http["fault"] = Value::Object(injected);
        }
        if let Some(forward) = &route.forward {
            self.forward(at, forward, &mut http);
        } else if let Some(redirect) = &route.redirect {
            let mut settings = Map::new();
            if let Some(path) = &redirect.path {
                settings.insert("uri".into(), json!(path));
            }
            if redirect.prefix.is_some() {
                self.lose(
                    format!("{at}.redirect.prefix"),
                    "an Istio redirect replaces the whole path (uri), not a matched prefix; the redirect keeps the request's path",
                );
            }
            if let Some(host) = &redirect.host {
                settings.insert("authority".into(), json!(host));
            }
            if let Some(port) = redirect.port {
                settings.insert("port".into(), json!(port));
            }
            if let Some(scheme) = &redirect.scheme {
                settings.insert("scheme".into(), json!(scheme));
            }
            settings.insert("redirectCode".into(), json!(redirect.code.unwrap_or(301)));
            if redirect.strip_query {
                self.lose(
                    format!("{at}.redirect.strip_query"),
                    "Istio redirects keep the query string",
                );
            }
            http["redirect"] = Value::Object(settings);
        } else if let Some(direct) = &route.direct_response {
            let mut response = json!({ "status": direct.status });
            if !direct.body.is_empty() {
                response["body"] = json!({ "string": direct.body });
            }
            http["directResponse"] = response;
            if !direct.headers.is_empty() {
                http["headers"] = json!({ "response": { "set": direct.headers } });
            }
        }
        http
    }

    fn route_match(&mut self, at: &str, matcher: &raw::RouteMatch) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(path) = &matcher.path {
            let uri = match (&path.prefix, &path.exact, &path.regex) {
                (Some(prefix), _, _) => json!({ "prefix": prefix }),
                (_, Some(exact), _) => json!({ "exact": exact }),
                (_, _, Some(regex)) => json!({ "regex": regex }),
                _ => Value::Null,
            };
            if !uri.is_null() {
                out.insert("uri".into(), uri);
            }
        }
        if let Some(methods) = &matcher.methods {
            let methods: Vec<String> = methods.iter().map(|m| m.to_ascii_uppercase()).collect();
            match methods.as_slice() {
                [] => {}
                [one] => {
                    out.insert("method".into(), json!({ "exact": one }));
                }
                many => {
                    out.insert("method".into(), json!({ "regex": many.join("|") }));
                }
            }
        }
        let mut headers = Map::new();
        let mut without_headers = Map::new();
        for header in &matcher.headers {
            let name = header.name.to_ascii_lowercase();
            match header.present {
                Some(false) => {
                    without_headers.insert(name, json!({}));
                }
                _ => {
                    headers.insert(name, string_match(header));
                }
            }
        }
        if !headers.is_empty() {
            out.insert("headers".into(), Value::Object(headers));
        }
        if !without_headers.is_empty() {
            out.insert("withoutHeaders".into(), Value::Object(without_headers));
        }
        let mut query = Map::new();
        for (i, param) in matcher.query.iter().enumerate() {
            if param.present == Some(false) {
                self.lose(
                    format!("{at}.match.query[{i}].present"),
                    "Istio cannot match the absence of a query parameter; the condition is left out",
                );
                continue;
            }
            query.insert(param.name.clone(), string_match(param));
        }
        if !query.is_empty() {
            out.insert("queryParams".into(), Value::Object(query));
        }
        out
    }

    fn forward(&mut self, at: &str, forward: &raw::Forward, http: &mut Value) {
        let destinations: Vec<Value> = match (&forward.cluster, &forward.split) {
            (_, Some(split)) => split
                .iter()
                .map(|target| {
                    let mut destination = json!({ "host": cluster_host(&target.cluster) });
                    if !target.subset.is_empty() {
                        destination["subset"] = json!(subset_name(&target.subset));
                    }
                    json!({ "destination": destination, "weight": target.weight })
                })
                .collect(),
            (Some(cluster), None) => {
                vec![json!({ "destination": { "host": cluster_host(cluster) } })]
            }
            (None, None) => Vec::new(),
        };
        http["route"] = json!(destinations);
        if let Some(rewrite) = &forward.rewrite {
            let mut settings = Map::new();
            if let Some(prefix) = &rewrite.prefix {
                settings.insert("uri".into(), json!(prefix));
            }
            if let Some(regex) = &rewrite.regex {
                settings.insert(
                    "uriRegexRewrite".into(),
                    json!({ "match": regex.pattern, "rewrite": regex.substitution }),
                );
            }
            if let Some(host) = &rewrite.host {
                settings.insert("authority".into(), json!(host));
            }
            http["rewrite"] = Value::Object(settings);
        }
        // Istio has no timeout unless told; Tollgate's default is written out.
        http["timeout"] = json!(self.duration(forward.timeout.as_deref().unwrap_or("15s")));
        http["retries"] = match &forward.retries {
            // Istio retries by default; a route Tollgate does not retry says so.
            None => json!({ "attempts": 0 }),
            Some(retries) => {
                let mut on: Vec<String> =
                    if retries.on.is_empty() && retries.status_codes.is_empty() {
                        vec!["5xx".to_string()]
                    } else {
                        retries.on.clone()
                    };
                on.extend(retries.status_codes.iter().map(u16::to_string));
                let mut policy = json!({ "attempts": retries.attempts, "retryOn": on.join(",") });
                if let Some(per_try) = &retries.per_try_timeout {
                    policy["perTryTimeout"] = json!(self.duration(per_try));
                }
                if !retries.non_idempotent && retries.attempts > 0 {
                    self.lose(
                        format!("{at}.forward.retries.non_idempotent"),
                        "Istio retries POST, PATCH and other non-idempotent requests on every retryOn condition, as `non_idempotent: true` does",
                    );
                }
                policy
            }
        };
        if let Some(mirror) = &forward.mirror {
            http["mirror"] = json!({ "host": cluster_host(&mirror.cluster) });
            if let Some(percent) = mirror.percent {
                http["mirrorPercentage"] = json!({ "value": percent });
            }
        }
    }

    /// A policy duration (validated) in Istio's form.
    fn duration(&self, text: &str) -> String {
        istio_duration(duration::parse(text).unwrap_or_default())
    }

    // --- ServiceEntries and DestinationRules ---

    fn clusters(&mut self) {
        let subsets_used = self.subsets_used();
        for Located { at, item: written } in self.located("clusters", |d| &d.clusters) {
            let Some(cluster) = self.config.cluster(&written.name) else {
                continue;
            };
            let host = cluster_host(&cluster.name);
            let port_name = if cluster.http2 { "http2" } else { "http" };
            let service_port = cluster.endpoints.first().map_or(80, |e| e.port);
            let all_ips = cluster
                .endpoints
                .iter()
                .all(|e| e.host.parse::<std::net::IpAddr>().is_ok());
            let endpoints: Vec<Value> = cluster
                .endpoints
                .iter()
                .map(|endpoint| {
                    let mut entry = json!({
                        "address": endpoint.host,
                        "ports": { port_name: endpoint.port },
                    });
                    if !endpoint.labels.is_empty() {
                        entry["labels"] = json!(endpoint.labels);
                    }
                    entry
                })
                .collect();
            let service_entry = json!({
                "hosts": [host],
                "location": "MESH_EXTERNAL",
                "resolution": if all_ips { "STATIC" } else { "DNS" },
                "ports": [{
                    "number": service_port,
                    "name": port_name,
                    "protocol": if cluster.http2 { "HTTP2" } else { "HTTP" },
                }],
                "endpoints": endpoints,
            });
            self.resource(NETWORKING_API, "ServiceEntry", &cluster.name, service_entry);

            let health = &cluster.health;
            let errors_field = match health.eject_on {
                model::EjectOn::GatewayErrors => "consecutiveGatewayErrors",
                model::EjectOn::Any5xx => "consecutive5xxErrors",
            };
            let load_balancer = match cluster.load_balancing {
                model::LoadBalancing::RoundRobin => json!({ "simple": "ROUND_ROBIN" }),
                model::LoadBalancing::LeastRequest => json!({ "simple": "LEAST_REQUEST" }),
                model::LoadBalancing::RingHash => {
                    let mut hash = match &cluster.hash_on {
                        model::HashOn::Header(name) => json!({ "httpHeaderName": name }),
                        model::HashOn::Cookie(name) => json!({ "httpCookie": { "name": name } }),
                        model::HashOn::ClientIp => json!({ "useSourceIp": true }),
                    };
                    hash["ringHash"] = json!({ "minimumRingSize": 1024 });
                    json!({ "consistentHash": hash })
                }
            };
            if health.active.is_some() {
                self.lose(
                    format!("{at}.health.active"),
                    "Istio has no active health checks; endpoints are judged by outlier detection only",
                );
            }
            let mut policy = json!({
                "loadBalancer": load_balancer,
                "connectionPool": {
                    "tcp": { "connectTimeout": istio_duration(cluster.connect_timeout) },
                    "http": {
                        "http2MaxRequests": cluster.limits.max_requests,
                        "idleTimeout": istio_duration(cluster.limits.idle_timeout),
                    },
                },
                "outlierDetection": {
                    errors_field: health.consecutive_failures,
                    "baseEjectionTime": istio_duration(health.ejection_time),
                    "maxEjectionPercent": health.max_ejection_percent,
                    "minHealthPercent": health.panic_threshold,
                },
            });
            if written
                .limits
                .as_ref()
                .is_some_and(|limits| limits.max_idle_per_endpoint.is_some())
            {
                self.lose(
                    format!("{at}.limits.max_idle_per_endpoint"),
                    "Istio does not bound the idle connections kept per endpoint",
                );
            }
            if let (Some(tls), Some(model_tls)) = (&written.tls, &cluster.tls) {
                let mut settings = json!({ "mode": "SIMPLE" });
                match &model_tls.client_certificate {
                    // Mutual TLS names its files: a credentialName excludes them.
                    Some(client) => {
                        settings["mode"] = json!("MUTUAL");
                        settings["clientCertificate"] = json!(client.cert.display().to_string());
                        settings["privateKey"] = json!(client.key.display().to_string());
                        if let Some(ca) = &model_tls.ca {
                            settings["caCertificates"] = json!(ca.display().to_string());
                        }
                    }
                    None => {
                        if let Some(ca) = &tls.ca {
                            settings["credentialName"] = json!(credential_name(ca));
                        }
                    }
                }
                if let Some(name) = &tls.server_name {
                    settings["sni"] = json!(name);
                    settings["subjectAltNames"] = json!([name]);
                }
                if !model_tls.subject_alt_names.is_empty() {
                    settings["subjectAltNames"] = json!(model_tls
                        .subject_alt_names
                        .iter()
                        .map(|name| name.as_str())
                        .collect::<Vec<_>>());
                }
                policy["tls"] = settings;
            }
            let mut subsets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for labels in subsets_used
                .get(&cluster.name)
                .into_iter()
                .flatten()
                .chain(cluster.endpoints.iter().map(|e| &e.labels))
            {
                if !labels.is_empty() {
                    subsets.insert(subset_name(labels), labels.clone());
                }
            }
            let mut rule = json!({ "host": host, "trafficPolicy": policy });
            if !subsets.is_empty() {
                rule["subsets"] = json!(subsets
                    .iter()
                    .map(|(name, labels)| json!({ "name": name, "labels": labels }))
                    .collect::<Vec<_>>());
            }
            self.resource(NETWORKING_API, "DestinationRule", &cluster.name, rule);
        }
    }

    /// The label sets the routes' splits select, per cluster.
    fn subsets_used(&self) -> BTreeMap<String, BTreeSet<BTreeMap<String, String>>> {
        let mut used: BTreeMap<String, BTreeSet<BTreeMap<String, String>>> = BTreeMap::new();
        for vhost in &self.config.virtual_hosts {
            for route in &vhost.routes {
                if let model::Action::Forward(forward) = &route.action {
                    for target in &forward.targets {
                        used.entry(target.cluster.clone())
                            .or_default()
                            .insert(target.subset.clone());
                    }
                }
            }
        }
        used
    }

    // --- WasmPlugins ---

    fn plugins(&mut self) {
        for Located { at, item: plugin } in self.located("plugins", |d| &d.plugins) {
            if plugin.singleton {
                self.lose(
                    format!("{at}.singleton"),
                    "Istio has no gateway-wide singleton plugin; no WasmPlugin is written for it",
                );
                continue;
            }
            let mut spec = json!({
                "selector": { "matchLabels": gateway_selector() },
                "url": self.module_url(&plugin.module),
                "pluginName": plugin.name,
                "phase": phase_of(plugin.priority),
                "priority": plugin.priority,
                "failStrategy": match plugin.failure_policy {
                    raw::FailurePolicy::FailOpen => "FAIL_OPEN",
                    raw::FailurePolicy::FailClosed | raw::FailurePolicy::Reload => "FAIL_CLOSE",
                },
            });
            match &plugin.config {
                Value::Null => {}
                Value::Object(object) => spec["pluginConfig"] = json!(object),
                _ => self.lose(
                    format!("{at}.config"),
                    "Istio passes pluginConfig to the plugin as a JSON object; other values have no form",
                ),
            }
            if !plugin.env.is_empty() {
                let env: Vec<Value> = plugin
                    .env
                    .iter()
                    .map(|(name, value)| json!({ "name": name, "value": value }))
                    .collect();
                spec["vmConfig"] = json!({ "env": env });
            }
            let covered = self.covered_routes(plugin.apply_to.as_ref());
            // A per-route configuration of a route alone on its listeners becomes a
            // WasmPlugin of its own on their ports; the others have no Istio form.
            let mut overrides = Vec::new();
            for (route, config) in &plugin.route_config {
                let alone = BTreeSet::from([route.clone()]);
                match (config, self.ports_for(&alone)) {
                    (Value::Object(_), Some(ports))
                        if !ports.is_empty() && covered.contains(route) =>
                    {
                        overrides.push((route, ports, config));
                    }
                    _ => self.lose(
                        format!("{at}.route_config.{route}"),
                        "a WasmPlugin has one configuration for all the routes of its ports; the per-route configuration is left out",
                    ),
                }
            }
            let mut main_routes = covered;
            for (route, _, _) in &overrides {
                main_routes.remove(*route);
            }
            let restricted = plugin.apply_to.is_some() || !overrides.is_empty();
            match self.ports_for(&main_routes) {
                _ if !restricted || main_routes.is_empty() => {}
                Some(ports) if ports.is_empty() => {}
                Some(ports) => spec["match"] = port_match(&ports),
                None => self.lose(
                    format!("{at}.apply_to"),
                    "a WasmPlugin selects traffic by port, not by virtual host or route; it runs on every route of the gateway",
                ),
            }
            for (route, ports, config) in overrides {
                let mut route_spec = spec.clone();
                route_spec["pluginConfig"] = config.clone();
                route_spec["match"] = port_match(&ports);
                let name = format!("{}-{}", plugin.name, dns_label(route));
                self.resource(EXTENSIONS_API, "WasmPlugin", &name, route_spec);
            }
            let unsupported = [
                (
                    "vm_config",
                    !plugin.vm_config.is_null(),
                    "a WasmPlugin has no VM configuration",
                ),
                (
                    "vm_id",
                    plugin.vm_id.is_some(),
                    "Istio gives every WasmPlugin a VM of its own",
                ),
                (
                    "callback_timeout",
                    plugin.callback_timeout.is_some(),
                    "Istio has no CPU deadline per callback",
                ),
                (
                    "memory_limit",
                    plugin.memory_limit.is_some(),
                    "Istio has no memory limit per plugin",
                ),
                (
                    "max_traps_per_minute",
                    plugin.max_traps_per_minute.is_some(),
                    "Istio has no trap circuit",
                ),
                (
                    "circuit_open_time",
                    plugin.circuit_open_time.is_some(),
                    "Istio has no trap circuit",
                ),
            ];
            for (field, written, reason) in unsupported {
                if written {
                    self.lose(format!("{at}.{field}"), reason);
                }
            }
            // Every route has a configuration of its own: nothing is left for the main one.
            if !main_routes.is_empty() || !restricted {
                self.resource(EXTENSIONS_API, "WasmPlugin", &plugin.name, spec);
            }
        }
    }

    /// Where Istio fetches a module: the prefix and the file name (an OCI image per module
    /// takes the name without `.wasm`), else the file in the plugins folder.
    fn module_url(&self, module: &str) -> String {
        let file_name = Path::new(module)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| module.to_string());
        match &self.options.module_url_prefix {
            Some(prefix) if prefix.starts_with("oci://") => {
                let image = file_name.strip_suffix(".wasm").unwrap_or(&file_name);
                format!("{prefix}{image}")
            }
            Some(prefix) => format!("{prefix}{file_name}"),
            None => {
                let path = self.plugins_dir.join(module);
                let absolute = std::path::absolute(&path).unwrap_or(path);
                format!("file://{}", absolute.display())
            }
        }
    }

    /// The names of the routes a plugin runs on (every route without `apply_to`).
    fn covered_routes(&self, apply_to: Option<&raw::ApplyTo>) -> BTreeSet<String> {
        self.config
            .virtual_hosts
            .iter()
            .flat_map(|vhost| {
                let whole =
                    apply_to.is_none_or(|apply_to| apply_to.virtual_hosts.contains(&vhost.name));
                vhost
                    .routes
                    .iter()
                    .filter(move |route| {
                        whole || apply_to.is_some_and(|a| a.routes.contains(&route.name))
                    })
                    .map(|route| route.name.clone())
            })
            .collect()
    }

    /// The listener ports whose routes are exactly `covered`: `Some(empty)` when that is
    /// every listener, `None` when no set of ports is.
    fn ports_for(&self, covered: &BTreeSet<String>) -> Option<Vec<u16>> {
        let covered: BTreeSet<&str> = covered.iter().map(String::as_str).collect();
        let mut ports = Vec::new();
        for listener in &self.config.listeners {
            let routes: BTreeSet<&str> = self
                .config
                .virtual_hosts
                .iter()
                .filter(|vhost| {
                    model::vhost_listeners(vhost, &self.config.listeners)
                        .contains(listener.name.as_str())
                })
                .flat_map(|vhost| vhost.routes.iter().map(|route| route.name.as_str()))
                .collect();
            if routes.is_disjoint(&covered) {
                continue;
            }
            if !routes.is_subset(&covered) {
                return None;
            }
            ports.push(listener.address.port());
        }
        if ports.is_empty() {
            return None;
        }
        if ports.len() == self.config.listeners.len() {
            ports.clear();
        }
        Some(ports)
    }
}

/// A WasmPlugin `match` on listener ports.
fn port_match(ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|port| json!({ "number": port })).collect();
    json!([{ "ports": ports }])
}

/// A header or query condition as an Istio StringMatch; `{}` matches presence.
fn string_match(condition: &raw::ValueMatch) -> Value {
    match (&condition.exact, &condition.regex) {
        (Some(exact), _) => json!({ "exact": exact }),
        (_, Some(regex)) => json!({ "regex": regex }),
        _ => json!({}),
    }
}
