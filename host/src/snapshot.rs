//! The running configuration: everything a request needs, built and validated in one go
//! from a [`Config`] and then only read. A new snapshot replaces the old one with a single
//! pointer swap; requests in flight keep the one they started with.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::config::{self, Action, Config, ConfigErrors};
use crate::routing::RouteTable;
use crate::telemetry::redaction::Redaction;
use crate::upstream::Cluster;
use crate::wasm::plugin::{build_plugins, Plugin};
use crate::wasm::PluginRegistries;

/// The plugins that apply to a route, in request order.
pub type Chain = Arc<Vec<Arc<Plugin>>>;

pub struct Snapshot {
    pub config: Arc<Config>,
    /// Looked up on every request: a fast hash (the names are the policies' own).
    pub listeners: FxHashMap<Arc<str>, ListenerState>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Forwarding routes by name, with their clusters and endpoint subsets resolved. Looked
    /// up on every forwarded request by a name the configuration gives: a fast hash, as for
    /// `chains`.
    pub forwards: FxHashMap<String, Arc<ResolvedForward>>,
    /// Every plugin instance, started and configured.
    pub plugins: Vec<Arc<Plugin>>,
    /// The plugin chain of each route that has one, in request order. Looked up on every
    /// request by the route's name, which the configuration gives (no client chooses it): a
    /// fast hash rather than the default, keyed one.
    pub chains: FxHashMap<String, Chain>,
    /// What the access log writes as `REDACTED`: the configured names and those key-auth
    /// plugins read API keys from.
    pub access_log_redaction: Arc<Redaction>,
    /// Shared data, queues and metric registries: created with the first snapshot, handed
    /// on by each one to the next, so that a reload keeps what plugins stored and counted.
    pub registries: Arc<PluginRegistries>,
    /// The tracer when `server.tracing` is set and the snapshot serves (attached by the
    /// server, so that `tollgate check` starts no exporter).
    pub tracing: Option<Arc<crate::telemetry::tracing::Tracing>>,
}

pub struct ListenerState {
    pub routes: RouteTable,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificates `tls` serves, to tell a connection which one it got.
    pub certificates: Option<Arc<crate::tls::ServedCertificates>>,
}

/// A route's `forward` action bound to running clusters.
pub struct ResolvedForward {
    pub route: Arc<str>,
    pub targets: Vec<Target>,
    pub total_weight: u64,
    pub mirror: Option<Arc<Cluster>>,
}

pub struct Target {
    pub cluster: Arc<Cluster>,
    /// Indexes of the cluster's endpoints in this target's subset.
    pub endpoints: Vec<usize>,
    pub weight: u32,
}

impl ResolvedForward {
    /// Chooses a split target by weight.
    pub fn choose(&self) -> &Target {
        if self.targets.len() == 1 {
            return &self.targets[0];
        }
        let mut ticket = rand::random::<u64>() % self.total_weight;
        for target in &self.targets {
            if ticket < u64::from(target.weight) {
                return target;
            }
            ticket -= u64::from(target.weight);
        }
        &self.targets[self.targets.len() - 1]
    }
}

impl Snapshot {
    /// Builds everything: TLS configurations (reading certificates and keys), clusters and
    /// per-listener route tables. (Each worker keeps its own connection pools, in its thread.)
    pub fn build(config: Config, plugins_dir: &std::path::Path) -> Result<Self, ConfigErrors> {
        Self::build_reusing(config, plugins_dir, None, Default::default())
    }

    /// Builds the snapshot that replaces `previous`. A plugin instance whose module,
    /// configuration and settings are unchanged, while no cluster changed, is carried over
    /// with its running VMs: a reload does not retire it (no `proxy_on_done`, its buffers
    /// and timers go on). Endpoints that stay in a cluster keep their active health state.
    pub fn build_after(
        config: Config,
        plugins_dir: &std::path::Path,
        previous: &Snapshot,
    ) -> Result<Self, ConfigErrors> {
        Self::build_reusing(
            config,
            plugins_dir,
            Some(previous),
            previous.registries.clone(),
        )
    }

    fn build_reusing(
        config: Config,
        plugins_dir: &std::path::Path,
        previous: Option<&Snapshot>,
        registries: Arc<PluginRegistries>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut clusters = HashMap::new();
        for cluster in &config.clusters {
            let same_cluster_before = previous
                .and_then(|previous| previous.clusters.get(&cluster.name))
                .map(Arc::as_ref);
            match Cluster::new(
                cluster,
                same_cluster_before,
                registries.gateway_metrics.clone(),
            ) {
                Ok(running) => {
                    clusters.insert(cluster.name.clone(), Arc::new(running));
                }
                Err(error) => errors.push(error),
            }
        }
        let reusable: &[Arc<Plugin>] = match previous {
            Some(previous) if clusters_unchanged(&config, &clusters, previous) => &previous.plugins,
            _ => &[],
        };
        let virtual_hosts: Vec<Arc<config::VirtualHost>> =
            config.virtual_hosts.iter().cloned().map(Arc::new).collect();
        let mut listeners = FxHashMap::default();
        for listener in &config.listeners {
            let (tls, certificates) = match &listener.tls {
                Some(tls) => match crate::tls::server_config(tls) {
                    Ok((server_config, certificates)) => {
                        (Some(server_config), Some(Arc::new(certificates)))
                    }
                    Err(error) => {
                        errors.push(error);
                        (None, None)
                    }
                },
                None => (None, None),
            };
            let bound = virtual_hosts
                .iter()
                .filter(|vhost| {
                    config::vhost_listeners(vhost, &config.listeners)
                        .contains(listener.name.as_str())
                })
                .cloned()
                .collect();
            listeners.insert(
                Arc::from(listener.name.as_str()),
                ListenerState {
                    routes: RouteTable::new(bound),
                    tls,
                    certificates,
                },
            );
        }
        let mut forwards = FxHashMap::default();
        for route in config.virtual_hosts.iter().flat_map(|vhost| &vhost.routes) {
            let Action::Forward(forward) = &route.action else {
                continue;
            };
            let targets: Vec<Target> = forward
                .targets
                .iter()
                .filter_map(|target| {
                    let cluster = clusters.get(&target.cluster)?.clone();
                    let endpoints = cluster.subset(&target.subset);
                    Some(Target {
                        cluster,
                        endpoints,
                        weight: target.weight,
                    })
                })
                .collect();
            if targets.len() != forward.targets.len() {
                // Unknown clusters were reported by validation; a cluster that failed to build
                // (bad upstream TLS files) was reported above.
                continue;
            }
            let mirror = forward
                .mirror
                .as_ref()
                .and_then(|mirror| clusters.get(&mirror.cluster).cloned());
            forwards.insert(
                route.name.clone(),
                Arc::new(ResolvedForward {
                    route: route.name.as_str().into(),
                    total_weight: targets
                        .iter()
                        .map(|t| u64::from(t.weight))
                        .sum::<u64>()
                        .max(1),
                    targets,
                    mirror,
                }),
            );
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let plugins = build_plugins(
            &config.plugins,
            plugins_dir,
            &clusters,
            config.server.plugin_limits,
            &config.server.node,
            reusable,
            &registries,
        )
        .map_err(ConfigErrors)?;
        let chains = chains(&config, &plugins);
        let access_log_redaction = Arc::new(access_log_redaction(&config));
        Ok(Self {
            config: Arc::new(config),
            listeners,
            clusters,
            forwards,
            plugins,
            chains,
            access_log_redaction,
            registries,
            tracing: None,
        })
    }
}

/// Whether the clusters are those `previous` was built with: a plugin's callouts go through
/// the clusters it was built with, so any change rebuilds it, a rotated TLS file (the same
/// path, other certificates) included.
fn clusters_unchanged(
    config: &Config,
    clusters: &HashMap<String, Arc<Cluster>>,
    previous: &Snapshot,
) -> bool {
    // The cluster model has no equality; its debug form lists every field.
    format!("{:?}", config.clusters) == format!("{:?}", previous.config.clusters)
        && clusters.iter().all(|(name, cluster)| {
            previous
                .clusters
                .get(name)
                .is_some_and(|before| cluster.same_tls_files(before))
        })
}

/// Validates a policy folder completely — parsing, references, certificates and keys —
/// without serving. This is `tollgate check`.
pub fn check(
    dir: &std::path::Path,
    plugins_dir: &std::path::Path,
) -> Result<Snapshot, ConfigErrors> {
    let config = config::load_dir(dir)?;
    Snapshot::build(config, plugins_dir)
}

/// Each route's chain: global plugins, those of its virtual host and its own, ordered by
/// priority (higher first) and then as written. Singletons serve the gateway and are in no
/// chain.
fn chains(config: &Config, plugins: &[Arc<Plugin>]) -> FxHashMap<String, Chain> {
    let mut chains = FxHashMap::default();
    for vhost in &config.virtual_hosts {
        for route in &vhost.routes {
            let mut chain: Vec<Arc<Plugin>> = config
                .plugins
                .iter()
                .zip(plugins)
                .filter(|(spec, _)| match &spec.apply_to {
                    None => !spec.singleton,
                    Some(apply) => {
                        apply.virtual_hosts.contains(&vhost.name)
                            || apply.routes.contains(&route.name)
                    }
                })
                .map(|(_, plugin)| plugin.clone())
                .collect();
            if chain.is_empty() {
                continue;
            }
            chain.sort_by_key(|plugin| std::cmp::Reverse(plugin.priority));
            chains.insert(route.name.clone(), Arc::new(chain));
        }
    }
    chains
}

/// The bundled plugin whose key names are redacted without configuration.
const KEY_AUTH_MODULE: &str = "key-auth";
/// key-auth's `key_names` when its configuration gives none.
const KEY_AUTH_DEFAULT_KEY_NAMES: [&str; 2] = ["apikey", "x-api-key"];

/// The access log's redaction list: `server.access_log`, plus every name a key-auth plugin
/// (a module file named `key-auth.wasm` or `key_auth.wasm`) may read a key from, in the
/// query string or in a header — whether or not the plugin applies to the request, since a
/// client may send its key anywhere.
fn access_log_redaction(config: &Config) -> Redaction {
    let settings = &config.server.access_log;
    let mut key_names: Vec<String> = Vec::new();
    for plugin in &config.plugins {
        let stem = plugin
            .module
            .file_stem()
            .map(|stem| stem.to_string_lossy().replace('_', "-"));
        if stem.as_deref() != Some(KEY_AUTH_MODULE) {
            continue;
        }
        for plugin_config in std::iter::once(&plugin.config).chain(plugin.route_config.values()) {
            match key_auth_key_names(plugin_config) {
                Some(names) => key_names.extend(names),
                None => key_names.extend(KEY_AUTH_DEFAULT_KEY_NAMES.map(String::from)),
            }
        }
    }
    Redaction::new(
        settings
            .redact_query_params
            .iter()
            .chain(&key_names)
            .map(String::as_str),
        settings
            .redact_headers
            .iter()
            .chain(&key_names)
            .map(String::as_str),
    )
}

/// The `key_names` of a key-auth configuration (an object, or JSON text of one).
fn key_auth_key_names(config: &serde_json::Value) -> Option<Vec<String>> {
    let parsed;
    let config = match config {
        serde_json::Value::String(text) => {
            parsed = serde_json::from_str::<serde_json::Value>(text).ok()?;
            &parsed
        }
        other => other,
    };
    let names = config.get("key_names")?.as_array()?;
    Some(
        names
            .iter()
            .filter_map(|name| name.as_str().map(String::from))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(plugins: &str) -> Config {
        let dir = tempfile_dir();
        std::fs::write(
            dir.join("policies.yaml"),
            format!(
                "listeners: [{{ name: public, address: \"127.0.0.1:0\", protocol: http }}]\nserver:\n  access_log: {{ redact_query_params: [Sig], redact_headers: [user-agent] }}\n{plugins}"
            ),
        )
        .unwrap();
        let config = config::load_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        config
    }

    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-snapshot-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn key_auth_key_names_are_redacted_without_configuration() {
        let config = config(
            "plugins:\n  - name: keys\n    module: key-auth.wasm\n    config: { key_names: [X-Key], consumers: [] }\n  - name: defaults\n    module: /opt/key_auth.wasm\n    config: { consumers: [] }\n  - name: other\n    module: basic-auth.wasm\n    config: { key_names: [not-me] }\n",
        );
        let redaction = access_log_redaction(&config);
        assert_eq!(
            redaction.query_params(),
            ["apikey", "sig", "x-api-key", "x-key"]
        );
        assert_eq!(
            redaction.headers(),
            ["apikey", "user-agent", "x-api-key", "x-key"]
        );
    }

    #[test]
    fn only_configured_names_without_key_auth() {
        let redaction = access_log_redaction(&config(""));
        assert_eq!(redaction.query_params(), ["sig"]);
        assert_eq!(redaction.headers(), ["user-agent"]);
    }

    /// The smallest module the host runs as a plugin.
    const NOOP_PLUGIN: &str = r#"(module (memory (export "memory") 1)
        (func (export "malloc") (param i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_0"))
        (func (export "proxy_on_context_create") (param i32 i32)))"#;

    #[test]
    fn a_rebuild_carries_over_exactly_the_unchanged_plugin_instances() {
        let plugins_dir = tempfile_dir();
        std::fs::write(plugins_dir.join("noop.wat"), NOOP_PLUGIN).unwrap();
        let policies = |second: &str, endpoint: &str| {
            config(&format!(
                "clusters: [{{ name: c, endpoints: [{{ address: \"{endpoint}\" }}] }}]\nplugins:\n  - {{ name: kept, module: noop.wat, config: {{ a: 1 }} }}\n  - {{ name: edited, module: noop.wat, config: {second} }}\n"
            ))
        };
        let first = Snapshot::build(policies("{ b: 1 }", "127.0.0.1:1"), &plugins_dir).unwrap();
        let same = |a: &Snapshot, b: &Snapshot, index: usize| {
            Arc::ptr_eq(&a.plugins[index], &b.plugins[index])
        };

        let edited =
            Snapshot::build_after(policies("{ b: 2 }", "127.0.0.1:1"), &plugins_dir, &first)
                .unwrap();
        assert!(same(&first, &edited, 0), "unchanged: carried over");
        assert!(!same(&first, &edited, 1), "configuration changed: rebuilt");

        std::fs::write(
            plugins_dir.join("noop.wat"),
            format!("{NOOP_PLUGIN}\n;; v2"),
        )
        .unwrap();
        let swapped =
            Snapshot::build_after(policies("{ b: 2 }", "127.0.0.1:1"), &plugins_dir, &edited)
                .unwrap();
        assert!(!same(&edited, &swapped, 0), "module changed: rebuilt");

        let moved =
            Snapshot::build_after(policies("{ b: 2 }", "127.0.0.1:2"), &plugins_dir, &swapped)
                .unwrap();
        assert!(
            !same(&swapped, &moved, 0) && !same(&swapped, &moved, 1),
            "a cluster changed: every plugin rebuilt"
        );
        std::fs::remove_dir_all(&plugins_dir).unwrap();
    }

    #[test]
    fn a_rotated_cluster_tls_file_rebuilds_the_plugins() {
        let plugins_dir = tempfile_dir();
        std::fs::write(plugins_dir.join("noop.wat"), NOOP_PLUGIN).unwrap();
        let ca_file = plugins_dir.join("upstream-ca.crt");
        let write_ca = || {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            std::fs::write(&ca_file, params.self_signed(&key).unwrap().pem()).unwrap();
        };
        let policies = || {
            config(&format!(
                "clusters: [{{ name: c, endpoints: [{{ address: \"127.0.0.1:1\" }}], tls: {{ ca: \"{}\" }} }}]\nplugins:\n  - {{ name: kept, module: noop.wat }}\n",
                ca_file.display()
            ))
        };
        write_ca();
        let first = Snapshot::build(policies(), &plugins_dir).unwrap();
        let again = Snapshot::build_after(policies(), &plugins_dir, &first).unwrap();
        assert!(
            Arc::ptr_eq(&first.plugins[0], &again.plugins[0]),
            "the same certificates: carried over"
        );
        write_ca();
        let rotated = Snapshot::build_after(policies(), &plugins_dir, &again).unwrap();
        assert!(
            !Arc::ptr_eq(&again.plugins[0], &rotated.plugins[0]),
            "the same path, another certificate: its callouts need the new cluster"
        );
        std::fs::remove_dir_all(&plugins_dir).unwrap();
    }

    #[test]
    fn a_singleton_is_in_no_route_chain() {
        let plugins_dir = tempfile_dir();
        std::fs::write(plugins_dir.join("noop.wat"), NOOP_PLUGIN).unwrap();
        let config = config(
            "virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      - { name: r, direct_response: { status: 200 } }\nplugins:\n  - { name: everywhere, module: noop.wat }\n  - { name: service, module: noop.wat, singleton: true }\n",
        );
        let snapshot = Snapshot::build(config, &plugins_dir).unwrap();
        let chain: Vec<&str> = snapshot.chains["r"]
            .iter()
            .map(|plugin| plugin.name.as_str())
            .collect();
        assert_eq!(chain, ["everywhere"]);
        assert!(snapshot.plugins[1].singleton);
        std::fs::remove_dir_all(&plugins_dir).unwrap();
    }
}
