//! `tollgate import istio`: Istio resources as a policies folder.
//!
//! The Gateway's servers become listeners, ServiceEntries and DestinationRules clusters,
//! VirtualServices virtual hosts (bound to the listeners whose server hosts cover theirs),
//! WasmPlugins plugins. Names follow the resources' own, so that the same resources always
//! give the same folder, and `export istio` gives the resources back. Where Istio and
//! Tollgate defaults differ (load balancing, connect timeout, outlier detection), the Istio
//! value is written out so that the gateway behaves as the mesh did; a field with no
//! Tollgate form is a loss.

mod clusters;
mod gateway;
mod plugins;
mod routes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context as _;
use serde::Deserialize as _;
use serde_json::Value;
use serde_norway::{Mapping, Value as Yaml};

use super::{Losses, Translation};

/// Reads Istio resources (Gateway, VirtualService, DestinationRule, ServiceEntry, WasmPlugin;
/// multi-document YAML files) and returns the policy files to write: (file name, contents).
pub fn import(files: &[PathBuf]) -> anyhow::Result<Translation<Vec<(String, String)>>> {
    let mut resources = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        for document in serde_norway::Deserializer::from_str(&text) {
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
        serde_norway::to_value(value).unwrap_or(Yaml::Null),
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
            Ok(format!("{header}{}", serde_norway::to_string(&root)?))
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
