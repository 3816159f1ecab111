//! The Kubernetes manifests of deploy/: every resource, and the Deployment as the
//! with-sidecar overlay patches it, is valid against Kubernetes' own schemas
//! (tests/tools/validate_kubernetes.py, strict: unknown fields are errors); the policies
//! ConfigMap passes `tollgate check`; the pod's grace period covers the gateway's drain.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;
use tollgate_tests::gateway::run_tollgate;
use tollgate_tests::python::run_tool;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .join("deploy")
}

fn read_yaml(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn validate(folders: &[&Path]) -> (bool, String, String) {
    let args: Vec<&str> = folders
        .iter()
        .map(|folder| folder.to_str().expect("UTF-8 path"))
        .collect();
    run_tool("validate_kubernetes.py", &args, None)
}

/// Every .yaml file under deploy/ other than the kustomizations.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("read deploy/") {
        let path = entry.expect("deploy/ entry").path();
        if path.is_dir() {
            files.extend(manifest_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "yaml")
            && path
                .file_name()
                .is_some_and(|name| name != "kustomization.yaml")
        {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_manifest_and_both_variants_are_valid_for_kubernetes() {
    let deploy = deploy_dir();
    let (ok, stdout, stderr) = validate(&[&deploy.join("base"), &deploy.join("with-sidecar")]);
    assert!(ok, "invalid manifests:\n{stderr}\n{stdout}");
    // A file no kustomization lists would never be checked (nor applied).
    for file in manifest_files(&deploy) {
        let shown = file.to_str().expect("UTF-8 path");
        assert!(
            stdout.contains(&format!("{shown}: ")),
            "{shown} is not listed by a kustomization:\n{stdout}"
        );
    }
    // The overlay's Deployment is the patched one, validated as such.
    assert!(
        stdout.lines().any(
            |line| line.contains("with-sidecar/kustomization.yaml (patched")
                && line.contains("Deployment/tollgate: valid")
        ),
        "{stdout}"
    );
}

#[test]
fn the_validation_fails_on_a_wrong_type_or_an_unknown_field() {
    let breakages = [
        (
            "replicas: 2",
            "replicas: two",
            "Deployment/tollgate: spec.replicas: ",
        ),
        (
            "automountServiceAccountToken: false",
            "automountServiceAcountToken: false",
            "'automountServiceAcountToken' was unexpected",
        ),
    ];
    for (good, bad, expected) in breakages {
        let copy = tempfile::tempdir().expect("temporary folder");
        for entry in fs::read_dir(deploy_dir().join("base")).expect("read deploy/base") {
            let path = entry.expect("deploy/base entry").path();
            fs::copy(
                &path,
                copy.path().join(path.file_name().expect("file name")),
            )
            .expect("copy a manifest");
        }
        let deployment = copy.path().join("deployment.yaml");
        let text = fs::read_to_string(&deployment).expect("read the Deployment");
        let broken = text.replace(good, bad);
        assert_ne!(text, broken, "the Deployment sets {good}");
        fs::write(&deployment, broken).expect("write the broken Deployment");

        let (ok, _, stderr) = validate(&[copy.path()]);
        assert!(!ok, "a Deployment with {bad} passed");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn the_policies_configmap_passes_tollgate_check() {
    let configmap = read_yaml(&deploy_dir().join("base/policies-configmap.yaml"));
    let data = configmap["data"]
        .as_mapping()
        .expect("the ConfigMap has data");
    let policies = tempfile::tempdir().expect("policies folder");
    // The plugins ConfigMap ships empty: the policies must not need a module.
    let plugins = tempfile::tempdir().expect("plugins folder");
    for (name, text) in data {
        let name = name.as_str().expect("a file name as key");
        fs::write(
            policies.path().join(name),
            text.as_str().expect("file text"),
        )
        .expect("write a policy file");
    }
    let outcome = run_tollgate(&[
        "check",
        "--policies",
        policies.path().to_str().expect("UTF-8 path"),
        "--plugins",
        plugins.path().to_str().expect("UTF-8 path"),
    ]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.output);
}

fn seconds(text: &str) -> Duration {
    let number = text.strip_suffix('s').expect("a duration in seconds");
    Duration::from_secs(number.parse().expect("whole seconds"))
}

#[test]
fn the_grace_period_covers_the_pause_and_the_drain() {
    let deploy = deploy_dir();
    let deployment = read_yaml(&deploy.join("base/deployment.yaml"));
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = Duration::from_secs(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds"),
    );
    let pause = Duration::from_secs(
        pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("preStop sleep"),
    );
    let configmap = read_yaml(&deploy.join("base/policies-configmap.yaml"));
    let server: Value = serde_norway::from_str(
        configmap["data"]["listeners.yaml"]
            .as_str()
            .expect("listeners.yaml"),
    )
    .expect("parse listeners.yaml");
    let drain = seconds(
        server["server"]["drain_timeout"]
            .as_str()
            .expect("drain_timeout"),
    );
    assert!(
        pause + drain < grace,
        "preStop {pause:?} + drain_timeout {drain:?} must end before the grace period {grace:?}"
    );
}
