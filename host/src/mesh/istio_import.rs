//! `tollgate import istio`: Istio resources as a policies folder.
//!
//! The Gateway's servers become listeners, ServiceEntries and DestinationRules clusters,
//! VirtualServices virtual hosts (bound to the listeners whose server hosts cover theirs),
//! WasmPlugins plugins. Names follow the resources' own, so that the same resources always
//! give the same folder, and `export istio` gives the resources back. Where Istio and
//! Tollgate defaults differ (load balancing, connect timeout, outlier detection), the Istio
//! value is written out so that the gateway behaves as the mesh did; a field with no
//! Tollgate form is a loss.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context as _;
use serde::Deserialize as _;
use serde_json::Value;
use serde_yaml::{Mapping, Value as Yaml};

use super::istio::{
    client_ca_file, credential_files, host_cluster, host_covers, parse_istio_duration, phase_floor,
    priority_fits_phase, upstream_ca_file,
};
use super::{Losses, Translation};
use crate::config::duration;

/// Reads Istio resources (Gateway, VirtualService, DestinationRule, ServiceEntry, WasmPlugin;
/// multi-document YAML files) and returns the policy files to write: (file name, contents).
pub fn import(files: &[PathBuf]) -> anyhow::Result<Translation<Vec<(String, String)>>> {
    let mut resources = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .with_context(|| format!("{}: not valid YAML", file.display()))?;
            collect_resources(value, &mut resources);
        }
    }
    let mut importer = Importer::default();
    importer.run(&resources);
    let output = importer.files()?;
    Ok(Translation {
        output,
        losses: importer.losses,
    })
}

/// Adds a document's resources; a `List` (as `kubectl get -o yaml` writes) adds its items.
fn collect_resources(value: Value, resources: &mut Vec<Resource>) {
    if value.is_null() {
        return;
    }
    if value["kind"] == "List" {
        if let Some(items) = value["items"].as_array() {
            for item in items {
                collect_resources(item.clone(), resources);
            }
        }
        return;
    }
    resources.push(Resource {
        kind: value["kind"].as_str().unwrap_or("(no kind)").to_string(),
        name: value["metadata"]["name"]
            .as_str()
            .unwrap_or("(no name)")
            .to_string(),
        api_version: value["apiVersion"].as_str().unwrap_or_default().to_string(),
        spec: value["spec"].clone(),
    });
}

struct Resource {
    kind: String,
    name: String,
    api_version: String,
    spec: Value,
}

impl Resource {
    /// Where a field of this resource is, as losses name it: `Kind name: spec.path`.
    fn at(&self, path: &str) -> String {
        format!("{} {}: {path}", self.kind, self.name)
    }
}

/// A listener being built, with the hosts its servers accept.
struct ImportedListener {
    name: String,
    port: u16,
    protocol: &'static str,
    fields: Mapping,
    certificates: Vec<Yaml>,
    hosts: Vec<String>,
}

/// A cluster being built: its fields, the subsets its DestinationRule names.
#[derive(Default)]
struct ImportedCluster {
    name: String,
    endpoints: Vec<Yaml>,
    fields: Mapping,
    subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Where the cluster's endpoints came from, when no ServiceEntry declared them.
    port_guess: Option<u16>,
    /// The Istio host the cluster stands for.
    host: String,
    /// Where the cluster was first named, for the losses about it.
    named_at: String,
    /// The DestinationRule of the cluster, if any.
    rule: Option<String>,
    has_service_entry: bool,
    has_outlier_detection: bool,
}

#[derive(Default)]
struct Importer {
    losses: Losses,
    listeners: Vec<ImportedListener>,
    gateway_names: BTreeSet<String>,
    clusters: Vec<ImportedCluster>,
    virtual_hosts: Vec<Yaml>,
    /// Virtual host name → the listeners it is bound to (every listener when `None`).
    vhost_listeners: Vec<(String, Option<Vec<String>>)>,
    route_names: BTreeSet<String>,
    plugins: Vec<Yaml>,
}

/// An ordered YAML mapping under construction.
fn map() -> Mapping {
    Mapping::new()
}

fn put(mapping: &mut Mapping, key: &str, value: impl serde::Serialize) {
    mapping.insert(
        Yaml::String(key.to_string()),
        serde_yaml::to_value(value).unwrap_or(Yaml::Null),
    );
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn entries(value: &Value) -> Vec<&Value> {
    value
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

impl Importer {
    fn lose(&mut self, field: String, reason: &str) {
        self.losses.add(field, reason);
    }

    /// Reports every field of `value` outside `known` as a loss.
    fn only(&mut self, resource: &Resource, path: &str, value: &Value, known: &[&str]) {
        let Some(object) = value.as_object() else {
            return;
        };
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                self.lose(
                    resource.at(&field),
                    "Tollgate's policies have no such setting; it is left out",
                );
            }
        }
    }

    fn run(&mut self, resources: &[Resource]) {
        let of_kind = |kind: &'static str| resources.iter().filter(move |r| r.kind == kind);
        for resource in resources {
            let known_api = match resource.kind.as_str() {
                "Gateway" | "VirtualService" | "DestinationRule" | "ServiceEntry" => {
                    resource.api_version.starts_with("networking.istio.io/")
                }
                "WasmPlugin" => resource.api_version.starts_with("extensions.istio.io/"),
                _ => false,
            };
            if !known_api {
                self.lose(
                    format!("{} {}: (resource)", resource.kind, resource.name),
                    "not a Gateway, VirtualService, DestinationRule, ServiceEntry or WasmPlugin of Istio; left out",
                );
            }
        }
        for gateway in of_kind("Gateway") {
            self.gateway(gateway);
        }
        for entry in of_kind("ServiceEntry") {
            self.service_entry(entry);
        }
        for rule in of_kind("DestinationRule") {
            self.destination_rule(rule);
        }
        for service in of_kind("VirtualService") {
            self.virtual_service(service);
        }
        for plugin in of_kind("WasmPlugin") {
            self.wasm_plugin(plugin);
        }
        self.finish_clusters();
    }

    // --- Gateway → listeners ---

    fn gateway(&mut self, gateway: &Resource) {
        self.gateway_names.insert(gateway.name.clone());
        let spec = &gateway.spec;
        self.only(gateway, "spec", spec, &["selector", "servers"]);
        for (i, server) in entries(&spec["servers"]).into_iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            self.only(
                gateway,
                &at,
                server,
                &["port", "hosts", "tls", "name", "bind"],
            );
            let port = &server["port"];
            self.only(
                gateway,
                &format!("{at}.port"),
                port,
                &["number", "name", "protocol"],
            );
            let Some(number) = port["number"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                self.lose(
                    gateway.at(&format!("{at}.port.number")),
                    "no port number; the server is left out",
                );
                continue;
            };
            let protocol = match port["protocol"].as_str().unwrap_or("HTTP") {
                "HTTP" | "HTTP2" => "http",
                "HTTPS" => "https",
                _ => {
                    self.lose(
                        gateway.at(&format!("{at}.port.protocol")),
                        "Tollgate listeners speak HTTP and HTTPS only; the server is left out",
                    );
                    continue;
                }
            };
            let hosts: Vec<String> = strings(&server["hosts"])
                .into_iter()
                .map(|host| {
                    host.rsplit_once('/')
                        .map_or(host.clone(), |(_, h)| h.to_string())
                })
                .collect();
            let certificate = if protocol == "https" {
                self.server_tls(gateway, &at, &server["tls"])
            } else {
                self.only(
                    gateway,
                    &format!("{at}.tls"),
                    &server["tls"],
                    &["httpsRedirect"],
                );
                if server["tls"]["httpsRedirect"] == true {
                    self.lose(
                        gateway.at(&format!("{at}.tls.httpsRedirect")),
                        "Tollgate has no HTTPS redirect on a listener; add a redirect route",
                    );
                }
                None
            };
            // Servers on one port are one listener: several certificates, chosen by SNI.
            if let Some(existing) = self.listeners.iter_mut().find(|l| l.port == number) {
                if existing.protocol != protocol {
                    self.losses.add(
                        gateway.at(&format!("{at}.port")),
                        "another server already uses this port with another protocol; left out",
                    );
                    continue;
                }
                if let Some((mut cert, _)) = certificate {
                    if let Yaml::Mapping(fields) = &mut cert {
                        put(fields, "server_names", &hosts);
                    }
                    existing.certificates.push(cert);
                }
                existing.hosts.extend(hosts);
                continue;
            }
            let name = server["name"]
                .as_str()
                .or(port["name"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}-{number}", gateway.name));
            let bind = server["bind"].as_str().unwrap_or("0.0.0.0");
            let address = if bind.contains(':') {
                format!("[{bind}]:{number}")
            } else {
                format!("{bind}:{number}")
            };
            let mut fields = map();
            put(&mut fields, "name", &name);
            put(&mut fields, "address", &address);
            put(&mut fields, "protocol", protocol);
            let mut certificates = Vec::new();
            if let Some((cert, tls)) = certificate {
                certificates.push(cert);
                fields.insert("tls".into(), Yaml::Mapping(tls));
            }
            self.listeners.push(ImportedListener {
                name,
                port: number,
                protocol,
                fields,
                certificates,
                hosts,
            });
        }
    }

    /// The certificate and the other TLS settings of an HTTPS server.
    fn server_tls(&mut self, gateway: &Resource, at: &str, tls: &Value) -> Option<(Yaml, Mapping)> {
        let at = format!("{at}.tls");
        self.only(
            gateway,
            &at,
            tls,
            &[
                "mode",
                "credentialName",
                "serverCertificate",
                "privateKey",
                "caCertificates",
                "minProtocolVersion",
            ],
        );
        let mode = tls["mode"].as_str().unwrap_or("SIMPLE");
        let client_auth_required = match mode {
            "SIMPLE" => None,
            "MUTUAL" => Some(true),
            "OPTIONAL_MUTUAL" => Some(false),
            _ => {
                self.lose(
                    gateway.at(&format!("{at}.mode")),
                    "Tollgate terminates TLS itself (SIMPLE, MUTUAL, OPTIONAL_MUTUAL); the server is left out",
                );
                return None;
            }
        };
        let credential = tls["credentialName"].as_str();
        let (cert, key) = match credential {
            Some(credential) => credential_files(credential),
            None => (
                tls["serverCertificate"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                tls["privateKey"].as_str().unwrap_or_default().to_string(),
            ),
        };
        if cert.is_empty() || key.is_empty() {
            self.lose(
                gateway.at(&at),
                "no credentialName nor serverCertificate and privateKey; the server is left out",
            );
            return None;
        }
        let mut certificate = map();
        put(&mut certificate, "cert", &cert);
        put(&mut certificate, "key", &key);
        let mut settings = map();
        if let Some(version) = tls["minProtocolVersion"].as_str() {
            match version {
                "TLSV1_2" => put(&mut settings, "min_version", "1.2"),
                "TLSV1_3" => put(&mut settings, "min_version", "1.3"),
                _ => self.lose(
                    gateway.at(&format!("{at}.minProtocolVersion")),
                    "Tollgate speaks TLS 1.2 and 1.3 only",
                ),
            }
        }
        if let Some(required) = client_auth_required {
            let ca = match (credential, tls["caCertificates"].as_str()) {
                (_, Some(path)) => path.to_string(),
                (Some(credential), None) => client_ca_file(credential),
                (None, None) => String::new(),
            };
            let mut client_auth = map();
            put(&mut client_auth, "ca", ca);
            put(&mut client_auth, "required", required);
            settings.insert("client_auth".into(), Yaml::Mapping(client_auth));
        }
        Some((Yaml::Mapping(certificate), settings))
    }

    // --- ServiceEntry and DestinationRule → clusters ---

    /// The cluster of an Istio host, created on first use; `named_at` says where.
    fn cluster(&mut self, host: &str, named_at: String) -> &mut ImportedCluster {
        let name = host_cluster(host);
        let index = match self.clusters.iter().position(|c| c.name == name) {
            Some(index) => index,
            None => {
                self.clusters.push(ImportedCluster {
                    name,
                    host: host.to_string(),
                    named_at,
                    ..ImportedCluster::default()
                });
                self.clusters.len() - 1
            }
        };
        &mut self.clusters[index]
    }

    fn service_entry(&mut self, entry: &Resource) {
        let spec = &entry.spec;
        self.only(
            entry,
            "spec",
            spec,
            &["hosts", "location", "resolution", "ports", "endpoints"],
        );
        if spec["resolution"] == "NONE" {
            self.lose(
                entry.at("spec.resolution"),
                "Tollgate needs the endpoints' addresses; NONE is read as STATIC",
            );
        }
        let ports = entries(&spec["ports"]);
        for (i, _) in ports.iter().enumerate().skip(1) {
            self.lose(
                entry.at(&format!("spec.ports[{i}]")),
                "a cluster serves one port; only the first is imported",
            );
        }
        let port = ports.first().copied().cloned().unwrap_or(Value::Null);
        self.only(
            entry,
            "spec.ports[0]",
            &port,
            &["number", "name", "protocol", "targetPort"],
        );
        let service_port = port["number"].as_u64().unwrap_or(80);
        let target_port = port["targetPort"].as_u64().unwrap_or(service_port);
        let port_name = port["name"].as_str().unwrap_or_default().to_string();
        let http2 = match port["protocol"].as_str().unwrap_or("HTTP") {
            "HTTP" => false,
            "HTTP2" | "GRPC" => true,
            _ => {
                self.lose(
                    entry.at("spec.ports[0].protocol"),
                    "Tollgate speaks HTTP to its clusters (TLS through a DestinationRule); read as HTTP",
                );
                false
            }
        };
        let mut endpoints = Vec::new();
        for (i, endpoint) in entries(&spec["endpoints"]).into_iter().enumerate() {
            let at = format!("spec.endpoints[{i}]");
            self.only(entry, &at, endpoint, &["address", "ports", "labels"]);
            let address = endpoint["address"].as_str().unwrap_or_default();
            let port = endpoint["ports"][&port_name]
                .as_u64()
                .unwrap_or(target_port);
            let mut fields = map();
            put(&mut fields, "address", endpoint_address(address, port));
            if let Some(labels) = endpoint["labels"].as_object().filter(|l| !l.is_empty()) {
                put(&mut fields, "labels", labels);
            }
            endpoints.push(Yaml::Mapping(fields));
        }
        for host in strings(&spec["hosts"]) {
            let mut host_endpoints = endpoints.clone();
            if host_endpoints.is_empty() {
                if host.starts_with('*') {
                    self.lose(
                        entry.at("spec.hosts"),
                        "a wildcard host without endpoints has no address to connect to; left out",
                    );
                    continue;
                }
                let mut fields = map();
                put(&mut fields, "address", endpoint_address(&host, target_port));
                host_endpoints.push(Yaml::Mapping(fields));
            }
            let cluster = self.cluster(&host, entry.at("spec.hosts"));
            cluster.endpoints = host_endpoints;
            cluster.has_service_entry = true;
            if http2 {
                put(&mut cluster.fields, "http2", true);
            }
        }
    }

    fn destination_rule(&mut self, rule: &Resource) {
        let spec = &rule.spec;
        self.only(rule, "spec", spec, &["host", "trafficPolicy", "subsets"]);
        let Some(host) = spec["host"].as_str() else {
            self.lose(rule.at("spec.host"), "no host; the rule is left out");
            return;
        };
        let mut fields = map();
        let mut subsets = BTreeMap::new();
        let policy = &spec["trafficPolicy"];
        self.only(
            rule,
            "spec.trafficPolicy",
            policy,
            &["loadBalancer", "connectionPool", "outlierDetection", "tls"],
        );
        let balancer = &policy["loadBalancer"];
        self.only(
            rule,
            "spec.trafficPolicy.loadBalancer",
            balancer,
            &["simple"],
        );
        // Istio balances by least request unless told otherwise.
        match balancer["simple"].as_str().unwrap_or("LEAST_REQUEST") {
            "ROUND_ROBIN" => put(&mut fields, "load_balancing", "round_robin"),
            "LEAST_REQUEST" | "UNSPECIFIED" => put(&mut fields, "load_balancing", "least_request"),
            _ => {
                self.lose(
                    rule.at("spec.trafficPolicy.loadBalancer.simple"),
                    "Tollgate balances by round robin or least request; least request is used",
                );
                put(&mut fields, "load_balancing", "least_request");
            }
        }
        let pool = &policy["connectionPool"];
        self.only(
            rule,
            "spec.trafficPolicy.connectionPool",
            pool,
            &["tcp", "http"],
        );
        self.only(
            rule,
            "spec.trafficPolicy.connectionPool.tcp",
            &pool["tcp"],
            &["connectTimeout"],
        );
        self.only(
            rule,
            "spec.trafficPolicy.connectionPool.http",
            &pool["http"],
            &["http2MaxRequests", "idleTimeout", "h2UpgradePolicy"],
        );
        // Istio's connect timeout is 10s unless told otherwise.
        let connect_timeout = self
            .duration(
                rule,
                "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
                &pool["tcp"]["connectTimeout"],
            )
            .unwrap_or_else(|| "10s".to_string());
        put(&mut fields, "connect_timeout", connect_timeout);
        if pool["http"]["h2UpgradePolicy"] == "UPGRADE" {
            put(&mut fields, "http2", true);
        }
        let mut limits = map();
        if let Some(max) = pool["http"]["http2MaxRequests"].as_u64() {
            put(&mut limits, "max_requests", max);
        }
        if let Some(idle) = self.duration(
            rule,
            "spec.trafficPolicy.connectionPool.http.idleTimeout",
            &pool["http"]["idleTimeout"],
        ) {
            put(&mut limits, "idle_timeout", idle);
        }
        if !limits.is_empty() {
            fields.insert("limits".into(), Yaml::Mapping(limits));
        }
        let outlier = &policy["outlierDetection"];
        let has_outlier_detection = outlier.is_object();
        if has_outlier_detection {
            let at = "spec.trafficPolicy.outlierDetection";
            self.only(
                rule,
                at,
                outlier,
                &[
                    "consecutiveGatewayErrors",
                    "consecutive5xxErrors",
                    "baseEjectionTime",
                    "maxEjectionPercent",
                    "minHealthPercent",
                ],
            );
            // Istio's defaults where a field is not written: 5 consecutive 5xx, 30s, 10 %, 0 %.
            let mut health = map();
            let gateway_errors = outlier["consecutiveGatewayErrors"].as_u64();
            let any_5xx = outlier["consecutive5xxErrors"].as_u64();
            if gateway_errors.is_some() && any_5xx.is_some() {
                self.lose(
                    rule.at(&format!("{at}.consecutive5xxErrors")),
                    "Tollgate counts one kind of failure; consecutiveGatewayErrors is used",
                );
            }
            match (gateway_errors, any_5xx) {
                (Some(count), _) => {
                    put(&mut health, "consecutive_failures", count);
                    put(&mut health, "eject_on", "gateway_errors");
                }
                (None, count) => {
                    put(&mut health, "consecutive_failures", count.unwrap_or(5));
                    put(&mut health, "eject_on", "5xx");
                }
            }
            let ejection = self
                .duration(
                    rule,
                    &format!("{at}.baseEjectionTime"),
                    &outlier["baseEjectionTime"],
                )
                .unwrap_or_else(|| "30s".to_string());
            put(&mut health, "ejection_time", ejection);
            put(
                &mut health,
                "max_ejection_percent",
                outlier["maxEjectionPercent"].as_u64().unwrap_or(10),
            );
            put(
                &mut health,
                "panic_threshold",
                outlier["minHealthPercent"].as_u64().unwrap_or(0),
            );
            fields.insert("health".into(), Yaml::Mapping(health));
        }
        let tls = &policy["tls"];
        if tls.is_object() {
            let at = "spec.trafficPolicy.tls";
            self.only(
                rule,
                at,
                tls,
                &[
                    "mode",
                    "sni",
                    "subjectAltNames",
                    "credentialName",
                    "caCertificates",
                ],
            );
            match tls["mode"].as_str().unwrap_or("DISABLE") {
                "DISABLE" => {}
                "SIMPLE" => {
                    let mut settings = map();
                    if let Some(credential) = tls["credentialName"].as_str() {
                        put(&mut settings, "ca", upstream_ca_file(credential));
                    } else if let Some(path) = tls["caCertificates"].as_str() {
                        put(&mut settings, "ca", path);
                    }
                    let sni = tls["sni"].as_str();
                    if let Some(sni) = sni {
                        put(&mut settings, "server_name", sni);
                    }
                    let names = strings(&tls["subjectAltNames"]);
                    if !names.is_empty() && (names.len() > 1 || Some(names[0].as_str()) != sni) {
                        self.lose(
                            rule.at(&format!("{at}.subjectAltNames")),
                            "Tollgate verifies the endpoint's certificate for the server name (sni) only",
                        );
                    }
                    fields.insert("tls".into(), Yaml::Mapping(settings));
                }
                _ => self.lose(
                    rule.at(&format!("{at}.mode")),
                    "Tollgate originates plain TLS (SIMPLE) only; no client certificate is sent",
                ),
            }
        }
        for (i, subset) in entries(&spec["subsets"]).into_iter().enumerate() {
            self.only(
                rule,
                &format!("spec.subsets[{i}]"),
                subset,
                &["name", "labels"],
            );
            let labels: BTreeMap<String, String> = subset["labels"]
                .as_object()
                .map(|labels| {
                    labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(name) = subset["name"].as_str() {
                subsets.insert(name.to_string(), labels);
            }
        }
        let cluster = self.cluster(host, rule.at("spec.host"));
        cluster.rule = Some(rule.name.clone());
        cluster.fields.extend(fields);
        cluster.subsets = subsets;
        cluster.has_outlier_detection = has_outlier_detection;
    }

    /// An Istio duration as a policy duration; a bad one is a loss.
    fn duration(&mut self, resource: &Resource, path: &str, value: &Value) -> Option<String> {
        let text = value.as_str()?;
        match parse_istio_duration(text) {
            Some(parsed) if !parsed.is_zero() => Some(duration::format(parsed)),
            _ => {
                self.lose(
                    resource.at(path),
                    "not a duration Tollgate can hold (a positive number of milliseconds)",
                );
                None
            }
        }
    }

    // --- VirtualService → virtual hosts and routes ---

    fn virtual_service(&mut self, service: &Resource) {
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
    fn listeners_serving(&self, hosts: &[String]) -> Option<Vec<String>> {
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
    fn http_route(&mut self, service: &Resource, j: usize, http: &Value) -> Vec<Yaml> {
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
    fn route_match(&mut self, service: &Resource, at: &str, matcher: &Value) -> (Mapping, bool) {
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
    fn value_match(
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

    fn forward(
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
                &["uri", "authority"],
            );
            let mut settings = map();
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

    fn redirect(&mut self, service: &Resource, at: &str, redirect: &Value) -> Mapping {
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

    fn direct_response(&mut self, service: &Resource, at: &str, http: &Value) -> Mapping {
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

    fn fault(&mut self, service: &Resource, at: &str, fault: &Value) -> Option<Mapping> {
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

    // --- WasmPlugin → plugins ---

    fn wasm_plugin(&mut self, plugin: &Resource) {
        let spec = &plugin.spec;
        self.only(
            plugin,
            "spec",
            spec,
            &[
                "selector",
                "targetRef",
                "targetRefs",
                "url",
                "pluginName",
                "phase",
                "priority",
                "pluginConfig",
                "failStrategy",
                "vmConfig",
                "match",
                "type",
            ],
        );
        if spec["type"] == "NETWORK" {
            self.lose(
                plugin.at("spec.type"),
                "Tollgate runs HTTP plugins only; the plugin is left out",
            );
            return;
        }
        let Some(url) = spec["url"].as_str() else {
            self.lose(
                plugin.at("spec.url"),
                "no module URL; the plugin is left out",
            );
            return;
        };
        let mut fields = map();
        put(&mut fields, "name", &plugin.name);
        put(&mut fields, "module", module_file(url));
        if let Some(root) = spec["pluginName"].as_str() {
            if root != plugin.name {
                self.lose(
                    plugin.at("spec.pluginName"),
                    "Tollgate gives a plugin its name as root id; the WasmPlugin's name is used",
                );
            }
        }
        if let Some(config) = spec.get("pluginConfig").filter(|c| !c.is_null()) {
            put(&mut fields, "config", config);
        }
        let env = &spec["vmConfig"];
        self.only(plugin, "spec.vmConfig", env, &["env"]);
        let mut variables = BTreeMap::new();
        for (i, variable) in entries(&env["env"]).into_iter().enumerate() {
            let at = format!("spec.vmConfig.env[{i}]");
            self.only(plugin, &at, variable, &["name", "value", "valueFrom"]);
            if variable["valueFrom"] == "HOST" {
                self.lose(
                    plugin.at(&format!("{at}.valueFrom")),
                    "a plugin reads only the variables written in its policy; the gateway's own are not passed",
                );
                continue;
            }
            if let Some(name) = variable["name"].as_str() {
                variables.insert(
                    name.to_string(),
                    variable["value"].as_str().unwrap_or_default().to_string(),
                );
            }
        }
        if !variables.is_empty() {
            put(&mut fields, "env", variables);
        }
        match spec["failStrategy"].as_str() {
            Some("FAIL_OPEN") => put(&mut fields, "failure_policy", "fail_open"),
            Some("FAIL_RELOAD") => put(&mut fields, "failure_policy", "reload"),
            _ => {}
        }
        let phase = spec["phase"].as_str().unwrap_or("UNSPECIFIED_PHASE");
        let priority = spec["priority"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok());
        match priority {
            Some(priority) if priority_fits_phase(phase, priority) => {
                put(&mut fields, "priority", priority);
            }
            _ => {
                if priority.is_some() {
                    self.lose(
                        plugin.at("spec.priority"),
                        "outside the band of priorities that stands for its phase; the phase's lowest priority is used",
                    );
                }
                let floor = phase_floor(phase);
                if floor != 0 {
                    put(&mut fields, "priority", floor);
                }
            }
        }
        if let Some(apply_to) = self.apply_to(plugin, &spec["match"]) {
            fields.insert("apply_to".into(), Yaml::Mapping(apply_to));
        }
        self.plugins.push(Yaml::Mapping(fields));
    }

    /// The virtual hosts served on the ports a WasmPlugin matches.
    fn apply_to(&mut self, plugin: &Resource, selectors: &Value) -> Option<Mapping> {
        let mut ports = BTreeSet::new();
        for (i, selector) in entries(selectors).into_iter().enumerate() {
            let at = format!("spec.match[{i}]");
            self.only(plugin, &at, selector, &["mode", "ports"]);
            if selector["mode"].as_str().is_some_and(|m| m != "UNDEFINED") {
                self.lose(
                    plugin.at(&format!("{at}.mode")),
                    "the gateway's plugins run on the requests it receives; the mode is left out",
                );
            }
            let numbers: Vec<u64> = entries(&selector["ports"])
                .into_iter()
                .filter_map(|p| p["number"].as_u64())
                .collect();
            if numbers.is_empty() {
                return None;
            }
            ports.extend(numbers);
        }
        if ports.is_empty() {
            return None;
        }
        let chosen: BTreeSet<&str> = self
            .listeners
            .iter()
            .filter(|l| ports.contains(&u64::from(l.port)))
            .map(|l| l.name.as_str())
            .collect();
        if chosen.len() == self.listeners.len() {
            return None;
        }
        let mut vhosts = Vec::new();
        let mut exact = true;
        for (vhost, bound) in &self.vhost_listeners {
            let bound: BTreeSet<&str> = match bound {
                Some(names) => names.iter().map(String::as_str).collect(),
                None => self.listeners.iter().map(|l| l.name.as_str()).collect(),
            };
            if bound.is_disjoint(&chosen) {
                continue;
            }
            exact &= bound.is_subset(&chosen);
            vhosts.push(vhost.clone());
        }
        if !exact {
            self.lose(
                plugin.at("spec.match"),
                "Tollgate applies plugins by virtual host; the plugin runs on every listener of the virtual hosts served on these ports",
            );
        }
        let mut apply_to = map();
        put(&mut apply_to, "virtual_hosts", vhosts);
        Some(apply_to)
    }

    // --- Output ---

    /// Fills the clusters no ServiceEntry declared, and reports Istio behaviour the
    /// defaults do not keep.
    fn finish_clusters(&mut self) {
        for cluster in &mut self.clusters {
            if !cluster.has_service_entry {
                let port = cluster.port_guess.unwrap_or(80);
                if cluster.port_guess.is_none() {
                    self.losses.add(
                        cluster.named_at.clone(),
                        "no ServiceEntry and no destination port: the cluster's endpoint is the host on port 80",
                    );
                }
                let mut endpoint = map();
                put(
                    &mut endpoint,
                    "address",
                    endpoint_address(&cluster.host, u64::from(port)),
                );
                cluster.endpoints = vec![Yaml::Mapping(endpoint)];
            }
            if !cluster.has_outlier_detection {
                let field = match &cluster.rule {
                    Some(rule) => {
                        format!("DestinationRule {rule}: spec.trafficPolicy.outlierDetection")
                    }
                    None => cluster.named_at.clone(),
                };
                self.losses.add(
                    field,
                    "Istio ejects no endpoint without outlierDetection; Tollgate always does, with its defaults (5 gateway errors, 30s)",
                );
            }
            if !cluster.fields.contains_key("load_balancing") {
                put(&mut cluster.fields, "load_balancing", "least_request");
                put(&mut cluster.fields, "connect_timeout", "10s");
            }
        }
    }

    fn files(&self) -> anyhow::Result<Vec<(String, String)>> {
        let listeners: Vec<Yaml> = self
            .listeners
            .iter()
            .map(|listener| {
                let mut fields = listener.fields.clone();
                if let Some(Yaml::Mapping(tls)) = fields.get_mut("tls") {
                    let mut ordered = map();
                    put(&mut ordered, "certificates", &listener.certificates);
                    ordered.extend(tls.clone());
                    *tls = ordered;
                }
                Yaml::Mapping(fields)
            })
            .collect();
        let clusters: Vec<Yaml> = self
            .clusters
            .iter()
            .map(|cluster| {
                let mut fields = map();
                put(&mut fields, "name", &cluster.name);
                put(&mut fields, "endpoints", &cluster.endpoints);
                fields.extend(cluster.fields.clone());
                Yaml::Mapping(fields)
            })
            .collect();
        let header = "# Imported from Istio resources by `tollgate import istio`.\n";
        let document = |section: &str, items: &[Yaml]| -> anyhow::Result<String> {
            let mut root = map();
            put(&mut root, section, items);
            Ok(format!("{header}{}", serde_yaml::to_string(&root)?))
        };
        Ok(vec![
            (
                "listeners.yaml".to_string(),
                document("listeners", &listeners)?,
            ),
            (
                "clusters.yaml".to_string(),
                document("clusters", &clusters)?,
            ),
            (
                "routes.yaml".to_string(),
                document("virtual_hosts", &self.virtual_hosts)?,
            ),
            (
                "plugins.yaml".to_string(),
                document("plugins", &self.plugins)?,
            ),
        ])
    }
}

fn endpoint_address(host: &str, port: u64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A fault's `percentage.value` (or the older integer `percent`); Istio's default is 100.
fn percentage(fault: &Value) -> f64 {
    fault["percentage"]["value"]
        .as_f64()
        .or_else(|| fault["percent"].as_f64())
        .unwrap_or(100.0)
}

/// The module file a WasmPlugin URL names: its last path segment, without an OCI tag or
/// digest, with `.wasm` added when it has no extension.
fn module_file(url: &str) -> String {
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or(url);
    let name = last.split(['@', '?']).next().unwrap_or(last);
    let name = if url.starts_with("oci://") {
        name.split(':').next().unwrap_or(name)
    } else {
        name
    };
    if name.ends_with(".wasm") || name.ends_with(".wat") {
        name.to_string()
    } else {
        format!("{name}.wasm")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_files_come_from_the_url() {
        assert_eq!(
            module_file("file:///opt/plugins/key-auth.wasm"),
            "key-auth.wasm"
        );
        assert_eq!(
            module_file("oci://ghcr.io/acme/key-auth:1.2"),
            "key-auth.wasm"
        );
        assert_eq!(
            module_file("oci://ghcr.io/acme/key-auth@sha256:ab"),
            "key-auth.wasm"
        );
        assert_eq!(
            module_file("https://example.com/m/limits.wasm?x=1"),
            "limits.wasm"
        );
    }
}
