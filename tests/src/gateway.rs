//! Runs the `tollgate` binary the way a user does: a policies folder on disk, a process
//! with its output captured, readiness through the admin listener.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tempfile::TempDir;

use crate::clients::{HttpClient, HttpResponse};

/// How long the gateway may take from spawn to a `200` on `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A free loopback address for the caller to bind. Ports are never handed out twice in one
/// test process, so parallel tests do not collide with each other.
///
/// The port is taken below the kernel's range of ephemeral ports (32768–60999 on Linux), so
/// that no outgoing connection can be given it between this check and the gateway's bind:
/// a port the kernel handed out for a listener and released again is as likely as any to
/// become the local port of the next connection some test opens, and the gateway then
/// fails to start with "address already in use".
pub fn free_loopback_addr() -> SocketAddr {
    const FIRST: u16 = 20_000;
    const COUNT: u32 = 12_000;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    static NEXT: Mutex<u32> = Mutex::new(0);
    // Test processes run one after another, often several in a row on one machine: each
    // starts at a place of its own in the range (from its process id), then goes through it.
    let mut next = NEXT.lock().expect("port counter lock");
    for _ in 0..COUNT {
        let offset = (std::process::id().wrapping_mul(7_919).wrapping_add(*next)) % COUNT;
        *next += 1;
        let port = FIRST + offset as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_err() {
            continue; // another process listens there
        }
        let mut handed_out = HANDED_OUT.lock().expect("port registry lock");
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return addr;
        }
    }
    panic!(
        "no free loopback port between {FIRST} and {}",
        FIRST as u32 + COUNT - 1
    );
}

/// A policies folder in a temporary directory. Files are written from templates in which
/// `${listen:NAME}` becomes a fresh loopback `ip:port` (read back with
/// [`PolicyDir::listener`]) and `${NAME}` becomes the value given with [`PolicyDir::set`].
pub struct PolicyDir {
    root: TempDir,
    values: BTreeMap<String, String>,
    listeners: BTreeMap<String, SocketAddr>,
}

impl Default for PolicyDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyDir {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("tollgate-test-")
            .tempdir()
            .expect("create a temporary directory");
        fs::create_dir(root.path().join("policies")).expect("create the policies folder");
        Self {
            root,
            values: BTreeMap::new(),
            listeners: BTreeMap::new(),
        }
    }

    /// The folder given to `--policies`.
    pub fn path(&self) -> PathBuf {
        self.root.path().join("policies")
    }

    /// `policies/certs`, created on first use, for certificates the policies refer to.
    pub fn certs_dir(&self) -> PathBuf {
        let dir = self.path().join("certs");
        fs::create_dir_all(&dir).expect("create the certs folder");
        dir
    }

    /// Defines the value of `${NAME}` for templates written after this call.
    pub fn set(&mut self, name: &str, value: impl ToString) -> &mut Self {
        self.values.insert(name.to_owned(), value.to_string());
        self
    }

    /// Writes `policies/FILE_NAME` from `template`; panics on an undefined placeholder.
    pub fn write(&mut self, file_name: &str, template: &str) -> &mut Self {
        let contents = self.substitute(template);
        fs::write(self.path().join(file_name), contents).expect("write a policy file");
        self
    }

    /// The address chosen for `${listen:NAME}`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no ${{listen:{name}}} in the policies written so far"))
    }

    fn substitute(&mut self, template: &str) -> String {
        let mut output = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            output.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .expect("unterminated ${ in a policy template");
            let key = &after[..end];
            let value = match key.strip_prefix("listen:") {
                Some(listener) => self
                    .listeners
                    .entry(listener.to_owned())
                    .or_insert_with(free_loopback_addr)
                    .to_string(),
                None => self
                    .values
                    .get(key)
                    .unwrap_or_else(|| panic!("policy template uses ${{{key}}} but it was not set"))
                    .clone(),
            };
            output.push_str(&value);
            rest = &after[end + 1..];
        }
        output.push_str(rest);
        output
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("gateway.log")
    }
}

/// A running gateway process; killed when dropped.
pub struct Gateway {
    policies: PolicyDir,
    admin: SocketAddr,
    child: Child,
    client: HttpClient,
}

impl Gateway {
    /// Starts `tollgate run` on the folder and waits until `/readyz` answers `200`;
    /// panics with the gateway's output when it exits or is not ready in time.
    pub async fn start(policies: PolicyDir) -> Self {
        Self::start_with_args(policies, &[]).await
    }

    /// Like [`Gateway::start`], with extra command-line arguments after the usual ones
    /// (`--workers N` among them replaces the usual 2 workers).
    pub async fn start_with_args(policies: PolicyDir, extra_args: &[&str]) -> Self {
        Self::start_with_env(policies, extra_args, &[]).await
    }

    /// Like [`Gateway::start_with_args`], with these environment variables set for the
    /// gateway process.
    pub async fn start_with_env(
        policies: PolicyDir,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut gateway = Self::spawn(policies, extra_args, env);
        gateway.wait_until_ready().await;
        gateway
    }

    /// Spawns `tollgate run` on the folder without waiting for it to be ready: for a
    /// gateway that must refuse its configuration (see [`Gateway::wait_for_exit`]).
    pub fn spawn(policies: PolicyDir, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let admin = free_loopback_addr();
        let log = File::create(policies.log_path()).expect("create the gateway log");
        let default_workers: &[&str] = if extra_args.contains(&"--workers") {
            &[]
        } else {
            &["--workers", "2"]
        };
        let child = Command::new(tollgate_binary())
            .arg("run")
            .arg("--policies")
            .arg(policies.path())
            .args(["--admin", &admin.to_string()])
            .args(default_workers)
            .args(extra_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", tollgate_binary().display()));
        Self {
            policies,
            admin,
            child,
            client: HttpClient::http1(),
        }
    }

    async fn wait_until_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the gateway process") {
                panic!(
                    "the gateway exited ({status}) before it was ready; its output:\n{}",
                    self.log()
                );
            }
            let probe = self.client.send(crate::clients::get_request(
                self.admin,
                "localhost",
                "/readyz",
            ));
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                if response.status == http::StatusCode::OK {
                    return;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "the gateway was not ready within {READY_TIMEOUT:?}; its output:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway's process id (to read its memory use, or to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address of the listener written as `${listen:NAME}`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.policies.listener(name)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn policies(&self) -> &PolicyDir {
        &self.policies
    }

    /// GET a path from the admin listener.
    pub async fn admin_get(&self, path: &str) -> HttpResponse {
        self.client.get(self.admin, "localhost", path).await
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.admin_get("/metrics").await;
        assert_eq!(response.status, http::StatusCode::OK, "GET /metrics");
        response.text()
    }

    /// The Prometheus text from `/metrics` once `ready` holds for it, or after 2.5 s (the
    /// last text either way, so that the caller's assertion shows what was there).
    /// Counters of a request's last callbacks move a little after its response arrived.
    pub async fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let mut text = self.metrics().await;
        for _ in 0..50 {
            if ready(&text) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            text = self.metrics().await;
        }
        text
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.policies.log_path()).unwrap_or_default()
    }

    /// Sends SIGTERM, as a service manager does to stop the gateway.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the gateway process") {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Exit code and combined stdout and stderr of a finished `tollgate` command.
#[derive(Debug)]
pub struct CommandOutcome {
    /// `None` when a signal ended the process.
    pub code: Option<i32>,
    pub output: String,
}

/// Runs `tollgate ARGS` to completion.
pub fn run_tollgate(args: &[&str]) -> CommandOutcome {
    let output = Command::new(tollgate_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tollgate_binary().display()));
    CommandOutcome {
        code: output.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Runs `tollgate check --policies DIR`.
pub fn run_check(dir: &Path) -> CommandOutcome {
    run_tollgate(&["check", "--policies", dir.to_str().expect("UTF-8 path")])
}

/// The gateway binary: `$TOLLGATE_BIN`, else `tollgate` next to the running test binary's
/// profile directory, built once with cargo if it is not there yet.
pub fn tollgate_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("TOLLGATE_BIN") {
            return PathBuf::from(path);
        }
        let path = profile_dir().join("tollgate");
        if !path.exists() {
            build_gateway();
        }
        path
    })
}

/// `target/debug` for a test binary in `target/debug/deps` or a binary in `target/debug`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running binary");
    let dir = exe.parent().expect("binary has a parent directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn build_gateway() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let status = Command::new(cargo)
        .args(["build", "-p", "tollgate", "--bin", "tollgate"])
        .current_dir(workspace)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p tollgate --bin tollgate failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_get_listeners_and_values() {
        let mut policies = PolicyDir::new();
        policies.set("ECHO", "127.0.0.1:9").write(
            "gateway.yaml",
            "a: ${listen:public}\nb: ${ECHO}\nc: ${listen:public}\nd: { x: 1 }\n",
        );
        let written = fs::read_to_string(policies.path().join("gateway.yaml")).unwrap();
        let public = policies.listener("public");
        assert_eq!(
            written,
            format!("a: {public}\nb: 127.0.0.1:9\nc: {public}\nd: {{ x: 1 }}\n")
        );
    }

    #[test]
    fn free_addresses_are_distinct() {
        let first = free_loopback_addr();
        let second = free_loopback_addr();
        assert_ne!(first.port(), second.port());
    }
}
