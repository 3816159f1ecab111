//! ServiceEntries and DestinationRules as clusters: endpoints and port from the first,
//! balancing, pool, outlier detection, TLS and subsets from the second.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_norway::Value as Yaml;

use super::{endpoint_address, ImportedCluster};
use super::{entries, map, put, strings, Importer, Resource};
use crate::config::duration;
use crate::mesh::istio::{host_cluster, parse_istio_duration, upstream_ca_file};

impl Importer {
    /// The cluster of an Istio host, created on first use; `named_at` says where.
    pub(super) fn cluster(&mut self, host: &str, named_at: String) -> &mut ImportedCluster {
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

    pub(super) fn service_entry(&mut self, entry: &Resource) {
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

    /// `loadBalancer.consistentHash` as `hash_on` (for `ring_hash`); `None` when there is
    /// none or it hashes on something Tollgate cannot (named as a loss).
    fn consistent_hash(&mut self, rule: &Resource, hash: &Value) -> Option<Value> {
        let at = "spec.trafficPolicy.loadBalancer.consistentHash";
        if !hash.is_object() {
            return None;
        }
        self.only(
            rule,
            at,
            hash,
            &[
                "httpHeaderName",
                "httpCookie",
                "useSourceIp",
                "ringHash",
                "minimumRingSize",
            ],
        );
        let ring_size = hash["ringHash"]["minimumRingSize"]
            .as_u64()
            .or(hash["minimumRingSize"].as_u64());
        if ring_size.is_some_and(|size| size > crate::upstream::POINTS_PER_ENDPOINT as u64) {
            self.lose(
                rule.at(&format!("{at}.ringHash")),
                "Tollgate's ring has 1024 points per endpoint, whatever the minimum ring size",
            );
        }
        if let Some(name) = hash["httpHeaderName"].as_str() {
            return Some(serde_json::json!({ "header": name }));
        }
        if let Some(name) = hash["httpCookie"]["name"].as_str() {
            self.only(
                rule,
                &format!("{at}.httpCookie"),
                &hash["httpCookie"],
                &["name"],
            );
            return Some(serde_json::json!({ "cookie": name }));
        }
        if hash["useSourceIp"] == true {
            return Some(serde_json::json!("client_ip"));
        }
        self.lose(
            rule.at(at),
            "Tollgate hashes on a header, a cookie or the client's address only; least request is used",
        );
        None
    }

    pub(super) fn destination_rule(&mut self, rule: &Resource) {
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
            &["simple", "consistentHash"],
        );
        let hashed = self.consistent_hash(rule, &balancer["consistentHash"]);
        if let Some(hash_on) = hashed {
            put(&mut fields, "load_balancing", "ring_hash");
            put(&mut fields, "hash_on", hash_on);
        } else {
            // Istio balances by least request unless told otherwise.
            match balancer["simple"].as_str().unwrap_or("LEAST_REQUEST") {
                "ROUND_ROBIN" => put(&mut fields, "load_balancing", "round_robin"),
                "LEAST_REQUEST" | "UNSPECIFIED" => {
                    put(&mut fields, "load_balancing", "least_request")
                }
                _ => {
                    self.lose(
                        rule.at("spec.trafficPolicy.loadBalancer.simple"),
                        "Tollgate balances by round robin, least request or a hash ring; least request is used",
                    );
                    put(&mut fields, "load_balancing", "least_request");
                }
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
                    "clientCertificate",
                    "privateKey",
                ],
            );
            match tls["mode"].as_str().unwrap_or("DISABLE") {
                "DISABLE" => {}
                mode @ ("SIMPLE" | "MUTUAL") => {
                    let mut settings = map();
                    if let Some(credential) = tls["credentialName"].as_str() {
                        if mode == "MUTUAL" {
                            self.lose(
                                rule.at(&format!("{at}.credentialName")),
                                "Tollgate reads a client certificate from files: name them with clientCertificate and privateKey; only the CA is taken from the secret",
                            );
                        }
                        put(&mut settings, "ca", upstream_ca_file(credential));
                    } else if let Some(path) = tls["caCertificates"].as_str() {
                        put(&mut settings, "ca", path);
                    }
                    let sni = tls["sni"].as_str();
                    if let Some(sni) = sni {
                        put(&mut settings, "server_name", sni);
                    }
                    // The export writes server_name alone as sni and subjectAltNames [sni].
                    let names = strings(&tls["subjectAltNames"]);
                    if !names.is_empty() && (names.len() > 1 || Some(names[0].as_str()) != sni) {
                        put(&mut settings, "subject_alt_names", names);
                    }
                    if mode == "MUTUAL" {
                        match (
                            tls["clientCertificate"].as_str(),
                            tls["privateKey"].as_str(),
                        ) {
                            (Some(cert), Some(key)) => {
                                put(&mut settings, "cert", cert);
                                put(&mut settings, "key", key);
                            }
                            _ if tls["credentialName"].is_string() => {}
                            _ => self.lose(
                                rule.at(&format!("{at}.mode")),
                                "MUTUAL without clientCertificate and privateKey: no client certificate is sent",
                            ),
                        }
                    }
                    fields.insert("tls".into(), Yaml::Mapping(settings));
                }
                _ => self.lose(
                    rule.at(&format!("{at}.mode")),
                    "ISTIO_MUTUAL uses a sidecar's own certificate; give the cluster the workload certificate's files as MUTUAL (tls.cert, tls.key) instead",
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
    pub(super) fn duration(
        &mut self,
        resource: &Resource,
        path: &str,
        value: &Value,
    ) -> Option<String> {
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
}
