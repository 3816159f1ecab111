//! A throw-away certificate authority and the leaf certificates the tests need: server
//! certificates for SNI and upstream TLS, client certificates for mutual TLS.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed CA that signs leaf certificates.
pub struct CertAuthority {
    certificate: Certificate,
    key: KeyPair,
}

/// A leaf certificate and its private key, both PEM encoded.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// Where [`IssuedCert::write`] put the files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertAuthority {
    pub fn new(common_name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let certificate = params.self_signed(&key).expect("self-sign CA");
        Self { certificate, key }
    }

    pub fn cert_pem(&self) -> String {
        self.certificate.pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.certificate.der().to_vec()
    }

    /// A server certificate valid for `names` (DNS names or IP addresses).
    pub fn server_cert(&self, names: &[&str]) -> IssuedCert {
        let san: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(san).expect("valid subject alternative names");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose subject common name is `common_name`.
    pub fn client_cert(&self, common_name: &str) -> IssuedCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A client certificate with a fuller identity: subject `O=organization, CN=common_name`
    /// and the given DNS and URI subject alternative names (a SPIFFE id, say).
    pub fn client_cert_with_names(
        &self,
        common_name: &str,
        organization: &str,
        dns_names: &[&str],
        uris: &[&str],
    ) -> IssuedCert {
        let mut params = named_params(dns_names, uris);
        params
            .distinguished_name
            .push(DnType::OrganizationName, organization);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A workload certificate as a service mesh issues it: subject `CN=common_name`, the
    /// SPIFFE id as its URI subject alternative name (and `dns_names`, if any), good for
    /// both ends of mutual TLS.
    pub fn workload_cert(
        &self,
        common_name: &str,
        spiffe_id: &str,
        dns_names: &[&str],
    ) -> IssuedCert {
        let mut params = named_params(dns_names, &[spiffe_id]);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// Writes the CA certificate as `DIR/FILE_NAME` and returns its path.
    pub fn write(&self, dir: &Path, file_name: &str) -> PathBuf {
        let path = dir.join(file_name);
        write_file(&path, &self.cert_pem());
        path
    }

    fn sign(&self, mut params: CertificateParams) -> IssuedCert {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("generate leaf key");
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .expect("sign leaf certificate");
        IssuedCert {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            cert_der: certificate.der().to_vec(),
        }
    }
}

/// Certificate parameters with these DNS and URI subject alternative names.
fn named_params(dns_names: &[&str], uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(
        dns_names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>(),
    )
    .expect("valid DNS names");
    for uri in uris {
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::Ia5String::try_from(*uri).expect("an ASCII URI"),
        ));
    }
    params
}

impl IssuedCert {
    /// Writes `DIR/STEM.crt` and `DIR/STEM.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        write_file(&files.cert, &self.cert_pem);
        write_file(&files.key, &self.key_pem);
        files
    }
}

fn write_file(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The DNS names in a DER certificate's subject alternative name extension.
pub fn dns_names(cert_der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let (_, certificate) =
        x509_parser::parse_x509_certificate(cert_der).expect("peer certificate is valid DER");
    let Ok(Some(san)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// Parses PEM certificates, for building rustls configurations.
pub fn parse_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("valid PEM certificates")
}

/// Parses a PEM private key, for building rustls configurations.
pub fn parse_key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("a readable private key in the PEM")
}

/// The ring crypto provider: the workspace builds rustls with ring only, and naming it
/// explicitly avoids depending on a process-wide default being installed.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn server_cert_verifies_against_its_ca() {
        let ca = CertAuthority::new("test CA");
        let leaf = ca.server_cert(&["a.test", "127.0.0.1"]);
        assert_eq!(dns_names(&leaf.cert_der), vec!["a.test".to_string()]);

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().into()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            crypto_provider(),
        )
        .build()
        .unwrap();
        let end_entity = rustls::pki_types::CertificateDer::from(leaf.cert_der.clone());
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        verifier
            .verify_server_cert(
                &end_entity,
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("leaf verifies for its name");
        let other = rustls::pki_types::ServerName::try_from("b.test").unwrap();
        assert!(verifier
            .verify_server_cert(
                &end_entity,
                &[],
                &other,
                &[],
                rustls::pki_types::UnixTime::now()
            )
            .is_err());
    }

    #[test]
    fn files_are_written_as_pem() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::new("test CA");
        let ca_path = ca.write(dir.path(), "ca.crt");
        let files = ca.client_cert("alice").write(dir.path(), "alice");
        assert_eq!(parse_certs(&fs::read_to_string(ca_path).unwrap()).len(), 1);
        parse_key(&fs::read_to_string(files.key).unwrap());
    }
}
