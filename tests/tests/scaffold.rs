//! `plugins/new-plugin.sh` (what `just new-plugin NAME` runs) scaffolds a plugin that works
//! as generated: into a temporary folder, the new crate builds for wasm32-wasip1, its unit
//! tests pass, the gateway loads the module and it adds its greeting header, and a bad
//! configuration is rejected by `tollgate check` naming the field.
//!
//! The generated crate is built in `<target dir>/scaffold` so that repeated runs only
//! recompile the crate itself (its dependencies stay built); each cargo run is bounded.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use tollgate_tests::clients::HttpClient;
use tollgate_tests::plugins::{assert_rejected, check_plugins, PluginSpec};
use tollgate_tests::scenario::Scenario;

const NAME: &str = "hello-scaffold";
const LIMIT: Duration = Duration::from_secs(600);

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `<target>` from `<target>/debug/deps/scaffold-HASH`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "deps"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf()
}

/// Runs `command` to completion within [`LIMIT`]; panics with its output on failure.
fn run(what: &str, command: &mut Command) -> String {
    // The outer build's settings are for the host crates of this workspace.
    for variable in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MANIFEST_DIR",
    ] {
        command.env_remove(variable);
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let log_path = dir.path().join("output.log");
    let log = std::fs::File::create(&log_path).expect("create the output log");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => output,
        Some(status) => panic!("{what} failed ({status}):\n{output}"),
        None => panic!("{what} took longer than {LIMIT:?}:\n{output}"),
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_plugin_builds_tests_and_runs_in_the_gateway() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let script = repo_dir().join("plugins").join("new-plugin.sh");
    let output = run(
        "new-plugin.sh",
        Command::new("bash").arg(&script).arg(NAME).arg(dir.path()),
    );
    let crate_dir = dir.path().join(NAME);
    assert!(
        crate_dir.join("Cargo.toml").is_file(),
        "no Cargo.toml: {output}"
    );
    for file in ["src/lib.rs", "README.md", "Cargo.lock", "clippy.toml"] {
        assert!(crate_dir.join(file).is_file(), "{file} missing: {output}");
    }
    let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
    assert!(readme.starts_with(&format!("# {NAME}\n")), "{readme}");
    assert!(!readme.contains("__NAME__"), "{readme}");

    // A second run refuses to overwrite it; a bad name is refused.
    let again = Command::new("bash")
        .arg(&script)
        .arg(NAME)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success(), "overwrote an existing crate");
    let bad = Command::new("bash")
        .arg(&script)
        .arg("Bad_Name")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success(), "accepted a bad name");

    let manifest = crate_dir.join("Cargo.toml");
    let target = target_dir().join("scaffold");
    let tests = run(
        "cargo test (native unit tests of the scaffold)",
        cargo()
            .args(["test", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target),
    );
    assert!(tests.contains("test result: ok. 2 passed"), "{tests}");

    run(
        "cargo build --target wasm32-wasip1 (the scaffold)",
        cargo()
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target),
    );
    let wasm = target.join("wasm32-wasip1/release/hello_scaffold.wasm");
    assert!(wasm.is_file(), "{} was not built", wasm.display());

    // The module works in the gateway as generated.
    let gateway = Scenario::new()
        .echo("echo")
        .forward("all", "/", "echo")
        .plugin(PluginSpec::new(NAME, &wasm).config(json!({ "greeting": "hello" })))
        .start()
        .await;
    let response = HttpClient::http1()
        .get(gateway.listener("public"), "shop.test", "/")
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", gateway.log());
    assert_eq!(
        response.header("x-greeting"),
        Some("hello"),
        "{}",
        gateway.log()
    );

    let outcome = check_plugins(&[PluginSpec::new(NAME, &wasm).config(json!({ "greeting": "" }))]);
    assert_rejected(&outcome, &[NAME, "field \"greeting\"", "printable ASCII"]);
}
