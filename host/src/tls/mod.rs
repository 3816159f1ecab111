//! TLS with rustls: listener configurations with certificates chosen by SNI and optional
//! client-certificate verification, and client configurations for upstream TLS.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::config::{ConfigError, ListenerTls, Origin, SubjectAltName, TlsVersion, UpstreamTls};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates a listener serves, chosen by SNI; what the connection's local
/// certificate was is read back from here (rustls does not say which one it sent).
#[derive(Debug)]
pub struct ServedCertificates(Arc<SniResolver>);

impl ServedCertificates {
    /// The facts of the certificate served to a client that sent `server_name`.
    pub fn for_server_name(&self, server_name: Option<&str>) -> Option<Arc<CertificateFacts>> {
        let key = self.0.find(server_name)?;
        self.0.facts.get(&(Arc::as_ptr(&key) as usize)).cloned()
    }
}

/// Builds the rustls configuration of an HTTPS listener.
pub fn server_config(
    tls: &ListenerTls,
) -> Result<(Arc<ServerConfig>, ServedCertificates), ConfigError> {
    let provider = provider();
    let mut resolver = SniResolver::default();
    for files in &tls.certificates {
        let key = certified_key(&files.cert, &files.key, &provider)
            .map_err(|(field, message)| ConfigError::new(&files.origin, field, message))?;
        let names = if files.server_names.is_empty() {
            dns_names(&key.cert[0])
        } else {
            files.server_names.clone()
        };
        let facts = Arc::new(CertificateFacts::from_der(&key.cert[0]));
        let key = Arc::new(key);
        resolver.facts.insert(Arc::as_ptr(&key) as usize, facts);
        resolver.add(key, &names);
    }
    let resolver = Arc::new(resolver);
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| ConfigError::new(&tls.origin, "min_version", e.to_string()))?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = root_store(&auth.ca)
                .map_err(|e| ConfigError::new(&tls.origin, "client_auth.ca", e.to_string()))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| ConfigError::new(&tls.origin, "client_auth.ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok((Arc::new(config), ServedCertificates(resolver)))
}

/// The rustls configuration for HTTPS to a cluster's endpoints, and a digest of the
/// certificates it was built from.
pub struct UpstreamTlsConfig {
    pub config: Arc<ClientConfig>,
    /// SHA-256 over the trusted CA certificates and the client certificate chain: tells a
    /// rotated file from an unchanged one when the policies name the same paths. (The key
    /// must fit the certificate, so the chain stands for it.)
    pub digest: [u8; 32],
}

/// Builds the rustls configuration for HTTPS to a cluster's endpoints: the chain verified
/// against `tls.ca` (or the system's roots), the name against `tls.subject_alt_names` when
/// set and `server_name` (or the endpoint's host) otherwise, and `tls.cert` presented when
/// the endpoint asks for a client certificate.
pub fn client_config(
    tls: &UpstreamTls,
    http2: bool,
    origin: &Origin,
) -> Result<UpstreamTlsConfig, ConfigError> {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    let roots = match &tls.ca {
        Some(ca) => {
            root_store(ca).map_err(|e| ConfigError::new(origin, "tls.ca", e.to_string()))?
        }
        None => system_roots(),
    };
    for root in &roots.roots {
        digest.update(root.subject_public_key_info.as_ref());
        digest.update(root.subject.as_ref());
    }
    let provider = provider();
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(origin, "tls", e.to_string()))?;
    let builder = if tls.subject_alt_names.is_empty() {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SubjectAltNameVerifier {
                roots,
                expected: tls.subject_alt_names.clone(),
                algorithms: provider.signature_verification_algorithms,
            }))
    };
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let key =
                certified_key(&files.cert, &files.key, &provider).map_err(|(field, message)| {
                    ConfigError::new(origin, &format!("tls.{field}"), message)
                })?;
            for cert in &key.cert {
                digest.update(cert.as_ref());
            }
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)))
        }
    };
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(UpstreamTlsConfig {
        config: Arc::new(config),
        digest: digest.finalize().into(),
    })
}

/// A certificate chain and its key, read from PEM files; an error names the field
/// (`cert` or `key`) and says what is wrong with its file.
fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, (&'static str, String)> {
    let chain = read_certs(cert).map_err(|e| ("cert", e.to_string()))?;
    let key = read_key(key).map_err(|e| ("key", e.to_string()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| ("key", format!("does not fit the certificate: {e}")))
}

/// Verifies an endpoint's certificate chain against the trusted roots, and its name by
/// the subject alternative names a cluster expects instead of the server name: a workload
/// identity (a SPIFFE id) is a URI and no DNS name. The leaf must carry at least one of
/// the expected names.
#[derive(Debug)]
struct SubjectAltNameVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<SubjectAltName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SubjectAltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let presented = CertificateFacts::from_der(end_entity);
        if self.expected.iter().any(|name| presented.carries(name)) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(SubjectAltNameMismatch {
                presented: presented.subject_alt_names(),
                expected: self.expected.clone(),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// An endpoint's certificate carries none of the names its cluster expects.
#[derive(Debug)]
struct SubjectAltNameMismatch {
    presented: Vec<SubjectAltName>,
    expected: Vec<SubjectAltName>,
}

impl std::fmt::Display for SubjectAltNameMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[SubjectAltName]| {
            names
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "the upstream certificate's subject alternative names [{}] match none of subject_alt_names [{}]",
            list(&self.presented),
            list(&self.expected)
        )
    }
}

impl std::error::Error for SubjectAltNameMismatch {}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "could not load a system root certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "loaded system root certificates");
    roots
}

/// Why a certificate, key or CA file cannot be used. Messages name the file, never key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("cannot open {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a PEM certificate file: {reason}", path.display())]
    NotCertificates { path: PathBuf, reason: String },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no usable CA certificate", path.display())]
    NoCaCertificate { path: PathBuf },
    #[error("{} is not a PEM private key file", path.display())]
    NotKey { path: PathBuf },
    #[error("{} holds no PEM private key", path.display())]
    NoKey { path: PathBuf },
}

fn root_store(path: &Path) -> Result<RootCertStore, PemFileError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_certs(path)?);
    if added == 0 {
        return Err(PemFileError::NoCaCertificate { path: path.into() });
    }
    Ok(roots)
}

fn open(path: &Path) -> Result<File, PemFileError> {
    File::open(path).map_err(|source| PemFileError::Unreadable {
        path: path.into(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let certs: Vec<_> = CertificateDer::pem_reader_iter(open(path)?)
        .collect::<Result<_, _>>()
        .map_err(|error| PemFileError::NotCertificates {
            path: path.into(),
            reason: pem_problem(&error),
        })?;
    if certs.is_empty() {
        return Err(PemFileError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// What is wrong with a PEM file, in words: the parser's own messages show the section
/// markers as byte arrays.
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "section end {:?} missing",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("illegal section start: {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(problem) => problem.clone(),
        pem::Error::Io(error) => error.to_string(),
        other => other.to_string(),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemFileError> {
    // The parser's error is dropped: it could quote key material.
    PrivateKeyDer::from_pem_reader(open(path)?).map_err(|error| match error {
        pem::Error::NoItemsFound => PemFileError::NoKey { path: path.into() },
        _ => PemFileError::NotKey { path: path.into() },
    })
}

/// The DNS names a listener certificate file answers for when it has no `server_names`
/// (the mesh exports name the hosts each certificate serves).
pub fn certificate_dns_names(path: &Path) -> Result<Vec<String>, PemFileError> {
    Ok(read_certs(path)?
        .first()
        .map(|cert| dns_names(cert))
        .unwrap_or_default())
}

/// The DNS names in a certificate's subject alternative names, used to choose it by SNI.
fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(cert) => cert
            .valid_dns_names()
            .map(|name| name.to_ascii_lowercase())
            .collect(),
        Err(_) => Vec::new(),
    }
}

// === impl SniResolver ===

/// Chooses a certificate by the client's SNI name: exact name first, then a `*.suffix`
/// wildcard one label deep; without SNI or a match, the first certificate.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Each key's certificate facts, by the key's address (read once, at load).
    facts: HashMap<usize, Arc<CertificateFacts>>,
}

impl SniResolver {
    fn add(&mut self, key: Arc<CertifiedKey>, names: &[String]) {
        self.default.get_or_insert_with(|| key.clone());
        for name in names {
            let table = match name.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix.to_string()),
                None => (&mut self.exact, name.clone()),
            };
            table.0.entry(table.1).or_insert_with(|| key.clone());
        }
    }

    fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        self.exact
            .get(&name)
            .or_else(|| {
                name.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .or(self.default.as_ref())
            .cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(client_hello.server_name())
    }
}

/// Reads the TLS facts of an accepted connection that the gateway logs and exposes.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub version: Option<&'static str>,
    pub server_name: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub peer_certificate: bool,
    /// The client's certificate, when it sent one.
    pub peer: Option<Arc<CertificateFacts>>,
    /// The certificate the gateway served.
    pub local: Option<Arc<CertificateFacts>>,
}

/// What plugins read about a certificate (Envoy's `connection.*_certificate` attributes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The subject distinguished name in RFC 2253 form (`CN=client,O=Example`).
    pub subject: String,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
}

impl CertificateFacts {
    /// Whether the certificate carries `name`: a URI exactly; a DNS name without regard to
    /// case, or under a `*.suffix` wildcard of the certificate that covers one label.
    pub fn carries(&self, name: &SubjectAltName) -> bool {
        match name {
            SubjectAltName::Uri(uri) => self.uri_sans.iter().any(|presented| presented == uri),
            SubjectAltName::Dns(dns) => self.dns_sans.iter().any(|presented| {
                let presented = presented.to_ascii_lowercase();
                match presented.strip_prefix("*.") {
                    Some(suffix) => dns
                        .split_once('.')
                        .is_some_and(|(label, parent)| !label.is_empty() && parent == suffix),
                    None => presented == *dns,
                }
            }),
        }
    }

    /// The DNS and URI names of the certificate.
    pub fn subject_alt_names(&self) -> Vec<SubjectAltName> {
        let dns = self
            .dns_sans
            .iter()
            .map(|name| SubjectAltName::Dns(name.clone()));
        let uris = self
            .uri_sans
            .iter()
            .map(|uri| SubjectAltName::Uri(uri.clone()));
        dns.chain(uris).collect()
    }

    /// Reads a DER certificate; what cannot be parsed stays empty (the digest is always set).
    pub fn from_der(der: &[u8]) -> Self {
        use sha2::Digest;
        let sha256 = sha2::Sha256::digest(der)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let mut facts = Self {
            sha256,
            ..Self::default()
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return facts;
        };
        facts.subject = rfc2253(cert.subject());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        facts.dns_sans.push(dns.to_string())
                    }
                    x509_parser::extensions::GeneralName::URI(uri) => {
                        facts.uri_sans.push(uri.to_string())
                    }
                    _ => {}
                }
            }
        }
        facts
    }
}

/// A distinguished name as RFC 2253 writes it: the last RDN first, `,` between RDNs, `+`
/// within one, special characters escaped; attributes without a short name as their OID
/// and the value's DER in hex.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let short_name = |oid: &str| match oid {
        "2.5.4.3" => Some("CN"),
        "2.5.4.6" => Some("C"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.9" => Some("STREET"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        _ => None,
    };
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let oid = attribute.attr_type().to_id_string();
                    match (short_name(&oid), attribute.as_str()) {
                        (Some(short), Ok(value)) => format!("{short}={}", escape_rfc2253(value)),
                        _ => {
                            let hex: String = attribute
                                .attr_value()
                                .data
                                .iter()
                                .map(|byte| format!("{byte:02x}"))
                                .collect();
                            format!("{oid}=#{hex}")
                        }
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl TlsInfo {
    pub fn from_connection(
        connection: &rustls::ServerConnection,
        served: Option<&ServedCertificates>,
    ) -> Self {
        Self {
            peer: connection
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|cert| Arc::new(CertificateFacts::from_der(cert))),
            local: served.and_then(|served| served.for_server_name(connection.server_name())),
            version: connection.protocol_version().map(|version| match version {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                _ => "unknown",
            }),
            server_name: connection.server_name().map(str::to_string),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificate: connection
                .peer_certificates()
                .is_some_and(|certs| !certs.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certified_key() -> Arc<CertifiedKey> {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let key = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            key_pair.serialize_der().into(),
        ))
        .unwrap();
        // Resolution never looks at the certificate bytes.
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![1u8])],
            key,
        ))
    }

    #[test]
    fn sni_prefers_exact_then_wildcard_then_default() {
        let (first, wild, exact) = (certified_key(), certified_key(), certified_key());
        let mut resolver = SniResolver::default();
        resolver.add(first.clone(), &["first.test".into()]);
        resolver.add(wild.clone(), &["*.shop.test".into()]);
        resolver.add(exact.clone(), &["api.shop.test".into()]);
        assert!(Arc::ptr_eq(
            &resolver.find(Some("API.shop.test")).unwrap(),
            &exact
        ));
        assert!(Arc::ptr_eq(
            &resolver.find(Some("www.shop.test")).unwrap(),
            &wild
        ));
        assert!(Arc::ptr_eq(
            &resolver.find(Some("a.b.shop.test")).unwrap(),
            &first
        ));
        assert!(Arc::ptr_eq(&resolver.find(None).unwrap(), &first));
    }

    #[test]
    fn expected_names_match_uris_exactly_and_dns_names_as_hosts() {
        let facts = CertificateFacts {
            dns_sans: vec!["Inventory.Shop.test".into(), "*.mesh.test".into()],
            uri_sans: vec!["spiffe://cluster.local/ns/shop/sa/inventory".into()],
            ..CertificateFacts::default()
        };
        let carries = |written: &str| facts.carries(&SubjectAltName::parse(written));
        assert!(carries("spiffe://cluster.local/ns/shop/sa/inventory"));
        assert!(!carries("spiffe://cluster.local/ns/shop/sa/Inventory"));
        assert!(!carries("spiffe://cluster.local/ns/shop/sa/inventory/x"));
        assert!(carries("inventory.shop.test"));
        assert!(carries("INVENTORY.shop.test"));
        assert!(carries("a.mesh.test"));
        assert!(!carries("a.b.mesh.test"), "a wildcard covers one label");
        assert!(!carries("mesh.test"));
        assert!(
            !carries("spiffe.test"),
            "a DNS name never matches a URI name"
        );
        assert_eq!(
            facts
                .subject_alt_names()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "DNS:Inventory.Shop.test",
                "DNS:*.mesh.test",
                "URI:spiffe://cluster.local/ns/shop/sa/inventory"
            ]
        );
    }

    #[test]
    fn certificate_names_come_from_the_subject_alt_names() {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["Shop.Test".into(), "*.shop.test".into()]).unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        assert_eq!(dns_names(cert.der()), vec!["shop.test", "*.shop.test"]);
    }

    /// A file of this test's own in the temporary folder, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("tollgate-tls-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn pem_files_read_as_certificates_and_keys() {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["shop.test".into()]).unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        let cert_file = TempFile::new("good.crt", &cert.pem());
        let key_file = TempFile::new("good.key", &key_pair.serialize_pem());

        assert_eq!(read_certs(&cert_file.0).unwrap(), vec![cert.der().clone()]);
        assert!(matches!(
            read_key(&key_file.0).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
    }

    #[test]
    fn bad_pem_files_are_told_apart_in_words() {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["shop.test".into()]).unwrap();
        let cert_pem = params.self_signed(&key_pair).unwrap().pem();

        let cut_short = TempFile::new("cut.crt", &cert_pem[..cert_pem.len() / 2]);
        let error = read_certs(&cut_short.0).unwrap_err().to_string();
        assert!(
            error.ends_with(
                "cut.crt is not a PEM certificate file: section end \"CERTIFICATE\" missing"
            ),
            "{error}"
        );

        let no_cert = TempFile::new("empty.crt", "not pem at all\n");
        assert!(matches!(
            read_certs(&no_cert.0),
            Err(PemFileError::NoCertificate { .. })
        ));

        // A certificate where the key should be: no key in it, which is not a broken key.
        let cert_as_key = TempFile::new("cert-as.key", &cert_pem);
        assert!(matches!(
            read_key(&cert_as_key.0),
            Err(PemFileError::NoKey { .. })
        ));

        let broken_key = TempFile::new(
            "broken.key",
            "-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n",
        );
        let error = read_key(&broken_key.0).unwrap_err();
        assert!(matches!(error, PemFileError::NotKey { .. }), "{error}");
        assert!(error
            .to_string()
            .ends_with("broken.key is not a PEM private key file"));

        assert!(matches!(
            read_certs(&std::env::temp_dir().join("tollgate-tls-no-such-file.crt")),
            Err(PemFileError::Unreadable { .. })
        ));
    }
}
