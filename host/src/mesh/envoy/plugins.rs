//! Plugins: one `envoy.filters.http.wasm` filter per plugin instance, in Tollgate's order
//! (higher priority first, then as written), before the fault filter and the router; a
//! singleton plugin as an `envoy.bootstrap.wasm` service.
//!
//! Envoy runs one configuration per filter, so a plugin with per-route configurations
//! becomes one filter per distinct configuration. A filter that runs everywhere is enabled
//! in the connection manager; any other is disabled there (`disabled: true`) and enabled
//! with a `FilterConfig` on each virtual host whose every route it serves, else on each
//! route it serves.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Value};

use super::sources::{field, Sources};
use super::{absolute, typed, Losses};
use crate::config::{raw, Config, FailurePolicy, Plugin, VirtualHost};

const WASM_FILTER: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const WASM_SERVICE: &str = "envoy.extensions.wasm.v3.WasmService";
const FILTER_CONFIG: &str = "envoy.config.route.v3.FilterConfig";
const STRING_VALUE: &str = "google.protobuf.StringValue";
const HTTP_FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
/// The fault filter's name in the connection manager, and the key of its per-route
/// configuration.
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// The plugins' filters and where each is enabled.
pub(super) struct Filters {
    /// The wasm filters in chain order.
    wasm: Vec<Value>,
    /// Whether some route has a fault, so the fault filter is needed.
    any_fault: bool,
    /// Filter names enabled per virtual host, and per route.
    on_virtual_host: HashMap<String, Vec<String>>,
    on_route: HashMap<String, Vec<String>>,
    /// `bootstrap_extensions` entries of the singleton plugins.
    pub singletons: Vec<Value>,
}

/// One filter of a plugin: a configuration and the routes it serves with it.
struct Instance<'a> {
    filter_name: String,
    configuration: &'a Value,
    /// (virtual host index, route index)
    routes: Vec<(usize, usize)>,
}

impl Filters {
    pub fn build(
        config: &Config,
        sources: &Sources,
        plugins_dir: &Path,
        losses: &mut Losses,
    ) -> Self {
        let mut filters = Filters {
            wasm: Vec::new(),
            any_fault: config
                .virtual_hosts
                .iter()
                .flat_map(|vhost| &vhost.routes)
                .any(|route| route.fault.is_some()),
            on_virtual_host: HashMap::new(),
            on_route: HashMap::new(),
            singletons: Vec::new(),
        };
        for (origin, written) in &sources.plugins {
            plugin_losses(written, origin, losses);
        }
        let mut order: Vec<&Plugin> = config.plugins.iter().collect();
        // Stable: equal priorities keep the written order, as Tollgate runs them.
        order.sort_by_key(|plugin| std::cmp::Reverse(plugin.priority));
        let total_routes: usize = config.virtual_hosts.iter().map(|v| v.routes.len()).sum();
        for plugin in order {
            let module = absolute(&crate::wasm::plugin::module_path(plugin, plugins_dir));
            if plugin.singleton {
                filters.singletons.push(json!({
                    "name": "envoy.bootstrap.wasm",
                    "typed_config": typed(WASM_SERVICE, json!({
                        "singleton": true,
                        "config": plugin_config(plugin, &plugin.config, &module),
                    })),
                }));
                continue;
            }
            for instance in instances(plugin, &config.virtual_hosts) {
                let everywhere = total_routes > 0 && instance.routes.len() == total_routes;
                let mut filter = json!({
                    "name": instance.filter_name,
                    "typed_config": typed(WASM_FILTER, json!({
                        "config": plugin_config(plugin, instance.configuration, &module),
                    })),
                });
                if !everywhere {
                    filter["disabled"] = json!(true);
                    filters.enable(&instance, &config.virtual_hosts);
                }
                filters.wasm.push(filter);
            }
        }
        filters
    }

    /// Records where a disabled filter is enabled: on a virtual host whose every route it
    /// serves, else on each of its routes.
    fn enable(&mut self, instance: &Instance<'_>, virtual_hosts: &[VirtualHost]) {
        let mut per_vhost: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (vhost, route) in &instance.routes {
            per_vhost.entry(*vhost).or_default().push(*route);
        }
        for (vhost, routes) in per_vhost {
            let vhost = &virtual_hosts[vhost];
            if routes.len() == vhost.routes.len() {
                self.on_virtual_host
                    .entry(vhost.name.clone())
                    .or_default()
                    .push(instance.filter_name.clone());
            } else {
                for route in routes {
                    self.on_route
                        .entry(vhost.routes[route].name.clone())
                        .or_default()
                        .push(instance.filter_name.clone());
                }
            }
        }
    }

    /// The connection manager's `http_filters`: the plugins, the fault filter if a route
    /// injects faults (Tollgate applies them after the plugins), the router.
    pub fn http_filters(&self) -> Vec<Value> {
        let mut filters = self.wasm.clone();
        if self.any_fault {
            filters.push(
                json!({ "name": FAULT_FILTER, "typed_config": typed(HTTP_FAULT, json!({})) }),
            );
        }
        filters.push(json!({ "name": "envoy.filters.http.router", "typed_config": typed(ROUTER, json!({})) }));
        filters
    }

    /// The `typed_per_filter_config` entries enabling filters on a virtual host.
    pub fn enabled_on_virtual_host(&self, name: &str) -> Vec<(String, Value)> {
        enabled(self.on_virtual_host.get(name))
    }

    /// The `typed_per_filter_config` entries enabling filters on a route.
    pub fn enabled_on_route(&self, name: &str) -> Vec<(String, Value)> {
        enabled(self.on_route.get(name))
    }
}

/// A `FilterConfig` that enables a filter disabled in the connection manager: Envoy reads
/// an empty `config` (an `Any` with no type) as "enabled, no configuration of its own",
/// and refuses a `FilterConfig` with no `config` at all.
fn enabled(names: Option<&Vec<String>>) -> Vec<(String, Value)> {
    names
        .into_iter()
        .flatten()
        .map(|name| {
            (
                name.clone(),
                typed(FILTER_CONFIG, json!({ "config": {}, "disabled": false })),
            )
        })
        .collect()
}

/// The plugin's instances: routes grouped by the configuration the plugin runs with on
/// them (its `route_config` entry, else its `config`). The instance of `config` is named
/// after the plugin, one of a route configuration `PLUGIN/ROUTE` after its first route.
fn instances<'a>(plugin: &'a Plugin, virtual_hosts: &[VirtualHost]) -> Vec<Instance<'a>> {
    let mut instances: Vec<Instance<'a>> = Vec::new();
    for (v, vhost) in virtual_hosts.iter().enumerate() {
        for (r, route) in vhost.routes.iter().enumerate() {
            let applies = match &plugin.apply_to {
                None => true,
                Some(apply) => {
                    apply.virtual_hosts.contains(&vhost.name) || apply.routes.contains(&route.name)
                }
            };
            if !applies {
                continue;
            }
            let configuration = plugin
                .route_config
                .get(&route.name)
                .unwrap_or(&plugin.config);
            match instances
                .iter_mut()
                .find(|instance| instance.configuration == configuration)
            {
                Some(instance) => instance.routes.push((v, r)),
                None => instances.push(Instance {
                    filter_name: if plugin.route_config.contains_key(&route.name) {
                        format!("{}/{}", plugin.name, route.name)
                    } else {
                        plugin.name.clone()
                    },
                    configuration,
                    routes: vec![(v, r)],
                }),
            }
        }
    }
    // Instances of one plugin never serve the same route, so their order is free: the
    // plugin's own configuration first reads best.
    instances.sort_by_key(|instance| instance.filter_name != plugin.name);
    if instances.is_empty() {
        // A plugin that serves no route still starts in Tollgate (on_vm_start, timers).
        instances.push(Instance {
            filter_name: plugin.name.clone(),
            configuration: &plugin.config,
            routes: Vec::new(),
        });
    }
    instances
}

/// An `envoy.extensions.wasm.v3.PluginConfig`. The root id is the plugin's name, as
/// Tollgate gives it to the module.
fn plugin_config(plugin: &Plugin, configuration: &Value, module: &Path) -> Value {
    let mut vm = json!({
        "runtime": "envoy.wasm.runtime.v8",
        "code": { "local": { "filename": module.display().to_string() } },
    });
    if let Some(vm_id) = &plugin.vm_id {
        vm["vm_id"] = json!(vm_id);
    }
    if !plugin.env.is_empty() {
        vm["environment_variables"] = json!({ "key_values": plugin.env });
    }
    if let Some(value) = string_value(&plugin.vm_config) {
        vm["configuration"] = value;
    }
    let mut config = json!({
        "name": plugin.name,
        "root_id": plugin.name,
        "vm_config": vm,
        "failure_policy": match plugin.failure_policy {
            FailurePolicy::FailClosed => "FAIL_CLOSED",
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::Reload => "FAIL_RELOAD",
        },
    });
    if let Some(value) = string_value(configuration) {
        config["configuration"] = value;
    }
    config
}

/// A configuration as the bytes the plugin reads: a string as it is, any other value as
/// its JSON text; none for null.
fn string_value(configuration: &Value) -> Option<Value> {
    let text = match configuration {
        Value::Null => return None,
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    Some(typed(STRING_VALUE, json!({ "value": text })))
}

/// The plugin settings Envoy has no field for.
fn plugin_losses(written: &raw::Plugin, origin: &crate::config::Origin, losses: &mut Losses) {
    if written.module.ends_with(".wat") {
        losses.add(
            field(origin, "module"),
            "Envoy loads binary modules only: compile the .wat to .wasm (wat2wasm) and change \
             the file name in the bootstrap",
        );
    }
    let unexpressed = [
        (
            "callback_timeout",
            written.callback_timeout.is_some(),
            "Envoy sets no CPU deadline per plugin callback",
        ),
        (
            "memory_limit",
            written.memory_limit.is_some(),
            "Envoy sets no memory limit per plugin VM",
        ),
        (
            "max_traps_per_minute",
            written.max_traps_per_minute.is_some(),
            "Envoy has no circuit for a plugin that keeps trapping; failure_policy alone applies",
        ),
        (
            "circuit_open_time",
            written.circuit_open_time.is_some(),
            "Envoy has no circuit for a plugin that keeps trapping; failure_policy alone applies",
        ),
    ];
    for (name, _, reason) in unexpressed.iter().filter(|(_, set, _)| *set) {
        losses.add(field(origin, name), *reason);
    }
}
