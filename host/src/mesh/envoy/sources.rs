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
                serde_yaml::from_str(&text).with_context(|| format!("parsing {file}"))?
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
