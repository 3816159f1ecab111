//! `tollgate export envoy`: the policies as an Envoy v3 bootstrap, validated against
//! Envoy's own schema and checked for what it means.

use tollgate_tests::fixtures::{demo_policies, every_field_policies, plugins_dir};
use tollgate_tests::gateway::{run_tollgate, PolicyDir};

fn check(dir: &PolicyDir) -> (Option<i32>, String) {
    let plugins = plugins_dir(dir);
    let outcome = run_tollgate(&[
        "check",
        "--policies",
        dir.path().to_str().unwrap(),
        "--plugins",
        plugins.to_str().unwrap(),
    ]);
    (outcome.code, outcome.output)
}

#[test]
fn the_fixtures_pass_check() {
    for dir in [every_field_policies(), demo_policies()] {
        let (code, output) = check(&dir);
        assert_eq!(code, Some(0), "{output}");
    }
}
