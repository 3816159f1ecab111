//! `tollgate export envoy`: the policies as an Envoy v3 bootstrap (YAML).
//!
//! The policies are validated as `tollgate check` validates them (modules compiled,
//! certificates read), then translated piece by piece: listeners with the HTTP connection
//! manager and the server settings ([`listeners`]), virtual hosts and routes ([`routes`]),
//! clusters ([`clusters`]) and one `envoy.filters.http.wasm` filter per plugin instance
//! ([`plugins`]). What Envoy cannot express is recorded as a loss naming the policy field
//! where it was written; a setting left at Tollgate's default is translated when Envoy has
//! it and otherwise not reported, since nothing in the policies asked for it.

mod clusters;
mod listeners;
mod plugins;
mod routes;
mod sources;
mod tracing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use super::{Losses, Translation};
use sources::Sources;

/// Envoy's admin listener: the address Tollgate's own admin listener has by default.
const ADMIN_ADDRESS: &str = "127.0.0.1";
const ADMIN_PORT: u16 = 9901;

/// Translates the policies folder (validated as `tollgate check` does) into an Envoy v3
/// bootstrap document. `plugins` is the folder the modules are read from; the bootstrap
/// names each module by its absolute path there.
pub fn export(policies: &Path, plugins: &Path) -> anyhow::Result<Translation<String>> {
    let snapshot = crate::snapshot::check(policies, plugins)
        .map_err(|errors| anyhow::anyhow!("{} is invalid:\n{errors}", policies.display()))?;
    let config = &snapshot.config;
    let sources = Sources::read(policies)?;
    let mut losses = Losses::new();

    listeners::server_losses(config, &sources, &mut losses);
    let filters = plugins::Filters::build(config, &sources, plugins, &mut losses);
    let virtual_hosts = routes::virtual_hosts(config, &sources, &filters, &mut losses);
    let listeners = listeners::listeners(config, &virtual_hosts, &filters);
    let mut clusters = clusters::clusters(config, &sources, &mut losses);
    if let Some(settings) = &config.server.tracing {
        clusters.push(tracing::collector_cluster(settings, config));
    }

    let mut bootstrap = json!({
        "node": node(&config.server.node),
        "admin": {
            "address": socket_address(ADMIN_ADDRESS, ADMIN_PORT),
        },
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
        },
        "stats_config": stats_config(),
        "layered_runtime": {
            "layers": [{
                "name": "tollgate",
                "static_layer": listeners::runtime(config),
            }],
        },
    });
    if !filters.singletons.is_empty() {
        bootstrap["bootstrap_extensions"] = Value::Array(filters.singletons.clone());
    }

    let yaml = serde_norway::to_string(&yaml_value(&bootstrap))
        .context("writing the bootstrap as YAML")?;
    let output = format!(
        "# Envoy v3 bootstrap written by `tollgate export envoy`.\n# Run it with: envoy -c FILE\n{yaml}"
    );
    Ok(Translation { output, losses })
}

/// Tag extraction for plugin metrics: a plugin tags a metric in its name
/// (`consumer=.=alice;.;route=.=orders;.;usage_requests`, see [`crate::wasm::metrics`]);
/// one regex per well-known key takes the tag out of the name into a label, as Tollgate
/// does, so the same plugin's metrics carry the same labels in both proxies. The first
/// group is what Envoy removes from the name, the second the label's value.
fn stats_config() -> Value {
    use crate::wasm::metrics::{TAG_SEPARATOR, VALUE_SEPARATOR, WELL_KNOWN_TAG_KEYS};
    let escape = |text: &str| text.replace('.', "\\.");
    let tags: Vec<Value> = WELL_KNOWN_TAG_KEYS
        .iter()
        .map(|key| {
            json!({
                "tag_name": key,
                "regex": format!(
                    "({key}{}(.*?){})",
                    escape(VALUE_SEPARATOR),
                    escape(TAG_SEPARATOR)
                ),
            })
        })
        .collect();
    json!({ "stats_tags": tags })
}

/// The `envoy.config.core.v3.Node` from `server.node`: plugins read it as the `node` and
/// `xds.node` properties in both proxies, so it travels with them.
fn node(node: &crate::config::NodeSettings) -> Value {
    let mut value = json!({ "id": node.id, "cluster": node.cluster });
    if !node.metadata.is_empty() {
        value["metadata"] = Value::Object(node.metadata.clone());
    }
    let locality = &node.locality;
    let mut fields = serde_json::Map::new();
    for (name, field) in [
        ("region", &locality.region),
        ("zone", &locality.zone),
        ("sub_zone", &locality.sub_zone),
    ] {
        if !field.is_empty() {
            fields.insert(name.into(), json!(field));
        }
    }
    if !fields.is_empty() {
        value["locality"] = Value::Object(fields);
    }
    value
}

/// An `envoy.config.core.v3.Address`.
fn socket_address(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

/// A `google.protobuf.Duration` in its JSON form: seconds with up to nine decimals.
fn duration(value: Duration) -> String {
    let nanos = value.subsec_nanos();
    if nanos == 0 {
        format!("{}s", value.as_secs())
    } else {
        let fraction = format!("{nanos:09}");
        format!("{}.{}s", value.as_secs(), fraction.trim_end_matches('0'))
    }
}

/// An `envoy.type.v3.FractionalPercent` for a percentage: per hundred when whole,
/// per million otherwise (Tollgate accepts fractions such as `0.5`).
fn fraction(percent: f64) -> Value {
    if percent.fract() == 0.0 {
        json!({ "numerator": percent as u32, "denominator": "HUNDRED" })
    } else {
        json!({ "numerator": (percent * 10_000.0).round() as u32, "denominator": "MILLION" })
    }
}

/// A typed configuration (`google.protobuf.Any`): the message's type URL and its fields.
fn typed(type_name: &str, fields: Value) -> Value {
    let mut any = json!({ "@type": format!("type.googleapis.com/{type_name}") });
    if let (Some(any), Value::Object(fields)) = (any.as_object_mut(), fields) {
        any.extend(fields);
    }
    any
}

/// A file the policies name, as an absolute path: Envoy does not run from the policies
/// folder.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `{ filename: PATH }`, an `envoy.config.core.v3.DataSource` read from a file.
fn file_source(path: &Path) -> Value {
    json!({ "filename": absolute(path).display().to_string() })
}

/// The bootstrap as YAML, with `@type` and then `name` first in every mapping so that a
/// reader sees what each block is before its fields (the rest in name order).
fn yaml_value(value: &Value) -> serde_norway::Value {
    match value {
        Value::Null => serde_norway::Value::Null,
        Value::Bool(flag) => serde_norway::Value::Bool(*flag),
        Value::Number(number) => {
            serde_norway::to_value(number).unwrap_or(serde_norway::Value::Null)
        }
        Value::String(text) => serde_norway::Value::String(text.clone()),
        Value::Array(items) => {
            serde_norway::Value::Sequence(items.iter().map(yaml_value).collect())
        }
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort_by_key(|key| (key.as_str() != "@type", key.as_str() != "name"));
            let mut mapping = serde_norway::Mapping::new();
            for key in keys {
                mapping.insert(
                    serde_norway::Value::String(key.clone()),
                    yaml_value(&fields[key.as_str()]),
                );
            }
            serde_norway::Value::Mapping(mapping)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_tags_take_each_well_known_tag_out_of_the_name() {
        let config = stats_config();
        let route = config["stats_tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|tag| tag["tag_name"] == "route")
            .expect("a route tag");
        let regex = regex::Regex::new(route["regex"].as_str().unwrap()).unwrap();
        let name = "consumer=.=alice;.;route=.=orders;.;usage_requests";
        let captures = regex.captures(name).unwrap();
        assert_eq!(&captures[1], "route=.=orders;.;");
        assert_eq!(&captures[2], "orders");
    }

    #[test]
    fn durations_are_protobuf_json() {
        assert_eq!(duration(Duration::from_secs(5)), "5s");
        assert_eq!(duration(Duration::from_millis(50)), "0.05s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn whole_percentages_are_per_hundred_and_fractions_per_million() {
        assert_eq!(
            fraction(10.0),
            json!({ "numerator": 10, "denominator": "HUNDRED" })
        );
        assert_eq!(
            fraction(0.5),
            json!({ "numerator": 5000, "denominator": "MILLION" })
        );
    }

    #[test]
    fn yaml_puts_the_type_and_the_name_first() {
        let yaml = serde_norway::to_string(&yaml_value(&json!({
            "b": 1, "name": "x", "@type": "t", "a": [{ "z": 1, "name": "y" }]
        })))
        .unwrap();
        assert_eq!(yaml, "'@type': t\nname: x\na:\n- name: y\n  z: 1\nb: 1\n");
    }
}
