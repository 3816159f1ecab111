//! Policy reloads are atomic while traffic flows. A key-auth plugin guards `/api`; a client
//! loop asks for it with and without a key throughout, and every answer is counted: `200`
//! with the key, `401` without, never `200` without a key, never anything else.
//!
//! Under that load: a `plugins.yaml` cut mid-document, cut after its section key or after a
//! nested key, emptied, left with comments only, or half-written in two steps is refused
//! (the admin API counts and shows the failure, the generation stays) and the next valid
//! file goes live; a burst of edits to two files goes live as one snapshot (one generation
//! each); an editor's save that moves the old file away first and pauses is one change; a
//! ConfigMap-style `..data` symlink swap goes live; a plugins folder removed and created
//! again is watched again. At start-up the same documents are refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tollgate_tests::backends;
use tollgate_tests::bundled::KEY_AUTH;
use tollgate_tests::clients::{request, HttpClient};
use tollgate_tests::gateway::{run_check, Gateway, PolicyDir};
use tollgate_tests::scenario::{Running, Scenario, GENERATED_FILE};

const GATEWAY: &str = r#"
listeners:
  - { name: public, address: "${listen:public}", protocol: http }
clusters:
  - name: echo
    endpoints: [{ address: "${ECHO}" }]
virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
      - { name: api, match: { path: { prefix: /api } }, forward: { cluster: echo } }
      - { name: open, match: { path: { prefix: / } }, forward: { cluster: echo } }
"#;

/// The guard of `/api`; `extra_consumer` adds one more consumer with key `k-<name>`.
fn plugins_yaml(extra_consumer: Option<&str>) -> String {
    let extra = extra_consumer
        .map(|name| format!("\n        - {{ name: {name}, keys: [k-{name}] }}"))
        .unwrap_or_default();
    format!(
        "# The API key guard.\nplugins:\n  - name: keys\n    module: key-auth.wasm\n    apply_to: {{ routes: [api] }}\n    config:\n      key_names: [x-api-key]\n      consumers:\n        - {{ name: alice, keys: [k-alice] }}{extra}\n"
    )
}

/// How long a change may take to go live (or be refused) on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(15);

/// The answers of the client loop, by whether the request carried a key.
#[derive(Debug, Default)]
struct Tally {
    with_key: BTreeMap<String, u64>,
    without_key: BTreeMap<String, u64>,
}

impl Tally {
    fn assert_guarded(&self) {
        let only = |answers: &BTreeMap<String, u64>, status: &str| {
            answers.keys().all(|answer| answer == status) && answers.get(status) > Some(&20)
        };
        assert!(
            only(&self.with_key, "200") && only(&self.without_key, "401"),
            "every request with a key must get 200 and every one without 401: {self:?}"
        );
    }
}

/// Requests the client loop makes at the least before it may stop, so that every test
/// sees its changes under load however fast it runs.
const MIN_REQUESTS: u64 = 100;

/// A client loop on `/api`, alternating with and without a key; bounded in count and time.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Tally>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let client = HttpClient::http1();
            let mut tally = Tally::default();
            let started = Instant::now();
            for i in 0..200_000u64 {
                let enough = i >= MIN_REQUESTS && stopped.load(Ordering::Relaxed);
                if enough || started.elapsed() > Duration::from_secs(120) {
                    break;
                }
                let keyed = i % 2 == 0;
                let mut builder = request("GET", addr, "api.test", "/api/orders");
                if keyed {
                    builder = builder.header("x-api-key", "k-alice");
                }
                let answer = match tokio::time::timeout(
                    Duration::from_secs(5),
                    client.send(builder.body(Default::default()).unwrap()),
                )
                .await
                {
                    Ok(Ok(response)) => response.status.as_u16().to_string(),
                    Ok(Err(error)) => format!("error: {error}"),
                    Err(_) => "timeout".to_string(),
                };
                let answers = if keyed {
                    &mut tally.with_key
                } else {
                    &mut tally.without_key
                };
                *answers.entry(answer).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tally
        });
        Self { stop, task }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the client loop")
    }
}

/// The reload outcome the admin API shows.
#[derive(Debug, Clone, PartialEq)]
struct Status {
    generation: u64,
    failures: u64,
    error: Option<String>,
}

async fn status(gateway: &Gateway) -> Status {
    let plugins = gateway.admin_get("/plugins").await.json();
    Status {
        generation: plugins["generation"].as_u64().expect("generation"),
        failures: plugins["last_reload"]["failures"]
            .as_u64()
            .expect("failures"),
        error: plugins["last_reload"]["error"].as_str().map(str::to_owned),
    }
}

/// Waits until the admin API shows a status `done` accepts; panics with the last one.
async fn wait_for(gateway: &Gateway, what: &str, done: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = status(gateway).await;
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}; last status {now:?}; log:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces a file as the README asks: a temporary file in the same folder, renamed over it.
fn write_atomically(path: &Path, text: &str) {
    let name = path.file_name().unwrap().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

async fn status_of(addr: SocketAddr, key: Option<&str>) -> StatusCode {
    let mut builder = request("GET", addr, "api.test", "/api/orders");
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    HttpClient::http1()
        .send(builder.body(Default::default()).unwrap())
        .await
        .expect("an answer")
        .status
}

struct Setup {
    gateway: Running,
    plugins: PathBuf,
}

impl Setup {
    async fn start() -> Self {
        let gateway = Scenario::new()
            .echo("echo")
            .forward("api", "/api", "echo")
            .forward("open", "/", "echo")
            .policy_file("plugins.yaml", &plugins_yaml(None))
            .plugin_module("key-auth.wasm", KEY_AUTH)
            .start()
            .await;
        let plugins = gateway.plugins_folder().to_path_buf();
        Self { gateway, plugins }
    }

    fn policy_file(&self, name: &str) -> PathBuf {
        self.gateway.policy_file(name)
    }

    fn public(&self) -> SocketAddr {
        self.gateway.listener("public")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_policy_files_leave_the_last_good_configuration_serving() {
    let setup = Setup::start().await;
    let gateway = &setup.gateway;
    let file = setup.policy_file("plugins.yaml");
    let load = Load::start(setup.public());
    let valid = plugins_yaml(None);
    let start = wait_for(gateway, "the start", |_| true).await;

    // Written in place, as an editor or a config tool does: each is refused.
    let cut_mid_document = &valid[..valid.find("k-alice").unwrap() + 3];
    let cut_after_the_key = &valid[..valid.find("plugins:").unwrap() + "plugins:\n".len()];
    let cut_after_a_nested_key = &valid[..valid.find("config:").unwrap() + "config:\n".len()];
    let bad: [(&str, &str, &str); 5] = [
        ("cut mid-document", cut_mid_document, "plugins.yaml"),
        ("cut after the section key", cut_after_the_key, "plugins"),
        (
            "cut after a nested key",
            cut_after_a_nested_key,
            "ends in a key with no value",
        ),
        ("empty", "", "the file is empty"),
        (
            "comments only",
            "# The API key guard.\n",
            "the file is empty",
        ),
    ];
    let mut failures = start.failures;
    for (what, text, shown) in bad {
        std::fs::write(&file, text).unwrap();
        let now = wait_for(gateway, what, |s| s.failures > failures).await;
        failures = now.failures;
        assert_eq!(now.generation, start.generation, "{what} went live");
        let error = now.error.unwrap_or_default();
        assert!(error.contains(shown), "{what}: the error shown: {error}");
        assert_eq!(
            status_of(setup.public(), None).await,
            StatusCode::UNAUTHORIZED
        );
    }

    // Half-written: the first half is seen and refused, the whole goes live.
    let half = &valid[..valid.len() / 2];
    std::fs::write(&file, half).unwrap();
    let now = wait_for(gateway, "the first half", |s| s.failures > failures).await;
    assert_eq!(now.generation, start.generation, "the first half went live");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&file, plugins_yaml(Some("carol"))).unwrap();
    let live = wait_for(gateway, "the whole file", |s| {
        s.generation > start.generation
    })
    .await;
    assert_eq!(live.error, None, "a success clears the error");
    assert_eq!(
        status_of(setup.public(), Some("k-carol")).await,
        StatusCode::OK
    );

    // Removing every plugin is written as such, and goes live.
    let before = status(gateway).await;
    load.finish().await.assert_guarded();
    write_atomically(&file, "plugins: []\n");
    wait_for(gateway, "plugins: []", |s| s.generation > before.generation).await;
    assert_eq!(status_of(setup.public(), None).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_two_files_goes_live_as_one_snapshot() {
    let setup = Setup::start().await;
    let gateway = &setup.gateway;
    let load = Load::start(setup.public());
    let routes = std::fs::read_to_string(setup.policy_file(GENERATED_FILE)).unwrap();
    let mut generation = status(gateway).await.generation;
    for round in 1..=5 {
        // One change per file, each valid alone: a route `/round-N` and a consumer roundN.
        let consumer = format!("round{round}");
        let route = format!(
            "      - {{ name: r{round}, match: {{ path: {{ prefix: /round-{round} }} }}, direct_response: {{ status: 204 }} }}\n"
        );
        let routes = routes.replace(
            "      - { name: open,",
            &format!("{route}      - {{ name: open,"),
        );
        write_atomically(&setup.policy_file(GENERATED_FILE), &routes);
        write_atomically(
            &setup.policy_file("plugins.yaml"),
            &plugins_yaml(Some(&consumer)),
        );
        let live = wait_for(gateway, "the burst", |s| s.generation > generation).await;
        // Quiet for a while: nothing more goes live.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let settled = status(gateway).await;
        assert_eq!(
            (live.generation, settled.generation),
            (generation + 1, generation + 1),
            "round {round}: the burst went live as more than one snapshot; log:\n{}",
            gateway.log()
        );
        assert_eq!(settled.error, None);
        generation = settled.generation;
        // Both halves are in the one snapshot.
        let key = format!("k-{consumer}");
        assert_eq!(status_of(setup.public(), Some(&key)).await, StatusCode::OK);
        let client = HttpClient::http1();
        let response = client
            .get(setup.public(), "api.test", &format!("/round-{round}"))
            .await;
        assert_eq!(response.status, StatusCode::NO_CONTENT, "round {round}");
    }
    load.finish().await.assert_guarded();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_moving_the_file_away_before_writing_it_again_is_one_change() {
    let setup = Setup::start().await;
    let gateway = &setup.gateway;
    let file = setup.policy_file("plugins.yaml");
    let backup = setup.policy_file("plugins.yaml~");
    let load = Load::start(setup.public());
    let mut before = status(gateway).await;
    for round in 1..=3 {
        // The save of an editor that keeps a backup by renaming, paused between the steps
        // for longer than the quiet period: the folder is without `plugins.yaml` meanwhile.
        std::fs::rename(&file, &backup).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let consumer = format!("round{round}");
        std::fs::write(&file, plugins_yaml(Some(&consumer))).unwrap();
        std::fs::remove_file(&backup).unwrap();
        let live = wait_for(gateway, "the saved file", |s| {
            s.generation > before.generation
        })
        .await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let settled = status(gateway).await;
        assert_eq!(
            (live.generation, settled.generation, settled.failures),
            (
                before.generation + 1,
                before.generation + 1,
                before.failures
            ),
            "round {round}: the save went live as more than one snapshot; log:\n{}",
            gateway.log()
        );
        let key = format!("k-{consumer}");
        assert_eq!(status_of(setup.public(), Some(&key)).await, StatusCode::OK);
        before = settled;
    }
    load.finish().await.assert_guarded();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_data_swap_goes_live() {
    // The whole configuration lives in the ConfigMap's folder, so the scenario adds none.
    let echo = backends::echo("echo").await;
    let scenario = Scenario::new()
        .without_public_listener()
        .set("ECHO", echo.addr())
        .plugin_module("key-auth.wasm", KEY_AUTH);
    let dir = scenario.policies().path();
    // The kubelet's layout: the content in a timestamped folder, `..data` pointing at it,
    // and each visible name a symlink through `..data`.
    std::fs::create_dir(dir.join("..2026_11_30_10_00_00.1")).unwrap();
    let scenario = scenario
        .policy_file("..2026_11_30_10_00_00.1/gateway.yaml", GATEWAY)
        .policy_file("..2026_11_30_10_00_00.1/plugins.yaml", &plugins_yaml(None));
    std::os::unix::fs::symlink("..2026_11_30_10_00_00.1", dir.join("..data")).unwrap();
    for name in ["gateway.yaml", "plugins.yaml"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    let gateway = scenario.start().await;
    let public = gateway.listener("public");
    let load = Load::start(public);
    assert_eq!(
        status_of(public, Some("k-carol")).await,
        StatusCode::UNAUTHORIZED
    );
    let before = status(&gateway).await;

    // The update: a new folder, a new `..data` renamed over the old, the old folder removed.
    let gateway_yaml =
        std::fs::read_to_string(dir.join("..2026_11_30_10_00_00.1/gateway.yaml")).unwrap();
    let next = dir.join("..2026_11_30_10_05_00.2");
    std::fs::create_dir(&next).unwrap();
    std::fs::write(next.join("gateway.yaml"), gateway_yaml).unwrap();
    std::fs::write(next.join("plugins.yaml"), plugins_yaml(Some("carol"))).unwrap();
    std::os::unix::fs::symlink("..2026_11_30_10_05_00.2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_30_10_00_00.1")).unwrap();

    let live = wait_for(&gateway, "the ..data swap", |s| {
        s.generation > before.generation
    })
    .await;
    assert_eq!(live.error, None);
    assert_eq!(status_of(public, Some("k-carol")).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&gateway).await.generation,
        before.generation + 1,
        "one swap, one snapshot"
    );
    load.finish().await.assert_guarded();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_folder_removed_and_created_again_is_watched_again() {
    let setup = Setup::start().await;
    let gateway = &setup.gateway;
    let load = Load::start(setup.public());
    let start = status(gateway).await;

    // Gone: the module the policies name is missing, the loaded version keeps serving.
    std::fs::remove_dir_all(&setup.plugins).unwrap();
    let gone = wait_for(gateway, "the folder removed", |s| {
        s.failures > start.failures
    })
    .await;
    assert_eq!(gone.generation, start.generation);

    // Back, empty: still missing (and this reload came from the parent's watch).
    std::fs::create_dir(&setup.plugins).unwrap();
    let empty = wait_for(gateway, "the folder created", |s| {
        s.failures > gone.failures
    })
    .await;
    assert_eq!(empty.generation, start.generation);

    // A module dropped into the new folder is seen through the new folder's watch.
    let temporary = setup.plugins.join("key-auth.wasm.partial");
    std::fs::copy(KEY_AUTH, &temporary).unwrap();
    std::fs::rename(&temporary, setup.plugins.join("key-auth.wasm")).unwrap();
    let live = wait_for(gateway, "the module in the new folder", |s| {
        s.generation > start.generation
    })
    .await;
    assert_eq!(live.error, None);
    load.finish().await.assert_guarded();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_the_same_documents() {
    let echo = backends::echo("echo").await;
    for (text, shown) in [
        ("", "plugins.yaml: the file is empty"),
        ("plugins:\n", "plugins.yaml: plugins: the section is empty"),
    ] {
        let mut policies = PolicyDir::new();
        policies
            .set("ECHO", echo.addr())
            .write("gateway.yaml", GATEWAY)
            .write("plugins.yaml", text);
        let outcome = run_check(&policies.path());
        assert_ne!(outcome.code, Some(0), "{text:?}: {}", outcome.output);
        assert!(
            outcome.output.contains(shown),
            "{text:?}: {}",
            outcome.output
        );
    }
}
