//! `tollgate check` accepts a valid folder and points at the file and field of an error.

use tollgate_tests::gateway::{run_check, CommandOutcome, PolicyDir};

const LISTENERS: &str = "
listeners:
  - name: public
    address: 127.0.0.1:18080
    protocol: http
clusters:
  - name: shop
    endpoints: [{ address: 127.0.0.1:19001 }]
";

const GOOD_ROUTES: &str = "
virtual_hosts:
  - name: shop
    domains: [shop.test]
    routes:
      - name: ping
        match: { path: { exact: /ping } }
        direct_response: { status: 200, body: pong }
      - name: all
        match: { path: { prefix: / } }
        forward: { cluster: shop, timeout: 5s }
";

fn check(files: &[(&str, &str)]) -> CommandOutcome {
    let mut dir = PolicyDir::new();
    for (name, contents) in files {
        dir.write(name, contents);
    }
    run_check(&dir.path())
}

fn assert_rejected(outcome: &CommandOutcome, expected_fragments: &[&str]) {
    assert!(
        outcome.code.is_some_and(|code| code != 0),
        "check should fail; exit {:?}, output:\n{}",
        outcome.code,
        outcome.output
    );
    for fragment in expected_fragments {
        assert!(
            outcome.output.contains(fragment),
            "the error should mention {fragment:?}; output:\n{}",
            outcome.output
        );
    }
}

#[test]
fn a_valid_folder_passes() {
    let outcome = check(&[("listeners.yaml", LISTENERS), ("routes.yaml", GOOD_ROUTES)]);
    assert_eq!(outcome.code, Some(0), "output:\n{}", outcome.output);
}

#[test]
fn unknown_field_names_file_and_path() {
    let routes = GOOD_ROUTES.replace(
        "forward: { cluster: shop, timeout: 5s }",
        "forward: { cluster: shop, timeuot: 5s }",
    );
    let outcome = check(&[("listeners.yaml", LISTENERS), ("routes.yaml", &routes)]);
    assert_rejected(
        &outcome,
        &[
            "routes.yaml",
            "virtual_hosts[0].routes[1].forward",
            "timeuot",
        ],
    );
}

#[test]
fn bad_duration_names_file_and_path() {
    let routes = GOOD_ROUTES.replace("timeout: 5s", "timeout: 5 sec");
    let outcome = check(&[("listeners.yaml", LISTENERS), ("routes.yaml", &routes)]);
    assert_rejected(
        &outcome,
        &[
            "routes.yaml",
            "virtual_hosts[0].routes[1].forward.timeout",
            "5 sec",
        ],
    );
}

#[test]
fn route_to_unknown_cluster_is_rejected() {
    let routes = GOOD_ROUTES.replace("cluster: shop", "cluster: warehouse");
    let outcome = check(&[("listeners.yaml", LISTENERS), ("routes.yaml", &routes)]);
    assert_rejected(
        &outcome,
        &[
            "routes.yaml",
            "virtual_hosts[0].routes[1].forward.cluster",
            "warehouse",
        ],
    );
}

#[test]
fn duplicate_names_across_files_name_both_files() {
    let more_clusters = "
clusters:
  - name: shop
    endpoints: [{ address: 127.0.0.1:19002 }]
";
    let outcome = check(&[
        ("listeners.yaml", LISTENERS),
        ("routes.yaml", GOOD_ROUTES),
        ("more-clusters.yaml", more_clusters),
    ]);
    assert_rejected(&outcome, &["listeners.yaml", "more-clusters.yaml", "shop"]);
}

#[test]
fn json_files_are_read_too() {
    let json_cluster = r#"{ "clusters": [ { "name": "warehouse", "endpoints": [ { "address": "127.0.0.1:19003" } ] } ] }"#;
    let routes = GOOD_ROUTES.replace("cluster: shop", "cluster: warehouse");
    let outcome = check(&[
        ("listeners.yaml", LISTENERS),
        ("routes.yaml", &routes),
        ("warehouse.json", json_cluster),
    ]);
    assert_eq!(
        outcome.code,
        Some(0),
        "a route may use a cluster from a JSON file; output:\n{}",
        outcome.output
    );
}
