//! `tollgate export envoy`: the policies as an Envoy v3 bootstrap. Every export is parsed
//! with Envoy's own protobuf schema (tests/tools/validate_envoy.py: unknown fields and
//! unknown typed_config types are errors), and the parsed bootstrap is checked for what it
//! means: the plugins' filters and their order and configuration bytes, where each is
//! enabled, SNI filter chains, subsets, and the losses reported for what Envoy cannot say.

use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tollgate_tests::fixtures::{demo_policies, every_field_policies, plugins_dir};
use tollgate_tests::gateway::{tollgate_binary, PolicyDir};
use tollgate_tests::python::run_tool;

/// What `tollgate export envoy` did: exit code, stdout, stderr.
struct Export {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn export(dir: &PolicyDir, strict: bool) -> Export {
    let plugins = plugins_dir(dir);
    let mut command = Command::new(tollgate_binary());
    command
        .args(["export", "envoy", "--policies"])
        .arg(dir.path())
        .arg("--plugins")
        .arg(&plugins)
        .stdin(Stdio::null());
    if strict {
        command.arg("--strict");
    }
    let output = command.output().expect("run tollgate export envoy");
    Export {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Parses the bootstrap with Envoy's schema; panics with the validator's message if it
/// does not parse. Returns the parsed message as JSON.
fn validated(yaml: &str) -> Value {
    let (ok, stdout, stderr) = run_tool("validate_envoy.py", &[], Some(yaml));
    assert!(
        ok,
        "Envoy's schema rejects the export: {stderr}\n--- export ---\n{yaml}"
    );
    serde_json::from_str(&stdout).expect("the validator prints JSON")
}

fn exported(dir: &PolicyDir) -> (Value, Export) {
    let outcome = export(dir, false);
    assert_eq!(outcome.code, Some(0), "export failed: {}", outcome.stderr);
    (validated(&outcome.stdout), outcome)
}

fn listener<'a>(bootstrap: &'a Value, name: &str) -> &'a Value {
    bootstrap["static_resources"]["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .find(|listener| listener["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn cluster<'a>(bootstrap: &'a Value, name: &str) -> &'a Value {
    bootstrap["static_resources"]["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|cluster| cluster["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// The HTTP connection manager of a listener's first filter chain (or default chain).
/// The path of an Envoy data source that names a file.
fn file_name(source: &Value) -> &std::path::Path {
    std::path::Path::new(source["filename"].as_str().expect("a file data source"))
}

fn connection_manager(listener: &Value) -> &Value {
    let chain = listener["filter_chains"]
        .get(0)
        .unwrap_or(&listener["default_filter_chain"]);
    &chain["filters"][0]["typed_config"]
}

fn http_filter_names(manager: &Value) -> Vec<&str> {
    manager["http_filters"]
        .as_array()
        .expect("http_filters")
        .iter()
        .map(|filter| filter["name"].as_str().unwrap())
        .collect()
}

fn http_filter<'a>(manager: &'a Value, name: &str) -> &'a Value {
    manager["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|filter| filter["name"] == name)
        .unwrap_or_else(|| panic!("no http filter {name}"))
}

fn virtual_host<'a>(manager: &'a Value, name: &str) -> &'a Value {
    manager["route_config"]["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vhost| vhost["name"] == name)
        .unwrap_or_else(|| panic!("no virtual host {name}"))
}

fn route<'a>(vhost: &'a Value, name: &str) -> &'a Value {
    vhost["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|route| route["name"] == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

/// The filters a route or virtual host enables with a `FilterConfig`.
fn enabled_filters(entry: &Value) -> Vec<&str> {
    let Some(configs) = entry["typed_per_filter_config"].as_object() else {
        return Vec::new();
    };
    let mut names: Vec<&str> = configs
        .iter()
        .filter(|(_, config)| {
            // Envoy refuses a FilterConfig without `config`; an empty one enables.
            config["@type"] == "type.googleapis.com/envoy.config.route.v3.FilterConfig"
                && config["disabled"] != true
                && config["config"] == json!({})
        })
        .map(|(name, _)| name.as_str())
        .collect();
    names.sort();
    names
}

/// The bytes the plugin reads as its configuration.
fn configuration(filter: &Value) -> &str {
    let configuration = &filter["typed_config"]["config"]["configuration"];
    assert_eq!(
        configuration["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    configuration["value"].as_str().expect("a string")
}

#[test]
fn the_fixtures_pass_check() {
    for dir in [every_field_policies(), demo_policies()] {
        let plugins = plugins_dir(&dir);
        let outcome = tollgate_tests::gateway::run_tollgate(&[
            "check",
            "--policies",
            dir.path().to_str().unwrap(),
            "--plugins",
            plugins.to_str().unwrap(),
        ]);
        assert_eq!(outcome.code, Some(0), "{}", outcome.output);
    }
}

#[test]
fn the_demo_policies_export_to_a_valid_bootstrap() {
    let dir = demo_policies();
    let (bootstrap, outcome) = exported(&dir);

    // Plugin metrics tagged with consumer and route get those labels in Envoy too: the
    // tag, written `consumer=.=VALUE;.;`, is taken out of the name into a label.
    let tags = bootstrap["stats_config"]["stats_tags"]
        .as_array()
        .expect("stats_config.stats_tags");
    for key in ["consumer", "route"] {
        let tag = tags
            .iter()
            .find(|tag| tag["tag_name"] == key)
            .unwrap_or_else(|| panic!("a {key} tag in {tags:?}"));
        assert_eq!(tag["regex"], format!("({key}=\\.=(.*?);\\.;)"));
    }

    // The demo's three settings Envoy has no field for, and nothing else.
    let warnings: Vec<String> = outcome
        .stderr
        .lines()
        .filter_map(|line| line.strip_prefix("warning: "))
        .map(|line| line.split(": ").take(2).collect::<Vec<_>>().join(": "))
        .collect();
    assert_eq!(
        warnings,
        [
            "listeners.yaml: server.drain_timeout",
            "routes.yaml: virtual_hosts[0].routes[5].forward.retries",
            "clusters.yaml: clusters[0].limits.max_idle_per_endpoint",
        ],
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("--drain-time-s 5"),
        "{}",
        outcome.stderr
    );

    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"],
        json!({ "address": "127.0.0.1", "port_value": 9901 })
    );
    let http = connection_manager(listener(&bootstrap, "http"));
    // The demo chain in priority order, before the fault filter and the router.
    assert_eq!(
        http_filter_names(http),
        [
            "keys",
            "limits",
            "reshape",
            "metering",
            "envoy.filters.http.fault",
            "envoy.filters.http.router"
        ]
    );
    // Applied to the api virtual host only: off by default, on for that host.
    for name in ["keys", "limits", "reshape", "metering"] {
        assert_eq!(http_filter(http, name)["disabled"], true, "{name}");
    }
    assert_eq!(
        enabled_filters(virtual_host(http, "api")),
        ["keys", "limits", "metering", "reshape"]
    );
    assert!(enabled_filters(virtual_host(http, "shop")).is_empty());
    let keys = http_filter(http, "keys");
    let config: Value = serde_json::from_str(configuration(keys)).unwrap();
    assert_eq!(config["consumers"][0]["name"], "alice");
    let module = keys["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
        .as_str()
        .unwrap();
    assert_eq!(
        std::path::Path::new(module),
        plugins_dir(&dir).join("key-auth.wasm")
    );

    // The canary split by subset, with its cluster's subset selector.
    let shop = virtual_host(http, "shop");
    let canary = &route(shop, "shop-canary")["route"];
    assert_eq!(
        canary["weighted_clusters"]["clusters"],
        json!([
            { "name": "shop", "weight": 90, "metadata_match": { "filter_metadata": { "envoy.lb": { "version": "v1" } } } },
            { "name": "shop", "weight": 10, "metadata_match": { "filter_metadata": { "envoy.lb": { "version": "v2" } } } },
        ])
    );
    assert_eq!(
        cluster(&bootstrap, "shop")["lb_subset_config"]["subset_selectors"],
        json!([{ "keys": ["version"] }])
    );
    // The flaky route's fault, as the fault filter's per-route configuration.
    assert_eq!(
        route(shop, "shop-flaky")["typed_per_filter_config"]["envoy.filters.http.fault"]["abort"],
        json!({ "http_status": 503, "percentage": { "numerator": 50 } })
    );

    // The TLS listener chooses the demo certificate by SNI, and by default.
    let https = listener(&bootstrap, "https");
    assert_eq!(
        https["filter_chains"][0]["filter_chain_match"]["server_names"],
        json!(["demo.local", "localhost"])
    );
    assert!(https["default_filter_chain"].is_object());
}

#[test]
fn every_field_exports_to_a_valid_bootstrap_that_means_the_same() {
    let dir = every_field_policies();
    let (bootstrap, outcome) = exported(&dir);
    let public = connection_manager(listener(&bootstrap, "public"));

    // server.node is the bootstrap's node: plugins read it as `node` in both proxies.
    assert_eq!(bootstrap["node"]["id"], "gateway-eu-1");
    assert_eq!(bootstrap["node"]["cluster"], "front-door");
    assert_eq!(bootstrap["node"]["metadata"]["labels"]["app"], "tollgate");
    assert_eq!(bootstrap["node"]["locality"]["sub_zone"], "rack-7");

    // One filter per plugin instance, higher priority first: keys (100) with its route
    // configuration, tagger (50) with its, raw-text (10); the singleton is not a filter.
    assert_eq!(
        http_filter_names(public),
        [
            "keys",
            "keys/orders-canary",
            "tagger",
            "tagger/order-by-id",
            "raw-text",
            "envoy.filters.http.fault",
            "envoy.filters.http.router"
        ]
    );
    // Applied everywhere: enabled in the connection manager; the others only where enabled.
    assert_ne!(http_filter(public, "raw-text")["disabled"], true);
    for name in ["keys", "keys/orders-canary", "tagger", "tagger/order-by-id"] {
        assert_eq!(http_filter(public, name)["disabled"], true, "{name}");
    }

    // Configuration bytes: a string as written, anything else as its JSON text.
    assert_eq!(
        configuration(http_filter(public, "raw-text")),
        "plain text, not JSON"
    );
    let keys: Value = serde_json::from_str(configuration(http_filter(public, "keys"))).unwrap();
    assert_eq!(keys["consumers"][0]["name"], "alice");
    let canary_keys: Value =
        serde_json::from_str(configuration(http_filter(public, "keys/orders-canary"))).unwrap();
    assert_eq!(canary_keys["consumers"][0]["name"], "bob");
    assert_eq!(
        configuration(http_filter(public, "tagger/order-by-id")),
        r#"{"tag":"by-id"}"#
    );
    let plugin = &http_filter(public, "keys")["typed_config"]["config"];
    assert_eq!(plugin["name"], "keys");
    assert_eq!(plugin["root_id"], "keys");
    assert_eq!(plugin["failure_policy"], "FAIL_CLOSED");
    assert_eq!(plugin["vm_config"]["vm_id"], "auth-vm");
    assert_eq!(plugin["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(
        plugin["vm_config"]["environment_variables"]["key_values"],
        json!({ "REGION": "eu", "TIER": "gold" })
    );
    assert_eq!(
        plugin["vm_config"]["configuration"]["value"],
        r#"{"warm":true}"#
    );
    assert_eq!(
        http_filter(public, "tagger")["typed_config"]["config"]["failure_policy"],
        "FAIL_OPEN"
    );
    assert_eq!(
        http_filter(public, "raw-text")["typed_config"]["config"]["failure_policy"],
        "FAIL_RELOAD"
    );

    // Enabled per route: each route runs exactly the instances Tollgate runs on it.
    let shop = virtual_host(public, "shop");
    // The api virtual host is bound to the TLS listener only.
    let api = virtual_host(
        connection_manager(listener(&bootstrap, "public-tls")),
        "api",
    );
    assert_eq!(
        enabled_filters(route(shop, "orders-canary")),
        ["keys/orders-canary", "tagger"]
    );
    assert_eq!(
        enabled_filters(route(shop, "order-by-id")),
        ["keys", "tagger/order-by-id"]
    );
    for name in ["checkout", "old-docs", "moved"] {
        assert_eq!(enabled_filters(route(shop, name)), ["keys"], "{name}");
    }
    let checkout = &route(shop, "checkout")["route"];
    assert_eq!(
        checkout["regex_rewrite"],
        json!({ "pattern": { "regex": "^/(check)(out)$" }, "substitution": "/pay/\\2/\\1" })
    );
    assert_eq!(
        checkout["hash_policy"],
        json!([{ "cookie": { "name": "session" } }])
    );
    assert_eq!(enabled_filters(route(api, "ping")), ["tagger/order-by-id"]);
    assert_eq!(enabled_filters(route(api, "api-all")), ["tagger"]);

    // The singleton: a WasmService in the bootstrap extensions.
    let extensions = bootstrap["bootstrap_extensions"].as_array().unwrap();
    assert_eq!(extensions.len(), 1);
    let service = &extensions[0]["typed_config"];
    assert_eq!(
        service["@type"],
        "type.googleapis.com/envoy.extensions.wasm.v3.WasmService"
    );
    assert_eq!(service["singleton"], true);
    assert_eq!(service["config"]["name"], "heartbeat");
    assert_eq!(service["config"]["vm_config"]["vm_id"], "heartbeat-vm");

    // SNI: one chain per certificate, the second named by its certificate's DNS names,
    // the first again as the default; client certificates verified, not required.
    let tls = listener(&bootstrap, "public-tls");
    let chains = tls["filter_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2);
    assert_eq!(
        chains[0]["filter_chain_match"]["server_names"],
        json!(["shop.every.test", "*.shop.every.test"])
    );
    assert_eq!(
        chains[1]["filter_chain_match"]["server_names"],
        json!(["api.every.test"])
    );
    let context = &chains[1]["transport_socket"]["typed_config"];
    assert!(context["require_client_certificate"] != true);
    let common = &context["common_tls_context"];
    assert_eq!(
        common["tls_params"]["tls_minimum_protocol_version"],
        "TLSv1_3"
    );
    assert_eq!(common["alpn_protocols"], json!(["h2", "http/1.1"]));
    assert_eq!(
        file_name(&common["tls_certificates"][0]["certificate_chain"]),
        dir.path().join("certs/api.crt")
    );
    assert!(common["validation_context"]["trusted_ca"]["filename"]
        .as_str()
        .unwrap()
        .ends_with("certs/clients-ca.crt"));
    assert!(public["route_config"]["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|vhost| vhost["name"] != "api"));

    // Server settings on the connection manager.
    assert_eq!(public["normalize_path"], true);
    assert_ne!(public["merge_slashes"], true);
    assert_eq!(
        public["path_with_escaped_slashes_action"],
        "UNESCAPE_AND_FORWARD"
    );
    assert_eq!(public["max_request_headers_kb"], 32);
    assert_eq!(public["request_headers_timeout"], "5s");
    assert_eq!(public["stream_idle_timeout"], "120s");
    assert_eq!(
        public["common_http_protocol_options"]["idle_timeout"],
        "30s"
    );
    assert_eq!(
        bootstrap["layered_runtime"]["layers"][0]["static_layer"]
            ["envoy.resource_limits.listener.public.connection_limit"],
        5000.0
    );

    // Routes: subsets as metadata_match, retries, mirror, rewrite, matchers.
    let canary = route(shop, "orders-canary");
    let action = &canary["route"];
    assert_eq!(
        action["weighted_clusters"]["clusters"][1]["metadata_match"],
        json!({ "filter_metadata": { "envoy.lb": { "version": "v2" } } })
    );
    assert_eq!(action["prefix_rewrite"], "/v2/orders");
    assert_eq!(action["host_rewrite_literal"], "orders.internal");
    assert_eq!(
        action["retry_policy"]["retry_on"],
        "5xx,gateway-error,connect-failure,reset,retriable-4xx,retriable-status-codes"
    );
    assert_eq!(action["retry_policy"]["num_retries"], 2);
    assert_eq!(
        action["retry_policy"]["retriable_status_codes"],
        json!([429])
    );
    assert_eq!(
        action["request_mirror_policies"][0]["cluster"],
        "orders-shadow"
    );
    let headers = canary["match"]["headers"].as_array().unwrap();
    assert_eq!(headers[0]["name"], ":method");
    assert!(headers.iter().any(|h| h["name"] == "x-debug"
        && h["present_match"] == true
        && h["invert_match"] == true));
    assert_eq!(
        route(shop, "order-by-id")["match"]["safe_regex"]["regex"],
        "/orders/[0-9]+"
    );
    assert_eq!(
        route(api, "api-all")["route"]["metadata_match"],
        json!({ "filter_metadata": { "envoy.lb": { "zone": "b" } } })
    );
    let fault = &canary["typed_per_filter_config"]["envoy.filters.http.fault"];
    assert_eq!(fault["delay"]["fixed_delay"], "2s");
    assert_eq!(fault["abort"]["http_status"], 503);
    let redirect = &route(shop, "old-docs")["redirect"];
    assert_eq!(redirect["response_code"], "PERMANENT_REDIRECT");
    assert_eq!(redirect["prefix_rewrite"], "/manual");
    assert_eq!(redirect["port_redirect"], 8443);
    assert_eq!(
        route(api, "ping")["direct_response"]["body"]["inline_string"],
        "pong\n"
    );

    // Clusters: subsets, labels, outlier detection, panic threshold, breakers, TLS, DNS.
    let orders = cluster(&bootstrap, "orders");
    assert_eq!(orders["lb_policy"], "LEAST_REQUEST");
    assert_eq!(
        orders["lb_subset_config"]["subset_selectors"],
        json!([{ "keys": ["version"] }, { "keys": ["zone"] }])
    );
    assert_eq!(
        orders["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"],
        json!({ "filter_metadata": { "envoy.lb": { "version": "v1", "zone": "a" } } })
    );
    assert_eq!(orders["outlier_detection"]["consecutive_5xx"], 3);
    assert_eq!(orders["outlier_detection"]["base_ejection_time"], "15s");
    assert_eq!(
        orders["common_lb_config"]["healthy_panic_threshold"]["value"],
        40.0
    );
    assert_eq!(
        orders["circuit_breakers"]["thresholds"][0]["max_requests"],
        512
    );
    let billing = cluster(&bootstrap, "billing");
    assert_eq!(billing["type"], "STRICT_DNS");
    assert_eq!(
        billing["outlier_detection"]["consecutive_gateway_failure"],
        5
    );
    assert_eq!(billing["lb_policy"], "RING_HASH");
    // xxHash, as Tollgate's ring: Envoy's default, so the parsed message leaves it out.
    assert_eq!(
        billing["ring_hash_lb_config"],
        json!({ "minimum_ring_size": "1024" })
    );
    assert_eq!(
        billing["health_checks"],
        json!([{
            "timeout": "2s",
            "interval": "5s",
            "no_traffic_interval": "5s",
            "healthy_threshold": 1,
            "unhealthy_threshold": 4,
            "http_health_check": { "path": "/ready", "host": "billing.internal" },
        }])
    );
    let upstream = &billing["transport_socket"]["typed_config"];
    assert_eq!(upstream["sni"], "billing.internal");
    assert!(
        upstream["common_tls_context"]["validation_context"]["trusted_ca"]["filename"]
            .as_str()
            .unwrap()
            .ends_with("certs/upstream-ca.crt")
    );

    // Mutual TLS: the client certificate, and the expected names by their kind in place of
    // the server name.
    let inventory = &cluster(&bootstrap, "inventory")["transport_socket"]["typed_config"];
    let common = &inventory["common_tls_context"];
    let certificate = &common["tls_certificates"][0];
    assert_eq!(
        file_name(&certificate["certificate_chain"]),
        dir.path().join("certs/gateway-workload.crt")
    );
    assert_eq!(
        file_name(&certificate["private_key"]),
        dir.path().join("certs/gateway-workload.key")
    );
    assert_eq!(
        common["validation_context"]["match_typed_subject_alt_names"],
        json!([
            { "san_type": "URI", "matcher": { "exact": "spiffe://cluster.local/ns/shop/sa/inventory" } },
            { "san_type": "DNS", "matcher": { "exact": "inventory.every.test" } },
        ])
    );
    assert!(common["validation_context"]["trusted_ca"]["filename"]
        .as_str()
        .unwrap()
        .ends_with("certs/mesh-ca.crt"));

    // What Envoy cannot express is named, file and field, on stderr.
    for field in [
        "server.yaml: server.drain_timeout",
        "server.yaml: server.body_read_timeout",
        "server.yaml: server.max_request_body_bytes",
        "server.yaml: server.access_log.redact_query_params",
        "server.yaml: server.access_log.redact_headers",
        "server.yaml: server.plugin_limits.shared_data_bytes",
        "server.yaml: server.plugin_limits.shared_data_keys",
        "server.yaml: server.plugin_limits.shared_queue_length",
        "server.yaml: server.plugin_limits.metrics",
        "server.yaml: server.plugin_limits.callout_response_bytes",
        "clusters.yaml: clusters[0].limits.max_idle_per_endpoint",
        "routes.yaml: virtual_hosts[0].routes[0].match.query[3].present",
        "routes.yaml: virtual_hosts[0].routes[2].forward.retries",
        "plugins.yaml: plugins[1].callback_timeout",
        "plugins.yaml: plugins[1].memory_limit",
        "plugins.yaml: plugins[1].max_traps_per_minute",
        "plugins.yaml: plugins[1].circuit_open_time",
    ] {
        assert!(
            outcome.stderr.contains(&format!("warning: {field}: ")),
            "no warning for {field}:\n{}",
            outcome.stderr
        );
    }
    // non_idempotent: true is what Envoy does anyway: no loss for that route.
    assert!(!outcome
        .stderr
        .contains("virtual_hosts[0].routes[0].forward.retries"));
}

#[test]
fn strict_refuses_what_envoy_cannot_express_and_writes_nothing() {
    let dir = every_field_policies();
    let outcome = export(&dir, true);
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "", "nothing on stdout under --strict");
    assert!(
        outcome
            .stderr
            .contains("error: plugins.yaml: plugins[1].memory_limit: "),
        "{}",
        outcome.stderr
    );
}

#[test]
fn the_validator_rejects_what_envoy_would_reject() {
    let dir = demo_policies();
    let outcome = export(&dir, false);
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
    validated(&outcome.stdout);
    // A misspelt field, one inside a typed_config, and a type Envoy does not have.
    for (from, to) in [
        ("stat_prefix:", "stats_prefix:"),
        ("failure_policy:", "failure_mode:"),
        (
            "envoy.extensions.filters.http.wasm.v3.Wasm",
            "envoy.extensions.filters.http.wasm.v3.Wasmer",
        ),
        ("lb_policy: ROUND_ROBIN", "lb_policy: ROUND_ROBINS"),
    ] {
        assert!(outcome.stdout.contains(from), "{from}");
        let broken = outcome.stdout.replace(from, to);
        let (ok, _, stderr) = run_tool("validate_envoy.py", &[], Some(&broken));
        assert!(!ok, "{to} should be rejected");
        assert!(stderr.contains("not an Envoy v3 Bootstrap"), "{stderr}");
    }
    // What parses but Envoy refuses on loading: a domain twice, an enabling FilterConfig
    // without its config.
    for (from, to, problem) in [
        (
            "- shop.demo.local\n",
            "- shop.demo.local\n              - api.demo.local\n",
            "domain api.demo.local in two virtual hosts",
        ),
        (
            "config: {}\n",
            "is_optional: false\n",
            "FilterConfig for keys has no config",
        ),
    ] {
        assert!(outcome.stdout.contains(from), "{from}");
        let broken = outcome.stdout.replacen(from, to, 1);
        let (ok, _, stderr) = run_tool("validate_envoy.py", &[], Some(&broken));
        assert!(!ok, "{to} should be rejected");
        assert!(stderr.contains(problem), "{stderr}");
    }
}

/// A module written as text: Tollgate loads it, Envoy does not.
const NOOP_WAT: &str = r#"(module (memory (export "memory") 1)
    (func (export "malloc") (param i32) (result i32) i32.const 0)
    (func (export "proxy_abi_version_0_2_0"))
    (func (export "proxy_on_context_create") (param i32 i32)))"#;

#[test]
fn narrower_cases_translate_without_a_loss_or_with_the_right_one() {
    let mut dir = PolicyDir::new();
    dir.write(
        "policies.yaml",
        "
listeners:
  - { name: web, address: 127.0.0.1:18081 }
clusters:
  - name: app
    endpoints: [{ address: 127.0.0.1:19011 }, { address: 127.0.0.1:19012 }]
virtual_hosts:
  - name: all
    domains: ['*']
    routes:
      - name: orders
        match: { path: { prefix: /orders } }
        forward:
          cluster: app
          retries: { attempts: 3, on: [connect-failure] }
      - name: rest
        forward: { cluster: app }
  - name: shadowed
    domains: ['*', shop.test]
    routes:
      - { name: never, direct_response: { status: 404 } }
  - name: shop
    domains: [shop.test]
    routes:
      - { name: shop-all, direct_response: { status: 200 } }
plugins:
  - { name: everywhere, module: noop.wat, config: { a: 1 } }
",
    );
    let plugins = plugins_dir(&dir);
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("noop.wat"), NOOP_WAT).unwrap();
    let (bootstrap, outcome) = exported(&dir);

    // Retrying connect failures only is safe for every method, in Envoy too: no loss, no
    // restriction to idempotent methods.
    let manager = connection_manager(listener(&bootstrap, "web"));
    let all = virtual_host(manager, "all");
    let retry = &route(all, "orders")["route"]["retry_policy"];
    assert_eq!(retry["retry_on"], "connect-failure");
    assert!(retry.get("retriable_request_headers").is_none(), "{retry}");
    assert!(!outcome.stderr.contains("retries"), "{}", outcome.stderr);
    // A route with no path match matches every path.
    assert_eq!(route(all, "rest")["match"], json!({ "prefix": "/" }));
    // A plugin that runs everywhere is simply on: not disabled, enabled nowhere; and no
    // fault filter without a fault.
    assert_eq!(
        http_filter_names(manager),
        ["everywhere", "envoy.filters.http.router"]
    );
    assert!(http_filter(manager, "everywhere").get("disabled").is_none());
    assert!(enabled_filters(all).is_empty());
    // A domain belongs to the first virtual host that names it, as Tollgate routes it;
    // Envoy refuses a domain named twice, and a virtual host left without one is dropped.
    let domains: Vec<&Value> = manager["route_config"]["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vhost| &vhost["domains"])
        .collect();
    assert_eq!(domains, [&json!(["*"]), &json!(["shop.test"])]);
    assert_eq!(
        virtual_host(manager, "shadowed")["domains"],
        json!(["shop.test"])
    );
    // Tollgate's 50 % of two endpoints is one: Envoy ejects one at 50 % too.
    assert_eq!(
        cluster(&bootstrap, "app")["outlier_detection"]["max_ejection_percent"],
        50
    );
    // The text module is named, and the loss says what to do.
    assert!(
        outcome
            .stderr
            .contains("warning: policies.yaml: plugins[0].module: Envoy loads binary modules only"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn server_tracing_exports_as_envoys_opentelemetry_tracer() {
    let mut dir = PolicyDir::new();
    dir.write(
        "policies.yaml",
        "
server:
  tracing: { otlp_endpoint: 'http://otel-collector.observability:4318/v1/traces', sample_percent: 12.5, service_name: edge }
listeners:
  - { name: web, address: 127.0.0.1:18083 }
clusters:
  - name: app
    endpoints: [{ address: 127.0.0.1:19013 }]
virtual_hosts:
  - name: all
    domains: ['*']
    routes:
      - { name: rest, forward: { cluster: app } }
",
    );
    std::fs::create_dir_all(plugins_dir(&dir)).unwrap();
    let (bootstrap, outcome) = exported(&dir);
    assert!(!outcome.stderr.contains("tracing"), "{}", outcome.stderr);

    let tracing = &connection_manager(listener(&bootstrap, "web"))["tracing"];
    assert_eq!(tracing["random_sampling"]["value"], 12.5);
    assert_eq!(tracing["spawn_upstream_span"], true);
    let provider = &tracing["provider"];
    assert_eq!(provider["name"], "envoy.tracers.opentelemetry");
    let config = &provider["typed_config"];
    assert_eq!(
        config["@type"],
        "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
    );
    assert_eq!(config["service_name"], "edge");
    let http_uri = &config["http_service"]["http_uri"];
    assert_eq!(
        http_uri["uri"],
        "http://otel-collector.observability:4318/v1/traces"
    );
    // The spans go through a cluster of their own, resolved by DNS like the endpoint.
    let collector = cluster(&bootstrap, http_uri["cluster"].as_str().unwrap());
    assert_eq!(collector["type"], "STRICT_DNS");
    assert_eq!(
        collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"],
        json!({ "address": "otel-collector.observability", "port_value": 4318 })
    );
}

#[test]
fn invalid_policies_are_refused_as_check_refuses_them() {
    let mut dir = PolicyDir::new();
    dir.write(
        "policies.yaml",
        "listeners:\n  - { name: web, address: 127.0.0.1:18082 }\nvirtual_hosts:\n  - name: all\n    domains: ['*']\n    routes:\n      - { name: r, forward: { cluster: nowhere } }\n",
    );
    std::fs::create_dir_all(plugins_dir(&dir)).unwrap();
    let outcome = export(&dir, false);
    assert_eq!(outcome.code, Some(1));
    assert_eq!(outcome.stdout, "");
    assert!(
        outcome
            .stderr
            .contains("virtual_hosts[0].routes[0].forward.cluster"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn ring_hash_keys_and_active_checks_export_per_cluster_and_route() {
    let mut dir = PolicyDir::new();
    dir.write(
        "policies.yaml",
        "
listeners:
  - { name: web, address: 127.0.0.1:18083 }
clusters:
  - name: by-user
    load_balancing: ring_hash
    hash_on: { header: X-User }
    http2: true
    health: { active: { path: /healthz } }
    endpoints: [{ address: 127.0.0.1:19021 }, { address: 127.0.0.1:19022 }]
  - name: by-client
    load_balancing: ring_hash
    endpoints: [{ address: 127.0.0.1:19023 }]
virtual_hosts:
  - name: all
    domains: ['*']
    routes:
      - name: users
        match: { path: { prefix: /users } }
        forward: { cluster: by-user }
      - name: rest
        forward: { cluster: by-client }
",
    );
    std::fs::create_dir_all(plugins_dir(&dir)).unwrap();
    let (bootstrap, outcome) = exported(&dir);
    assert!(!outcome.stderr.contains("warning"), "{}", outcome.stderr);
    let all = virtual_host(connection_manager(listener(&bootstrap, "web")), "all");
    assert_eq!(
        route(all, "users")["route"]["hash_policy"],
        json!([{ "header": { "header_name": "x-user" } }])
    );
    assert_eq!(
        route(all, "rest")["route"]["hash_policy"],
        json!([{ "connection_properties": { "source_ip": true } }])
    );
    let by_user = cluster(&bootstrap, "by-user");
    assert_eq!(by_user["ring_hash_lb_config"]["minimum_ring_size"], "2048");
    // Envoy's defaults where Tollgate has its own, the cluster's protocol, and the
    // endpoint's address as the Host of its checks.
    assert_eq!(
        by_user["health_checks"],
        json!([{
            "timeout": "1s",
            "interval": "10s",
            "no_traffic_interval": "10s",
            "healthy_threshold": 2,
            "unhealthy_threshold": 3,
            "http_health_check": { "path": "/healthz", "codec_client_type": "HTTP2" },
        }])
    );
    let endpoint = &by_user["load_assignment"]["endpoints"][0]["lb_endpoints"][1]["endpoint"];
    assert_eq!(
        endpoint["health_check_config"]["hostname"],
        "127.0.0.1:19022"
    );
    assert!(cluster(&bootstrap, "by-client")
        .get("health_checks")
        .is_none());
}
