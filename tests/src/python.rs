//! The Python tools the export tests validate with (tests/tools/requirements.txt: Envoy's
//! protobuf definitions, Istio's CRD models), in a virtualenv under the target directory.
//!
//! The virtualenv is made on first use and reused while the requirements file is unchanged;
//! a fresh machine needs `python3` with the `venv` module (`.ci/run` installs them) and
//! access to PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serializes creation among the tests of one test binary (cargo runs binaries one at a time).
static CREATING: Mutex<()> = Mutex::new(());

const REQUIREMENTS: &str = include_str!("../tools/requirements.txt");

/// The virtualenv's interpreter, with the requirements installed.
pub fn interpreter() -> PathBuf {
    let _creating = CREATING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = target_dir().join("python-tools");
    let python = venv.join("bin").join("python3");
    let stamp = venv.join("requirements.installed");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(REQUIREMENTS) {
        return python;
    }
    run(Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg("--clear")
        .arg(&venv));
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements_path()));
    std::fs::write(&stamp, REQUIREMENTS).expect("write the virtualenv's stamp");
    python
}

/// Runs a script of tests/tools with the virtualenv's interpreter; returns (success, stdout,
/// stderr).
pub fn run_tool(script: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(interpreter())
        .arg(tools_dir().join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write the tool's stdin");
    drop(input);
    let output = child.wait_with_output().expect("wait for the tool");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (is python3 with venv installed?)"));
    assert!(status.success(), "{command:?} failed: {status}");
}

fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools")
}

fn requirements_path() -> PathBuf {
    tools_dir().join("requirements.txt")
}

/// The cargo target directory this crate was built in (above its build script's OUT_DIR).
pub(crate) fn target_dir() -> PathBuf {
    Path::new(env!("OUT_DIR"))
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("the target directory above OUT_DIR")
        .to_path_buf()
}
