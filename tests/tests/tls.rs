//! HTTPS listeners: certificate choice by SNI, protocol versions, mutual TLS and ALPN.

use http::{StatusCode, Version};
use tollgate_tests::certs::{CertAuthority, IssuedCert};
use tollgate_tests::clients::{
    get_request, tls_connect, HttpResponse, TlsInfo, TlsOptions, TlsVersion,
};
use tollgate_tests::scenario::{Running, Scenario};

const LISTENERS: &str = r#"
listeners:
  - name: tls
    address: ${listen:tls}
    protocol: https
    tls:
      certificates:
        - { cert: certs/a.crt, key: certs/a.key }
        - { cert: certs/b.crt, key: certs/b.key, server_names: [b.test, "*.b.test"] }
  - name: tls13
    address: ${listen:tls13}
    protocol: https
    tls:
      certificates: [{ cert: certs/a.crt, key: certs/a.key }]
      min_version: "1.3"
  - name: mtls
    address: ${listen:mtls}
    protocol: https
    tls:
      certificates: [{ cert: certs/a.crt, key: certs/a.key }]
      client_auth: { ca: certs/clients-ca.crt, required: true }
  - name: optional-mtls
    address: ${listen:optional-mtls}
    protocol: https
    tls:
      certificates: [{ cert: certs/a.crt, key: certs/a.key }]
      client_auth: { ca: certs/clients-ca.crt, required: false }
"#;

struct Fixture {
    gateway: Running,
    ca: CertAuthority,
    client_ca: CertAuthority,
}

async fn start() -> Fixture {
    let ca = CertAuthority::new("server CA");
    let client_ca = CertAuthority::new("client CA");
    let gateway = Scenario::new()
        .without_public_listener()
        .policy_file("listeners.yaml", LISTENERS)
        .server_cert("a", &ca.server_cert(&["a.test"]))
        .server_cert("b", &ca.server_cert(&["b.test", "*.b.test"]))
        .ca_cert("clients-ca.crt", &client_ca)
        .echo("echo")
        .forward("all", "/", "echo")
        .start()
        .await;
    Fixture {
        gateway,
        ca,
        client_ca,
    }
}

impl Fixture {
    async fn get(
        &self,
        listener: &str,
        options: &TlsOptions,
    ) -> anyhow::Result<(TlsInfo, HttpResponse)> {
        let addr = self.gateway.listener(listener);
        let session = tls_connect(addr, options).await?;
        let info = session.info.clone();
        let response = session
            .send(get_request(addr, &options.server_name, "/"))
            .await?;
        Ok((info, response))
    }

    fn options(&self, server_name: &str) -> TlsOptions {
        TlsOptions::new(server_name, &self.ca.cert_pem())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate() {
    let fixture = start().await;
    for (server_name, expected) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.b.test", "b.test"),
    ] {
        let (info, response) = fixture
            .get("tls", &fixture.options(server_name))
            .await
            .unwrap();
        assert!(
            info.peer_dns_names.iter().any(|name| name == expected),
            "SNI {server_name} should get the {expected} certificate, got {:?}",
            info.peer_dns_names
        );
        assert_eq!(response.status, StatusCode::OK);
    }
    let unknown = fixture.options("unknown.test").accept_any_certificate();
    let (info, _) = fixture.get("tls", &unknown).await.unwrap();
    assert_eq!(
        info.peer_dns_names,
        vec!["a.test".to_string()],
        "the first certificate is the default"
    );
    assert_eq!(
        fixture.gateway.backend("echo").requests()[0].header("x-forwarded-proto"),
        Some("https"),
        "requests over TLS are forwarded as https"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_served_and_min_version_is_enforced() {
    let fixture = start().await;
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let options = fixture.options("a.test").only_version(version);
        let (info, response) = fixture.get("tls", &options).await.unwrap();
        assert_eq!(info.version, Some(version));
        assert_eq!(response.status, StatusCode::OK);
    }
    let only_12 = fixture.options("a.test").only_version(TlsVersion::Tls12);
    assert!(
        fixture.get("tls13", &only_12).await.is_err(),
        "a listener with min_version 1.3 refuses a TLS 1.2 client"
    );
    let (info, _) = fixture
        .get("tls13", &fixture.options("a.test"))
        .await
        .unwrap();
    assert_eq!(info.version, Some(TlsVersion::Tls13));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let fixture = start().await;
    let alice = fixture.client_ca.client_cert("alice");
    let with_cert = fixture.options("a.test").client_cert(&alice);
    let (_, response) = fixture.get("mtls", &with_cert).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);

    let without_cert = fixture.options("a.test");
    assert!(
        fixture.get("mtls", &without_cert).await.is_err(),
        "no client certificate, no answer"
    );

    let stranger: IssuedCert = CertAuthority::new("stranger CA").client_cert("mallory");
    let with_foreign_cert = fixture.options("a.test").client_cert(&stranger);
    assert!(
        fixture.get("mtls", &with_foreign_cert).await.is_err(),
        "a certificate from another CA is refused"
    );
    assert_eq!(
        fixture.gateway.backend("echo").request_count(),
        1,
        "only the authenticated request was forwarded"
    );

    let (_, optional) = fixture.get("optional-mtls", &without_cert).await.unwrap();
    assert_eq!(
        optional.status,
        StatusCode::OK,
        "client_auth.required: false accepts anonymous clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_selects_http2_or_http1() {
    let fixture = start().await;
    let h2 = fixture.options("a.test").alpn(&["h2"]);
    let (info, response) = fixture.get("tls", &h2).await.unwrap();
    assert_eq!(info.alpn.as_deref(), Some("h2"));
    assert_eq!(response.version, Version::HTTP_2);
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.json()["host"],
        "a.test",
        "the :authority reaches the backend as its host"
    );

    let http1 = fixture.options("a.test").alpn(&["http/1.1"]);
    let (info, response) = fixture.get("tls", &http1).await.unwrap();
    assert_eq!(info.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(response.version, Version::HTTP_11);
    assert_eq!(response.status, StatusCode::OK);
}
