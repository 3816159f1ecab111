//! Every attribute Envoy documents for HTTP filters, read by a plugin through the gateway
//! (`tp-properties`, values hex-encoded in response headers or in its `on_log` log lines),
//! with Envoy's encodings: strings raw, integers 8-byte little-endian, booleans one byte,
//! maps and lists in the pairs format, messages as protobuf. Plain HTTP for the request,
//! response, upstream and xds attributes; TLS with a client certificate for the connection
//! certificate attributes; `server.node` for the node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http_body_util::Full;
use serde_json::json;
use sha2::Digest;
use tollgate_tests::certs::CertAuthority;
use tollgate_tests::clients::{request, tls_connect, HttpClient, HttpResponse, TlsOptions};
use tollgate_tests::gateway::Gateway;
use tollgate_tests::plugins::{PluginSpec, TP_PROPERTIES};
use tollgate_tests::scenario::{Running, Scenario};

const NODE: &str = r#"
node:
  id: gateway-7
  cluster: edge
  metadata:
    ISTIO_VERSION: "1.22.0"
    LABELS: { app: edge }
    replicas: 3
    canary: true
  locality: { region: eu-west, zone: eu-west-1a, sub_zone: rack-4 }
"#;

const SECURE_LISTENER: &str = r#"
name: secure
address: ${listen:secure}
protocol: https
tls:
  certificates: [{ cert: certs/gw.crt, key: certs/gw.key }]
  client_auth: { ca: certs/clients-ca.crt, required: false }
"#;

const ATTRS_HOST: &str = r#"
name: attrs-host
domains: ["*"]
routes:
  - name: attrs
    match: { path: { prefix: /attrs } }
    forward: { cluster: echo }
  - name: aborted
    match: { path: { prefix: /aborted } }
    forward: { cluster: echo }
    fault:
      abort: { percent: 100, status: 503 }
"#;

/// Every attribute path the tests read in the response headers.
const PATHS: &[&[&str]] = &[
    &["request", "path"],
    &["request", "url_path"],
    &["request", "host"],
    &["request", "scheme"],
    &["request", "method"],
    &["request", "headers"],
    &["request", "headers", "x-custom"],
    &["request", "referer"],
    &["request", "useragent"],
    &["request", "time"],
    &["request", "id"],
    &["request", "protocol"],
    &["request", "query"],
    &["request", "duration"],
    &["request", "size"],
    &["request", "total_size"],
    &["response", "code"],
    &["response", "code_details"],
    &["response", "flags"],
    &["response", "grpc_status"],
    &["response", "headers"],
    &["response", "trailers"],
    &["response", "size"],
    &["response", "total_size"],
    &["connection", "id"],
    &["connection", "mtls"],
    &["connection", "requested_server_name"],
    &["connection", "tls_version"],
    &["connection", "subject_local_certificate"],
    &["connection", "subject_peer_certificate"],
    &["connection", "dns_san_local_certificate"],
    &["connection", "dns_san_peer_certificate"],
    &["connection", "uri_san_local_certificate"],
    &["connection", "uri_san_peer_certificate"],
    &["connection", "sha256_peer_certificate_digest"],
    &["connection", "termination_details"],
    &["connection", "transport_failure_reason"],
    &["source", "address"],
    &["source", "port"],
    &["destination", "address"],
    &["destination", "port"],
    &["upstream", "address"],
    &["upstream", "port"],
    &["upstream", "tls_version"],
    &["upstream", "subject_local_certificate"],
    &["upstream", "subject_peer_certificate"],
    &["upstream", "dns_san_local_certificate"],
    &["upstream", "dns_san_peer_certificate"],
    &["upstream", "uri_san_local_certificate"],
    &["upstream", "uri_san_peer_certificate"],
    &["upstream", "sha256_peer_certificate_digest"],
    &["upstream", "local_address"],
    &["upstream", "transport_failure_reason"],
    &["upstream", "request_attempt_count"],
    &["xds", "node"],
    &["xds", "node", "id"],
    &["xds", "cluster_name"],
    &["xds", "cluster_metadata"],
    &["xds", "route_name"],
    &["xds", "route_metadata"],
    &["xds", "virtual_host_name"],
    &["xds", "virtual_host_metadata"],
    &["xds", "upstream_host_metadata"],
    &[
        "xds",
        "upstream_host_metadata",
        "filter_metadata",
        "envoy.lb",
        "version",
    ],
    &["xds", "filter_chain_name"],
    &["xds", "listener_direction"],
    &["xds", "listener_metadata"],
    &["plugin_name"],
    &["plugin_root_id"],
    &["plugin_vm_id"],
    &["node"],
    &["node", "id"],
    &["node", "cluster"],
    &["node", "metadata"],
    &["node", "metadata", "ISTIO_VERSION"],
    &["node", "metadata", "replicas"],
    &["node", "metadata", "canary"],
    &["node", "metadata", "LABELS", "app"],
    &["node", "locality"],
    &["node", "locality", "zone"],
    &["cluster_name"],
    &["cluster_metadata"],
    &["listener_direction"],
    &["listener_metadata"],
    &["route_name"],
    &["route_metadata"],
    &["upstream_host_metadata"],
];

/// What the response-phase plugin reads and the log-phase plugin logs.
const LOGGED: &[&[&str]] = &[
    &["request", "duration"],
    &["response", "code"],
    &["response", "code_details"],
    &["response", "flags"],
    &["response", "size"],
    &["response", "total_size"],
    &["upstream", "request_attempt_count"],
];

struct Fixture {
    gateway: Running,
    gateway_ca: CertAuthority,
    client_ca: CertAuthority,
}

async fn start() -> Fixture {
    let gateway_ca = CertAuthority::new("gateway CA");
    let client_ca = CertAuthority::new("client CA");
    let properties: Vec<_> = PATHS
        .iter()
        .map(|path| json!({ "path": path, "type": "bytes" }))
        .collect();
    let plugin = PluginSpec::new("attrs-reader", TP_PROPERTIES)
        .config(json!({ "properties": properties, "log_properties": LOGGED }));
    let gateway = Scenario::new()
        .server(NODE)
        .listener(SECURE_LISTENER)
        .server_cert("gw", &gateway_ca.server_cert(&["gw.test"]))
        .ca_cert("clients-ca.crt", &client_ca)
        .echo("echo")
        .cluster(r#"{ name: echo, endpoints: [{ address: "${ECHO}", labels: { version: v1 } }] }"#)
        .virtual_host(ATTRS_HOST)
        .plugin(plugin)
        .start()
        .await;
    Fixture {
        gateway,
        gateway_ca,
        client_ca,
    }
}

/// The response header `tp-properties` writes for a path.
fn header_name(path: &[&str]) -> String {
    format!("x-prop-{}", path.join("-")).replace(['_', '.'], "-")
}

/// A property as read (hex decoded); `None` when the host answered NOT_FOUND.
fn property(response: &HttpResponse, path: &[&str]) -> Option<Vec<u8>> {
    let name = header_name(path);
    let value = response
        .header(&name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers));
    if value == "<missing>" {
        return None;
    }
    Some(unhex(value))
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string(response: &HttpResponse, path: &[&str]) -> String {
    let bytes = property(response, path).unwrap_or_else(|| panic!("{path:?} not found"));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{path:?} is not UTF-8: {e}"))
}

/// An empty string: the SDK reads an empty value as absent, so either is accepted.
fn empty_string(response: &HttpResponse, path: &[&str]) {
    let value = property(response, path).unwrap_or_default();
    assert!(value.is_empty(), "{path:?} is empty: {value:?}");
}

fn int(response: &HttpResponse, path: &[&str]) -> i64 {
    let bytes = property(response, path).unwrap_or_else(|| panic!("{path:?} not found"));
    i64::from_le_bytes(
        bytes
            .try_into()
            .unwrap_or_else(|b: Vec<u8>| panic!("{path:?} is {} bytes, not 8", b.len())),
    )
}

fn boolean(response: &HttpResponse, path: &[&str]) -> bool {
    match property(response, path).as_deref() {
        Some([0]) => false,
        Some([1]) => true,
        other => panic!("{path:?} is not a one-byte bool: {other:?}"),
    }
}

fn not_found(response: &HttpResponse, paths: &[&[&str]]) {
    for path in paths {
        assert_eq!(property(response, path), None, "{path:?} is NOT_FOUND");
    }
}

/// Decodes the pairs format.
fn pairs(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let count = word(0);
    let mut at = 4 + count * 8;
    (0..count)
        .map(|i| {
            let (key_len, value_len) = (word(4 + i * 8), word(8 + i * 8));
            let key = bytes[at..at + key_len].to_vec();
            at += key_len + 1;
            let value = bytes[at..at + value_len].to_vec();
            at += value_len + 1;
            (key, value)
        })
        .collect()
}

/// A list property: the pairs format with each item as a key.
fn list(response: &HttpResponse, path: &[&str]) -> Vec<String> {
    let bytes = property(response, path).unwrap_or_else(|| panic!("{path:?} not found"));
    pairs(&bytes)
        .into_iter()
        .map(|(item, value)| {
            assert!(value.is_empty(), "list items have empty values");
            String::from_utf8(item).unwrap()
        })
        .collect()
}

/// The values the plugin logged in `on_log` for a request, by dotted path.
fn logged(gateway: &Gateway, path: &[&str], occurrence: usize) -> Option<String> {
    let prefix = format!("tp-properties on_log {}=", path.join("."));
    gateway
        .log()
        .lines()
        .filter_map(|line| {
            let at = line.find(&prefix)?;
            let rest = &line[at + prefix.len()..];
            Some(
                rest.split(|c: char| c.is_whitespace() || c == '"')
                    .next()?
                    .to_string(),
            )
        })
        .nth(occurrence)
}

async fn wait_for_logged(gateway: &Gateway, path: &[&str], occurrence: usize) -> String {
    for _ in 0..100 {
        if let Some(value) = logged(gateway, path, occurrence) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no on_log line for {path:?}; gateway log:\n{}",
        gateway.log()
    );
}

fn le(value: i64) -> String {
    hex(&value.to_le_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_upstream_and_xds_attributes_over_plain_http() {
    let fixture = start().await;
    let gateway = &fixture.gateway;
    let public = gateway.listener("public");
    let req = request("POST", public, "attrs.test", "/attrs/a?b=1")
        .header("referer", "https://from.test/page")
        .header("user-agent", "attrs-test/1.0")
        .header("x-custom", "custom value")
        .body(Full::from("hello"))
        .unwrap();
    let response = HttpClient::http1().send(req).await.unwrap();
    assert_eq!(response.status, StatusCode::OK, "{}", gateway.log());

    // request.*
    assert_eq!(string(&response, &["request", "path"]), "/attrs/a?b=1");
    assert_eq!(string(&response, &["request", "url_path"]), "/attrs/a");
    assert_eq!(string(&response, &["request", "host"]), "attrs.test");
    assert_eq!(string(&response, &["request", "scheme"]), "http");
    assert_eq!(string(&response, &["request", "method"]), "POST");
    assert_eq!(string(&response, &["request", "query"]), "b=1");
    assert_eq!(
        string(&response, &["request", "referer"]),
        "https://from.test/page"
    );
    assert_eq!(
        string(&response, &["request", "useragent"]),
        "attrs-test/1.0"
    );
    assert_eq!(
        string(&response, &["request", "headers", "x-custom"]),
        "custom value",
        "a map attribute walks into its key"
    );
    let request_headers = pairs(&property(&response, &["request", "headers"]).unwrap());
    assert!(
        request_headers.contains(&(b"x-custom".to_vec(), b"custom value".to_vec())),
        "request.headers is a map in the pairs format: {request_headers:?}"
    );
    assert!(
        request_headers.iter().all(|(k, _)| !k.starts_with(b":")),
        "no pseudo-headers in request.headers"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let time = int(&response, &["request", "time"]);
    assert!(
        (now - time).abs() < 60_000_000_000,
        "request.time is nanoseconds since the epoch: {time} vs {now}"
    );
    assert_eq!(
        string(&response, &["request", "id"]),
        response.header("x-request-id").unwrap()
    );
    assert_eq!(string(&response, &["request", "protocol"]), "HTTP/1.1");
    assert_eq!(int(&response, &["request", "size"]), 5, "the body's bytes");
    assert!(int(&response, &["request", "total_size"]) > 5 + 20);
    not_found(&response, &[&["request", "duration"]]);

    // response.* as the response headers pass.
    assert_eq!(int(&response, &["response", "code"]), 200);
    assert_eq!(
        string(&response, &["response", "code_details"]),
        "via_upstream"
    );
    assert_eq!(int(&response, &["response", "flags"]), 0);
    not_found(&response, &[&["response", "grpc_status"]]);
    let response_headers = pairs(&property(&response, &["response", "headers"]).unwrap());
    assert!(
        response_headers
            .iter()
            .any(|(k, v)| k == b"content-type" && v == b"application/json"),
        "{response_headers:?}"
    );
    assert_eq!(
        hex(&property(&response, &["response", "trailers"]).unwrap()),
        "00000000",
        "no trailers: an empty map, as Envoy encodes it"
    );
    assert_eq!(int(&response, &["response", "size"]), 0, "no body yet");
    assert!(int(&response, &["response", "total_size"]) > 0);

    // connection.*, source.*, destination.* on plain HTTP.
    assert!(int(&response, &["connection", "id"]) > 0);
    assert!(!boolean(&response, &["connection", "mtls"]));
    empty_string(&response, &["connection", "requested_server_name"]);
    not_found(
        &response,
        &[
            &["connection", "tls_version"],
            &["connection", "subject_local_certificate"],
            &["connection", "subject_peer_certificate"],
            &["connection", "dns_san_local_certificate"],
            &["connection", "dns_san_peer_certificate"],
            &["connection", "uri_san_local_certificate"],
            &["connection", "uri_san_peer_certificate"],
            &["connection", "sha256_peer_certificate_digest"],
            &["connection", "termination_details"],
            &["connection", "transport_failure_reason"],
        ],
    );
    let source = string(&response, &["source", "address"]);
    let source_port = int(&response, &["source", "port"]);
    assert_eq!(source, format!("127.0.0.1:{source_port}"));
    assert_eq!(
        string(&response, &["destination", "address"]),
        public.to_string()
    );
    assert_eq!(
        int(&response, &["destination", "port"]),
        i64::from(public.port())
    );

    // upstream.*: the endpoint picked.
    let echo = fixture.gateway.backend("echo").addr();
    assert_eq!(
        string(&response, &["upstream", "address"]),
        echo.to_string()
    );
    assert_eq!(
        int(&response, &["upstream", "port"]),
        i64::from(echo.port())
    );
    assert_eq!(int(&response, &["upstream", "request_attempt_count"]), 1);
    not_found(
        &response,
        &[
            &["upstream", "tls_version"],
            &["upstream", "subject_local_certificate"],
            &["upstream", "subject_peer_certificate"],
            &["upstream", "dns_san_local_certificate"],
            &["upstream", "dns_san_peer_certificate"],
            &["upstream", "uri_san_local_certificate"],
            &["upstream", "uri_san_peer_certificate"],
            &["upstream", "sha256_peer_certificate_digest"],
            &["upstream", "local_address"],
            &["upstream", "transport_failure_reason"],
        ],
    );

    // xds.* and the wasm attributes.
    assert_eq!(string(&response, &["xds", "cluster_name"]), "echo");
    assert_eq!(string(&response, &["cluster_name"]), "echo");
    assert_eq!(string(&response, &["xds", "route_name"]), "attrs");
    assert_eq!(string(&response, &["route_name"]), "attrs");
    assert_eq!(
        string(&response, &["xds", "virtual_host_name"]),
        "attrs-host"
    );
    assert_eq!(
        int(&response, &["xds", "listener_direction"]),
        2,
        "OUTBOUND"
    );
    assert_eq!(int(&response, &["listener_direction"]), 2);
    assert_eq!(
        string(
            &response,
            &[
                "xds",
                "upstream_host_metadata",
                "filter_metadata",
                "envoy.lb",
                "version"
            ]
        ),
        "v1",
        "endpoint labels are the host's envoy.lb metadata"
    );
    // Metadata { filter_metadata: { "envoy.lb": Struct { version: "v1" } } } as protobuf.
    let value = [&[0x1a, 2][..], b"v1"].concat();
    let field = [
        &[0x0a, 7][..],
        b"version",
        &[0x12, value.len() as u8],
        &value,
    ]
    .concat();
    let structure = [&[0x0a, field.len() as u8][..], &field].concat();
    let entry = [
        &[0x0a, 8][..],
        b"envoy.lb",
        &[0x12, structure.len() as u8],
        &structure,
    ]
    .concat();
    let metadata = [&[0x0a, entry.len() as u8][..], &entry].concat();
    assert_eq!(
        hex(&property(&response, &["xds", "upstream_host_metadata"]).unwrap()),
        hex(&metadata)
    );
    assert_eq!(
        property(&response, &["upstream_host_metadata"]),
        Some(metadata)
    );
    not_found(
        &response,
        &[
            &["xds", "cluster_metadata"],
            &["xds", "route_metadata"],
            &["xds", "virtual_host_metadata"],
            &["xds", "filter_chain_name"],
            &["xds", "listener_metadata"],
            &["cluster_metadata"],
            &["route_metadata"],
            &["listener_metadata"],
        ],
    );
    assert_eq!(string(&response, &["plugin_name"]), "attrs-reader");
    assert_eq!(string(&response, &["plugin_root_id"]), "attrs-reader");
    empty_string(&response, &["plugin_vm_id"]);

    // The log phase sees the finished exchange.
    let body_size = response.body.len() as i64;
    assert_eq!(
        wait_for_logged(gateway, &["response", "size"], 0).await,
        le(body_size)
    );
    let duration = unhex(&wait_for_logged(gateway, &["request", "duration"], 0).await);
    let duration = i64::from_le_bytes(duration.try_into().expect("8 bytes"));
    assert!(
        duration > 0 && duration < 10_000_000_000,
        "request.duration in nanoseconds: {duration}"
    );
    assert_eq!(
        wait_for_logged(gateway, &["response", "code_details"], 0).await,
        hex(b"via_upstream")
    );
    assert_eq!(
        wait_for_logged(gateway, &["upstream", "request_attempt_count"], 0).await,
        le(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_attributes_come_from_server_node() {
    let fixture = start().await;
    let gateway = &fixture.gateway;
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "attrs.test", "/attrs/node")
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", gateway.log());
    assert_eq!(string(&response, &["node", "id"]), "gateway-7");
    assert_eq!(string(&response, &["xds", "node", "id"]), "gateway-7");
    assert_eq!(string(&response, &["node", "cluster"]), "edge");
    assert_eq!(
        string(&response, &["node", "metadata", "ISTIO_VERSION"]),
        "1.22.0"
    );
    assert_eq!(
        string(&response, &["node", "metadata", "LABELS", "app"]),
        "edge"
    );
    assert_eq!(
        property(&response, &["node", "metadata", "replicas"]),
        Some(3.0f64.to_le_bytes().to_vec()),
        "a Struct number is a double"
    );
    assert!(boolean(&response, &["node", "metadata", "canary"]));
    assert_eq!(
        string(&response, &["node", "locality", "zone"]),
        "eu-west-1a"
    );
    let metadata = pairs(&property(&response, &["node", "metadata"]).unwrap());
    let keys: Vec<String> = metadata
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    assert_eq!(keys, ["ISTIO_VERSION", "LABELS", "canary", "replicas"]);
    // Locality { region, zone, sub_zone } as protobuf.
    let locality = [
        &[0x0a, 7][..],
        b"eu-west",
        &[0x12, 10],
        b"eu-west-1a",
        &[0x1a, 6],
        b"rack-4",
    ]
    .concat();
    assert_eq!(
        property(&response, &["node", "locality"]),
        Some(locality.clone())
    );
    // Node { id = 1, cluster = 2, metadata = 3, locality = 4 }: the whole message.
    let node = property(&response, &["node"]).unwrap();
    let head = [&[0x0a, 9][..], b"gateway-7", &[0x12, 4], b"edge", &[0x1a]].concat();
    assert!(
        node.starts_with(&head),
        "node is a serialized Node message: {}",
        hex(&node)
    );
    let tail = [&[0x22, locality.len() as u8][..], &locality].concat();
    assert!(node.ends_with(&tail), "locality is field 4: {}", hex(&node));
    assert_eq!(property(&response, &["xds", "node"]), Some(node));

    // /config shows the node the gateway runs with.
    let config = gateway.admin_get("/config").await.json();
    assert_eq!(config["server"]["node"]["id"], "gateway-7");
    assert_eq!(
        config["server"]["node"]["metadata"]["LABELS"]["app"],
        "edge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_certificate_attributes_over_mutual_tls() {
    let fixture = start().await;
    let gateway = &fixture.gateway;
    let alice = fixture.client_ca.client_cert_with_names(
        "alice",
        "Tollgate Tests",
        &["alice.test"],
        &["spiffe://tollgate.test/ns/default/sa/alice"],
    );
    let addr = gateway.listener("secure");
    let options = TlsOptions::new("gw.test", &fixture.gateway_ca.cert_pem()).client_cert(&alice);
    let session = tls_connect(addr, &options).await.unwrap();
    let response = session
        .send(tollgate_tests::clients::get_request(
            addr,
            "gw.test",
            "/attrs/tls",
        ))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK, "{}", gateway.log());

    assert!(boolean(&response, &["connection", "mtls"]));
    assert_eq!(string(&response, &["connection", "tls_version"]), "TLSv1.3");
    assert_eq!(
        string(&response, &["connection", "requested_server_name"]),
        "gw.test"
    );
    assert_eq!(string(&response, &["request", "scheme"]), "https");
    // RFC 2253 writes the RDNs last first, whatever order the certificate has them in.
    let (_, parsed) = x509_parser::parse_x509_certificate(&alice.cert_der).unwrap();
    let mut rdns: Vec<String> = parsed
        .subject()
        .iter_rdn()
        .flat_map(|rdn| rdn.iter())
        .map(|attribute| {
            let name = match attribute.attr_type().to_id_string().as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.10" => "O",
                other => panic!("unexpected attribute {other}"),
            };
            format!("{name}={}", attribute.as_str().unwrap())
        })
        .collect();
    assert_eq!(rdns.len(), 2);
    rdns.reverse();
    assert_eq!(
        string(&response, &["connection", "subject_peer_certificate"]),
        rdns.join(",")
    );
    assert_eq!(
        string(&response, &["connection", "subject_local_certificate"]),
        "CN=gw.test"
    );
    assert_eq!(
        list(&response, &["connection", "dns_san_peer_certificate"]),
        ["alice.test"]
    );
    assert_eq!(
        list(&response, &["connection", "uri_san_peer_certificate"]),
        ["spiffe://tollgate.test/ns/default/sa/alice"]
    );
    assert_eq!(
        list(&response, &["connection", "dns_san_local_certificate"]),
        ["gw.test"]
    );
    assert_eq!(
        list(&response, &["connection", "uri_san_local_certificate"]),
        Vec::<String>::new()
    );
    assert_eq!(
        string(&response, &["connection", "sha256_peer_certificate_digest"]),
        hex(&sha2::Sha256::digest(&alice.cert_der)),
    );
    not_found(
        &response,
        &[
            &["connection", "termination_details"],
            &["connection", "transport_failure_reason"],
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_details_and_flags_of_a_gateway_answer() {
    let fixture = start().await;
    let gateway = &fixture.gateway;
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "attrs.test", "/aborted")
        .await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(int(&response, &["response", "code"]), 503);
    assert_eq!(
        string(&response, &["response", "code_details"]),
        "fault_filter_abort"
    );
    assert_eq!(int(&response, &["response", "flags"]), 0x400, "FI");
    not_found(
        &response,
        &[
            &["upstream", "address"],
            &["upstream", "port"],
            &["upstream", "request_attempt_count"],
            &["upstream_host_metadata"],
        ],
    );
    assert_eq!(
        wait_for_logged(gateway, &["response", "flags"], 0).await,
        le(0x400)
    );
    assert!(
        gateway.log().contains("response_flags=\"FI\"")
            || gateway.log().contains("response_flags=FI"),
        "the access log writes Envoy's short flag names: {}",
        gateway.log()
    );
    assert_eq!(fixture.gateway.backend("echo").request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_of_a_local_answer_to_a_grpc_call() {
    let fixture = start().await;
    let gateway = &fixture.gateway;
    let req = request(
        "POST",
        gateway.listener("public"),
        "attrs.test",
        "/aborted.Svc/Call",
    )
    .header("content-type", "application/grpc")
    .body(Full::from(vec![0u8; 5]))
    .unwrap();
    let response = HttpClient::h2c().send(req).await.unwrap();
    assert_eq!(response.header("grpc-status"), Some("14"), "{response:?}");
    // The response plugins see the answer as the client gets it.
    assert_eq!(int(&response, &["response", "code"]), 200);
    assert_eq!(int(&response, &["response", "grpc_status"]), 14);
    assert_eq!(string(&response, &["request", "protocol"]), "HTTP/2");
}
