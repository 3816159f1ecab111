//! WasmPlugins as plugins: module, configuration, order and where they apply.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use serde_norway::{Mapping, Value as Yaml};

use super::{entries, map, put, Importer, Resource};
use crate::mesh::istio::{phase_floor, priority_fits_phase};

impl Importer {
    pub(super) fn wasm_plugin(&mut self, plugin: &Resource) {
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
    pub(super) fn apply_to(&mut self, plugin: &Resource, selectors: &Value) -> Option<Mapping> {
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
