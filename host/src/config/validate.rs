//! From the documents as written ([`raw`]) to the validated model ([`model`]): every field
//! checked, defaults filled in, names resolved. Every problem is collected, each naming its
//! file and the path of the field inside the document, so that a user fixes them all at once.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use regex::Regex;

use super::error::{ConfigError, ConfigErrors, Origin};
use super::model::*;
use super::raw::{self, SourceFile};
use super::{duration, effective};

/// Validates a set of parsed files, collecting every error.
pub(super) fn validate(base_dir: &Path, files: Vec<SourceFile>) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        base_dir,
        errors: Vec::new(),
    };
    let config = v.config(base_dir, &files);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

struct Validator<'a> {
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
}

/// Names seen so far for one kind of item, to report duplicates with both places.
#[derive(Default)]
struct Names(HashMap<String, Origin>);

impl Names {
    fn insert(&mut self, kind: &str, name: &str, origin: &Origin) -> Option<ConfigError> {
        if let Some(first) = self.0.get(name) {
            return Some(ConfigError::new(
                origin,
                "name",
                format!("duplicate {kind} name {name:?}; first defined at {first}"),
            ));
        }
        self.0.insert(name.to_string(), origin.clone());
        None
    }
}

impl Validator<'_> {
    fn error(&mut self, origin: &Origin, field: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(origin, field, message));
    }

    fn duration(
        &mut self,
        origin: &Origin,
        field: &str,
        text: Option<&String>,
        default: Duration,
    ) -> Duration {
        match text.map(|text| duration::parse(text)) {
            None => default,
            Some(Ok(value)) => value,
            Some(Err(invalid)) => {
                self.error(origin, field, invalid.to_string());
                default
            }
        }
    }

    fn file(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }

    fn existing_file(&mut self, origin: &Origin, field: &str, path: &str) -> PathBuf {
        let resolved = self.file(path);
        if !resolved.is_file() {
            self.error(
                origin,
                field,
                format!("file {} does not exist", resolved.display()),
            );
        }
        resolved
    }

    fn config(&mut self, base_dir: &Path, files: &[SourceFile]) -> Config {
        let mut server = None::<(raw::Server, Origin)>;
        let mut listeners = Vec::new();
        let mut clusters = Vec::new();
        let mut virtual_hosts = Vec::new();
        let mut plugins = Vec::new();
        let (
            mut listener_names,
            mut cluster_names,
            mut vhost_names,
            mut route_names,
            mut plugin_names,
        ) = (
            Names::default(),
            Names::default(),
            Names::default(),
            Names::default(),
            Names::default(),
        );

        for file in files {
            let root = Origin {
                file: file.name.clone(),
                path: String::new(),
            };
            let doc = &file.document;
            if let Some(settings) = &doc.server {
                let origin = root.child("server");
                if let Some((_, first)) = &server {
                    let first = first.file.clone();
                    self.error(&origin, "", format!("`server` is already set in {first}"));
                } else {
                    server = Some((settings.clone(), origin));
                }
            }
            for (i, listener) in doc.listeners.iter().enumerate() {
                let origin = root.child(&format!("listeners[{i}]"));
                if let Some(e) = listener_names.insert("listener", &listener.name, &origin) {
                    self.errors.push(e);
                }
                listeners.push(self.listener(listener, origin));
            }
            for (i, cluster) in doc.clusters.iter().enumerate() {
                let origin = root.child(&format!("clusters[{i}]"));
                if let Some(e) = cluster_names.insert("cluster", &cluster.name, &origin) {
                    self.errors.push(e);
                }
                clusters.push(self.cluster(cluster, origin));
            }
            for (i, vhost) in doc.virtual_hosts.iter().enumerate() {
                let origin = root.child(&format!("virtual_hosts[{i}]"));
                if let Some(e) = vhost_names.insert("virtual host", &vhost.name, &origin) {
                    self.errors.push(e);
                }
                for (j, route) in vhost.routes.iter().enumerate() {
                    let route_origin = origin.child(&format!("routes[{j}]"));
                    if let Some(e) = route_names.insert("route", &route.name, &route_origin) {
                        self.errors.push(e);
                    }
                }
                virtual_hosts.push((self.virtual_host(vhost, &origin), origin));
            }
            for (i, plugin) in doc.plugins.iter().enumerate() {
                let origin = root.child(&format!("plugins[{i}]"));
                if let Some(e) = plugin_names.insert("plugin", &plugin.name, &origin) {
                    self.errors.push(e);
                }
                plugins.push(self.plugin(plugin, origin));
            }
        }

        let server = match server {
            Some((settings, origin)) => self.server(&settings, &origin),
            None => ServerSettings::default(),
        };
        if listeners.is_empty() {
            self.error(
                &Origin {
                    file: base_dir.display().to_string(),
                    path: String::new(),
                },
                "",
                "no listeners: define at least one under `listeners:`",
            );
        }
        self.check_references(
            &listeners,
            &clusters,
            &virtual_hosts,
            &plugins,
            &listener_names,
            &route_names,
            &vhost_names,
        );
        let mut config = Config {
            base_dir: base_dir.to_path_buf(),
            server,
            listeners,
            clusters,
            virtual_hosts: virtual_hosts.into_iter().map(|(vhost, _)| vhost).collect(),
            plugins,
            effective: serde_json::Value::Null,
        };
        config.effective = effective::view(files, &config);
        config
    }

    #[allow(clippy::too_many_arguments)]
    fn check_references(
        &mut self,
        listeners: &[Listener],
        clusters: &[Cluster],
        virtual_hosts: &[(VirtualHost, Origin)],
        plugins: &[Plugin],
        listener_names: &Names,
        route_names: &Names,
        vhost_names: &Names,
    ) {
        let clusters_by_name: HashMap<&str, &Cluster> = clusters
            .iter()
            .map(|cluster| (cluster.name.as_str(), cluster))
            .collect();
        let _ = listeners;
        for (vhost, origin) in virtual_hosts {
            for (i, listener) in vhost.listeners.iter().flatten().enumerate() {
                if !listener_names.0.contains_key(listener) {
                    self.error(
                        origin,
                        &format!("listeners[{i}]"),
                        unknown("listener", listener, listener_names),
                    );
                }
            }
            for (j, route) in vhost.routes.iter().enumerate() {
                let route_origin = origin.child(&format!("routes[{j}]"));
                let Action::Forward(forward) = &route.action else {
                    continue;
                };
                for (k, target) in forward.targets.iter().enumerate() {
                    let field = if forward.is_split {
                        format!("forward.split[{k}]")
                    } else {
                        "forward.cluster".to_string()
                    };
                    match clusters_by_name.get(target.cluster.as_str()) {
                        None => self.error(
                            &route_origin,
                            &field,
                            unknown_cluster(&target.cluster, &clusters_by_name),
                        ),
                        Some(cluster) if !target.subset.is_empty() => {
                            let matching = cluster
                                .endpoints
                                .iter()
                                .filter(|endpoint| subset_matches(&target.subset, &endpoint.labels))
                                .count();
                            if matching == 0 {
                                self.error(
                                    &route_origin,
                                    &format!("{field}.subset"),
                                    format!(
                                        "no endpoint of cluster {:?} has the labels {:?}",
                                        cluster.name, target.subset
                                    ),
                                );
                            }
                        }
                        Some(_) => {}
                    }
                }
                if let Some(mirror) = &forward.mirror {
                    if !clusters_by_name.contains_key(mirror.cluster.as_str()) {
                        self.error(
                            &route_origin,
                            "forward.mirror.cluster",
                            unknown_cluster(&mirror.cluster, &clusters_by_name),
                        );
                    }
                }
            }
        }
        for plugin in plugins {
            if let Some(apply_to) = &plugin.apply_to {
                for (i, vhost) in apply_to.virtual_hosts.iter().enumerate() {
                    if !vhost_names.0.contains_key(vhost) {
                        self.error(
                            &plugin.origin,
                            &format!("apply_to.virtual_hosts[{i}]"),
                            unknown("virtual host", vhost, vhost_names),
                        );
                    }
                }
                for (i, route) in apply_to.routes.iter().enumerate() {
                    if !route_names.0.contains_key(route) {
                        self.error(
                            &plugin.origin,
                            &format!("apply_to.routes[{i}]"),
                            unknown("route", route, route_names),
                        );
                    }
                }
            }
            for route in plugin.route_config.keys() {
                if !route_names.0.contains_key(route) {
                    self.error(
                        &plugin.origin,
                        &format!("route_config.{route}"),
                        unknown("route", route, route_names),
                    );
                }
            }
        }
    }

    fn server(&mut self, raw: &raw::Server, origin: &Origin) -> ServerSettings {
        let defaults = ServerSettings::default();
        let settings = ServerSettings {
            max_request_header_bytes: raw
                .max_request_header_bytes
                .unwrap_or(defaults.max_request_header_bytes),
            max_request_body_bytes: raw
                .max_request_body_bytes
                .unwrap_or(defaults.max_request_body_bytes),
            max_buffered_body_bytes: raw
                .max_buffered_body_bytes
                .unwrap_or(defaults.max_buffered_body_bytes),
            header_read_timeout: self.duration(
                origin,
                "header_read_timeout",
                raw.header_read_timeout.as_ref(),
                defaults.header_read_timeout,
            ),
            idle_timeout: self.duration(
                origin,
                "idle_timeout",
                raw.idle_timeout.as_ref(),
                defaults.idle_timeout,
            ),
            drain_timeout: self.duration(
                origin,
                "drain_timeout",
                raw.drain_timeout.as_ref(),
                defaults.drain_timeout,
            ),
            body_read_timeout: self.duration(
                origin,
                "body_read_timeout",
                raw.body_read_timeout.as_ref(),
                defaults.body_read_timeout,
            ),
            stream_idle_timeout: self.duration(
                origin,
                "stream_idle_timeout",
                raw.stream_idle_timeout.as_ref(),
                defaults.stream_idle_timeout,
            ),
            max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
            normalization: Normalization {
                normalize_path: raw
                    .normalize_path
                    .unwrap_or(defaults.normalization.normalize_path),
                merge_slashes: raw
                    .merge_slashes
                    .unwrap_or(defaults.normalization.merge_slashes),
                escaped_slashes: raw
                    .path_with_escaped_slashes_action
                    .map_or(defaults.normalization.escaped_slashes, Into::into),
                strip_trailing_host_dot: raw
                    .strip_trailing_host_dot
                    .unwrap_or(defaults.normalization.strip_trailing_host_dot),
            },
            access_log: self.access_log(raw.access_log.as_ref(), origin),
            plugin_limits: self.plugin_limits(raw.plugin_limits.as_ref(), origin),
            node: std::sync::Arc::new(self.node(raw.node.as_ref(), origin)),
            tracing: raw
                .tracing
                .as_ref()
                .and_then(|tracing| self.tracing(tracing, origin)),
        };
        if settings.max_request_header_bytes < 1024 {
            self.error(origin, "max_request_header_bytes", "must be at least 1024");
        }
        if settings.max_connections == 0 {
            self.error(origin, "max_connections", "must be at least 1");
        }
        if settings.max_buffered_body_bytes == 0 {
            // Zero would refuse every body a plugin pauses on, the common buffering case.
            self.error(origin, "max_buffered_body_bytes", "must be at least 1");
        }
        for (field, value) in [
            ("body_read_timeout", settings.body_read_timeout),
            ("stream_idle_timeout", settings.stream_idle_timeout),
        ] {
            if value.is_zero() {
                self.error(origin, field, "must be more than 0s");
            }
        }
        settings
    }

    fn access_log(&mut self, raw: Option<&raw::AccessLog>, origin: &Origin) -> AccessLogSettings {
        let Some(raw) = raw else {
            return AccessLogSettings::default();
        };
        for (i, name) in raw.redact_headers.iter().enumerate() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(
                    origin,
                    &format!("access_log.redact_headers[{i}]"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
        let lower = |names: &[String]| names.iter().map(|n| n.to_ascii_lowercase()).collect();
        AccessLogSettings {
            redact_query_params: lower(&raw.redact_query_params),
            redact_headers: lower(&raw.redact_headers),
        }
    }

    fn tracing(&mut self, raw: &raw::Tracing, origin: &Origin) -> Option<TracingSettings> {
        let sample_percent = raw
            .sample_percent
            .unwrap_or(TracingSettings::DEFAULT_SAMPLE_PERCENT);
        if !(0.0..=100.0).contains(&sample_percent) {
            self.error(
                origin,
                "tracing.sample_percent",
                "must be between 0 and 100",
            );
        }
        let service_name = raw
            .service_name
            .clone()
            .unwrap_or_else(|| TracingSettings::DEFAULT_SERVICE_NAME.to_string());
        if service_name.is_empty() {
            self.error(origin, "tracing.service_name", "must not be empty");
        }
        let Some(endpoint) = &raw.otlp_endpoint else {
            self.error(
                origin,
                "tracing.otlp_endpoint",
                "is required (http://host:port/v1/traces)",
            );
            return None;
        };
        let Some((collector_host, collector_port, collector_path)) = otlp_endpoint(endpoint) else {
            self.error(
                origin,
                "tracing.otlp_endpoint",
                format!("{endpoint:?} is not an http://host:port/path URL"),
            );
            return None;
        };
        Some(TracingSettings {
            otlp_endpoint: endpoint.clone(),
            collector_host,
            collector_port,
            collector_path,
            sample_percent,
            service_name,
        })
    }

    fn node(&mut self, raw: Option<&raw::Node>, origin: &Origin) -> NodeSettings {
        let defaults = NodeSettings::default();
        let Some(raw) = raw else {
            return defaults;
        };
        for (field, value) in [("node.id", &raw.id), ("node.cluster", &raw.cluster)] {
            if value.as_deref() == Some("") {
                self.error(origin, field, "must not be empty");
            }
        }
        let metadata = match &raw.metadata {
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(serde_json::Value::Object(map)) => map.clone(),
            Some(_) => {
                self.error(
                    origin,
                    "node.metadata",
                    "must be an object (a map of keys to JSON values)",
                );
                serde_json::Map::new()
            }
        };
        let locality = raw
            .locality
            .as_ref()
            .map_or_else(Locality::default, |l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            });
        NodeSettings {
            id: raw.id.clone().unwrap_or(defaults.id),
            cluster: raw.cluster.clone().unwrap_or(defaults.cluster),
            metadata,
            locality,
        }
    }

    fn plugin_limits(&mut self, raw: Option<&raw::PluginLimits>, origin: &Origin) -> PluginLimits {
        let defaults = PluginLimits::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let limits = PluginLimits {
            shared_data_bytes: raw.shared_data_bytes.unwrap_or(defaults.shared_data_bytes),
            shared_data_keys: raw.shared_data_keys.unwrap_or(defaults.shared_data_keys),
            shared_queue_length: raw
                .shared_queue_length
                .unwrap_or(defaults.shared_queue_length),
            metrics: raw.metrics.unwrap_or(defaults.metrics),
            callout_response_bytes: raw
                .callout_response_bytes
                .unwrap_or(defaults.callout_response_bytes),
        };
        for (field, value) in [
            ("shared_data_bytes", limits.shared_data_bytes),
            ("shared_data_keys", limits.shared_data_keys as u64),
            ("shared_queue_length", limits.shared_queue_length as u64),
            ("metrics", limits.metrics as u64),
            ("callout_response_bytes", limits.callout_response_bytes),
        ] {
            if value == 0 {
                self.error(
                    origin,
                    &format!("plugin_limits.{field}"),
                    "must be at least 1",
                );
            }
        }
        limits
    }

    fn listener(&mut self, raw: &raw::Listener, origin: Origin) -> Listener {
        let address = raw.address.parse().unwrap_or_else(|_| {
            self.error(
                &origin,
                "address",
                format!(
                    "invalid address {:?}; expected ip:port, e.g. 0.0.0.0:8080",
                    raw.address
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let tls = match (raw.protocol, &raw.tls) {
            (raw::Protocol::Https, Some(tls)) => Some(self.listener_tls(tls, origin.child("tls"))),
            (raw::Protocol::Https, None) => {
                self.error(
                    &origin,
                    "tls",
                    "protocol https needs a `tls` section with certificates",
                );
                None
            }
            (raw::Protocol::Http, Some(_)) => {
                self.error(&origin, "tls", "a `tls` section needs `protocol: https`");
                None
            }
            (raw::Protocol::Http, None) => None,
        };
        Listener {
            name: raw.name.clone(),
            address,
            tls,
            origin,
        }
    }

    fn listener_tls(&mut self, raw: &raw::ListenerTls, origin: Origin) -> ListenerTls {
        if raw.certificates.is_empty() {
            self.error(
                &origin,
                "certificates",
                "at least one certificate is needed",
            );
        }
        let certificates = raw
            .certificates
            .iter()
            .enumerate()
            .map(|(i, cert)| {
                let cert_origin = origin.child(&format!("certificates[{i}]"));
                CertificateFiles {
                    cert: self.existing_file(&cert_origin, "cert", &cert.cert),
                    key: self.existing_file(&cert_origin, "key", &cert.key),
                    server_names: cert
                        .server_names
                        .iter()
                        .map(|name| name.to_ascii_lowercase())
                        .collect(),
                    origin: cert_origin,
                }
            })
            .collect();
        let min_version = match raw.min_version.as_deref() {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(other) => {
                self.error(
                    &origin,
                    "min_version",
                    format!("unsupported TLS version {other:?}; use \"1.2\" or \"1.3\""),
                );
                TlsVersion::Tls12
            }
        };
        let alpn = raw
            .alpn
            .clone()
            .unwrap_or_else(|| vec!["h2".into(), "http/1.1".into()]);
        for (i, protocol) in alpn.iter().enumerate() {
            if protocol != "h2" && protocol != "http/1.1" {
                self.error(
                    &origin,
                    &format!("alpn[{i}]"),
                    format!("unsupported protocol {protocol:?}; use \"h2\" or \"http/1.1\""),
                );
            }
        }
        let client_auth = raw.client_auth.as_ref().map(|auth| ClientAuth {
            ca: self.existing_file(&origin, "client_auth.ca", &auth.ca),
            required: auth.required,
        });
        ListenerTls {
            certificates,
            min_version,
            alpn,
            client_auth,
            origin,
        }
    }

    fn cluster(&mut self, raw: &raw::Cluster, origin: Origin) -> Cluster {
        if raw.endpoints.is_empty() {
            self.error(
                &origin,
                "endpoints",
                "a cluster needs at least one endpoint",
            );
        }
        let endpoints = raw
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, endpoint)| match split_host_port(&endpoint.address) {
                Some((host, port)) => Some(Endpoint {
                    address: endpoint.address.clone(),
                    host,
                    port,
                    labels: endpoint.labels.clone(),
                }),
                None => {
                    self.error(
                        &origin,
                        &format!("endpoints[{i}].address"),
                        format!("invalid address {:?}; expected host:port, e.g. 127.0.0.1:9001 or api.internal:80", endpoint.address),
                    );
                    None
                }
            })
            .collect();
        let health = raw.health.as_ref();
        let health = HealthSettings {
            consecutive_failures: health.and_then(|h| h.consecutive_failures).unwrap_or(5),
            ejection_time: self.duration(
                &origin,
                "health.ejection_time",
                health.and_then(|h| h.ejection_time.as_ref()),
                Duration::from_secs(30),
            ),
            max_ejection_percent: health.and_then(|h| h.max_ejection_percent).unwrap_or(50),
            panic_threshold: health.and_then(|h| h.panic_threshold).unwrap_or(50),
            eject_on: health.and_then(|h| h.eject_on).unwrap_or_default().into(),
            active: health
                .and_then(|h| h.active.as_ref())
                .map(|active| self.active_health(active, &origin)),
        };
        if health.panic_threshold > 100 {
            self.error(
                &origin,
                "health.panic_threshold",
                "must be between 0 and 100",
            );
        }
        if health.max_ejection_percent > 100 {
            self.error(
                &origin,
                "health.max_ejection_percent",
                "must be between 0 and 100",
            );
        }
        if health.consecutive_failures == 0 {
            self.error(&origin, "health.consecutive_failures", "must be at least 1");
        }
        let hash_on = match &raw.hash_on {
            Some(_) if raw.load_balancing != raw::LoadBalancing::RingHash => {
                self.error(
                    &origin,
                    "hash_on",
                    "only `load_balancing: ring_hash` hashes requests",
                );
                HashOn::default()
            }
            Some(raw::HashOn::Header { header: name }) => {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.error(
                        &origin,
                        "hash_on.header",
                        format!("invalid header name {name:?}"),
                    );
                }
                HashOn::Header(name.to_ascii_lowercase())
            }
            Some(raw::HashOn::Cookie { cookie: name }) => {
                if name.is_empty() || name.contains([';', '=', ' ']) {
                    self.error(
                        &origin,
                        "hash_on.cookie",
                        format!("invalid cookie name {name:?}"),
                    );
                }
                HashOn::Cookie(name.clone())
            }
            Some(raw::HashOn::Keyword(raw::HashOnKeyword::ClientIp)) | None => HashOn::ClientIp,
        };
        let limits = raw.limits.as_ref();
        let limits = ClusterLimits {
            max_requests: limits.and_then(|l| l.max_requests).unwrap_or(1024),
            max_idle_per_endpoint: limits.and_then(|l| l.max_idle_per_endpoint).unwrap_or(64),
            idle_timeout: self.duration(
                &origin,
                "limits.idle_timeout",
                limits.and_then(|l| l.idle_timeout.as_ref()),
                Duration::from_secs(90),
            ),
        };
        if limits.max_requests == 0 {
            self.error(&origin, "limits.max_requests", "must be at least 1");
        }
        let tls = raw.tls.as_ref().map(|tls| self.upstream_tls(tls, &origin));
        Cluster {
            name: raw.name.clone(),
            endpoints,
            load_balancing: raw.load_balancing.into(),
            hash_on,
            connect_timeout: self.duration(
                &origin,
                "connect_timeout",
                raw.connect_timeout.as_ref(),
                Duration::from_secs(5),
            ),
            http2: raw.http2,
            tls,
            health,
            limits,
            origin,
        }
    }

    /// `health.active`. Envoy requires every field but the path's; the defaults here check
    /// every 10 s with a 1 s timeout and need 2 successes or 3 failures to change state.
    fn active_health(&mut self, raw: &raw::ActiveHealth, origin: &Origin) -> ActiveHealthSettings {
        if !raw.path.starts_with('/') || raw.path.parse::<http::uri::PathAndQuery>().is_err() {
            self.error(
                origin,
                "health.active.path",
                format!(
                    "invalid path {:?}; expected an absolute path such as /healthz",
                    raw.path
                ),
            );
        }
        let mut field_duration = |field: &str, text: Option<&String>, default: Duration| {
            let value = self.duration(origin, &format!("health.active.{field}"), text, default);
            if value.is_zero() {
                self.error(
                    origin,
                    &format!("health.active.{field}"),
                    "must be more than 0",
                );
            }
            value
        };
        let interval = field_duration("interval", raw.interval.as_ref(), Duration::from_secs(10));
        let timeout = field_duration("timeout", raw.timeout.as_ref(), Duration::from_secs(1));
        let mut threshold = |field: &str, value: Option<u32>, default: u32| {
            let value = value.unwrap_or(default);
            if value == 0 {
                self.error(
                    origin,
                    &format!("health.active.{field}"),
                    "must be at least 1",
                );
            }
            value
        };
        ActiveHealthSettings {
            path: raw.path.clone(),
            interval,
            timeout,
            healthy_threshold: threshold("healthy_threshold", raw.healthy_threshold, 2),
            unhealthy_threshold: threshold("unhealthy_threshold", raw.unhealthy_threshold, 3),
        }
    }

    /// `rewrite.regex`: Envoy's `regex_rewrite`, whose substitution names groups `\1`.
    fn regex_rewrite(&mut self, raw: &raw::RegexRewrite, origin: &Origin) -> Option<RegexRewrite> {
        let pattern = match Regex::new(&raw.pattern) {
            Ok(pattern) => pattern,
            Err(error) => {
                self.error(
                    origin,
                    "rewrite.regex.pattern",
                    format!("invalid regex: {error}"),
                );
                return None;
            }
        };
        let replacement = substitution_to_replacement(&raw.substitution);
        if let Some(group) =
            substitution_groups(&raw.substitution).find(|group| *group >= pattern.captures_len())
        {
            self.error(
                origin,
                "rewrite.regex.substitution",
                format!("\\{group} names a group the pattern does not have"),
            );
        }
        Some(RegexRewrite {
            pattern,
            substitution: raw.substitution.clone(),
            replacement,
        })
    }

    fn upstream_tls(&mut self, raw: &raw::UpstreamTls, origin: &Origin) -> UpstreamTls {
        let client_certificate = match (&raw.cert, &raw.key) {
            (Some(cert), Some(key)) => Some(ClientCertificate {
                cert: self.existing_file(origin, "tls.cert", cert),
                key: self.existing_file(origin, "tls.key", key),
            }),
            (Some(_), None) => {
                self.error(origin, "tls.key", "missing: tls.cert needs its private key");
                None
            }
            (None, Some(_)) => {
                self.error(origin, "tls.cert", "missing: tls.key needs its certificate");
                None
            }
            (None, None) => None,
        };
        for (i, name) in raw.subject_alt_names.iter().enumerate() {
            if name.trim().is_empty() || name.contains(char::is_whitespace) {
                self.error(
                    origin,
                    &format!("tls.subject_alt_names[{i}]"),
                    format!("invalid name {name:?}; expected a DNS name or a URI such as spiffe://cluster.local/ns/NAMESPACE/sa/ACCOUNT"),
                );
            }
        }
        UpstreamTls {
            ca: raw
                .ca
                .as_ref()
                .map(|ca| self.existing_file(origin, "tls.ca", ca)),
            server_name: raw.server_name.clone(),
            client_certificate,
            subject_alt_names: raw
                .subject_alt_names
                .iter()
                .map(|name| SubjectAltName::parse(name))
                .collect(),
        }
    }

    fn virtual_host(&mut self, raw: &raw::VirtualHost, origin: &Origin) -> VirtualHost {
        if raw.domains.is_empty() {
            self.error(
                origin,
                "domains",
                "at least one domain is needed (use \"*\" for any host)",
            );
        }
        for (i, domain) in raw.domains.iter().enumerate() {
            let stars = domain.matches('*').count();
            let valid = domain == "*"
                || stars == 0
                || (stars == 1
                    && (domain.starts_with("*.")
                        || domain.ends_with(".*")
                        || domain.starts_with('*')
                        || domain.ends_with('*')));
            if !valid || domain.is_empty() {
                self.error(origin, &format!("domains[{i}]"), format!("invalid domain {domain:?}; use an exact name, \"*.suffix\", \"prefix.*\" or \"*\""));
            }
        }
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| self.route(route, origin.child(&format!("routes[{i}]"))))
            .collect();
        VirtualHost {
            name: raw.name.clone(),
            domains: raw
                .domains
                .iter()
                .map(|domain| domain.to_ascii_lowercase())
                .collect(),
            listeners: raw.listeners.clone(),
            routes,
        }
    }

    fn route(&mut self, raw: &raw::Route, origin: Origin) -> Route {
        let matcher = self.route_match(&raw.matcher, &origin.child("match"));
        let actions = [
            raw.forward.is_some(),
            raw.redirect.is_some(),
            raw.direct_response.is_some(),
        ];
        let action = match (&raw.forward, &raw.redirect, &raw.direct_response) {
            _ if actions.iter().filter(|set| **set).count() != 1 => {
                self.error(
                    &origin,
                    "",
                    "a route needs exactly one of `forward`, `redirect`, `direct_response`",
                );
                Action::DirectResponse(DirectResponse {
                    status: StatusCode::NOT_FOUND,
                    body: bytes::Bytes::new(),
                    headers: Vec::new(),
                })
            }
            (Some(forward), _, _) => {
                Action::Forward(self.forward(forward, &origin.child("forward"), &matcher))
            }
            (_, Some(redirect), _) => {
                Action::Redirect(self.redirect(redirect, &origin.child("redirect")))
            }
            (_, _, Some(direct)) => Action::DirectResponse(
                self.direct_response(direct, &origin.child("direct_response")),
            ),
            _ => unreachable!("exactly one action is set"),
        };
        let fault = raw
            .fault
            .as_ref()
            .map(|fault| self.fault(fault, &origin.child("fault")));
        Route {
            name: raw.name.clone(),
            matcher,
            action,
            fault,
        }
    }

    fn route_match(&mut self, raw: &raw::RouteMatch, origin: &Origin) -> RouteMatch {
        let path = match &raw.path {
            None => PathMatch::Any,
            Some(path) => match (&path.prefix, &path.exact, &path.regex) {
                (Some(prefix), None, None) => {
                    if !prefix.starts_with('/') {
                        self.error(origin, "path.prefix", "must start with /");
                    }
                    PathMatch::Prefix(prefix.clone())
                }
                (None, Some(exact), None) => PathMatch::Exact(exact.clone()),
                (None, None, Some(regex)) => match anchored_regex(regex) {
                    Ok(regex) => PathMatch::Regex(regex),
                    Err(error) => {
                        self.error(origin, "path.regex", format!("invalid regex: {error}"));
                        PathMatch::Any
                    }
                },
                _ => {
                    self.error(
                        origin,
                        "path",
                        "set exactly one of `prefix`, `exact`, `regex`",
                    );
                    PathMatch::Any
                }
            },
        };
        let methods = raw
            .methods
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, method)| {
                match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => {
                        self.error(
                            origin,
                            &format!("methods[{i}]"),
                            format!("invalid method {method:?}"),
                        );
                        None
                    }
                }
            })
            .collect();
        let headers = self.value_matches(&raw.headers, origin, "headers", true);
        let query = self.value_matches(&raw.query, origin, "query", false);
        RouteMatch {
            path,
            methods,
            headers,
            query,
        }
    }

    fn value_matches(
        &mut self,
        raw: &[raw::ValueMatch],
        origin: &Origin,
        field: &str,
        is_header: bool,
    ) -> Vec<ValueMatch> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, matcher)| {
                let field = format!("{field}[{i}]");
                if is_header && HeaderName::from_bytes(matcher.name.as_bytes()).is_err() {
                    self.error(
                        origin,
                        &format!("{field}.name"),
                        format!("invalid header name {:?}", matcher.name),
                    );
                    return None;
                }
                let rule = match (&matcher.exact, &matcher.regex, matcher.present) {
                    (Some(exact), None, None) => ValueRule::Exact(exact.clone()),
                    (None, Some(regex), None) => match anchored_regex(regex) {
                        Ok(regex) => ValueRule::Regex(regex),
                        Err(error) => {
                            self.error(
                                origin,
                                &format!("{field}.regex"),
                                format!("invalid regex: {error}"),
                            );
                            return None;
                        }
                    },
                    (None, None, Some(present)) => ValueRule::Present(present),
                    _ => {
                        self.error(
                            origin,
                            &field,
                            "set exactly one of `exact`, `regex`, `present`",
                        );
                        return None;
                    }
                };
                let name = if is_header {
                    matcher.name.to_ascii_lowercase()
                } else {
                    matcher.name.clone()
                };
                Some(ValueMatch { name, rule })
            })
            .collect()
    }

    fn forward(&mut self, raw: &raw::Forward, origin: &Origin, matcher: &RouteMatch) -> Forward {
        let targets = match (&raw.cluster, &raw.split) {
            (Some(cluster), None) => vec![WeightedTarget {
                cluster: cluster.clone(),
                subset: BTreeMap::new(),
                weight: 1,
            }],
            (None, Some(split)) => {
                if split.is_empty() {
                    self.error(origin, "split", "a split needs at least one target");
                }
                if split.iter().map(|t| t.weight as u64).sum::<u64>() == 0 {
                    self.error(origin, "split", "the weights add up to 0");
                }
                split
                    .iter()
                    .map(|target| WeightedTarget {
                        cluster: target.cluster.clone(),
                        subset: target.subset.clone(),
                        weight: target.weight,
                    })
                    .collect()
            }
            _ => {
                self.error(origin, "", "set exactly one of `cluster` or `split`");
                Vec::new()
            }
        };
        let rewrite_prefix = raw
            .rewrite
            .as_ref()
            .and_then(|rewrite| rewrite.prefix.clone());
        let rewrite_regex = raw
            .rewrite
            .as_ref()
            .and_then(|rewrite| rewrite.regex.as_ref())
            .and_then(|regex| self.regex_rewrite(regex, origin));
        if rewrite_prefix.is_some() && raw.rewrite.as_ref().is_some_and(|r| r.regex.is_some()) {
            self.error(
                origin,
                "rewrite.regex",
                "set either `rewrite.prefix` or `rewrite.regex`, not both",
            );
        }
        if rewrite_prefix.is_some() && !matches!(matcher.path, PathMatch::Prefix(_)) {
            self.error(
                origin,
                "rewrite.prefix",
                "a prefix rewrite needs a `match.path.prefix`",
            );
        }
        let retries = raw
            .retries
            .as_ref()
            .map(|retries| self.retries(retries, &origin.child("retries")));
        let mirror = raw.mirror.as_ref().map(|mirror| {
            let percent = mirror.percent.unwrap_or(100.0);
            if !(0.0..=100.0).contains(&percent) {
                self.error(origin, "mirror.percent", "must be between 0 and 100");
            }
            Mirror {
                cluster: mirror.cluster.clone(),
                percent,
            }
        });
        Forward {
            targets,
            is_split: raw.split.is_some(),
            rewrite_prefix,
            matched_prefix: match &matcher.path {
                PathMatch::Prefix(prefix) => Some(prefix.clone()),
                _ => None,
            },
            rewrite_regex,
            rewrite_host: raw
                .rewrite
                .as_ref()
                .and_then(|rewrite| rewrite.host.clone()),
            timeout: self.duration(
                origin,
                "timeout",
                raw.timeout.as_ref(),
                Duration::from_secs(15),
            ),
            retries,
            mirror,
        }
    }

    fn retries(&mut self, raw: &raw::Retries, origin: &Origin) -> RetryPolicy {
        let mut conditions = RetryConditions {
            status_codes: raw.status_codes.clone(),
            ..RetryConditions::default()
        };
        let on = if raw.on.is_empty() && raw.status_codes.is_empty() {
            vec!["5xx".to_string()]
        } else {
            raw.on.clone()
        };
        for (i, condition) in on.iter().enumerate() {
            match condition.as_str() {
                "5xx" => conditions.any_5xx = true,
                "gateway-error" => conditions.gateway_error = true,
                "connect-failure" => conditions.connect_failure = true,
                "reset" => conditions.reset = true,
                "retriable-4xx" => conditions.retriable_4xx = true,
                other => self.error(
                    origin,
                    &format!("on[{i}]"),
                    format!("unknown retry condition {other:?}; use 5xx, gateway-error, connect-failure, reset or retriable-4xx"),
                ),
            }
        }
        RetryPolicy {
            attempts: raw.attempts,
            per_try_timeout: raw.per_try_timeout.as_ref().map(|text| {
                self.duration(
                    origin,
                    "per_try_timeout",
                    Some(text),
                    Duration::from_secs(15),
                )
            }),
            conditions,
            non_idempotent: raw.non_idempotent,
        }
    }

    fn redirect(&mut self, raw: &raw::Redirect, origin: &Origin) -> Redirect {
        let code = raw.code.unwrap_or(301);
        if ![301, 302, 303, 307, 308].contains(&code) {
            self.error(
                origin,
                "code",
                format!("{code} is not a redirect code; use 301, 302, 303, 307 or 308"),
            );
        }
        if raw.path.is_some() && raw.prefix.is_some() {
            self.error(origin, "", "set at most one of `path` and `prefix`");
        }
        if let Some(scheme) = &raw.scheme {
            if scheme != "http" && scheme != "https" {
                self.error(
                    origin,
                    "scheme",
                    format!("unsupported scheme {scheme:?}; use http or https"),
                );
            }
        }
        Redirect {
            scheme: raw.scheme.clone(),
            host: raw.host.clone(),
            port: raw.port,
            path: raw.path.clone(),
            prefix: raw.prefix.clone(),
            code: StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
            strip_query: raw.strip_query,
        }
    }

    fn direct_response(&mut self, raw: &raw::DirectResponse, origin: &Origin) -> DirectResponse {
        let status = self.status(origin, "status", raw.status);
        let headers = raw
            .headers
            .iter()
            .filter_map(|(name, value)| {
                match (
                    HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    (Ok(name), Ok(value)) => Some((name, value)),
                    _ => {
                        self.error(
                            origin,
                            &format!("headers.{name}"),
                            "invalid header name or value",
                        );
                        None
                    }
                }
            })
            .collect();
        DirectResponse {
            status,
            body: bytes::Bytes::from(raw.body.clone()),
            headers,
        }
    }

    fn status(&mut self, origin: &Origin, field: &str, code: u16) -> StatusCode {
        match StatusCode::from_u16(code) {
            Ok(status) if code >= 200 => status,
            _ => {
                self.error(origin, field, format!("invalid status {code}; use 200-599"));
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn fault(&mut self, raw: &raw::Fault, origin: &Origin) -> Fault {
        let delay = raw.delay.as_ref().map(|delay| {
            self.percent(origin, "delay.percent", delay.percent);
            (
                delay.percent,
                self.duration(origin, "delay.fixed", Some(&delay.fixed), Duration::ZERO),
            )
        });
        let abort = raw.abort.as_ref().map(|abort| {
            self.percent(origin, "abort.percent", abort.percent);
            (
                abort.percent,
                self.status(origin, "abort.status", abort.status),
            )
        });
        Fault { delay, abort }
    }

    fn percent(&mut self, origin: &Origin, field: &str, percent: f64) {
        if !(0.0..=100.0).contains(&percent) {
            self.error(
                origin,
                field,
                format!("{percent} is not a percentage between 0 and 100"),
            );
        }
    }

    fn plugin(&mut self, raw: &raw::Plugin, origin: Origin) -> Plugin {
        if raw.module.is_empty() {
            self.error(
                &origin,
                "module",
                "a module file name is needed, e.g. key-auth.wasm",
            );
        }
        if !(raw.module.ends_with(".wasm") || raw.module.ends_with(".wat")) {
            self.error(
                &origin,
                "module",
                format!("{:?} is not a .wasm (or .wat) file", raw.module),
            );
        }
        if raw.singleton {
            // A singleton serves the gateway, not requests: nothing routes to it.
            if raw.apply_to.is_some() {
                self.error(
                    &origin,
                    "apply_to",
                    "a singleton plugin runs for the whole gateway and applies to no route",
                );
            }
            if !raw.route_config.is_empty() {
                self.error(
                    &origin,
                    "route_config",
                    "a singleton plugin runs for the whole gateway and applies to no route",
                );
            }
        }
        if let Some(limit) = raw.memory_limit {
            if limit < 1024 * 1024 {
                self.error(
                    &origin,
                    "memory_limit",
                    "must be at least 1048576 bytes (1 MiB)",
                );
            }
        }
        Plugin {
            name: raw.name.clone(),
            module: PathBuf::from(&raw.module),
            config: raw.config.clone(),
            vm_config: raw.vm_config.clone(),
            env: raw.env.clone(),
            failure_policy: raw.failure_policy.into(),
            priority: raw.priority,
            apply_to: raw.apply_to.as_ref().map(|apply_to| ApplyTo {
                virtual_hosts: apply_to.virtual_hosts.clone(),
                routes: apply_to.routes.clone(),
            }),
            route_config: raw.route_config.clone(),
            callback_timeout: self.duration(
                &origin,
                "callback_timeout",
                raw.callback_timeout.as_ref(),
                Duration::from_millis(50),
            ),
            memory_limit: raw.memory_limit.unwrap_or(64 * 1024 * 1024),
            vm_id: raw.vm_id.clone(),
            max_traps_per_minute: raw.max_traps_per_minute.unwrap_or(10),
            circuit_open_time: self.duration(
                &origin,
                "circuit_open_time",
                raw.circuit_open_time.as_ref(),
                Duration::from_secs(30),
            ),
            singleton: raw.singleton,
            origin,
        }
    }
}
// The model's own enums, from the values as written.

impl From<raw::EscapedSlashesAction> for EscapedSlashesAction {
    fn from(written: raw::EscapedSlashesAction) -> Self {
        match written {
            raw::EscapedSlashesAction::Reject => Self::Reject,
            raw::EscapedSlashesAction::Keep => Self::Keep,
            raw::EscapedSlashesAction::Unescape => Self::Unescape,
        }
    }
}

impl From<raw::LoadBalancing> for LoadBalancing {
    fn from(written: raw::LoadBalancing) -> Self {
        match written {
            raw::LoadBalancing::RoundRobin => Self::RoundRobin,
            raw::LoadBalancing::LeastRequest => Self::LeastRequest,
            raw::LoadBalancing::RingHash => Self::RingHash,
        }
    }
}

impl From<raw::EjectOn> for EjectOn {
    fn from(written: raw::EjectOn) -> Self {
        match written {
            raw::EjectOn::GatewayErrors => Self::GatewayErrors,
            raw::EjectOn::Any5xx => Self::Any5xx,
        }
    }
}

impl From<raw::FailurePolicy> for FailurePolicy {
    fn from(written: raw::FailurePolicy) -> Self {
        match written {
            raw::FailurePolicy::FailClosed => Self::FailClosed,
            raw::FailurePolicy::FailOpen => Self::FailOpen,
            raw::FailurePolicy::Reload => Self::Reload,
        }
    }
}

/// Route regexes match the whole value, as Envoy's `safe_regex` does.
fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// The group numbers a `rewrite.regex.substitution` refers to (`\N`).
fn substitution_groups(substitution: &str) -> impl Iterator<Item = usize> + '_ {
    let mut chars = substitution.chars().peekable();
    std::iter::from_fn(move || {
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(digit @ '0'..='9') => return Some(digit as usize - '0' as usize),
                    _ => continue,
                }
            }
        }
        None
    })
}

/// Turns an Envoy-style substitution (`\1` a group, `\\` a backslash) into the `regex`
/// crate's replacement syntax (`${1}`, `$$` a dollar sign).
fn substitution_to_replacement(substitution: &str) -> String {
    let mut replacement = String::with_capacity(substitution.len() + 8);
    let mut chars = substitution.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => replacement.push_str("$$"),
            '\\' => match chars.next() {
                Some(digit @ '0'..='9') => {
                    replacement.push_str("${");
                    replacement.push(digit);
                    replacement.push('}');
                }
                Some('$') => replacement.push_str("$$"),
                Some(other) => replacement.push(other),
                None => replacement.push('\\'),
            },
            other => replacement.push(other),
        }
    }
    replacement
}

/// Splits `host:port` (IPv6 as `[::1]:80`).
fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

/// The collector's host, port and path from an `http://host:port/path` URL: plain HTTP
/// only (the exporter carries no TLS stack) and an explicit port, as an Envoy cluster needs.
fn otlp_endpoint(endpoint: &str) -> Option<(String, u16, String)> {
    let uri: http::Uri = endpoint.parse().ok()?;
    if uri.scheme_str() != Some("http") || uri.query().is_some() {
        return None;
    }
    let (host, port) = split_host_port(uri.authority()?.as_str())?;
    let path = uri.path();
    if path.is_empty() || path == "/" {
        return None;
    }
    Some((host, port, path.to_string()))
}

fn unknown(kind: &str, name: &str, known: &Names) -> String {
    let mut names: Vec<&String> = known.0.keys().collect();
    names.sort();
    format!("unknown {kind} {name:?}; defined: {names:?}")
}

fn unknown_cluster(name: &str, clusters: &HashMap<&str, &Cluster>) -> String {
    let mut names: Vec<&&str> = clusters.keys().collect();
    names.sort();
    format!("unknown cluster {name:?}; defined clusters: {names:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let files = files
            .iter()
            .map(|(name, text)| SourceFile {
                name: name.to_string(),
                document: serde_norway::from_str(text).unwrap(),
            })
            .collect();
        validate(Path::new("/policies"), files)
    }

    const LISTENER: &str = "listeners:\n  - { name: web, address: 127.0.0.1:8080 }\n";

    fn cluster_file(fields: &str) -> String {
        format!("{LISTENER}clusters:\n  - name: app\n    endpoints: [{{ address: 127.0.0.1:9001 }}]\n{fields}")
    }

    #[test]
    fn active_health_defaults_and_errors() {
        let config = load(&[(
            "a.yaml",
            &cluster_file("    health: { active: { path: /healthz } }\n"),
        )])
        .unwrap();
        let active = config.clusters[0].health.active.clone().unwrap();
        assert_eq!(
            active,
            ActiveHealthSettings {
                path: "/healthz".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
            }
        );
        assert_eq!(
            config.effective["clusters"][0]["health"]["active"]["interval"],
            "10s"
        );
        let errors = load(&[(
            "a.yaml",
            &cluster_file(
                "    health: { active: { path: healthz, interval: 0s, timeout: soon, healthy_threshold: 0 } }\n",
            ),
        )])
        .unwrap_err()
        .to_string();
        for field in ["path", "interval", "timeout", "healthy_threshold"] {
            assert!(
                errors.contains(&format!("health.active.{field}")),
                "{field}: {errors}"
            );
        }
    }

    #[test]
    fn hash_on_needs_ring_hash_and_a_valid_name() {
        let config = load(&[(
            "a.yaml",
            &cluster_file("    load_balancing: ring_hash\n    hash_on: { header: X-User }\n"),
        )])
        .unwrap();
        assert_eq!(config.clusters[0].hash_on, HashOn::Header("x-user".into()));
        let config = load(&[("a.yaml", &cluster_file("    load_balancing: ring_hash\n"))]).unwrap();
        assert_eq!(config.clusters[0].hash_on, HashOn::ClientIp);
        for (fields, error) in [
            (
                "    hash_on: client_ip\n",
                "clusters[0].hash_on: only `load_balancing: ring_hash`",
            ),
            (
                "    load_balancing: ring_hash\n    hash_on: { cookie: 'a;b' }\n",
                "hash_on.cookie: invalid cookie name",
            ),
            (
                "    load_balancing: ring_hash\n    hash_on: { header: 'x y' }\n",
                "hash_on.header: invalid header name",
            ),
        ] {
            let errors = load(&[("a.yaml", &cluster_file(fields))])
                .unwrap_err()
                .to_string();
            assert!(errors.contains(error), "{fields}: {errors}");
        }
    }

    #[test]
    fn substitutions_turn_groups_into_the_regex_crate_syntax() {
        assert_eq!(
            substitution_to_replacement(r"\2/instance/\1"),
            "${2}/instance/${1}"
        );
        assert_eq!(substitution_to_replacement(r"\0-\\-$1"), "${0}-\\-$$1");
        assert_eq!(substitution_to_replacement(r"/plain\"), "/plain\\");
        assert_eq!(
            substitution_groups(r"\2/x/\1\\3").collect::<Vec<_>>(),
            [2, 1]
        );
    }

    #[test]
    fn a_minimal_folder_is_valid() {
        let config = load(&[(
            "a.yaml",
            &format!(
                "{LISTENER}clusters:\n  - name: app\n    endpoints: [{{ address: 127.0.0.1:9001 }}]\n\
                 virtual_hosts:\n  - name: all\n    domains: ['*']\n    routes:\n      - name: r\n        forward: {{ cluster: app }}\n"
            ),
        )])
        .unwrap();
        assert_eq!(config.clusters[0].endpoints[0].port, 9001);
        let Action::Forward(forward) = &config.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        assert_eq!(forward.timeout, Duration::from_secs(15));
    }

    #[test]
    fn server_tracing_defaults_and_validation() {
        let config = load(&[("a.yaml", "server: {}\n"), ("l.yaml", LISTENER)]).unwrap();
        assert_eq!(config.server.tracing, None);
        let config = load(&[
            (
                "a.yaml",
                "server:\n  tracing:\n    otlp_endpoint: http://127.0.0.1:4318/v1/traces\n",
            ),
            ("l.yaml", LISTENER),
        ])
        .unwrap();
        let tracing = config.server.tracing.clone().unwrap();
        assert_eq!(tracing.sample_percent, 100.0);
        assert_eq!(tracing.service_name, "tollgate");
        assert_eq!(
            (tracing.collector_host.as_str(), tracing.collector_port),
            ("127.0.0.1", 4318)
        );
        assert_eq!(tracing.collector_path, "/v1/traces");
        assert_eq!(
            config.effective["server"]["tracing"]["sample_percent"],
            100.0
        );
        for (tracing, expected) in [
            (
                "{ sample_percent: 10 }",
                "server.tracing.otlp_endpoint: is required",
            ),
            (
                "{ otlp_endpoint: https://c:4318/v1/traces }",
                "server.tracing.otlp_endpoint: \"https://c:4318/v1/traces\" is not",
            ),
            (
                "{ otlp_endpoint: http://c/v1/traces }",
                "server.tracing.otlp_endpoint: \"http://c/v1/traces\" is not",
            ),
            (
                "{ otlp_endpoint: http://c:4318/v1/traces, sample_percent: 101 }",
                "server.tracing.sample_percent: must be between 0 and 100",
            ),
            (
                "{ otlp_endpoint: http://c:4318/v1/traces, service_name: \"\" }",
                "server.tracing.service_name: must not be empty",
            ),
        ] {
            let errors = load(&[
                ("a.yaml", &format!("server:\n  tracing: {tracing}\n")),
                ("l.yaml", LISTENER),
            ])
            .unwrap_err()
            .to_string();
            assert!(errors.contains(expected), "{errors}");
        }
    }

    #[test]
    fn server_node_defaults_and_validation() {
        let config = load(&[("a.yaml", "server: {}\n"), ("l.yaml", LISTENER)]).unwrap();
        assert_eq!(*config.server.node, NodeSettings::default());
        assert_eq!(config.server.node.id, "tollgate");
        let config = load(&[(
            "a.yaml",
            "server:\n  node:\n    id: edge-1\n    metadata: { LABELS: { app: edge } }\n    locality: { zone: z1 }\n",
        ), ("l.yaml", LISTENER)])
        .unwrap();
        assert_eq!(config.server.node.id, "edge-1");
        assert_eq!(config.server.node.cluster, "tollgate");
        assert_eq!(config.server.node.metadata["LABELS"]["app"], "edge");
        assert_eq!(config.server.node.locality.zone, "z1");
        assert_eq!(config.effective["server"]["node"]["id"], "edge-1");
        let errors = load(&[
            (
                "a.yaml",
                "server:\n  node:\n    id: \"\"\n    metadata: [1]\n",
            ),
            ("l.yaml", LISTENER),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains("server.node.id: must not be empty"),
            "{errors}"
        );
        assert!(
            errors.contains("server.node.metadata: must be an object"),
            "{errors}"
        );
    }

    #[test]
    fn max_buffered_body_bytes_defaults_to_10_mib_and_refuses_zero() {
        let config = load(&[("a.yaml", LISTENER)]).unwrap();
        assert_eq!(config.server.max_buffered_body_bytes, 10 * 1024 * 1024);
        assert_eq!(
            config.effective["server"]["max_buffered_body_bytes"],
            10 * 1024 * 1024
        );
        let errors = load(&[(
            "a.yaml",
            &format!("{LISTENER}server:\n  max_buffered_body_bytes: 0\n"),
        )])
        .unwrap_err();
        let text = errors.to_string();
        assert!(
            text.contains("max_buffered_body_bytes: must be at least 1"),
            "{text}"
        );
    }

    #[test]
    fn errors_name_file_and_path() {
        let errors = load(&[(
            "routes.yaml",
            &format!(
                "{LISTENER}virtual_hosts:\n  - name: all\n    domains: ['*']\n    routes:\n      - name: r\n        forward: {{ cluster: nope, timeout: 5 sec }}\n"
            ),
        )])
        .unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("routes.yaml: virtual_hosts[0].routes[0].forward.timeout: invalid duration \"5 sec\""), "{text}");
        assert!(
            text.contains(
                "routes.yaml: virtual_hosts[0].routes[0].forward.cluster: unknown cluster \"nope\""
            ),
            "{text}"
        );
    }

    #[test]
    fn duplicate_names_across_files_name_both() {
        let cluster = "clusters:\n  - name: app\n    endpoints: [{ address: 127.0.0.1:9001 }]\n";
        let errors = load(&[
            ("a.yaml", &format!("{LISTENER}{cluster}")),
            ("b.yaml", cluster),
        ])
        .unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("b.yaml: clusters[0].name: duplicate cluster name \"app\"; first defined at a.yaml: clusters[0]"), "{text}");
    }

    #[test]
    fn a_route_needs_exactly_one_action() {
        let errors = load(&[(
            "a.yaml",
            &format!("{LISTENER}virtual_hosts:\n  - name: all\n    domains: ['*']\n    routes:\n      - name: r\n"),
        )])
        .unwrap_err();
        assert!(errors
            .to_string()
            .contains("exactly one of `forward`, `redirect`, `direct_response`"));
    }

    #[test]
    fn subsets_must_select_an_endpoint() {
        let errors = load(&[(
            "a.yaml",
            &format!(
                "{LISTENER}clusters:\n  - name: app\n    endpoints: [{{ address: 127.0.0.1:9001, labels: {{ version: v1 }} }}]\n\
                 virtual_hosts:\n  - name: all\n    domains: ['*']\n    routes:\n      - name: r\n        forward:\n          split:\n            - {{ cluster: app, subset: {{ version: v3 }}, weight: 1 }}\n"
            ),
        )])
        .unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("forward.split[0].subset: no endpoint of cluster \"app\""),
            "{errors}"
        );
    }

    #[test]
    fn plugin_references_are_checked() {
        let errors = load(&[(
            "a.yaml",
            &format!("{LISTENER}plugins:\n  - name: p\n    module: p.wasm\n    apply_to: {{ routes: [missing] }}\n    failure_policy: fail_open\n"),
        )])
        .unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("plugins[0].apply_to.routes[0]: unknown route \"missing\""),
            "{errors}"
        );
    }

    #[test]
    fn effective_config_redacts_plugin_secrets() {
        let config = load(&[(
            "a.yaml",
            &format!("{LISTENER}plugins:\n  - name: p\n    module: p.wasm\n    config: {{ secret: hunter2, header: x-key }}\n"),
        )])
        .unwrap();
        let dump = config.effective.to_string();
        assert!(!dump.contains("hunter2"));
        // Defaults are shown as they apply.
        assert_eq!(config.effective["server"]["idle_timeout"], "60s");
        assert_eq!(config.effective["plugins"][0]["callback_timeout"], "50ms");
        assert_eq!(config.effective["plugins"][0]["max_traps_per_minute"], 10);
        assert_eq!(config.effective["plugins"][0]["circuit_open_time"], "30s");
        assert!(dump.contains("x-key"));
    }

    #[test]
    fn plugin_trap_circuit_is_configured_per_plugin() {
        let config = load(&[(
            "a.yaml",
            &format!("{LISTENER}plugins:\n  - name: p\n    module: p.wasm\n    max_traps_per_minute: 3\n    circuit_open_time: 2s\n    failure_policy: reload\n"),
        )])
        .unwrap();
        assert_eq!(config.plugins[0].max_traps_per_minute, 3);
        assert_eq!(config.plugins[0].circuit_open_time, Duration::from_secs(2));
        assert_eq!(config.effective["plugins"][0]["circuit_open_time"], "2s");
        let errors = load(&[(
            "a.yaml",
            &format!("{LISTENER}plugins:\n  - name: p\n    module: p.wasm\n    circuit_open_time: soon\n"),
        )])
        .unwrap_err();
        assert!(
            errors.to_string().contains("plugins[0].circuit_open_time"),
            "{errors}"
        );
    }
}
