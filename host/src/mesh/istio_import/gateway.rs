//! A Gateway's servers as listeners: a listener per port, its certificates from the servers
//! on that port, the hosts each accepts (to bind the virtual hosts).

use serde_json::Value;
use serde_norway::{Mapping, Value as Yaml};

use super::{entries, map, put, strings, ImportedListener, Importer, Resource};
use crate::mesh::istio::{client_ca_file, credential_files};

impl Importer {
    pub(super) fn gateway(&mut self, gateway: &Resource) {
        self.gateway_names.insert(gateway.name.clone());
        let spec = &gateway.spec;
        self.only(gateway, "spec", spec, &["selector", "servers"]);
        for (i, server) in entries(&spec["servers"]).into_iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            self.only(
                gateway,
                &at,
                server,
                &["port", "hosts", "tls", "name", "bind"],
            );
            let port = &server["port"];
            self.only(
                gateway,
                &format!("{at}.port"),
                port,
                &["number", "name", "protocol"],
            );
            let Some(number) = port["number"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                self.lose(
                    gateway.at(&format!("{at}.port.number")),
                    "no port number; the server is left out",
                );
                continue;
            };
            let protocol = match port["protocol"].as_str().unwrap_or("HTTP") {
                "HTTP" | "HTTP2" => "http",
                "HTTPS" => "https",
                _ => {
                    self.lose(
                        gateway.at(&format!("{at}.port.protocol")),
                        "Tollgate listeners speak HTTP and HTTPS only; the server is left out",
                    );
                    continue;
                }
            };
            let hosts: Vec<String> = strings(&server["hosts"])
                .into_iter()
                .map(|host| {
                    host.rsplit_once('/')
                        .map_or(host.clone(), |(_, h)| h.to_string())
                })
                .collect();
            let certificate = if protocol == "https" {
                self.server_tls(gateway, &at, &server["tls"])
            } else {
                self.only(
                    gateway,
                    &format!("{at}.tls"),
                    &server["tls"],
                    &["httpsRedirect"],
                );
                if server["tls"]["httpsRedirect"] == true {
                    self.lose(
                        gateway.at(&format!("{at}.tls.httpsRedirect")),
                        "Tollgate has no HTTPS redirect on a listener; add a redirect route",
                    );
                }
                None
            };
            // Servers on one port are one listener: several certificates, chosen by SNI.
            if let Some(existing) = self.listeners.iter_mut().find(|l| l.port == number) {
                if existing.protocol != protocol {
                    self.losses.add(
                        gateway.at(&format!("{at}.port")),
                        "another server already uses this port with another protocol; left out",
                    );
                    continue;
                }
                if let Some((mut cert, _)) = certificate {
                    if let Yaml::Mapping(fields) = &mut cert {
                        put(fields, "server_names", &hosts);
                    }
                    existing.certificates.push(cert);
                }
                existing.hosts.extend(hosts);
                continue;
            }
            let name = server["name"]
                .as_str()
                .or(port["name"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}-{number}", gateway.name));
            let bind = server["bind"].as_str().unwrap_or("0.0.0.0");
            let address = if bind.contains(':') {
                format!("[{bind}]:{number}")
            } else {
                format!("{bind}:{number}")
            };
            let mut fields = map();
            put(&mut fields, "name", &name);
            put(&mut fields, "address", &address);
            put(&mut fields, "protocol", protocol);
            let mut certificates = Vec::new();
            if let Some((cert, tls)) = certificate {
                certificates.push(cert);
                fields.insert("tls".into(), Yaml::Mapping(tls));
            }
            self.listeners.push(ImportedListener {
                name,
                port: number,
                protocol,
                fields,
                certificates,
                hosts,
            });
        }
    }

    /// The certificate and the other TLS settings of an HTTPS server.
    pub(super) fn server_tls(
        &mut self,
        gateway: &Resource,
        at: &str,
        tls: &Value,
    ) -> Option<(Yaml, Mapping)> {
        let at = format!("{at}.tls");
        self.only(
            gateway,
            &at,
            tls,
            &[
                "mode",
                "credentialName",
                "serverCertificate",
                "privateKey",
                "caCertificates",
                "minProtocolVersion",
            ],
        );
        let mode = tls["mode"].as_str().unwrap_or("SIMPLE");
        let client_auth_required = match mode {
            "SIMPLE" => None,
            "MUTUAL" => Some(true),
            "OPTIONAL_MUTUAL" => Some(false),
            _ => {
                self.lose(
                    gateway.at(&format!("{at}.mode")),
                    "Tollgate terminates TLS itself (SIMPLE, MUTUAL, OPTIONAL_MUTUAL); the server is left out",
                );
                return None;
            }
        };
        let credential = tls["credentialName"].as_str();
        let (cert, key) = match credential {
            Some(credential) => credential_files(credential),
            None => (
                tls["serverCertificate"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                tls["privateKey"].as_str().unwrap_or_default().to_string(),
            ),
        };
        if cert.is_empty() || key.is_empty() {
            self.lose(
                gateway.at(&at),
                "no credentialName nor serverCertificate and privateKey; the server is left out",
            );
            return None;
        }
        let mut certificate = map();
        put(&mut certificate, "cert", &cert);
        put(&mut certificate, "key", &key);
        let mut settings = map();
        if let Some(version) = tls["minProtocolVersion"].as_str() {
            match version {
                "TLSV1_2" => put(&mut settings, "min_version", "1.2"),
                "TLSV1_3" => put(&mut settings, "min_version", "1.3"),
                _ => self.lose(
                    gateway.at(&format!("{at}.minProtocolVersion")),
                    "Tollgate speaks TLS 1.2 and 1.3 only",
                ),
            }
        }
        if let Some(required) = client_auth_required {
            let ca = match (credential, tls["caCertificates"].as_str()) {
                (_, Some(path)) => path.to_string(),
                (Some(credential), None) => client_ca_file(credential),
                (None, None) => String::new(),
            };
            let mut client_auth = map();
            put(&mut client_auth, "ca", ca);
            put(&mut client_auth, "required", required);
            settings.insert("client_auth".into(), Yaml::Mapping(client_auth));
        }
        Some((Yaml::Mapping(certificate), settings))
    }
}
