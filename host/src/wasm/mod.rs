//! The proxy-wasm runtime on wasmtime.
//!
//! | module | role |
//! |---|---|
//! | [`engine`] | the one `Engine`, compilation with an on-disk cache, ABI detection, import check |
//! | [`layout`] | a module's functions placed hot first before it is compiled, as its build asks |
//! | [`memory`] | bounds-checked guest memory access (the only place that touches it) |
//! | [`abi`] | the host functions, registered in one place |
//! | [`callbacks`] | which request callbacks a module exports, declares, and a configuration needs |
//! | [`host`] | the store data the host functions work on |
//! | [`header_map`] | a header map as plugins see it, edited where the request keeps it |
//! | [`vm`] | one instance: contexts, callbacks under a CPU deadline, traps |
//! | [`plugin`] | a plugin instance: a VM per worker, failure policy, callouts, timers |
//! | [`singleton`] | singleton plugins: one VM for the gateway on its own thread, in no route |
//! | [`circuit`] | a plugin's trap circuit: repeated traps stop it from running for a while |
//! | [`shared`] | shared data and queues across VMs |
//! | [`metrics`] | plugin-defined metrics |
//!
//! What plugins share beyond one VM — shared data and queues, the metrics they define — is
//! gateway state ([`PluginRegistries`]), reached by host functions through their VM's
//! [`host::HostState`], never through globals.
//!
//! The contract is Envoy's behaviour: a module built with the `proxy-wasm` crate for
//! `wasm32-wasip1` behaves here as it does there.

pub mod abi;
pub mod callbacks;
pub mod circuit;
pub mod engine;
pub mod header_map;
pub mod host;
pub mod layout;
pub mod memory;
pub mod metrics;
pub mod plugin;
pub mod shared;
pub mod singleton;
pub mod vm;

use std::sync::Arc;

/// What outlives every VM, worker and reload: the shared data and queues, the metrics
/// plugins define, and the gateway's own metrics (which requests, connections and
/// clusters count into, and where host functions count the requests they refuse at a
/// limit). One per gateway: the first snapshot creates it and each snapshot hands it on to
/// the next; the admin API reads it from the live snapshot.
#[derive(Default)]
pub struct PluginRegistries {
    pub shared_data: shared::SharedStore,
    pub metrics: metrics::PluginMetrics,
    pub gateway_metrics: Arc<crate::telemetry::metrics::Metrics>,
}

impl std::fmt::Debug for PluginRegistries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginRegistries(..)")
    }
}
