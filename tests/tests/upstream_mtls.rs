//! Mutual TLS to upstreams, as to an Istio sidecar in STRICT mode: the cluster's client
//! certificate (`tls.cert`, `tls.key`) presented to an endpoint that requires one, the
//! endpoint's workload identity checked by `tls.subject_alt_names`, TLS failures answered
//! `503` with the reason in the access log, a rotated client certificate presented on the
//! next new connection, and the configuration errors `tollgate check` reports.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tollgate_tests::backends::{self, Backend};
use tollgate_tests::certs::{CertAuthority, IssuedCert};
use tollgate_tests::clients::HttpResponse;
use tollgate_tests::gateway::{run_check, PolicyDir};
use tollgate_tests::scenario::{Running, Scenario};

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/edge/sa/tollgate";
const SIDECAR_ID: &str = "spiffe://cluster.local/ns/shop/sa/inventory";

/// The mesh: its CA, a sidecar that requires a client certificate from it, and the
/// gateway's workload certificate.
struct Mesh {
    ca: CertAuthority,
    sidecar: Backend,
    gateway_cert: IssuedCert,
}

async fn mesh() -> Mesh {
    let ca = CertAuthority::new("cluster.local mesh CA");
    let sidecar_cert = ca.workload_cert("inventory", SIDECAR_ID, &["inventory.shop.test"]);
    let sidecar = backends::mtls_echo("inventory", &sidecar_cert, &ca).await;
    let gateway_cert = ca.workload_cert("tollgate", GATEWAY_ID, &[]);
    Mesh {
        ca,
        sidecar,
        gateway_cert,
    }
}

/// A route `/NAME` to cluster `NAME`.
fn route_to(scenario: Scenario, name: &str) -> Scenario {
    scenario.forward(name, &format!("/{name}"), name)
}

/// Waits for the access-log line of a request to `path` (written when the response body
/// ends, which may be just after the client read it) and returns it.
async fn access_line(running: &Running, path: &str) -> String {
    let wanted = format!("path=\"{path}\"");
    for _ in 0..100 {
        if let Some(line) = running
            .gateway()
            .log()
            .lines()
            .find(|line| line.contains(&wanted) && line.contains("status="))
        {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no access-log line for {path}:\n{}",
        running.gateway().log()
    );
}

fn assert_ok(response: &HttpResponse, what: &str) {
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{what}: body {}",
        response.text()
    );
}

/// The access log line of a refused TLS exchange says so, and why.
fn assert_tls_failure_logged(line: &str, why: &[&str]) {
    assert!(line.contains("detail=\"upstream_tls_error\""), "{line}");
    assert!(line.contains("response_flags=\"UF\""), "{line}");
    for words in why {
        assert!(
            line.contains(words),
            "the line should say {words:?}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_and_the_expected_identities_decide_the_exchange() {
    let mesh = mesh().await;
    let sidecar = mesh.sidecar.addr();
    let base = "endpoints: [{ address: \"${SIDECAR}\" }]";
    let tls = |fields: &str| format!("tls: {{ ca: certs/mesh-ca.crt, {fields} }}");
    let identity = "cert: certs/gateway.crt, key: certs/gateway.key";
    let mut scenario = Scenario::new()
        .ca_cert("mesh-ca.crt", &mesh.ca)
        .server_cert("gateway", &mesh.gateway_cert)
        .set("SIDECAR", sidecar);
    for (name, fields, http2) in [
        (
            "mutual",
            format!("{identity}, server_name: inventory.shop.test"),
            false,
        ),
        (
            "anonymous",
            "server_name: inventory.shop.test".to_string(),
            false,
        ),
        (
            "anonymous-h2",
            "server_name: inventory.shop.test".to_string(),
            true,
        ),
        (
            "spiffe",
            format!("{identity}, subject_alt_names: [\"spiffe://cluster.local/ns/other/sa/x\", \"{SIDECAR_ID}\"]"),
            false,
        ),
        (
            "impostor",
            format!("{identity}, subject_alt_names: [\"spiffe://cluster.local/ns/shop/sa/payments\"]"),
            false,
        ),
        (
            "dns",
            format!("{identity}, subject_alt_names: [INVENTORY.shop.test]"),
            false,
        ),
        (
            "spiffe-h2",
            format!("{identity}, subject_alt_names: [\"{SIDECAR_ID}\"]"),
            true,
        ),
        (
            "impostor-h2",
            format!("{identity}, subject_alt_names: [\"spiffe://cluster.local/ns/shop/sa/payments\"]"),
            true,
        ),
    ] {
        scenario = scenario.cluster(&format!(
            "{{ name: {name}, {base}, http2: {http2}, {} }}",
            tls(&fields)
        ));
        scenario = route_to(scenario, name);
    }
    let running = scenario.start().await;

    // Our certificate reaches the sidecar: it saw our identity.
    let mutual = running.get("/mutual").await;
    assert_ok(&mutual, "a cluster with cert and key");
    assert_eq!(mutual.header("x-backend"), Some("inventory"));
    assert_eq!(mutual.header("x-client-uri-san"), Some(GATEWAY_ID));
    assert_eq!(mutual.header("x-client-subject"), Some("CN=tollgate"));

    // Without one the sidecar refuses the handshake: 503, and the log says why.
    let served = mesh.sidecar.request_count();
    for path in ["/anonymous", "/anonymous-h2"] {
        let anonymous = running.get(path).await;
        assert_eq!(
            anonymous.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: no client certificate: {}",
            anonymous.text()
        );
        assert!(
            anonymous.text().starts_with("upstream_tls_error: "),
            "{path}: {}",
            anonymous.text()
        );
        let line = access_line(&running, path).await;
        assert_tls_failure_logged(&line, &["refused the TLS handshake", "client certificate"]);
    }
    assert_eq!(
        mesh.sidecar.request_count(),
        served,
        "nothing reached the sidecar"
    );

    // Expected identities: one of them must be the sidecar's, which replaces the check of
    // the server name (there is none here, and the endpoint is an IP address).
    for path in ["/spiffe", "/dns", "/spiffe-h2"] {
        let response = running.get(path).await;
        assert_ok(&response, path);
        assert_eq!(
            response.header("x-client-uri-san"),
            Some(GATEWAY_ID),
            "{path}"
        );
    }
    let served = mesh.sidecar.request_count();
    for path in ["/impostor", "/impostor-h2"] {
        let response = running.get(path).await;
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: a certificate without the expected identity is refused: {}",
            response.text()
        );
        let line = access_line(&running, path).await;
        assert_tls_failure_logged(
            &line,
            &[
                "match none of subject_alt_names",
                "URI:spiffe://cluster.local/ns/shop/sa/payments",
                &format!("URI:{SIDECAR_ID}"),
                "DNS:inventory.shop.test",
            ],
        );
    }
    assert_eq!(
        mesh.sidecar.request_count(),
        served,
        "no request went over an unverified connection"
    );
}

/// Replaces `path` in one step, as a secret rotation does: the gateway never reads a file
/// half written.
fn replace_file(path: &Path, contents: &str) {
    let staged = path.with_extension("next");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_presented_on_the_next_connection() {
    let mesh = mesh().await;
    let running = Scenario::new()
        .ca_cert("mesh-ca.crt", &mesh.ca)
        .server_cert("gateway", &mesh.gateway_cert)
        .set("SIDECAR", mesh.sidecar.addr())
        .cluster(&format!(
            "{{ name: mesh, endpoints: [{{ address: \"${{SIDECAR}}\" }}], tls: {{ ca: certs/mesh-ca.crt, \
             cert: certs/gateway.crt, key: certs/gateway.key, subject_alt_names: [\"{SIDECAR_ID}\"] }} }}"
        ))
        .forward("mesh", "/", "mesh")
        .start()
        .await;
    let first = running.get("/before").await;
    assert_ok(&first, "before the rotation");
    assert_eq!(first.header("x-client-subject"), Some("CN=tollgate"));

    // Requests keep flowing while the files change; every one must succeed, the one that
    // is in flight across the rotation too.
    let running = Arc::new(running);
    let in_flight = {
        let running = running.clone();
        tokio::spawn(async move { running.get("/slow?delay_ms=1500").await })
    };
    let rotated = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (running, rotated) = (running.clone(), rotated.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !rotated.load(Ordering::SeqCst) && answers.len() < 2000 {
                let response = running.get("/during").await;
                answers.push((response.status, response.text()));
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = mesh.ca.workload_cert("tollgate-next", GATEWAY_ID, &[]);
    let certs = running.gateway().policies().certs_dir();
    // The key first: until the certificate follows, the pair does not fit and the reload
    // is refused, so the old pair keeps serving.
    replace_file(&certs.join("gateway.key"), &next.key_pem);
    replace_file(&certs.join("gateway.crt"), &next.cert_pem);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut presented = None;
    while tokio::time::Instant::now() < deadline {
        let response = running.get("/after").await;
        assert_ok(&response, "after the rotation");
        presented = response.header("x-client-subject").map(str::to_string);
        if presented.as_deref() == Some("CN=tollgate-next") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rotated.store(true, Ordering::SeqCst);
    assert_eq!(
        presented.as_deref(),
        Some("CN=tollgate-next"),
        "the new certificate is presented within 10 s; log:\n{}",
        running.gateway().log()
    );
    let slow = in_flight.await.unwrap();
    assert_ok(&slow, "the request in flight during the rotation");
    for client in clients {
        let answers = client.await.unwrap();
        assert!(!answers.is_empty());
        let failed: Vec<_> = answers
            .iter()
            .filter(|(status, _)| *status != StatusCode::OK)
            .collect();
        assert!(
            failed.is_empty(),
            "requests failed during the rotation: {failed:?}"
        );
    }
}

/// A policies folder with one cluster whose `tls` is `fields`.
fn policies_with_tls(fields: &str) -> PolicyDir {
    let mut dir = PolicyDir::new();
    let ca = CertAuthority::new("check CA");
    ca.write(&dir.certs_dir(), "ca.crt");
    ca.workload_cert("tollgate", GATEWAY_ID, &[])
        .write(&dir.certs_dir(), "gateway");
    ca.workload_cert("someone-else", GATEWAY_ID, &[])
        .write(&dir.certs_dir(), "other");
    std::fs::write(dir.certs_dir().join("garbage.crt"), "not a certificate\n").unwrap();
    dir.write(
        "policies.yaml",
        &format!(
            "
listeners:
  - {{ name: public, address: \"127.0.0.1:0\" }}
clusters:
  - name: mesh
    endpoints: [{{ address: 127.0.0.1:15443 }}]
    tls: {{ ca: certs/ca.crt, {fields} }}
virtual_hosts:
  - name: all
    domains: [\"*\"]
    routes:
      - {{ name: all, match: {{ path: {{ prefix: / }} }}, forward: {{ cluster: mesh }} }}
"
        ),
    );
    dir
}

#[test]
fn check_names_the_field_of_a_bad_client_certificate() {
    let valid = policies_with_tls(
        "cert: certs/gateway.crt, key: certs/gateway.key, subject_alt_names: [\"spiffe://cluster.local/ns/shop/sa/inventory\"]",
    );
    let valid = run_check(&valid.path());
    assert_eq!(valid.code, Some(0), "{}", valid.output);

    for (fields, field, words) in [
        (
            "cert: certs/gateway.crt",
            "tls.key",
            "tls.cert needs its private key",
        ),
        (
            "key: certs/gateway.key",
            "tls.cert",
            "tls.key needs its certificate",
        ),
        (
            "cert: certs/missing.crt, key: certs/gateway.key",
            "tls.cert",
            "missing.crt does not exist",
        ),
        (
            "cert: certs/garbage.crt, key: certs/gateway.key",
            "tls.cert",
            "garbage.crt holds no PEM certificate",
        ),
        (
            "cert: certs/gateway.crt, key: certs/garbage.crt",
            "tls.key",
            "garbage.crt holds no PEM private key",
        ),
        (
            "cert: certs/gateway.crt, key: certs/other.key",
            "tls.key",
            "does not fit the certificate",
        ),
        (
            "cert: certs/gateway.crt, key: certs/gateway.key, subject_alt_names: [\"\"]",
            "tls.subject_alt_names[0]",
            "invalid name",
        ),
    ] {
        let outcome = run_check(&policies_with_tls(fields).path());
        assert_ne!(outcome.code, Some(0), "{fields}: {}", outcome.output);
        let line = outcome
            .output
            .lines()
            .find(|line| line.contains(field))
            .unwrap_or_else(|| panic!("{fields}: no error names {field}:\n{}", outcome.output));
        assert!(
            line.contains("policies.yaml") && line.contains(words),
            "{fields}: the error should name the file and say {words:?}: {line}"
        );
    }
}
