//! Memory per plugin VM, through the gateway: every worker runs its own VM of every plugin,
//! so a small pod with many workers pays for plugins × workers VMs. With 4 workers and the
//! bundled plugins of the demo chain, after traffic through all of them:
//! - the resident memory they add, divided by plugins × workers, is at most 2 MiB per VM;
//! - a gateway with 3 plugins is resident in at most 2.5 × the memory of the same gateway
//!   without plugins (the goal is 1.3; see `MAX_RATIO_WITH_3_PLUGINS`).
//!
//! Resident memory is `Rss` of `/proc/PID/smaps_rollup` (with `Pss` and `Private_Dirty`
//! printed beside it), read once the gateway has served the traffic and has been idle for a
//! moment. Modules are compiled into the cache before any gateway is measured (`tollgate
//! check`), as on every start but a machine's first: the compiler's working memory is not
//! a VM's.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use tollgate_tests::backends::{self, Backend};
use tollgate_tests::bundled::{KEY_AUTH, METERING, RATE_LIMIT, TRANSFORMER};
use tollgate_tests::clients::{request, HttpClient};
use tollgate_tests::gateway::run_check;
use tollgate_tests::plugins::PluginSpec;
use tollgate_tests::scenario::Scenario;

const WORKERS: usize = 4;
const MAX_BYTES_PER_VM: f64 = 2.0 * 1024.0 * 1024.0;
/// The goal is 1.3, not met yet: what plugins add beyond their VMs is fixed — the
/// compiled code of each module (about 1 MiB for a Rust plugin) and the gateway's own
/// wasm runtime code paged in — and weighs against a 0-plugin gateway of 13 MiB (release
/// build) to 21 MiB (debug). Measured: 1.84–1.86 with a debug build, 2.13 with a release
/// build (`TOLLGATE_BIN`); this bound holds for both and catches a regression meanwhile.
const MAX_RATIO_WITH_3_PLUGINS: f64 = 2.5;
/// Requests sent to each gateway, `CONNECTIONS` at a time (more connections than workers,
/// so that every worker serves some).
const REQUESTS: usize = 400;
const CONNECTIONS: usize = 16;

/// The demo chain (policies/plugins.yaml): key-auth, rate-limit, transformer, metering; the
/// first `count` of them. The rate limit is never reached; metering delivers its records
/// to the echo backend.
fn demo_chain(count: usize) -> Vec<PluginSpec> {
    let chain = vec![
        PluginSpec::new("keys", KEY_AUTH)
            .priority(100)
            .config(json!({
                "key_names": ["x-api-key"],
                "consumers": [{ "name": "alice", "keys": ["alice-key"], "groups": ["gold"] }],
            })),
        PluginSpec::new("limits", RATE_LIMIT)
            .priority(90)
            .config(json!({
                "key": "consumer",
                "plans": { "gold": { "requests_per_second": 1000000, "burst": 1000000 } },
                "consumers": { "alice": "gold" },
                "default_plan": "gold",
            })),
        PluginSpec::new("reshape", TRANSFORMER)
            .priority(50)
            .config(json!({
                "request": { "headers": { "set": { "x-gateway": "tollgate" } } },
                "response": { "json": { "redact": ["headers.user-agent"] } },
            })),
        PluginSpec::new("metering", METERING)
            .priority(10)
            .config(json!({
                "billing_cluster": "billing",
                "path": "/v1/usage",
                "flush_interval_ms": 1000,
            })),
    ];
    chain.into_iter().take(count).collect()
}

/// One field of `/proc/PID/smaps_rollup`, in bytes.
fn smaps_rollup(pid: u32, field: &str) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .expect("read /proc/PID/smaps_rollup");
    rollup
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or_else(|| panic!("no {field} in smaps_rollup:\n{rollup}"))
}

struct Resident {
    rss: u64,
    pss: u64,
    private_dirty: u64,
}

/// Starts a gateway with `plugins` on 4 workers, sends it the traffic and reads its memory.
async fn resident_after_load(echo: &Backend, plugins: &[PluginSpec]) -> Resident {
    // Metering bills to the echo backend too: its batches are just more requests.
    let gateway = Scenario::new()
        .cluster_at("echo", echo.addr())
        .cluster_at("billing", echo.addr())
        .forward("api", "/", "echo")
        .plugins(plugins)
        .workers(WORKERS)
        .start()
        .await;
    if !plugins.is_empty() {
        let check = run_check(&gateway.policies().path());
        assert_eq!(check.code, Some(0), "tollgate check: {}", check.output);
    }
    let public = gateway.listener("public");
    let client = HttpClient::http1();
    let mut sent = 0;
    while sent < REQUESTS {
        let batch = (0..CONNECTIONS).map(|_| {
            let get = request("GET", public, "api.demo.local", "/orders")
                .header("x-api-key", "alice-key")
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            client.send(get)
        });
        for response in futures_util::future::join_all(batch).await {
            let response = response.expect("the gateway answers");
            assert_eq!(response.status, 200, "{}", response.text());
        }
        sent += CONNECTIONS;
    }
    // Memory freed after the traffic is given back after the allocator's purge delay.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = gateway.pid();
    Resident {
        rss: smaps_rollup(pid, "Rss"),
        pss: smaps_rollup(pid, "Pss"),
        private_dirty: smaps_rollup(pid, "Private_Dirty"),
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_vms_cost_little_resident_memory() {
    let echo = backends::echo("echo").await;
    let without = resident_after_load(&echo, &[]).await;
    let mut failures = Vec::new();
    println!(
        "0 plugins, {WORKERS} workers: Rss {}, Pss {}, Private_Dirty {}",
        mib(without.rss as f64),
        mib(without.pss as f64),
        mib(without.private_dirty as f64)
    );
    for count in [3, 4] {
        let with = resident_after_load(&echo, &demo_chain(count)).await;
        let vms = (count * WORKERS) as f64;
        let per_vm = (with.rss as f64 - without.rss as f64) / vms;
        let ratio = with.rss as f64 / without.rss as f64;
        println!(
            "{count} plugins, {WORKERS} workers: Rss {} ({ratio:.2} × 0 plugins), Pss {}, \
             Private_Dirty {}; per VM: Rss {}, Private_Dirty {}",
            mib(with.rss as f64),
            mib(with.pss as f64),
            mib(with.private_dirty as f64),
            mib(per_vm),
            mib((with.private_dirty as f64 - without.private_dirty as f64) / vms),
        );
        if per_vm > MAX_BYTES_PER_VM {
            failures.push(format!(
                "{count} plugins: {} per VM, more than {}",
                mib(per_vm),
                mib(MAX_BYTES_PER_VM)
            ));
        }
        if count == 3 && ratio > MAX_RATIO_WITH_3_PLUGINS {
            failures.push(format!(
                "3 plugins: {ratio:.2} × the 0-plugin Rss, more than {MAX_RATIO_WITH_3_PLUGINS}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}
