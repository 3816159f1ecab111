//! The policy documents as written, read again beside the validated model: the model
//! holds the values, these tell which fields a user wrote and where (file and path), so
//! that a loss names the field as the user finds it.
//!
//! Files are read in the order `config::load_dir` reads them (name order), and items are
//! kept in document order, so that the n-th item here is the n-th item of the model.

use std::path::Path;

use anyhow::Context as _;

use crate::config::{raw, Origin};

/// Every item of the policies with its origin, in the model's order.
#[derive(Default)]
pub(super) struct Sources {
    /// The `server` section, if a file has one.
    pub server: Option<(Origin, raw::Server)>,
    pub listeners: Vec<(Origin, raw::Listener)>,
    pub clusters: Vec<(Origin, raw::Cluster)>,
    pub virtual_hosts: Vec<(Origin, raw::VirtualHost)>,
    pub plugins: Vec<(Origin, raw::Plugin)>,
}

impl Sources {
    /// Reads the policy files of `dir`; they were validated already, so a failure here is
    /// a file changed in between.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                let hidden = path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with('.'));
                let policy = path
                    .extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json");
                !hidden && policy && path.is_file()
            })
            .collect();
        paths.sort();
        let mut sources = Sources::default();
        for path in paths {
            let file = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let document: raw::Document = if path.extension().is_some_and(|ext| ext == "json") {
                serde_json::from_str(&text).with_context(|| format!("parsing {file}"))?
            } else {
                serde_norway::from_str(&text).with_context(|| format!("parsing {file}"))?
            };
            sources.add(&file, document);
        }
        Ok(sources)
    }

    fn add(&mut self, file: &str, document: raw::Document) {
        let root = Origin {
            file: file.to_string(),
            path: String::new(),
        };
        if let Some(server) = document.server {
            self.server.get_or_insert((root.child("server"), server));
        }
        let indexed = |section: &str, i: usize| root.child(&format!("{section}[{i}]"));
        for (i, item) in document.listeners.into_iter().enumerate() {
            self.listeners.push((indexed("listeners", i), item));
        }
        for (i, item) in document.clusters.into_iter().enumerate() {
            self.clusters.push((indexed("clusters", i), item));
        }
        for (i, item) in document.virtual_hosts.into_iter().enumerate() {
            self.virtual_hosts.push((indexed("virtual_hosts", i), item));
        }
        for (i, item) in document.plugins.into_iter().enumerate() {
            self.plugins.push((indexed("plugins", i), item));
        }
    }
}

/// The loss field name for `field` under `origin`: `FILE: PATH.FIELD`.
pub(super) fn field(origin: &Origin, field: &str) -> String {
    origin.child(field).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Paths of the fields in a document that have a value (not null), list indices
    /// written `[]`.
    fn field_paths(value: &serde_json::Value, path: &str, paths: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, value) in fields {
                    let path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    if !value.is_null() {
                        paths.insert(path.clone());
                    }
                    field_paths(value, &path, paths);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    field_paths(item, &format!("{path}[]"), paths);
                }
            }
            _ => {}
        }
    }

    /// The export tests rely on this folder to exercise every field: a field added to the
    /// policies must be added to it too, or this fails naming the field.
    #[test]
    fn the_every_field_fixture_writes_every_policy_field() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/every-field");
        let mut every_field = BTreeSet::new();
        let mut written = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|ext| ext != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // As typed, every field of the model is there (absent ones as null or a
            // default); as plain YAML, only what the file writes.
            let document: raw::Document = serde_norway::from_str(&text).unwrap();
            let mut all = serde_json::to_value(&document).unwrap();
            // Null sections and fields count as fields too.
            fill_nulls(&mut all);
            field_paths(&all, "", &mut every_field);
            let plain: serde_json::Value = serde_norway::from_str(&text).unwrap();
            field_paths(&plain, "", &mut written);
        }
        let missing: Vec<&String> = every_field.difference(&written).collect();
        assert!(
            missing.is_empty(),
            "tests/fixtures/every-field does not write {missing:?}"
        );
    }

    /// Replaces nulls by an empty string so that [`field_paths`] lists them.
    fn fill_nulls(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Null => *value = serde_json::Value::String(String::new()),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(fill_nulls),
            serde_json::Value::Array(items) => items.iter_mut().for_each(fill_nulls),
            _ => {}
        }
    }
}
