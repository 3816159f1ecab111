//! `tollgate export istio` and `tollgate import istio`: what each carries over, what each
//! reports it cannot, that the two undo each other on what both can express, and that the
//! exported documents are valid Istio resources by Istio's own schemas.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use http_body_util::Full;
use serde::Deserialize as _;
use serde_json::Value;
use tollgate_tests::certs::CertAuthority;
use tollgate_tests::clients::{request, HttpClient};
use tollgate_tests::fixtures::{demo_policies, every_field_policies, plugins_dir};
use tollgate_tests::gateway::{tollgate_binary, Gateway, PolicyDir};
use tollgate_tests::scenario::Scenario;
use tollgate_tests::{backends, bundled, python};

/// What a finished command printed, apart.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn tollgate(args: &[&str]) -> Outcome {
    let output = Command::new(tollgate_binary())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run tollgate {args:?}: {e}"));
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn export(policies: &Path, plugins: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "export",
        "istio",
        "--policies",
        path_str(policies),
        "--plugins",
        path_str(plugins),
    ];
    args.extend_from_slice(extra);
    tollgate(&args)
}

fn import(files: &[PathBuf], out: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec!["import", "istio"];
    args.extend(files.iter().map(|file| path_str(file)));
    args.extend_from_slice(&["--out", path_str(out)]);
    args.extend_from_slice(extra);
    tollgate(&args)
}

/// Imports an export's text into `policies` in a new temporary folder (which lives as long
/// as the returned handle); the import must succeed.
fn import_exported(exported: &str) -> (tempfile::TempDir, PathBuf, Outcome) {
    let dir = tempfile::tempdir().expect("temp");
    let istio = dir.path().join("istio.yaml");
    std::fs::write(&istio, exported).expect("write the export");
    let out = dir.path().join("policies");
    let imported = import(std::slice::from_ref(&istio), &out, &[]);
    assert_eq!(imported.code, Some(0), "{}", imported.stderr);
    (dir, out, imported)
}

/// The Istio resources of tests/fixtures/istio, in name order.
fn fixture_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/istio");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A plugins folder with the bundled plugins under the file names policies use
/// (`key-auth.wasm`), for folders the import writes.
fn bundled_plugins_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("plugins folder");
    for (name, path) in bundled::ALL {
        std::fs::copy(path, dir.path().join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copy {path}: {e}"));
    }
    dir
}

/// The secrets the fixture's credentialNames stand for, where the import expects them.
fn write_fixture_certs(policies: &Path) {
    let certs = policies.join("certs");
    let ca = CertAuthority::new("fixture CA");
    ca.server_cert(&["shop.example.com", "*.shop.example.com"])
        .write(&certs, "shop-cert");
    ca.server_cert(&["api.example.com"])
        .write(&certs, "api-cert");
    ca.server_cert(&["partners.example.com"])
        .write(&certs, "partner-cert");
    ca.write(&certs, "partner-cert-cacert.crt");
    ca.write(&certs, "payments-ca.crt");
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("warning: "))
        .collect()
}

// --- Comparing Istio documents as Istio reads them ---

/// Lists whose order Istio ignores.
const UNORDERED_LISTS: [&str; 9] = [
    "servers",
    "hosts",
    "gateways",
    "subsets",
    "endpoints",
    "ports",
    "env",
    "route",
    "subjectAltNames",
];

/// Fields that hold durations (`1m` is `60s`).
const DURATIONS: [&str; 7] = [
    "connectTimeout",
    "idleTimeout",
    "baseEjectionTime",
    "fixedDelay",
    "timeout",
    "perTryTimeout",
    "interval",
];

/// Milliseconds of an Istio duration (`1m30s`, `0.250s`, `250ms`).
fn duration_millis(text: &str) -> Option<f64> {
    let mut rest = text;
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        total += number
            * match &rest[..unit_end] {
                "h" => 3_600_000.0,
                "m" => 60_000.0,
                "s" => 1000.0,
                "ms" => 1.0,
                _ => return None,
            };
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// The value with numbers as floats, durations as milliseconds and unordered lists sorted.
fn canonical(value: &Value, key: &str) -> Value {
    match value {
        Value::Number(number) => Value::from(number.as_f64().expect("a number")),
        Value::String(text) if DURATIONS.contains(&key) => duration_millis(text)
            .map(Value::from)
            .unwrap_or_else(|| value.clone()),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(|item| canonical(item, key)).collect();
            if UNORDERED_LISTS.contains(&key) {
                items.sort_by_key(|item| item.to_string());
            }
            Value::Array(items)
        }
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, field)| (name.clone(), canonical(field, name)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The documents of multi-document YAML texts, by kind and name, in canonical form.
fn documents<'a>(texts: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    for text in texts {
        for document in serde_norway::Deserializer::from_str(text) {
            let value = Value::deserialize(document).expect("valid YAML");
            if value.is_null() {
                continue;
            }
            let id = format!(
                "{} {}",
                value["kind"].as_str().unwrap_or_default(),
                value["metadata"]["name"].as_str().unwrap_or_default()
            );
            assert!(
                found.insert(id.clone(), canonical(&value, "")).is_none(),
                "{id} twice"
            );
        }
    }
    found
}

fn assert_same_documents(expected: &BTreeMap<String, Value>, actual: &BTreeMap<String, Value>) {
    let expected_ids: Vec<&String> = expected.keys().collect();
    let actual_ids: Vec<&String> = actual.keys().collect();
    assert_eq!(expected_ids, actual_ids, "the same resources");
    for (id, document) in expected {
        assert_eq!(
            document,
            &actual[id],
            "{id} differs:\nexpected {}\nactual   {}",
            serde_json::to_string_pretty(document).unwrap(),
            serde_json::to_string_pretty(&actual[id]).unwrap()
        );
    }
}

fn validate(documents: &str) -> (bool, String) {
    let (valid, stdout, stderr) = python::run_tool("validate_istio.py", &[], Some(documents));
    (valid, format!("{stdout}{stderr}"))
}

// --- Import then export ---

#[test]
fn importing_the_fixture_and_exporting_it_again_gives_the_same_resources() {
    let policies = tempfile::tempdir().expect("policies folder");
    let imported = import(&fixture_files(), policies.path(), &[]);
    assert_eq!(imported.code, Some(0), "import: {}", imported.stderr);
    assert_eq!(
        warnings(&imported.stderr),
        Vec::<&str>::new(),
        "the fixture uses only fields the import carries over"
    );
    let mut names: Vec<String> = std::fs::read_dir(policies.path())
        .expect("read the imported folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "clusters.yaml",
            "listeners.yaml",
            "plugins.yaml",
            "routes.yaml"
        ]
    );

    write_fixture_certs(policies.path());
    let plugins = bundled_plugins_dir();
    let check = tollgate(&[
        "check",
        "--policies",
        path_str(policies.path()),
        "--plugins",
        path_str(plugins.path()),
    ]);
    assert_eq!(
        check.code,
        Some(0),
        "the imported folder passes check: {}{}",
        check.stdout,
        check.stderr
    );

    let exported = export(
        policies.path(),
        plugins.path(),
        &[
            "--module-url-prefix",
            "oci://registry.example.com/tollgate/",
        ],
    );
    assert_eq!(exported.code, Some(0), "export: {}", exported.stderr);
    assert_eq!(warnings(&exported.stderr), Vec::<&str>::new());
    let fixture: Vec<String> = fixture_files()
        .iter()
        .map(|file| std::fs::read_to_string(file).expect("read the fixture"))
        .collect();
    assert_same_documents(
        &documents(fixture.iter().map(String::as_str)),
        &documents([exported.stdout.as_str()]),
    );
    let (valid, report) = validate(&exported.stdout);
    assert!(valid, "the export of the fixture is valid Istio:\n{report}");
}

#[test]
fn the_fixture_is_valid_istio() {
    let fixture: String = fixture_files()
        .iter()
        .map(|file| format!("---\n{}", std::fs::read_to_string(file).expect("read")))
        .collect();
    let (valid, report) = validate(&fixture);
    assert!(valid, "{report}");
    assert!(report.contains("20 documents checked"), "{report}");
}

// --- Export ---

#[test]
fn the_demo_export_is_valid_istio_and_names_what_it_cannot_carry() {
    let policies = demo_policies();
    let plugins = plugins_dir(&policies);
    let exported = export(&policies.path(), &plugins, &[]);
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    let (valid, report) = validate(&exported.stdout);
    assert!(valid, "{report}");

    let found = documents([exported.stdout.as_str()]);
    for id in [
        "Gateway tollgate",
        "VirtualService shop",
        "VirtualService default",
        "ServiceEntry shop",
        "DestinationRule shop",
        "WasmPlugin keys",
    ] {
        assert!(found.contains_key(id), "{id} in {:?}", found.keys());
    }
    let keys = &found["WasmPlugin keys"]["spec"];
    assert_eq!(keys["phase"], "AUTHN");
    assert_eq!(keys["priority"], 100.0);
    assert_eq!(keys["pluginConfig"]["key_names"][0], "x-api-key");
    let module = plugins.join("key-auth.wasm");
    assert_eq!(keys["url"], format!("file://{}", module.display()));
    assert_eq!(found["WasmPlugin metering"]["spec"]["phase"], "STATS");
    let shop_rule = &found["DestinationRule shop"]["spec"];
    assert_eq!(shop_rule["host"], "shop.tollgate.internal");
    assert_eq!(shop_rule["subsets"][0]["name"], "v1");
    let canary = found["VirtualService shop"]["spec"]["http"]
        .as_array()
        .expect("http routes")
        .iter()
        .find(|route| route["name"] == "shop-canary")
        .cloned()
        .expect("the shop-canary route");
    assert_eq!(canary["route"][0]["weight"], 90.0);
    assert_eq!(canary["route"][0]["destination"]["subset"], "v1");
    let https = found["Gateway tollgate"]["spec"]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|server| server["name"] == "https")
        .cloned()
        .expect("the https server");
    assert_eq!(https["tls"]["credentialName"], "demo");
    assert_eq!(https["tls"]["mode"], "SIMPLE");

    for expected in [
        "warning: routes.yaml: virtual_hosts[0].routes[0].redirect.prefix: ",
        "warning: routes.yaml: virtual_hosts[0].routes[5].forward.retries.non_idempotent: ",
        "warning: clusters.yaml: clusters[0].limits.max_idle_per_endpoint: ",
        "warning: listeners.yaml: server.idle_timeout: ",
        "warning: plugins.yaml: plugins[0].apply_to: ",
        "warning: plugins.yaml: plugins[3].apply_to: ",
    ] {
        assert!(
            exported.stderr.contains(expected),
            "{expected:?} in:\n{}",
            exported.stderr
        );
    }
    // Every loss names a policy file and a path in it.
    for warning in warnings(&exported.stderr) {
        let field = warning.trim_start_matches("warning: ");
        assert!(
            field.split(": ").count() >= 3 && field.contains(".yaml: "),
            "{warning}"
        );
    }
}

/// Every field of the policies either reaches the export or is named as a loss.
#[test]
fn every_field_export_is_valid_istio_and_names_each_loss() {
    let policies = every_field_policies();
    let plugins = plugins_dir(&policies);
    let exported = export(&policies.path(), &plugins, &[]);
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    let (valid, report) = validate(&exported.stdout);
    assert!(valid, "{report}");

    let found = documents([exported.stdout.as_str()]);
    // Two certificates on one listener: a server each, by the hosts they name.
    let servers = found["Gateway tollgate"]["spec"]["servers"]
        .as_array()
        .expect("servers")
        .clone();
    let tls_hosts: Vec<(String, Value)> = servers
        .iter()
        .filter(|server| server["tls"].is_object())
        .map(|server| {
            (
                server["tls"]["credentialName"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                server["hosts"].clone(),
            )
        })
        .collect();
    assert_eq!(
        tls_hosts,
        [
            (
                "shop".to_string(),
                serde_json::json!(["*.shop.every.test", "shop.every.test"])
            ),
            ("api".to_string(), serde_json::json!(["api.every.test"])),
        ]
    );
    for server in servers.iter().filter(|server| server["tls"].is_object()) {
        assert_eq!(
            server["tls"]["mode"], "OPTIONAL_MUTUAL",
            "client_auth.required: false"
        );
        assert_eq!(server["tls"]["minProtocolVersion"], "TLSV1_3");
    }
    let orders = &found["ServiceEntry orders"]["spec"];
    assert_eq!(orders["ports"][0]["protocol"], "HTTP2");
    let orders_rule = &found["DestinationRule orders"]["spec"]["trafficPolicy"];
    assert_eq!(orders_rule["outlierDetection"]["consecutive5xxErrors"], 3.0);
    assert_eq!(orders_rule["loadBalancer"]["simple"], "LEAST_REQUEST");
    let billing_rule = &found["DestinationRule billing"]["spec"]["trafficPolicy"];
    assert_eq!(billing_rule["tls"]["credentialName"], "upstream-ca");
    assert_eq!(billing_rule["tls"]["sni"], "billing.internal");
    assert_eq!(
        billing_rule["loadBalancer"]["consistentHash"]["httpCookie"]["name"],
        "session"
    );
    let checkout = found
        .values()
        .filter_map(|document| document["spec"]["http"].as_array())
        .flatten()
        .find(|http| http["name"] == "checkout")
        .expect("the checkout route");
    assert_eq!(
        checkout["rewrite"]["uriRegexRewrite"],
        serde_json::json!({ "match": "^/(check)(out)$", "rewrite": "/pay/\\2/\\1" })
    );
    assert_eq!(found["ServiceEntry billing"]["spec"]["resolution"], "DNS");
    // Mutual TLS to a STRICT sidecar: the workload certificate's files and the identities
    // expected of the endpoints.
    let inventory_tls = &found["DestinationRule inventory"]["spec"]["trafficPolicy"]["tls"];
    assert_eq!(inventory_tls["mode"], "MUTUAL");
    let file = |field: &str| {
        inventory_tls[field]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(file("clientCertificate").ends_with("certs/gateway-workload.crt"));
    assert!(file("privateKey").ends_with("certs/gateway-workload.key"));
    assert!(file("caCertificates").ends_with("certs/mesh-ca.crt"));
    assert!(inventory_tls.get("credentialName").is_none());
    assert_eq!(
        inventory_tls["subjectAltNames"],
        // (`documents` sorts lists.)
        serde_json::json!([
            "inventory.every.test",
            "spiffe://cluster.local/ns/shop/sa/inventory"
        ])
    );
    assert!(!found.contains_key("WasmPlugin heartbeat"));

    let mut expected: Vec<String> = [
        "access_log",
        "body_read_timeout",
        "drain_timeout",
        "header_read_timeout",
        "idle_timeout",
        "max_connections",
        "max_buffered_body_bytes",
        "max_request_body_bytes",
        "max_request_header_bytes",
        "merge_slashes",
        "node",
        "normalize_path",
        "path_with_escaped_slashes_action",
        "plugin_limits",
        "stream_idle_timeout",
        "strip_trailing_host_dot",
        "tracing",
    ]
    .iter()
    .map(|field| format!("server.yaml: server.{field}"))
    .collect();
    expected.extend(
        [
            "routes.yaml: virtual_hosts[0].routes[0].match.query[3].present",
            "routes.yaml: virtual_hosts[0].routes[2].forward.retries.non_idempotent",
            "routes.yaml: virtual_hosts[0].routes[3].redirect.prefix",
            "routes.yaml: virtual_hosts[0].routes[3].redirect.strip_query",
            "clusters.yaml: clusters[0].limits.max_idle_per_endpoint",
            "clusters.yaml: clusters[1].health.active",
            "plugins.yaml: plugins[0].config",
            "plugins.yaml: plugins[1].apply_to",
            "plugins.yaml: plugins[1].route_config.orders-canary",
            "plugins.yaml: plugins[1].vm_config",
            "plugins.yaml: plugins[1].vm_id",
            "plugins.yaml: plugins[1].callback_timeout",
            "plugins.yaml: plugins[1].memory_limit",
            "plugins.yaml: plugins[1].max_traps_per_minute",
            "plugins.yaml: plugins[1].circuit_open_time",
            "plugins.yaml: plugins[2].apply_to",
            "plugins.yaml: plugins[2].route_config.order-by-id",
            "plugins.yaml: plugins[2].route_config.ping",
            "plugins.yaml: plugins[3].singleton",
        ]
        .map(String::from),
    );
    let mut reported: Vec<String> = warnings(&exported.stderr)
        .iter()
        .map(|line| {
            let field = line.trim_start_matches("warning: ");
            let (file, rest) = field.split_once(": ").expect("file: field: reason");
            let (path, _) = rest.split_once(": ").expect("field: reason");
            format!("{file}: {path}")
        })
        .collect();
    reported.sort();
    expected.sort();
    assert_eq!(reported, expected, "{}", exported.stderr);
}

#[test]
fn plugin_settings_without_an_istio_form_are_losses() {
    let mut policies = PolicyDir::new();
    policies.write(
        "policies.yaml",
        "
listeners:
  - { name: web, address: 127.0.0.1:18080 }
  - { name: admin, address: 127.0.0.1:18081 }
clusters:
  - name: app
    endpoints: [{ address: 127.0.0.1:19001 }]
virtual_hosts:
  - name: public
    domains: [app.test]
    listeners: [web]
    routes:
      - name: all
        forward: { cluster: app }
  - name: internal
    domains: [internal.test]
    listeners: [admin]
    routes:
      - name: internal-all
        forward: { cluster: app }
plugins:
  - name: reshape
    module: transformer.wasm
    config: '{\"request\": {}}'
    vm_config: { threads: 1 }
    vm_id: shared
    memory_limit: 16777216
    route_config:
      all: { request: {} }
  - name: guard
    module: acl.wasm
    singleton: true
  - name: internal-only
    module: key-auth.wasm
    priority: 120
    failure_policy: fail_open
    env: { REGION: eu }
    apply_to: { virtual_hosts: [internal] }
    config:
      key_names: [x-api-key]
      consumers: [{ name: ops, keys: [k] }]
",
    );
    let plugins = bundled_plugins_dir();
    let exported = export(&policies.path(), plugins.path(), &[]);
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    for expected in [
        "warning: policies.yaml: plugins[0].config: ",
        "warning: policies.yaml: plugins[0].vm_config: ",
        "warning: policies.yaml: plugins[0].vm_id: ",
        "warning: policies.yaml: plugins[0].memory_limit: ",
        "warning: policies.yaml: plugins[1].singleton: ",
    ] {
        assert!(
            exported.stderr.contains(expected),
            "{expected:?} in:\n{}",
            exported.stderr
        );
    }
    assert_eq!(warnings(&exported.stderr).len(), 5, "{}", exported.stderr);
    let found = documents([exported.stdout.as_str()]);
    assert!(!found.contains_key("WasmPlugin guard"));
    let reshape = &found["WasmPlugin reshape"]["spec"];
    assert!(reshape.get("pluginConfig").is_none());
    // The route with a configuration of its own is alone on its listener: a second
    // WasmPlugin there carries it, and the first keeps to the other listener.
    assert_eq!(reshape["match"][0]["ports"][0]["number"], 18081.0);
    let reshape_all = &found["WasmPlugin reshape-all"]["spec"];
    assert_eq!(reshape_all["match"][0]["ports"][0]["number"], 18080.0);
    assert_eq!(
        reshape_all["pluginConfig"],
        serde_json::json!({ "request": {} })
    );
    assert_eq!(reshape_all["pluginName"], "reshape");
    // A virtual host alone on its listener: the plugin matches that listener's port.
    let internal_only = &found["WasmPlugin internal-only"]["spec"];
    assert_eq!(internal_only["match"][0]["ports"][0]["number"], 18081.0);
    assert_eq!(internal_only["failStrategy"], "FAIL_OPEN");
    assert_eq!(internal_only["vmConfig"]["env"][0]["value"], "eu");
    let (valid, report) = validate(&exported.stdout);
    assert!(valid, "{report}");
}

#[test]
fn the_module_url_prefix_and_namespace_are_applied() {
    let policies = demo_policies();
    let plugins = plugins_dir(&policies);
    for (prefix, expected) in [
        (
            "oci://ghcr.io/acme/plugins/",
            "oci://ghcr.io/acme/plugins/key-auth",
        ),
        (
            "https://cdn.example.com/wasm/",
            "https://cdn.example.com/wasm/key-auth.wasm",
        ),
    ] {
        let exported = export(
            &policies.path(),
            &plugins,
            &["--module-url-prefix", prefix, "--namespace", "edge"],
        );
        assert_eq!(exported.code, Some(0), "{}", exported.stderr);
        let found = documents([exported.stdout.as_str()]);
        assert_eq!(found["WasmPlugin keys"]["spec"]["url"], expected);
        for (id, document) in &found {
            assert_eq!(document["metadata"]["namespace"], "edge", "{id}");
        }
    }
}

#[test]
fn the_validator_names_a_wrong_field() {
    let policies = demo_policies();
    let plugins = plugins_dir(&policies);
    let exported = export(&policies.path(), &plugins, &[]);
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    let misspelt = exported
        .stdout
        .replacen("redirectCode:", "redirect_code:", 1);
    assert_ne!(misspelt, exported.stdout);
    let (valid, report) = validate(&misspelt);
    assert!(!valid, "a misspelt field must fail:\n{report}");
    assert!(
        report.contains("VirtualService shop: spec.http[0].redirect.redirect_code: unknown field"),
        "{report}"
    );
    let wrong_enum = exported.stdout.replacen("phase: AUTHN", "phase: AUTH", 1);
    let (valid, report) = validate(&wrong_enum);
    assert!(!valid, "an unknown phase must fail:\n{report}");
    assert!(report.contains("WasmPlugin keys: spec.phase: "), "{report}");
}

#[test]
fn strict_export_fails_and_writes_nothing() {
    let policies = demo_policies();
    let plugins = plugins_dir(&policies);
    let strict = export(&policies.path(), &plugins, &["--strict"]);
    assert_eq!(strict.code, Some(1));
    assert_eq!(strict.stdout, "", "nothing on stdout");
    assert!(
        strict
            .stderr
            .contains("error: routes.yaml: virtual_hosts[0].routes[0].redirect.prefix: "),
        "{}",
        strict.stderr
    );
}

// --- Import ---

const UNSUPPORTED: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: edge }
spec:
  selector: { istio: ingressgateway }
  servers:
    - port: { number: 80, name: http, protocol: HTTP }
      hosts: [\"*\"]
    - port: { number: 3306, name: mysql, protocol: TCP }
      hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web }
spec:
  hosts: [\"*\"]
  gateways: [edge]
  http:
    - name: web-all
      corsPolicy: { allowOrigins: [{ exact: https://example.com }] }
      route:
        - destination: { host: web.shop.svc.cluster.local, port: { number: 8080 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: web }
spec:
  host: web.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: { consistentHash: { httpQueryParameterName: user } }
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: tcp-filter }
spec:
  url: oci://registry.example.com/tcp-filter:1.0
  type: NETWORK
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-all }
spec: {}
";

#[test]
fn import_names_the_fields_it_cannot_carry_over() {
    let dir = tempfile::tempdir().expect("temp");
    let input = dir.path().join("istio.yaml");
    std::fs::write(&input, UNSUPPORTED).expect("write the input");
    let out = dir.path().join("policies");
    let imported = import(std::slice::from_ref(&input), &out, &[]);
    assert_eq!(imported.code, Some(0), "{}", imported.stderr);
    for expected in [
        "warning: Gateway edge: spec.servers[1].port.protocol: ",
        "warning: VirtualService web: spec.http[0].corsPolicy: ",
        "warning: VirtualService web: spec.http[0].timeout: ",
        "warning: VirtualService web: spec.http[0].retries: ",
        "warning: DestinationRule web: spec.trafficPolicy.loadBalancer.consistentHash: ",
        "warning: DestinationRule web: spec.trafficPolicy.outlierDetection: ",
        "warning: WasmPlugin tcp-filter: spec.type: ",
        "warning: AuthorizationPolicy deny-all: (resource): ",
    ] {
        assert!(
            imported.stderr.contains(expected),
            "{expected:?} in:\n{}",
            imported.stderr
        );
    }
    // What could be carried over still makes a folder the gateway accepts: the Kubernetes
    // service is a DNS endpoint on the destination's port.
    let check = tollgate(&["check", "--policies", path_str(&out)]);
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
    let clusters = std::fs::read_to_string(out.join("clusters.yaml")).expect("clusters.yaml");
    assert!(
        clusters.contains("address: web.shop.svc.cluster.local:8080"),
        "{clusters}"
    );
    assert!(
        clusters.contains("load_balancing: least_request"),
        "{clusters}"
    );
}

/// An export's consistent hash and regex rewrite as the import reads them back.
#[test]
fn import_reads_consistent_hashing_and_regex_rewrites() {
    let mut policies = PolicyDir::new();
    policies.write(
        "policies.yaml",
        r#"
listeners:
  - { name: web, address: 127.0.0.1:18084 }
clusters:
  - name: sessions
    load_balancing: ring_hash
    hash_on: { cookie: session }
    endpoints: [{ address: 127.0.0.1:19031 }]
virtual_hosts:
  - name: all
    domains: ['*']
    routes:
      - name: services
        match: { path: { prefix: /service/ } }
        forward:
          cluster: sessions
          rewrite: { regex: { pattern: '^/service/([^/]+)(/.*)$', substitution: '\2/instance/\1' } }
"#,
    );
    let exported = export(&policies.path(), Path::new("unused-plugins"), &[]);
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    assert_eq!(
        warnings(&exported.stderr),
        Vec::<&str>::new(),
        "{}",
        exported.stderr
    );
    let (valid, report) = validate(&exported.stdout);
    assert!(valid, "{report}");

    let (_dir, out, imported) = import_exported(&exported.stdout);
    assert_eq!(
        warnings(&imported.stderr),
        Vec::<&str>::new(),
        "{}",
        imported.stderr
    );
    let check = tollgate(&["check", "--policies", path_str(&out)]);
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
    let clusters = std::fs::read_to_string(out.join("clusters.yaml")).expect("clusters.yaml");
    assert!(clusters.contains("load_balancing: ring_hash"), "{clusters}");
    assert!(clusters.contains("cookie: session"), "{clusters}");
    let routes = std::fs::read_to_string(out.join("routes.yaml")).expect("routes.yaml");
    assert!(
        routes.contains("pattern: ^/service/([^/]+)(/.*)$"),
        "{routes}"
    );
    assert!(routes.contains(r"substitution: \2/instance/\1"), "{routes}");
}

#[test]
fn strict_import_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp");
    let input = dir.path().join("istio.yaml");
    std::fs::write(&input, UNSUPPORTED).expect("write the input");
    let out = dir.path().join("policies");
    let strict = import(std::slice::from_ref(&input), &out, &["--strict"]);
    assert_eq!(strict.code, Some(1));
    assert!(
        strict
            .stderr
            .contains("error: VirtualService web: spec.http[0].corsPolicy: "),
        "{}",
        strict.stderr
    );
    assert!(!out.exists(), "nothing written under --strict");
}

// --- Export then import ---

/// A route as policies write it, with what the round trip may change made explicit: the
/// default timeout written out, and `non_idempotent` (Istio retries every method).
fn comparable_route(route: &Value) -> Value {
    let mut route = canonical(route, "");
    if let Some(forward) = route.get_mut("forward").and_then(Value::as_object_mut) {
        forward
            .entry("timeout")
            .or_insert_with(|| Value::from(15_000.0));
        if let Some(timeout) = forward.get("timeout").and_then(Value::as_str) {
            let millis = duration_millis(timeout).expect("a duration");
            forward.insert("timeout".into(), Value::from(millis));
        }
        if let Some(retries) = forward.get_mut("retries").and_then(Value::as_object_mut) {
            retries.remove("non_idempotent");
        }
    }
    if let Some(redirect) = route.get_mut("redirect").and_then(Value::as_object_mut) {
        // Reported as a loss: Istio redirects do not replace a matched prefix.
        redirect.remove("prefix");
        redirect.entry("code").or_insert(Value::from(301.0));
    }
    route
}

fn virtual_hosts(routes_yaml: &str) -> BTreeMap<String, (Value, Vec<Value>)> {
    let document: Value = serde_norway::from_str(routes_yaml).expect("routes YAML");
    document["virtual_hosts"]
        .as_array()
        .expect("virtual_hosts")
        .iter()
        .map(|vhost| {
            let routes = vhost["routes"]
                .as_array()
                .expect("routes")
                .iter()
                .map(comparable_route)
                .collect();
            (
                vhost["name"].as_str().expect("name").to_string(),
                (vhost["domains"].clone(), routes),
            )
        })
        .collect()
}

/// Exports `policies` to Istio and imports the result again, into `policies` of the
/// returned folder.
fn export_and_import(policies: &PolicyDir, plugins: &Path) -> (tempfile::TempDir, Outcome) {
    let exported = export(&policies.path(), plugins, &[]);
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    let (dir, _, imported) = import_exported(&exported.stdout);
    (dir, imported)
}

#[test]
fn importing_the_demo_export_keeps_its_routes() {
    let policies = demo_policies();
    let plugins = plugins_dir(&policies);
    let (dir, imported) = export_and_import(&policies, &plugins);
    let out = dir.path().join("policies");
    assert_eq!(
        warnings(&imported.stderr),
        Vec::<&str>::new(),
        "an export imports without loss"
    );

    let original = std::fs::read_to_string(policies.path().join("routes.yaml")).expect("read");
    let round_trip = std::fs::read_to_string(out.join("routes.yaml")).expect("read");
    let original = virtual_hosts(&original);
    let round_trip = virtual_hosts(&round_trip);
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        round_trip.keys().collect::<Vec<_>>()
    );
    for (name, (domains, routes)) in &original {
        let (trip_domains, trip_routes) = &round_trip[name];
        assert_eq!(domains, trip_domains, "domains of {name}");
        assert_eq!(routes.len(), trip_routes.len(), "routes of {name}");
        for (route, trip_route) in routes.iter().zip(trip_routes) {
            assert_eq!(route, trip_route, "a route of {name}");
        }
    }

    CertAuthority::new("demo CA")
        .server_cert(&["demo.local", "localhost"])
        .write(&out.join("certs"), "demo");
    let check = tollgate(&[
        "check",
        "--policies",
        path_str(&out),
        "--plugins",
        path_str(&plugins),
    ]);
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
}

/// A cluster's mutual TLS survives the way out to Istio and back: the client
/// certificate's files, the CA and the expected identities.
#[test]
fn mutual_tls_to_a_cluster_imports_back_from_its_export() {
    let policies = every_field_policies();
    let plugins = plugins_dir(&policies);
    let (dir, imported) = export_and_import(&policies, &plugins);
    let out = dir.path().join("policies");
    let inventory_losses: Vec<&str> = warnings(&imported.stderr)
        .into_iter()
        .filter(|warning| warning.contains("inventory"))
        .collect();
    assert_eq!(inventory_losses, Vec::<&str>::new(), "{}", imported.stderr);

    let clusters: Value = serde_norway::from_str(
        &std::fs::read_to_string(out.join("clusters.yaml")).expect("read the clusters"),
    )
    .expect("clusters YAML");
    let inventory = clusters["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|cluster| cluster["name"] == "inventory")
        .expect("the inventory cluster");
    let tls = &inventory["tls"];
    let file = |field: &str| tls[field].as_str().unwrap_or_default().to_string();
    assert!(
        file("cert").ends_with("certs/gateway-workload.crt"),
        "{tls}"
    );
    assert!(file("key").ends_with("certs/gateway-workload.key"), "{tls}");
    assert!(file("ca").ends_with("certs/mesh-ca.crt"), "{tls}");
    assert_eq!(
        tls["subject_alt_names"],
        serde_json::json!([
            "spiffe://cluster.local/ns/shop/sa/inventory",
            "inventory.every.test"
        ])
    );
}

const BEHAVIOUR_POLICIES: &str = "
listeners:
  - name: web
    address: ${listen:web}
clusters:
  - name: shop
    endpoints:
      - { address: ${v1}, labels: { version: v1 } }
      - { address: ${v2}, labels: { version: v2 } }
  - name: legacy
    endpoints: [{ address: ${v2} }]
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: ping
        match: { path: { exact: /ping } }
        direct_response: { status: 200, body: pong, headers: { content-type: text/plain } }
      - name: moved
        match: { path: { prefix: /old } }
        redirect: { path: /new, code: 302, host: www.shop.test }
      - name: pinned
        match:
          path: { prefix: / }
          headers: [{ name: x-version, exact: v2 }]
        forward:
          split: [{ cluster: shop, subset: { version: v2 }, weight: 100 }]
      - name: legacy-api
        match: { path: { prefix: /api/v1/ } }
        forward: { cluster: legacy, rewrite: { prefix: /v1/, host: legacy.internal } }
      - name: teapot
        match: { path: { exact: /teapot }, methods: [POST] }
        direct_response: { status: 418 }
      - name: rest
        forward:
          split: [{ cluster: shop, subset: { version: v1 }, weight: 100 }]
";

/// What a client and the backend saw of each request of the behaviour test.
async fn observe(gateway: &Gateway) -> Vec<String> {
    let client = HttpClient::http1();
    let addr = gateway.listener("web");
    let mut seen = Vec::new();
    for (method, path, header) in [
        ("GET", "/ping", None),
        ("GET", "/old/page", None),
        ("GET", "/cart", Some(("x-version", "v2"))),
        ("GET", "/api/v1/items?id=3", None),
        ("POST", "/teapot", None),
        ("GET", "/teapot", None),
        ("GET", "/anything", None),
    ] {
        let mut builder = request(method, addr, "shop.test", path);
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        let response = client
            .send(builder.body(Full::default()).expect("request"))
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        let upstream = if response.header("x-backend").is_some() {
            let echoed = response.json();
            format!("{} {}", echoed["host"], echoed["path"])
        } else {
            response.text()
        };
        seen.push(format!(
            "{method} {path} -> {} backend={:?} location={:?} {upstream}",
            response.status.as_u16(),
            response.header("x-backend"),
            response.header("location"),
        ));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_of_an_export_routes_requests_as_the_original() {
    let v1 = backends::echo("v1").await;
    let v2 = backends::echo("v2").await;
    let original = Scenario::new()
        .without_public_listener()
        .set("v1", v1.addr())
        .set("v2", v2.addr())
        .policy_file("policies.yaml", BEHAVIOUR_POLICIES)
        .start()
        .await;
    let exported = export(
        &original.policies().path(),
        Path::new("unused-plugins"),
        &[],
    );
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    let listen = original.listener("web");

    let (_dir, out, _) = import_exported(&exported.stdout);
    let mut round_trip = Scenario::new().without_public_listener();
    for name in [
        "listeners.yaml",
        "clusters.yaml",
        "routes.yaml",
        "plugins.yaml",
    ] {
        let text = std::fs::read_to_string(out.join(name)).expect("an imported file");
        // The imported listener takes the original's address; serve it on a port of its own.
        round_trip =
            round_trip.policy_file(name, &text.replace(&listen.to_string(), "${listen:web}"));
    }

    let expected = observe(&original).await;
    drop(original);
    assert_eq!(
        expected[0],
        "GET /ping -> 200 backend=None location=None pong"
    );
    assert!(
        expected[1].starts_with("GET /old/page -> 302"),
        "{expected:?}"
    );
    assert!(expected[2].contains("backend=Some(\"v2\")"), "{expected:?}");
    assert!(
        expected[3].contains("\"legacy.internal\" \"/v1/items?id=3\""),
        "{expected:?}"
    );
    assert!(expected[6].contains("backend=Some(\"v1\")"), "{expected:?}");

    let gateway = round_trip.start().await;
    let actual = observe(&gateway).await;
    assert_eq!(expected, actual, "the same answers after export and import");
}
