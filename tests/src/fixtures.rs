//! Ready-made policies folders for the export tests: the demo policies of `policies/` and
//! `tests/fixtures/every-field/` (every documented policy field), each copied into a
//! [`PolicyDir`] with the certificates it names and, next to it, a plugins folder holding
//! the modules it names.

use std::fs;
use std::path::{Path, PathBuf};

use crate::certs::CertAuthority;
use crate::gateway::PolicyDir;

/// The every-field folder in a fresh [`PolicyDir`]: its policy files, the certificates of
/// its listeners, client authentication and upstream TLS, and its modules in
/// [`plugins_dir`].
pub fn every_field_policies() -> PolicyDir {
    let dir = PolicyDir::new();
    copy_policy_files(
        &repository().join("tests/fixtures/every-field"),
        &dir.path(),
    );
    let certs = dir.certs_dir();
    let servers = CertAuthority::new("every-field servers");
    servers
        .server_cert(&["shop.every.test", "*.shop.every.test"])
        .write(&certs, "shop");
    servers
        .server_cert(&["api.every.test"])
        .write(&certs, "api");
    CertAuthority::new("every-field clients").write(&certs, "clients-ca.crt");
    CertAuthority::new("every-field upstreams").write(&certs, "upstream-ca.crt");
    let mesh = CertAuthority::new("every-field mesh");
    mesh.write(&certs, "mesh-ca.crt");
    mesh.client_cert_with_names(
        "gateway",
        "cluster.local",
        &[],
        &["spiffe://cluster.local/ns/edge/sa/tollgate"],
    )
    .write(&certs, "gateway-workload");
    write_modules(
        &dir,
        &[
            ("headers.wasm", crate::plugins::TP_HEADERS),
            ("misc.wasm", crate::plugins::TP_MISC),
            ("key-auth.wasm", crate::bundled::KEY_AUTH),
        ],
    );
    dir
}

/// The demo policies of `policies/` in a fresh [`PolicyDir`], with the demo certificate
/// and the bundled plugins it uses in [`plugins_dir`].
pub fn demo_policies() -> PolicyDir {
    let dir = PolicyDir::new();
    copy_policy_files(&repository().join("policies"), &dir.path());
    CertAuthority::new("demo")
        .server_cert(&["demo.local", "localhost"])
        .write(&dir.certs_dir(), "demo");
    write_modules(
        &dir,
        &[
            ("key-auth.wasm", crate::bundled::KEY_AUTH),
            ("rate-limit.wasm", crate::bundled::RATE_LIMIT),
            ("transformer.wasm", crate::bundled::TRANSFORMER),
            ("metering.wasm", crate::bundled::METERING),
        ],
    );
    dir
}

/// The plugins folder (`--plugins`) that goes with a policies folder: its sibling
/// `plugins` (the folders of this module and those of [`crate::scenario`] use it).
pub fn plugins_dir(dir: &PolicyDir) -> PathBuf {
    dir.path()
        .parent()
        .expect("the policies folder has a parent")
        .join("plugins")
}

fn write_modules(dir: &PolicyDir, modules: &[(&str, &str)]) {
    let plugins = plugins_dir(dir);
    fs::create_dir_all(&plugins).expect("create the plugins folder");
    for (name, built) in modules {
        fs::copy(built, plugins.join(name)).unwrap_or_else(|e| panic!("copy {built}: {e}"));
    }
}

/// Copies the policy files of `from` (not its sub-folders or other files) as they are: no
/// template substitution, so that the folder tested is the one committed.
fn copy_policy_files(from: &Path, to: &Path) {
    let entries = fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let is_policy = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json");
        if is_policy {
            let name = path.file_name().expect("a file name");
            fs::copy(&path, to.join(name))
                .unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
        }
    }
}

/// The repository's root (above this crate).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}
