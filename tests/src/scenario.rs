//! A gateway with its backends, described in a few calls and started in one:
//!
//! ```no_run
//! # async fn example() {
//! use tollgate_tests::scenario::Scenario;
//! let running = Scenario::new()
//!     .echo("echo")
//!     .forward("api", "/api", "echo")
//!     .start()
//!     .await;
//! let response = running.get("/api/orders").await;
//! assert_eq!(response.status, 200, "GET /api/orders");
//! assert_eq!(running.backend("echo").request_count(), 1);
//! # }
//! ```
//!
//! [`Scenario::start`] starts the backends, writes the policies folder and runs the gateway
//! binary on it. The generated `scenario.yaml` holds the `public` HTTP listener, one
//! cluster per backend (named after it), the routes of [`Scenario::route`] in a virtual host
//! `all` for every domain, and whatever [`Scenario::listener`], [`Scenario::cluster`],
//! [`Scenario::virtual_host`] and [`Scenario::server`] add. Plugins go to `plugins.json`.
//! Tests that pin a configuration edge case write whole files with
//! [`Scenario::policy_file`] (templates as in [`PolicyDir`]: `${listen:NAME}`, `${NAME}`;
//! every backend defines `${NAME}` as its address, upper-cased with `-` as `_`).
//!
//! The [`Running`] scenario prints the gateway's log when it is dropped during a panic, so
//! every failed assertion comes with what the gateway said.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backends::{self, Backend, Failure};
use crate::certs::{CertAuthority, IssuedCert};
use crate::clients::{HttpClient, HttpResponse};
use crate::fixtures::plugins_dir;
use crate::gateway::{Gateway, PolicyDir};
use crate::plugins::{plugins_file, PluginSpec};

/// The host name requests of [`Running::get`] carry; the generated virtual host answers
/// every domain.
pub const HOST: &str = "localhost";

/// A backend to start with the scenario.
enum BackendSource {
    Echo,
    Grpc,
    GrpcStreamEcho,
    Flaky(usize, Failure),
    WebSocket,
    Started(Backend),
}

struct PlannedBackend {
    name: String,
    source: BackendSource,
    /// The generated cluster speaks HTTP/2 (prior knowledge) to it.
    http2: bool,
}

/// The description of a gateway, its policies and its backends; see the module docs.
#[must_use = "a scenario does nothing until it is started"]
pub struct Scenario {
    policies: PolicyDir,
    backends: Vec<PlannedBackend>,
    public_listener: bool,
    server: Vec<String>,
    listeners: Vec<String>,
    clusters: Vec<String>,
    routes: Vec<String>,
    virtual_hosts: Vec<String>,
    plugins: Vec<PluginSpec>,
    files: Vec<(String, String)>,
    modules: Vec<(String, PathBuf)>,
    workers: usize,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    pub fn new() -> Self {
        Self {
            policies: PolicyDir::new(),
            backends: Vec::new(),
            public_listener: true,
            server: Vec::new(),
            listeners: Vec::new(),
            clusters: Vec::new(),
            routes: Vec::new(),
            virtual_hosts: Vec::new(),
            plugins: Vec::new(),
            files: Vec::new(),
            modules: Vec::new(),
            workers: 2,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    // === backends ===

    /// An echo backend ([`backends::echo`]) and its cluster `name`.
    pub fn echo(self, name: &str) -> Self {
        self.planned(name, BackendSource::Echo, false)
    }

    /// A gRPC backend ([`backends::grpc`]) and its HTTP/2 cluster `name`.
    pub fn grpc(self, name: &str) -> Self {
        self.planned(name, BackendSource::Grpc, true)
    }

    /// A streaming gRPC echo ([`backends::grpc_stream_echo`]) and its HTTP/2 cluster `name`.
    pub fn grpc_stream_echo(self, name: &str) -> Self {
        self.planned(name, BackendSource::GrpcStreamEcho, true)
    }

    /// A backend failing its first requests ([`backends::flaky`]) and its cluster `name`.
    pub fn flaky(self, name: &str, failures: usize, failure: Failure) -> Self {
        self.planned(name, BackendSource::Flaky(failures, failure), false)
    }

    /// A WebSocket echo ([`backends::websocket_echo`]) and its cluster `name`.
    pub fn websocket(self, name: &str) -> Self {
        self.planned(name, BackendSource::WebSocket, false)
    }

    /// A backend the test started itself (a TLS echo, a usage collector, ...) and its
    /// cluster `name`; give the cluster other fields with [`Scenario::cluster`].
    pub fn backend(self, name: &str, backend: Backend) -> Self {
        self.planned(name, BackendSource::Started(backend), false)
    }

    fn planned(mut self, name: &str, source: BackendSource, http2: bool) -> Self {
        assert!(
            self.backends.iter().all(|planned| planned.name != name),
            "two backends named {name}"
        );
        self.backends.push(PlannedBackend {
            name: name.to_owned(),
            source,
            http2,
        });
        self
    }

    // === policies ===

    /// Lines of the `server:` section (a YAML mapping, indentation as written).
    pub fn server(mut self, fields: &str) -> Self {
        self.server.push(fields.to_owned());
        self
    }

    /// Leaves out the `public` listener, for scenarios that name all their listeners.
    pub fn without_public_listener(mut self) -> Self {
        self.public_listener = false;
        self
    }

    /// One more entry of `listeners:` (YAML; a template).
    pub fn listener(mut self, entry: &str) -> Self {
        self.listeners.push(entry.to_owned());
        self
    }

    /// An HTTPS listener `name` serving `certs/CERT.crt` (see [`Scenario::server_cert`]).
    pub fn https_listener(self, name: &str, cert: &str) -> Self {
        self.listener(&format!(
            "{{ name: {name}, address: \"${{listen:{name}}}\", protocol: https, \
             tls: {{ certificates: [{{ cert: certs/{cert}.crt, key: certs/{cert}.key }}] }} }}"
        ))
    }

    /// One more entry of `clusters:` (YAML; a template). A cluster named like a backend
    /// replaces the one generated for it.
    pub fn cluster(mut self, entry: &str) -> Self {
        self.clusters.push(entry.to_owned());
        self
    }

    /// A cluster `name` with one endpoint at `addr`: a server the test runs itself, or
    /// [`backends::refusing_address`].
    pub fn cluster_at(self, name: &str, addr: SocketAddr) -> Self {
        self.cluster(&single_endpoint_cluster(name, addr, false))
    }

    /// One more route of the virtual host `all` (YAML; a template).
    pub fn route(mut self, entry: &str) -> Self {
        self.routes.push(entry.to_owned());
        self
    }

    /// A route `name` forwarding every path starting with `prefix` to `cluster`.
    pub fn forward(self, name: &str, prefix: &str, cluster: &str) -> Self {
        self.route(&format!(
            "{{ name: {name}, match: {{ path: {{ prefix: \"{prefix}\" }} }}, \
             forward: {{ cluster: {cluster} }} }}"
        ))
    }

    /// One more entry of `virtual_hosts:` (YAML; a template), after `all`.
    pub fn virtual_host(mut self, entry: &str) -> Self {
        self.virtual_hosts.push(entry.to_owned());
        self
    }

    /// A policy file written as it is given (a template), for tests that pin the
    /// configuration itself.
    pub fn policy_file(mut self, file_name: &str, template: &str) -> Self {
        assert_ne!(
            file_name, GENERATED_FILE,
            "{GENERATED_FILE} is the builder's"
        );
        self.files.push((file_name.to_owned(), template.to_owned()));
        self
    }

    /// Defines `${NAME}` for the templates.
    pub fn set(mut self, name: &str, value: impl ToString) -> Self {
        self.policies.set(name, value);
        self
    }

    // === plugins ===

    /// A plugin entry of `plugins.json` (a test plugin of [`crate::plugins`] or a bundled
    /// one of [`crate::bundled`]).
    pub fn plugin(mut self, plugin: PluginSpec) -> Self {
        self.plugins.push(plugin);
        self
    }

    pub fn plugins(mut self, plugins: &[PluginSpec]) -> Self {
        self.plugins.extend_from_slice(plugins);
        self
    }

    /// Copies the module at `built` into the plugins folder (`--plugins`) as `file_name`,
    /// where policies name it by a relative path.
    pub fn plugin_module(mut self, file_name: &str, built: impl Into<PathBuf>) -> Self {
        self.modules.push((file_name.to_owned(), built.into()));
        self
    }

    // === certificates ===

    /// Writes `certs/STEM.crt` and `certs/STEM.key`.
    pub fn server_cert(self, stem: &str, cert: &IssuedCert) -> Self {
        cert.write(&self.policies.certs_dir(), stem);
        self
    }

    /// Writes the authority's certificate as `certs/FILE_NAME`.
    pub fn ca_cert(self, file_name: &str, authority: &CertAuthority) -> Self {
        authority.write(&self.policies.certs_dir(), file_name);
        self
    }

    // === the gateway process ===

    /// Worker threads (`--workers`; 2 unless set).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// `--log-format FORMAT`.
    pub fn log_format(self, format: &str) -> Self {
        self.args(&["--log-format", format])
    }

    /// More command-line arguments of `tollgate run`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    /// An environment variable of the gateway process.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.push((name.to_owned(), value.to_string()));
        self
    }

    /// The policies folder, to write files that need no template before the start.
    pub fn policies(&self) -> &PolicyDir {
        &self.policies
    }

    /// Starts the backends, writes the policies and runs the gateway until `/readyz`
    /// answers; panics with the gateway's log when it does not get there.
    pub async fn start(self) -> Running {
        let (prepared, backends) = self.prepare().await;
        let (gateway, plugins_folder) = prepared.launch(true).await;
        Running {
            gateway,
            backends,
            plugins_folder,
            client: HttpClient::http1(),
        }
    }

    /// Runs the gateway on a configuration it must refuse: panics unless it exits with a
    /// failure within `timeout` (it is killed then); returns its log.
    pub async fn run_until_refused(self, timeout: Duration) -> String {
        let (prepared, _backends) = self.prepare().await;
        let (mut gateway, _) = prepared.launch(false).await;
        match gateway.wait_for_exit(timeout).await {
            None => panic!(
                "tollgate run is still running after {timeout:?} on a configuration it must \
                 refuse; its output:\n{}",
                gateway.log()
            ),
            Some(status) => assert!(
                !status.success(),
                "tollgate run exited successfully; its output:\n{}",
                gateway.log()
            ),
        }
        gateway.log()
    }

    /// Starts the backends and writes the policies folder and the plugins folder.
    async fn prepare(mut self) -> (Prepared, BTreeMap<String, Backend>) {
        let mut backends = BTreeMap::new();
        for planned in std::mem::take(&mut self.backends) {
            let backend = match planned.source {
                BackendSource::Echo => backends::echo(&planned.name).await,
                BackendSource::Grpc => backends::grpc(&planned.name).await,
                BackendSource::GrpcStreamEcho => backends::grpc_stream_echo(&planned.name).await,
                BackendSource::Flaky(failures, failure) => {
                    backends::flaky(&planned.name, failures, failure).await
                }
                BackendSource::WebSocket => backends::websocket_echo().await,
                BackendSource::Started(backend) => backend,
            };
            self.policies
                .set(&value_name(&planned.name), backend.addr());
            if !self
                .clusters
                .iter()
                .any(|entry| entry_name(entry) == Some(planned.name.as_str()))
            {
                self.clusters.push(single_endpoint_cluster(
                    &planned.name,
                    backend.addr(),
                    planned.http2,
                ));
            }
            backends.insert(planned.name, backend);
        }
        let generated = self.generated_policies();
        if !generated.is_empty() {
            self.policies.write(GENERATED_FILE, &generated);
        }
        for (file_name, template) in std::mem::take(&mut self.files) {
            self.policies.write(&file_name, &template);
        }
        if !self.plugins.is_empty() {
            self.policies
                .write("plugins.json", &plugins_file(&self.plugins));
        }
        let plugins_folder = self.plugins_folder();
        if !self.modules.is_empty() {
            fs::create_dir_all(&plugins_folder).expect("create the plugins folder");
            for (file_name, built) in &self.modules {
                fs::copy(built, plugins_folder.join(file_name))
                    .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
            }
            let folder = plugins_folder.to_str().expect("UTF-8 path").to_owned();
            self.args.extend(["--plugins".to_owned(), folder]);
        }
        let mut args = vec!["--workers".to_owned(), self.workers.to_string()];
        args.append(&mut self.args);
        let prepared = Prepared {
            policies: self.policies,
            args,
            env: self.env,
            plugins_folder,
        };
        (prepared, backends)
    }

    fn plugins_folder(&self) -> PathBuf {
        plugins_dir(&self.policies)
    }

    fn generated_policies(&self) -> String {
        let mut yaml = String::new();
        if !self.server.is_empty() {
            yaml.push_str("server:\n");
            for fields in &self.server {
                push_indented(&mut yaml, "  ", fields);
            }
        }
        let mut listeners = Vec::new();
        if self.public_listener {
            listeners
                .push("{ name: public, address: \"${listen:public}\", protocol: http }".to_owned());
        }
        listeners.extend(self.listeners.iter().cloned());
        push_section(&mut yaml, "listeners", &listeners);
        push_section(&mut yaml, "clusters", &self.clusters);
        let mut virtual_hosts = Vec::new();
        if !self.routes.is_empty() {
            let mut all = String::from("name: all\ndomains: [\"*\"]\nroutes:\n");
            for route in &self.routes {
                push_entry(&mut all, "  ", route);
            }
            virtual_hosts.push(all);
        }
        virtual_hosts.extend(self.virtual_hosts.iter().cloned());
        push_section(&mut yaml, "virtual_hosts", &virtual_hosts);
        yaml
    }
}

/// A written policies folder and the command line to run the gateway on it.
struct Prepared {
    policies: PolicyDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    plugins_folder: PathBuf,
}

impl Prepared {
    /// Spawns the gateway; `ready` waits until it serves.
    async fn launch(self, ready: bool) -> (Gateway, PathBuf) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let gateway = if ready {
            Gateway::start_with_env(self.policies, &args, &env).await
        } else {
            Gateway::spawn(self.policies, &args, &env)
        };
        (gateway, self.plugins_folder)
    }
}

/// The policy file the builder writes its server fields, listeners, clusters and routes
/// to (tests that rewrite it while the gateway runs find it under this name).
pub const GENERATED_FILE: &str = "scenario.yaml";

/// `${NAME}` of a backend: its name upper-cased, `-` as `_`.
fn value_name(backend: &str) -> String {
    backend.to_uppercase().replace('-', "_")
}

/// A cluster entry with one endpoint; `http2` for HTTP/2 with prior knowledge.
fn single_endpoint_cluster(name: &str, addr: SocketAddr, http2: bool) -> String {
    let http2 = if http2 { ", http2: true" } else { "" };
    format!("{{ name: {name}, endpoints: [{{ address: \"{addr}\" }}]{http2} }}")
}

/// The value of the first `name:` of a YAML entry, flow or block style.
fn entry_name(entry: &str) -> Option<&str> {
    let after = &entry[entry.find("name:")? + "name:".len()..];
    let end = after.find([',', '}', '\n']).unwrap_or(after.len());
    Some(after[..end].trim().trim_matches('"'))
}

fn push_section(yaml: &mut String, key: &str, entries: &[String]) {
    if entries.is_empty() {
        return;
    }
    yaml.push_str(key);
    yaml.push_str(":\n");
    for entry in entries {
        push_entry(yaml, "  ", entry);
    }
}

/// Appends `entry` as a list item at `indent`: its lines keep their relative indentation.
fn push_entry(yaml: &mut String, indent: &str, entry: &str) {
    let mut item = String::new();
    push_indented(&mut item, "", entry);
    for (index, line) in item.lines().enumerate() {
        yaml.push_str(indent);
        yaml.push_str(if index == 0 { "- " } else { "  " });
        yaml.push_str(line);
        yaml.push('\n');
    }
}

/// Appends the non-blank lines of `text` at `indent`, less their common indentation.
fn push_indented(yaml: &mut String, indent: &str, text: &str) {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let common = lines
        .iter()
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    for line in lines {
        yaml.push_str(indent);
        yaml.push_str(&line[common..]);
        yaml.push('\n');
    }
}

/// A started scenario: the gateway (its methods through `Deref`), the backends by name and
/// an HTTP/1.1 client. Stops everything when dropped, printing the gateway's log first
/// when a test is failing.
pub struct Running {
    gateway: Gateway,
    backends: BTreeMap<String, Backend>,
    plugins_folder: PathBuf,
    client: HttpClient,
}

impl Running {
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The backend started as `name`.
    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .get(name)
            .unwrap_or_else(|| panic!("the scenario has no backend {name}"))
    }

    /// The `public` listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.listener("public")
    }

    /// The scenario's HTTP/1.1 client.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// GET `path_and_query` from the `public` listener with `Host: localhost`.
    pub async fn get(&self, path_and_query: &str) -> HttpResponse {
        self.client.get(self.addr(), HOST, path_and_query).await
    }

    /// Asserts the status of a response; a failure shows `what`, the response's body and
    /// the gateway's log.
    pub fn assert_status(&self, response: &HttpResponse, status: http::StatusCode, what: &str) {
        assert_eq!(
            response.status,
            status,
            "{what}: {}\n{}",
            response.text(),
            self.gateway.log()
        );
    }

    /// `policies/FILE_NAME`, to rewrite a policy file while the gateway runs.
    pub fn policy_file(&self, file_name: &str) -> PathBuf {
        self.gateway.policies().path().join(file_name)
    }

    /// The plugins folder given to `--plugins` (see [`Scenario::plugin_module`]).
    pub fn plugins_folder(&self) -> &Path {
        &self.plugins_folder
    }
}

impl Deref for Running {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.gateway
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Gateway {
        &mut self.gateway
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- the gateway's log ---\n{}--- end of the gateway's log ---",
                self.gateway.log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_policies_hold_listener_clusters_and_routes() {
        let scenario = Scenario::new()
            .server("max_request_body_bytes: 1000\nidle_timeout: 1s\n")
            .cluster("name: shop\nendpoints:\n  - { address: \"${SHOP}\" }\n")
            .forward("api", "/api", "shop")
            .virtual_host("name: other\ndomains: [other.test]\nroutes: []");
        assert_eq!(
            scenario.generated_policies(),
            "server:\n  max_request_body_bytes: 1000\n  idle_timeout: 1s\n\
             listeners:\n  - { name: public, address: \"${listen:public}\", protocol: http }\n\
             clusters:\n  - name: shop\n    endpoints:\n      - { address: \"${SHOP}\" }\n\
             virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n\
             \x20     - { name: api, match: { path: { prefix: \"/api\" } }, forward: { cluster: shop } }\n\
             \x20 - name: other\n    domains: [other.test]\n    routes: []\n"
        );
    }

    #[test]
    fn entry_names_and_value_names() {
        assert_eq!(entry_name("{ name: echo, http2: true }"), Some("echo"));
        assert_eq!(entry_name("name: \"a-b\"\nendpoints: []"), Some("a-b"));
        assert_eq!(value_name("half-refusing"), "HALF_REFUSING");
    }
}
