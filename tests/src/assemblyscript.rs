//! The AssemblyScript fixture (tests/fixtures/assemblyscript): a proxy-wasm plugin written
//! with the AssemblyScript SDK, `@solo-io/proxy-runtime`, whose contract is at the top of its
//! `assembly/index.ts`.
//!
//! [`module`] copies the fixture's files into a directory under the target directory, runs
//! `npm ci` (the exact versions of its committed `package-lock.json`) and the fixture's
//! `npm run build` (the `asc` compiler) there, and returns the built `.wasm`. `node_modules`
//! and the module never land in the source tree. The build is reused while the fixture's
//! files are unchanged; a fresh machine needs `node` and `npm` (`.ci/run` installs them) and
//! access to the npm registry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serializes builds among the tests of one test binary (cargo runs binaries one at a time).
static BUILDING: Mutex<()> = Mutex::new(());

/// The fixture's own files, relative to its folder: what the build reads, and so what
/// decides whether a previous build is still good.
const FIXTURE_FILES: &[&str] = &[
    ".npmrc",
    "package.json",
    "package-lock.json",
    "assembly/index.ts",
];

/// Where `npm run build` writes the module, relative to the build directory.
const BUILT_MODULE: &str = "build/plugin.wasm";

/// The plugin's root id: the SDK starts a root context only for a plugin of this name.
pub const PLUGIN_NAME: &str = "as-fixture";

/// The built AssemblyScript plugin; built on first use, then reused while the fixture's
/// files are unchanged. Panics with the tool's output when the build fails.
pub fn module() -> PathBuf {
    let _building = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let build_dir = crate::python::target_dir().join("assemblyscript-fixture");
    let module = build_dir.join(BUILT_MODULE);
    let stamp = build_dir.join("fixture.built");
    let sources = fixture_sources();
    if module.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&sources) {
        return module;
    }
    let _ = std::fs::remove_file(&stamp);
    let _ = std::fs::remove_file(&module);
    for file in FIXTURE_FILES {
        let to = build_dir.join(file);
        std::fs::create_dir_all(to.parent().expect("a file in a folder"))
            .unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
        std::fs::copy(fixture_dir().join(file), &to)
            .unwrap_or_else(|e| panic!("copy {file} to {}: {e}", to.display()));
    }
    npm(
        &build_dir,
        &["ci", "--no-audit", "--no-fund", "--ignore-scripts"],
    );
    npm(&build_dir, &["run", "build"]);
    assert!(
        module.is_file(),
        "`npm run build` in {} did not write {BUILT_MODULE}",
        build_dir.display()
    );
    std::fs::write(&stamp, sources).expect("write the fixture build's stamp");
    module
}

/// Every fixture file with its contents: the stamp a build is compared by.
fn fixture_sources() -> String {
    FIXTURE_FILES
        .iter()
        .map(|file| {
            let path = fixture_dir().join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            format!("=== {file}\n{text}\n")
        })
        .collect()
}

fn npm(dir: &Path, args: &[&str]) {
    let output = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `npm {}`: {e}; the AssemblyScript fixture needs node and npm \
                 (Debian packages nodejs and npm)",
                args.join(" ")
            )
        });
    assert!(
        output.status.success(),
        "`npm {}` in {} failed ({}):\n{}{}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("assemblyscript")
}
