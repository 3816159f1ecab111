//! A plugin instance from the policies, running as one VM per worker thread.
//!
//! Each worker thread lazily gets its own VM (`thread_local::ThreadLocal`, so access is
//! lock-free and the VMs die with the snapshot that owns the plugin). A VM holds one root
//! context per configuration (the plugin's own and each per-route override) and the stream
//! contexts of that worker's requests. A VM's timers, queue wake-ups and callout answers run
//! as tasks on the same worker runtime, so a VM is only ever touched by its own thread.
//! A singleton plugin is the same machinery on one thread only, the singleton thread (see
//! `wasm::singleton`): its VM there is the one its snapshot started, and no worker builds one.
//!
//! A trap costs one request: the trapped VM is discarded (with the stream contexts in it;
//! the requests that had one go on with a fresh context, see `pipeline::plugins`), the
//! request gets the failure policy's answer, and the worker builds a fresh VM right away on
//! its own runtime, off the path of the next request. Every policy behaves so; `reload`
//! (Envoy's FAIL_RELOAD) is still accepted and now means `fail_closed`. Unlike Envoy, where a
//! VM that trapped under FAIL_CLOSED fails every later request until the next configuration
//! and FAIL_OPEN skips it from then on (an auth plugin switched off by one request), here
//! neither outlives the request that trapped. Repeated traps open the plugin's [`Circuit`]
//! instead, so that a crash loop cannot turn into a VM per request.
//!
//! A callout's response body is read until it passes
//! `server.plugin_limits.callout_response_bytes` (not at all when its `content-length` does)
//! and never kept: the call fails the way Envoy reports any failed call (an HTTP call's
//! `on_http_call_response` with no headers, body or trailers; a gRPC call's close with
//! status RESOURCE_EXHAUSTED, 8; on a gRPC stream the limit is per message) and counts in
//! `tollgate_plugin_limit_refusals_total{limit="callout_response_bytes"}`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use rustc_hash::FxHashMap;
use thread_local::ThreadLocal;

use super::abi::HeaderList;
use super::circuit::Circuit;
use super::engine::{runtime, CompiledModule};
use super::header_map::PseudoHeaderMap;
use super::host::{CallResponse, PendingCallout, PluginIdentity};
use super::shared::VmEvent;
use super::vm::{Vm, VmTrap};
use crate::allocator::release_freed_memory;

type EventReceiver = tokio::sync::mpsc::UnboundedReceiver<VmEvent>;

/// A started VM: its root contexts by configuration key and its events' receiving end.
type StartedVm = (Vm, Roots, EventReceiver);

/// How often a retiring VM is checked for `proxy_done`: off the request path, and short
/// next to any drain timeout.
const RETIRE_POLL: Duration = Duration::from_millis(10);

/// Root context ids by configuration key (`None`: the plugin's own configuration).
pub type Roots = rustc_hash::FxHashMap<Option<String>, u32>;
use crate::config::{self, FailurePolicy, PluginLimits};
use crate::upstream::{CallBody, Cluster};

/// Counters per plugin, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub traps: AtomicU64,
    pub vm_restarts: AtomicU64,
    /// Callbacks run and the time they took, counted per worker.
    pub callback_counts: CallbackCounts,
    /// Linear memory of this plugin's VMs, summed over the workers.
    pub memory_bytes: AtomicU64,
}

/// The callbacks a plugin ran and the time they took, one pair of counters per worker. A
/// request visits each plugin's VM several times, and a count shared by all workers would
/// be a locked read-modify-write at each visit, on a cache line every worker writes. A
/// worker's own counters are written by that worker alone, a load and a store; a reader
/// sums them.
#[derive(Debug, Default)]
pub struct CallbackCounts {
    workers: Mutex<Vec<Arc<WorkerCallbackCounts>>>,
}

/// One worker's share of [`CallbackCounts`].
#[derive(Debug, Default)]
struct WorkerCallbackCounts {
    callbacks: AtomicU64,
    nanos: AtomicU64,
}

impl CallbackCounts {
    /// Counters for a new worker, which only that worker adds to.
    fn for_worker(&self) -> Arc<WorkerCallbackCounts> {
        let counts = Arc::new(WorkerCallbackCounts::default());
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(counts.clone());
        counts
    }

    /// Callbacks run, over every worker.
    pub fn callbacks(&self) -> u64 {
        self.sum(|counts| &counts.callbacks)
    }

    /// Nanoseconds spent in callbacks, over every worker.
    pub fn nanos(&self) -> u64 {
        self.sum(|counts| &counts.nanos)
    }

    fn sum(&self, counter: impl Fn(&WorkerCallbackCounts) -> &AtomicU64) -> u64 {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers
            .iter()
            .map(|counts| counter(counts).load(Ordering::Relaxed))
            .sum()
    }
}

impl WorkerCallbackCounts {
    /// Adds to this worker's counters. Only the worker that owns them writes them, so a
    /// load and a store do what a locked `fetch_add` would.
    fn add(&self, callbacks: u64, nanos: u64) {
        let add = |counter: &AtomicU64, amount: u64| {
            counter.store(counter.load(Ordering::Relaxed) + amount, Ordering::Relaxed);
        };
        add(&self.callbacks, callbacks);
        add(&self.nanos, nanos);
    }
}

struct VmSlot {
    vm: Option<Vm>,
    generation: u64,
    /// Root context per configuration key (`None`: the plugin's own configuration).
    roots: Roots,
    consecutive_failures: u32,
    retry_after: Option<Instant>,
    /// Open gRPC streams of this VM: where `proxy_grpc_send` messages go, and the task.
    grpc_streams: HashMap<u32, GrpcStreamHandle>,
    /// The memory size this slot's VM last added to `PluginStats::memory_bytes`.
    reported_memory: u64,
    /// This worker's callback counters (see [`CallbackCounts`]).
    callback_counts: Arc<WorkerCallbackCounts>,
}

type GrpcStreamHandle = (
    tokio::sync::mpsc::UnboundedSender<Bytes>,
    tokio::task::AbortHandle,
);

pub struct Plugin {
    pub name: String,
    pub module: Arc<CompiledModule>,
    /// The stream callbacks the module exports and declares it implements.
    pub callbacks: super::callbacks::Callbacks,
    pub failure_policy: FailurePolicy,
    pub priority: i32,
    identity: Arc<PluginIdentity>,
    memory_limit: usize,
    callback_timeout: Duration,
    /// The plugin's own configuration under `None`, per-route overrides under their route.
    configurations: Vec<(Option<String>, Bytes)>,
    /// Looked up by every callout: a fast hash (the names are the policies' own).
    clusters: FxHashMap<String, Arc<Cluster>>,
    vms: ThreadLocal<RefCell<VmSlot>>,
    pub stats: PluginStats,
    /// Opened by repeated traps, across the workers.
    pub circuit: Circuit,
    /// One VM for the gateway on the singleton thread (see `wasm::singleton`), in no route
    /// chain.
    pub singleton: bool,
    /// A singleton's first VM, started (and so validated) with the snapshot and waiting for
    /// the singleton thread to take it over: it is the one VM, never a canary.
    parked: Mutex<Option<StartedVm>>,
    /// A singleton that was retired is never given a fresh VM again.
    retired: AtomicBool,
    /// How often a VM of the plugin was discarded or installed, on any worker: while it is
    /// what it was when a stream context's [`VmTicket`] was taken, the context's VM is still
    /// its worker's, which a callback then knows without looking up the worker's slot.
    vm_changes: AtomicU64,
    /// Whether a callback of the plugin ever started a callout, on any worker: until one
    /// does, no request can be waiting for a callout's answer from it, and a run asks none of
    /// its VMs (see [`Plugin::may_await_callouts`]).
    called_out: AtomicBool,
}

/// Which of its worker's VMs a stream context was created in (see [`Plugin::is_current`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmTicket {
    generation: u64,
    vm_changes: u64,
}

/// Why a plugin could not run a callback.
#[derive(Debug, Clone)]
pub enum PluginFailure {
    Trap(VmTrap),
    /// The VM is broken and not (yet) recreated.
    Unavailable(String),
    /// Repeated traps opened the plugin's circuit: it is not run for now.
    CircuitOpen,
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Trap(trap) => trap.fmt(f),
            Self::Unavailable(reason) => f.write_str(reason),
            Self::CircuitOpen => f.write_str("circuit open after repeated traps"),
        }
    }
}

/// The bytes a plugin reads as its configuration, as Envoy delivers them: a string is its
/// raw UTF-8 (a `StringValue` configuration), any other JSON value is JSON (Istio's
/// `pluginConfig`), and an absent or null value is empty.
fn json_bytes(value: &serde_json::Value) -> Bytes {
    match value {
        serde_json::Value::Null => Bytes::new(),
        serde_json::Value::String(text) => Bytes::from(text.clone().into_bytes()),
        other => Bytes::from(serde_json::to_vec(other).unwrap_or_default()),
    }
}

/// The module file a plugin names: a path, or a file name in the plugins folder.
pub fn module_path(plugin: &config::Plugin, plugins_dir: &std::path::Path) -> std::path::PathBuf {
    if plugin.module.is_absolute() || plugin.module.components().count() > 1 {
        plugin.module.clone()
    } else {
        plugins_dir.join(&plugin.module)
    }
}

impl Plugin {
    /// Prepares a plugin instance and proves it starts: a canary VM runs `on_vm_start` and
    /// `on_configure` with every configuration that uses it.
    pub fn new(
        config: &config::Plugin,
        module: Arc<CompiledModule>,
        clusters: HashMap<String, Arc<Cluster>>,
        limits: PluginLimits,
        node: &Arc<config::NodeSettings>,
        registries: &Arc<super::PluginRegistries>,
    ) -> Result<Arc<Self>, VmTrap> {
        let mut configurations = vec![(None, json_bytes(&config.config))];
        for (route, value) in &config.route_config {
            configurations.push((Some(route.clone()), json_bytes(value)));
        }
        let identity = Arc::new(PluginIdentity {
            name: config.name.clone(),
            vm_id: config.vm_id.clone().unwrap_or_default(),
            root_id: config.name.clone(),
            vm_configuration: json_bytes(&config.vm_config),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            clusters: clusters.keys().cloned().collect(),
            limits,
            node: node.clone(),
            registries: registries.clone(),
        });
        let plugin = Arc::new(Self {
            name: config.name.clone(),
            callbacks: super::callbacks::Callbacks::exported_by(&module.module)
                .restricted_to(module.callbacks),
            module,
            failure_policy: config.failure_policy,
            priority: config.priority,
            identity,
            memory_limit: config.memory_limit as usize,
            callback_timeout: config.callback_timeout,
            configurations,
            clusters: clusters.into_iter().collect(),
            vms: ThreadLocal::new(),
            stats: PluginStats::default(),
            circuit: Circuit::new(config.max_traps_per_minute, config.circuit_open_time),
            singleton: config.singleton,
            parked: Mutex::new(None),
            retired: AtomicBool::new(false),
            vm_changes: AtomicU64::new(0),
            called_out: AtomicBool::new(false),
        });
        let started = plugin.start_vm()?;
        if plugin.singleton {
            *plugin.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
        }
        Ok(plugin)
    }

    /// A new VM with every root context configured, and the receiving end of its events
    /// (shared-queue wake-ups) for its event loop.
    fn start_vm(&self) -> Result<StartedVm, VmTrap> {
        let mut vm = Vm::new(
            &self.module,
            self.identity.clone(),
            self.memory_limit,
            self.callback_timeout,
        )?;
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        vm.state().events = Some(events);
        let mut roots = Roots::default();
        for (key, configuration) in &self.configurations {
            let vm_config_size = self.identity.vm_configuration.len();
            let root = vm.create_root(vm_config_size, configuration.clone())?;
            roots.insert(key.clone(), root);
        }
        vm.started();
        Ok((vm, roots, receiver))
    }

    /// Whether this instance is what `config` with `module` would build: same module code
    /// and every setting its VMs were started with.
    fn is_instance_of(
        &self,
        config: &config::Plugin,
        module: &CompiledModule,
        limits: PluginLimits,
        node: &config::NodeSettings,
    ) -> bool {
        let mut configurations = vec![(None, json_bytes(&config.config))];
        for (route, value) in &config.route_config {
            configurations.push((Some(route.clone()), json_bytes(value)));
        }
        let identity = &self.identity;
        self.name == config.name
            && self.singleton == config.singleton
            && self.module.sha256 == module.sha256
            && self.failure_policy == config.failure_policy
            && self.priority == config.priority
            && self.memory_limit == config.memory_limit as usize
            && self.callback_timeout == config.callback_timeout
            && self.configurations == configurations
            && identity.vm_id == config.vm_id.clone().unwrap_or_default()
            && identity.vm_configuration == json_bytes(&config.vm_config)
            && identity
                .env
                .iter()
                .map(|(k, v)| (k, v))
                .eq(config.env.iter())
            && identity.limits == limits
            && *identity.node == *node
    }

    /// The namespace of the plugin's shared data and queues.
    pub fn vm_id(&self) -> &str {
        &self.identity.vm_id
    }

    /// The root context that serves a route on a VM: its override's when it has one, else
    /// the plugin's default one (found without building a key per request).
    pub fn root_context(roots: &Roots, route: &str) -> u32 {
        roots
            .iter()
            .find(|(key, _)| key.as_deref() == Some(route))
            .or_else(|| roots.get_key_value(&None))
            .map_or(0, |(_, root)| *root)
    }

    fn slot(&self) -> &RefCell<VmSlot> {
        self.vms.get_or(|| {
            RefCell::new(VmSlot {
                vm: None,
                generation: 0,
                roots: Roots::default(),
                consecutive_failures: 0,
                retry_after: None,
                grpc_streams: HashMap::new(),
                reported_memory: 0,
                callback_counts: self.stats.callback_counts.for_worker(),
            })
        })
    }

    /// Runs `f` on this thread's VM, creating it when needed (with back-off after a VM that
    /// failed to start). A trap discards the VM, counts in the circuit and has a fresh VM
    /// built off the request path; callouts the callback started are dispatched afterwards.
    pub fn with_vm<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Vm, &Roots) -> Result<R, VmTrap>,
    ) -> Result<R, PluginFailure> {
        let slot = self.slot();
        let mut slot = slot.borrow_mut();
        if slot.vm.is_none() {
            self.revive(&mut slot)?;
        }
        let VmSlot { vm, roots, .. } = &mut *slot;
        let vm_ref = vm.as_mut().expect("revived above");
        let result = f(vm_ref, roots);
        let pending = vm_ref.take_pending();
        if pending.is_some() && !self.called_out.load(Ordering::Relaxed) {
            self.called_out.store(true, Ordering::Relaxed);
        }
        let memory = vm_ref.memory_size();
        let state = vm_ref.state();
        let (callbacks, nanos) = (
            std::mem::take(&mut state.callbacks),
            std::mem::take(&mut state.callback_nanos),
        );
        self.report_memory(&mut slot, memory);
        if callbacks > 0 {
            slot.callback_counts.add(callbacks, nanos);
        }
        let generation = slot.generation;
        match result {
            Ok(value) => {
                slot.consecutive_failures = 0;
                drop(slot);
                if let Some(pending) = pending {
                    self.dispatch(generation, pending);
                }
                Ok(value)
            }
            Err(trap) => {
                self.stats.traps.fetch_add(1, Ordering::Relaxed);
                self.gateway_metrics().plugin_trap(&self.name);
                let worker = std::thread::current();
                tracing::error!(plugin = %self.name, worker = worker.name().unwrap_or("-"), callback = trap.callback, reason = %trap.reason, "plugin trapped; its VM on this worker is replaced");
                // The other requests with a context in this VM lose it too: wake those that
                // wait on it (a paused stream), so they notice now rather than at their
                // wait limit.
                if let Some(vm) = slot.vm.as_mut() {
                    for stream in vm.state().streams.values() {
                        stream.wake.notify_one();
                    }
                }
                self.count_vm_change();
                slot.vm = None;
                slot.roots.clear();
                self.report_memory(&mut slot, 0);
                drop(slot);
                if self.circuit.record_trap() {
                    self.gateway_metrics().plugin_circuit_opened(&self.name);
                    tracing::error!(plugin = %self.name, "plugin circuit opened: more than max_traps_per_minute traps");
                }
                self.rebuild_soon();
                Err(PluginFailure::Trap(trap))
            }
        }
    }

    /// This worker's VM as it is now: a stream context created in it lives as long as
    /// [`Plugin::is_current`] says so for the ticket.
    pub fn vm_ticket(&self) -> VmTicket {
        VmTicket {
            // Read first: a change after it only makes the ticket look stale.
            vm_changes: self.vm_changes.load(Ordering::Relaxed),
            generation: self.slot().borrow().generation,
        }
    }

    /// Whether this worker's VM is still the one of `ticket` (not replaced after a trap), so
    /// that the stream contexts created in it still exist. Asked before every callback: while
    /// no VM of the plugin changed anywhere (this worker's own changes are counted before
    /// they are made), one relaxed load answers; otherwise the worker's slot does.
    pub fn is_current(&self, ticket: VmTicket) -> bool {
        if self.vm_changes.load(Ordering::Relaxed) == ticket.vm_changes {
            return true;
        }
        let slot = self.slot().borrow();
        slot.generation == ticket.generation && slot.vm.is_some()
    }

    /// Whether a callout of this plugin may be unanswered: false only while none of its
    /// callbacks has ever started one. The flag is set on the worker that ran the callback,
    /// the one where a request that waits for the answer asks.
    pub fn may_await_callouts(&self) -> bool {
        self.called_out.load(Ordering::Relaxed)
    }

    /// Reads this thread's VM, if it has one, without running it: no VM is created, nothing
    /// is counted or dispatched. `None` also while the VM is in use (a read from inside one
    /// of its own callbacks).
    pub fn peek_vm<R>(&self, f: impl FnOnce(&Vm) -> R) -> Option<R> {
        let slot = self.slot().try_borrow().ok()?;
        slot.vm.as_ref().map(f)
    }

    /// Counts a VM discarded or installed on this worker (see [`VmTicket`]).
    fn count_vm_change(&self) {
        self.vm_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the memory gauge equal to the sum of the live VMs' memory.
    fn report_memory(&self, slot: &mut VmSlot, memory: u64) {
        // Unchanged after nearly every callback: no write to the shared counter then.
        if memory == slot.reported_memory {
            return;
        }
        if memory > slot.reported_memory {
            self.stats
                .memory_bytes
                .fetch_add(memory - slot.reported_memory, Ordering::Relaxed);
        } else {
            self.stats
                .memory_bytes
                .fetch_sub(slot.reported_memory - memory, Ordering::Relaxed);
        }
        slot.reported_memory = memory;
    }

    /// Builds this worker's replacement VM on the worker's runtime, after the request that
    /// trapped, so that the next request does not pay for instantiating it. Not while the
    /// circuit is open: the half-open probe builds its VM itself.
    fn rebuild_soon(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.singleton {
            // No request comes to probe a singleton: it restarts itself, with back-off.
            super::singleton::restart_later(self);
            return;
        }
        let plugin = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(plugin) = plugin.upgrade() else {
                return;
            };
            if plugin.circuit.is_open() {
                return;
            }
            let Ok(mut slot) = plugin.slot().try_borrow_mut() else {
                return;
            };
            if slot.vm.is_none() {
                let _ = plugin.revive(&mut slot);
            }
        });
    }

    /// Creates this worker's VM, unless one failed to start too recently.
    fn revive(self: &Arc<Self>, slot: &mut VmSlot) -> Result<(), PluginFailure> {
        if self.is_retired() {
            return Err(PluginFailure::Unavailable(format!(
                "plugin {:?} was retired",
                self.name
            )));
        }
        if let Some(retry_after) = slot.retry_after {
            if Instant::now() < retry_after {
                return Err(PluginFailure::Unavailable(format!(
                    "plugin {:?} is restarting after a failure",
                    self.name
                )));
            }
        }
        let started = self.start_vm().map_err(|trap| {
            slot.consecutive_failures += 1;
            let backoff = Duration::from_millis(100u64 << slot.consecutive_failures.min(9))
                .min(Duration::from_secs(30));
            slot.retry_after = Some(Instant::now() + backoff);
            tracing::error!(plugin = %self.name, error = %trap, "plugin VM failed to start");
            PluginFailure::Trap(trap)
        })?;
        self.install(slot, started);
        Ok(())
    }

    /// Makes `started` this thread's VM, with its event loop on this thread's runtime.
    fn install(self: &Arc<Self>, slot: &mut VmSlot, (vm, roots, receiver): StartedVm) {
        if slot.generation > 0 {
            self.stats.vm_restarts.fetch_add(1, Ordering::Relaxed);
            self.gateway_metrics().plugin_restart(&self.name);
            tracing::warn!(plugin = %self.name, "plugin VM recreated");
        }
        self.count_vm_change();
        slot.generation += 1;
        let generation = slot.generation;
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(event_loop(Arc::downgrade(self), generation, receiver));
        }
        slot.vm = Some(vm);
        slot.roots = roots;
        slot.retry_after = None;
        slot.consecutive_failures = 0;
    }

    /// Makes a singleton's parked VM (started with its snapshot) the VM of this thread, the
    /// singleton thread, and starts the callouts its `on_vm_start` and `on_configure` asked
    /// for. False when there was none to take: the singleton runs already.
    pub(crate) fn take_over_parked_vm(self: &Arc<Self>) -> bool {
        let Some(started) = self.parked.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return false;
        };
        self.install(&mut self.slot().borrow_mut(), started);
        let _ = self.with_vm(|_, _| Ok(()));
        true
    }

    /// Stops a singleton from being given a fresh VM again: it is being retired.
    pub(crate) fn mark_retired(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Runs `f` on this thread's VM only if it is still the one of `generation`.
    fn with_generation(
        self: &Arc<Self>,
        generation: u64,
        f: impl FnOnce(&mut Vm) -> Result<(), VmTrap>,
    ) {
        let current = self.slot().borrow().generation;
        if current != generation || self.slot().borrow().vm.is_none() {
            return;
        }
        let _ = self.with_vm(|vm, _| f(vm));
    }

    /// Retires this worker's VM of the plugin, as Envoy does when a plugin goes away: every
    /// root context gets `proxy_on_done`. A root that answers `false` is not done yet; the
    /// VM keeps running (ticks, callouts and their answers) until each such root calls
    /// `proxy_done` or `deadline` passes. Resolves then, so the caller can let the VM go.
    /// A worker that never started a VM of the plugin has nothing to retire.
    pub async fn retire(self: Arc<Self>, deadline: Instant) {
        let Some((generation, mut waiting)) = self.call_root_done() else {
            return;
        };
        while !waiting.is_empty() {
            if Instant::now() >= deadline {
                tracing::warn!(plugin = %self.name, roots = waiting.len(), "drain timeout passed before the plugin called proxy_done; its VM is stopped");
                return;
            }
            let poll = deadline.min(Instant::now() + RETIRE_POLL);
            tokio::time::sleep_until(poll.into()).await;
            let slot = self.slot().borrow();
            let vm = match slot.vm.as_ref() {
                Some(vm) if slot.generation == generation => vm,
                // It trapped meanwhile: nothing of it is left to finish.
                _ => return,
            };
            waiting.retain(|root| !vm.root_called_done(*root));
        }
        tracing::debug!(plugin = %self.name, "plugin VM retired");
    }

    /// `proxy_on_done` on every root context of this worker's VM, if it has one: its
    /// generation and the roots that are not done yet.
    fn call_root_done(self: &Arc<Self>) -> Option<(u64, Vec<u32>)> {
        let generation = {
            let slot = self.slot().borrow();
            slot.vm.as_ref()?;
            slot.generation
        };
        let waiting = self.with_vm(|vm, roots| {
            let mut waiting = Vec::new();
            for root in roots.values() {
                if !vm.on_root_done(*root)? && !vm.root_called_done(*root) {
                    waiting.push(*root);
                }
            }
            Ok(waiting)
        });
        match waiting {
            Ok(waiting) => Some((generation, waiting)),
            Err(failure) => {
                tracing::warn!(plugin = %self.name, %failure, "plugin failed in on_done");
                None
            }
        }
    }

    /// Starts the callouts a callback asked for.
    fn dispatch(self: &Arc<Self>, generation: u64, pending: Vec<PendingCallout>) {
        if pending.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(plugin = %self.name, "callouts outside a worker are not started");
            return;
        }
        for callout in pending {
            let plugin = self.clone();
            match callout {
                PendingCallout::Http {
                    token,
                    cluster,
                    headers,
                    body,
                    trailers: _,
                    timeout,
                    ..
                } => {
                    // Boxed: the callout's future is a few kilobytes, which the runtime would
                    // otherwise copy when it spawns the task and again when it completes.
                    tokio::spawn(Box::pin(async move {
                        let response = plugin.http_callout(&cluster, headers, body, timeout).await;
                        plugin.with_generation(generation, |vm| {
                            let response = match response {
                                Ok(response) => Some(response),
                                Err(failure) => {
                                    vm.state().status = failure.status();
                                    None
                                }
                            };
                            vm.on_http_call_response(token, response).map(drop)
                        });
                    }));
                }
                PendingCallout::Grpc {
                    token,
                    cluster,
                    service,
                    method,
                    metadata,
                    message: None,
                    ..
                } => {
                    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                    let task = tokio::spawn(async move {
                        plugin
                            .grpc_stream(
                                generation, token, &cluster, &service, &method, metadata, receiver,
                            )
                            .await;
                    });
                    self.slot()
                        .borrow_mut()
                        .grpc_streams
                        .insert(token, (sender, task.abort_handle()));
                }
                PendingCallout::Grpc {
                    token,
                    cluster,
                    service,
                    method,
                    metadata,
                    message: Some(message),
                    timeout,
                    ..
                } => {
                    // Boxed, as an HTTP callout is.
                    tokio::spawn(Box::pin(async move {
                        let (status, message_text, response) = plugin
                            .grpc_unary(&cluster, &service, &method, metadata, message, timeout)
                            .await;
                        plugin.with_generation(generation, |vm| {
                            vm.state().status = (status, Bytes::from(message_text));
                            vm.on_grpc_call_response(token, status, response).map(drop)
                        });
                    }));
                }
                PendingCallout::GrpcSend {
                    token,
                    message,
                    end_stream,
                } => {
                    let mut slot = self.slot().borrow_mut();
                    if let Some((sender, _)) = slot.grpc_streams.get(&token) {
                        let _ = sender.send(grpc_frame(&message));
                    }
                    if end_stream {
                        // Dropping the sender ends the request body: the half-close.
                        slot.grpc_streams.remove(&token);
                    }
                }
                PendingCallout::GrpcCancel { token } => {
                    if let Some((_, task)) = self.slot().borrow_mut().grpc_streams.remove(&token) {
                        task.abort();
                    }
                }
            }
        }
    }

    /// A gRPC stream over HTTP/2: messages from `proxy_grpc_send` go out as they come; what
    /// comes back is delivered as initial metadata, messages, trailing metadata and close.
    #[allow(clippy::too_many_arguments)]
    async fn grpc_stream(
        self: &Arc<Self>,
        generation: u64,
        token: u32,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: HeaderList,
        outgoing: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    ) {
        use super::vm::GrpcStreamEvent as Event;
        let deliver = |event: Event| {
            let mut delivered = false;
            self.with_generation(generation, |vm| {
                delivered = vm.on_grpc_stream_event(token, event)?;
                Ok(())
            });
            delivered
        };
        let body = futures_util::stream::unfold(outgoing, |mut outgoing| async move {
            let message = outgoing.recv().await?;
            Some((
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(message)),
                outgoing,
            ))
        });
        let body = http_body_util::StreamBody::new(body)
            .map_err(|never| match never {})
            .boxed();
        let Some(request) = grpc_request(service, method, &metadata, None, body) else {
            deliver(Event::Close(3, Bytes::from_static(b"invalid metadata")));
            return;
        };
        let Some(response) = self.send(cluster, request, Duration::from_secs(3600)).await else {
            deliver(Event::Close(
                14,
                Bytes::from_static(b"upstream unavailable"),
            ));
            return;
        };
        let (parts, mut body) = response.into_parts();
        if !deliver(Event::InitialMetadata(PseudoHeaderMap::from_headers(
            parts.headers.clone(),
        ))) {
            return;
        }
        let mut buffer = Vec::new();
        let mut trailers = http::HeaderMap::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                deliver(Event::Close(14, Bytes::from_static(b"stream reset")));
                return;
            };
            match frame.into_data() {
                Ok(data) => {
                    buffer.extend_from_slice(&data);
                    loop {
                        // Each message is bounded on its own; one announced larger than the
                        // limit ends the stream before it is buffered.
                        if grpc_message_exceeds(&buffer, self.callout_limit()) {
                            self.callout_too_large();
                            let (status, message) = CalloutFailure::TooLarge.status();
                            deliver(Event::Close(status, message));
                            self.slot().borrow_mut().grpc_streams.remove(&token);
                            return;
                        }
                        let Some(message) = take_grpc_message(&mut buffer) else {
                            break;
                        };
                        if !deliver(Event::Message(message)) {
                            return;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(map) = frame.into_trailers() {
                        trailers = map;
                    }
                }
            }
        }
        let status_of = |map: &http::HeaderMap| {
            map.get(&GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
        };
        let status = status_of(&trailers)
            .or_else(|| status_of(&parts.headers))
            .unwrap_or(2);
        // As text: the proxy-wasm Rust SDK's `get_grpc_status` unwraps the message as UTF-8,
        // and a service may send any byte 0x80-0xFF in a header value.
        let message = trailers
            .get(&GRPC_MESSAGE)
            .map(|v| Bytes::from(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .unwrap_or_default();
        if !trailers.is_empty()
            && !deliver(Event::TrailingMetadata(PseudoHeaderMap::from_headers(
                trailers,
            )))
        {
            return;
        }
        deliver(Event::Close(status, message));
        self.slot().borrow_mut().grpc_streams.remove(&token);
    }

    /// A gRPC stream's request, whose body comes as the plugin sends it.
    async fn send(
        &self,
        cluster: &str,
        request: http::Request<crate::upstream::UpstreamBody>,
        timeout: Duration,
    ) -> Option<http::Response<crate::upstream::PooledBody>> {
        self.on_endpoint(cluster, timeout, |cluster, endpoint| async move {
            cluster.send(&endpoint, request).await
        })
        .await
    }

    /// A callout's request, whose body is all there (see `Cluster::call`).
    async fn call(
        &self,
        cluster: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> Option<http::Response<CallBody>> {
        self.on_endpoint(cluster, timeout, |cluster, endpoint| async move {
            cluster.call(&endpoint, request).await
        })
        .await
    }

    /// Runs `exchange` on an endpoint of `cluster` picked for it, within `timeout`; the
    /// outcome feeds the endpoint's passive health.
    async fn on_endpoint<T, F, E>(&self, cluster: &str, timeout: Duration, exchange: F) -> Option<T>
    where
        F: FnOnce(Arc<Cluster>, Arc<crate::upstream::Endpoint>) -> E,
        E: std::future::Future<Output = Result<T, crate::upstream::UpstreamError>>,
    {
        let cluster = self.clusters.get(cluster)?;
        let guard = cluster.pick(cluster.all_endpoints(), None).ok()?;
        let exchange = exchange(cluster.clone(), guard.endpoint.clone());
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => {
                guard.success();
                Some(response)
            }
            _ => {
                guard.failure();
                None
            }
        }
    }

    fn callout_limit(&self) -> u64 {
        self.identity.limits.callout_response_bytes
    }

    fn callout_too_large(&self) {
        self.gateway_metrics()
            .plugin_limit_refusal(&self.name, "callout_response_bytes");
    }

    /// The gateway's metric registry, which this plugin's traps, restarts and refusals
    /// count into.
    fn gateway_metrics(&self) -> &crate::telemetry::metrics::Metrics {
        &self.identity.registries.gateway_metrics
    }

    /// Reads a callout's response body within the time left and the size limit.
    async fn collect_limited(
        &self,
        body: CallBody,
        remaining: Duration,
    ) -> Result<http_body_util::Collected<Bytes>, CalloutFailure> {
        // An announced length above the limit fails before any of the body is read.
        if http_body::Body::size_hint(&body).lower() > self.callout_limit() {
            self.callout_too_large();
            return Err(CalloutFailure::TooLarge);
        }
        let limit = usize::try_from(self.callout_limit()).unwrap_or(usize::MAX);
        // `Limited` stops reading at the first chunk that takes the body past the limit.
        let limited = http_body_util::Limited::new(body, limit);
        match tokio::time::timeout(remaining, limited.collect()).await {
            Err(_) => Err(CalloutFailure::Failed),
            Ok(Ok(collected)) => Ok(collected),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                self.callout_too_large();
                Err(CalloutFailure::TooLarge)
            }
            Ok(Err(_)) => Err(CalloutFailure::Failed),
        }
    }

    async fn http_callout(
        &self,
        cluster: &str,
        headers: HeaderList,
        body: Bytes,
        timeout: Duration,
    ) -> Result<CallResponse, CalloutFailure> {
        let mut request = http::Request::builder();
        let mut authority = String::new();
        for (name, value) in &headers {
            match name.as_str() {
                ":method" => request = request.method(value.as_slice()),
                ":path" => request = request.uri(String::from_utf8_lossy(value).as_ref()),
                ":authority" => authority = String::from_utf8_lossy(value).into_owned(),
                name if name.starts_with(':') => {}
                name => request = request.header(name, value.as_slice()),
            }
        }
        request = request.header(http::header::HOST, authority);
        let has_length = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
        if !body.is_empty() && !has_length {
            // HTTP/1.1 needs the body framed, and an HTTP/2 service may want to know its size.
            request = request.header(http::header::CONTENT_LENGTH, body.len());
        }
        let request = request.body(body).map_err(|_| CalloutFailure::Failed)?;
        let started = Instant::now();
        let response = self
            .call(cluster, request, timeout)
            .await
            .ok_or(CalloutFailure::Failed)?;
        let (parts, body) = response.into_parts();
        let remaining = timeout.saturating_sub(started.elapsed());
        let collected = self.collect_limited(body, remaining).await?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok(CallResponse {
            headers: PseudoHeaderMap::response(parts.status, parts.headers),
            body: collected.to_bytes(),
            trailers: PseudoHeaderMap::from_headers(trailers),
        })
    }

    /// A unary gRPC call over HTTP/2: one length-prefixed message each way.
    async fn grpc_unary(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: HeaderList,
        message: Bytes,
        timeout: Duration,
    ) -> (u32, String, Option<CallResponse>) {
        let Some(request) = grpc_request(
            service,
            method,
            &metadata,
            Some(timeout),
            grpc_frame(&message),
        ) else {
            return (3, "invalid metadata".into(), None);
        };
        let started = Instant::now();
        let Some(response) = self.call(cluster, request, timeout).await else {
            return (14, "upstream unavailable".into(), None);
        };
        let (parts, body) = response.into_parts();
        let remaining = timeout.saturating_sub(started.elapsed());
        let collected = match self.collect_limited(body, remaining).await {
            Ok(collected) => collected,
            Err(CalloutFailure::TooLarge) => {
                let (status, message) = CalloutFailure::TooLarge.status();
                return (status, String::from_utf8_lossy(&message).into_owned(), None);
            }
            Err(CalloutFailure::Failed) => return (4, "deadline exceeded".into(), None),
        };
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let grpc_status = |map: &http::HeaderMap| {
            map.get(&GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
        };
        let status = grpc_status(&trailers)
            .or_else(|| grpc_status(&parts.headers))
            .unwrap_or(2);
        let message_text = trailers
            .get(&GRPC_MESSAGE)
            .or_else(|| parts.headers.get(&GRPC_MESSAGE))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = collected.to_bytes();
        let payload = if body.len() >= 5 {
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            body.slice(5..(5 + len).min(body.len()))
        } else {
            Bytes::new()
        };
        let response = CallResponse {
            headers: PseudoHeaderMap::from_headers(parts.headers),
            body: payload,
            trailers: PseudoHeaderMap::from_headers(trailers),
        };
        (status, message_text, Some(response))
    }
}

/// Why a callout delivered no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CalloutFailure {
    /// Refused, reset, timed out, or unreachable.
    Failed,
    /// The response body passed `plugin_limits.callout_response_bytes`.
    TooLarge,
}

impl CalloutFailure {
    /// The gRPC status and message `proxy_get_status` reports for it.
    fn status(self) -> (u32, Bytes) {
        match self {
            Self::Failed => (14, Bytes::from_static(b"callout failed")),
            Self::TooLarge => (
                8,
                Bytes::from_static(
                    b"callout response larger than plugin_limits.callout_response_bytes",
                ),
            ),
        }
    }
}

/// The head of a gRPC call to `/service/method` with the plugin's metadata (pseudo-headers
/// aside) and, for a unary call, its deadline; `None` when a metadata name or value is not a
/// valid header. Built in place rather than through `http::request::Builder`, which moves the
/// whole request head at each step: this runs once per callout.
fn grpc_request<B>(
    service: &str,
    method: &str,
    metadata: &HeaderList,
    timeout: Option<Duration>,
    body: B,
) -> Option<http::Request<B>> {
    use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, TE};
    static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = grpc_path(service, method)?;
    let headers = request.headers_mut();
    headers.reserve(3 + metadata.len());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = timeout {
        // `NNNm`: at most 8 digits (gRPC's limit), in milliseconds.
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .min(99_999_999);
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(millis).as_bytes();
        let mut value = [b'm'; 9];
        value[..digits.len()].copy_from_slice(digits);
        headers.insert(
            &GRPC_TIMEOUT,
            HeaderValue::from_bytes(&value[..=digits.len()]).ok()?,
        );
    }
    for (name, value) in metadata {
        if !name.starts_with(':') {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            );
        }
    }
    Some(request)
}

/// The `:path` of a gRPC method, `/SERVICE/METHOD`, parsed once per worker: a plugin calls
/// the same few methods on every request, and parsing checks every byte (as much as the
/// rest of building the request). The names come from plugins, so the kept paths are
/// bounded; when they are all taken, they are forgotten together.
fn grpc_path(service: &str, method: &str) -> Option<http::Uri> {
    const KEPT: usize = 16;
    /// Service, method, and their path.
    type KeptPath = (Box<str>, Box<str>, http::Uri);
    thread_local! {
        static PATHS: RefCell<Vec<KeptPath>> = const { RefCell::new(Vec::new()) };
    }
    PATHS.with_borrow_mut(|paths| {
        if let Some((_, _, uri)) = paths.iter().find(|(kept_service, kept_method, _)| {
            **kept_service == *service && **kept_method == *method
        }) {
            return Some(uri.clone());
        }
        let uri = http::Uri::try_from(format!("/{service}/{method}")).ok()?;
        if paths.len() == KEPT {
            paths.clear();
        }
        paths.push((service.into(), method.into(), uri.clone()));
        Some(uri)
    })
}

/// Names read from every gRPC answer, made once (a name given as text is parsed at each
/// lookup).
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// A gRPC message with its 5-byte prefix (uncompressed flag, big-endian length).
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// Whether the message at the front of `buffer` (prefix included) is, or is announced to
/// be, larger than `limit` bytes.
fn grpc_message_exceeds(buffer: &[u8], limit: u64) -> bool {
    let size = match buffer.get(1..5) {
        Some(len) => 5 + u64::from(u32::from_be_bytes([len[0], len[1], len[2], len[3]])),
        None => buffer.len() as u64,
    };
    size > limit
}

/// Takes one complete length-prefixed message off the front of `buffer`, if there is one.
fn take_grpc_message(buffer: &mut Vec<u8>) -> Option<Bytes> {
    if buffer.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    let message = Bytes::copy_from_slice(&buffer[5..5 + len]);
    buffer.drain(..5 + len);
    Some(message)
}

/// A header map as a list of pairs (a local reply's headers, say).
pub fn header_list(headers: &http::HeaderMap) -> HeaderList {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect()
}

/// A VM's timers and queue wake-ups, on the VM's own worker thread. Ends when the plugin
/// (its snapshot) is gone or the VM was replaced.
async fn event_loop(plugin: Weak<Plugin>, generation: u64, mut events: EventReceiver) {
    let mut next_tick: HashMap<u32, Instant> = HashMap::new();
    loop {
        let periods = {
            let Some(plugin) = plugin.upgrade() else {
                return;
            };
            let slot = plugin.slot().borrow();
            if slot.generation != generation {
                return;
            }
            match &slot.vm {
                Some(vm) => vm.tick_periods(),
                None => return,
            }
        };
        let now = Instant::now();
        for (root, period) in &periods {
            next_tick.entry(*root).or_insert(now + *period);
        }
        next_tick.retain(|root, _| periods.iter().any(|(r, _)| r == root));
        let wake_at = next_tick
            .values()
            .min()
            .copied()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            event = events.recv() => {
                let Some(VmEvent::QueueReady { root_context, queue }) = event else { return };
                let Some(plugin) = plugin.upgrade() else { return };
                plugin.with_generation(generation, |vm| vm.on_queue_ready(root_context, queue));
            }
            _ = tokio::time::sleep_until(wake_at.into()) => {
                let Some(plugin) = plugin.upgrade() else { return };
                let now = Instant::now();
                for (root, period) in periods {
                    if next_tick.get(&root).is_some_and(|due| *due <= now) {
                        next_tick.insert(root, now + period);
                        plugin.with_generation(generation, |vm| vm.on_tick(root));
                    }
                }
            }
        }
    }
}

/// Compiles every module the policies name, once per file, and builds every plugin
/// instance — or takes it from `reusable` when one there runs the same module with the
/// same settings. Errors name the plugin and what went wrong.
pub fn build_plugins(
    plugins: &[config::Plugin],
    plugins_dir: &std::path::Path,
    clusters: &HashMap<String, Arc<Cluster>>,
    limits: PluginLimits,
    node: &Arc<config::NodeSettings>,
    reusable: &[Arc<Plugin>],
    registries: &Arc<super::PluginRegistries>,
) -> Result<Vec<Arc<Plugin>>, Vec<config::ConfigError>> {
    let mut modules: HashMap<std::path::PathBuf, Result<Arc<CompiledModule>, String>> =
        HashMap::new();
    let mut built = Vec::new();
    let mut errors = Vec::new();
    for plugin in plugins {
        let path = module_path(plugin, plugins_dir);
        let module = modules
            .entry(path.clone())
            .or_insert_with(|| runtime().load(&path))
            .clone();
        let result = module.and_then(|module| {
            match reusable
                .iter()
                .find(|running| running.is_instance_of(plugin, &module, limits, node))
            {
                Some(running) => Ok(running.clone()),
                None => Plugin::new(plugin, module, clusters.clone(), limits, node, registries)
                    .map_err(|trap| trap.to_string()),
            }
        });
        match result {
            Ok(instance) => built.push(instance),
            Err(error) => errors.push(config::ConfigError::new(&plugin.origin, "module", error)),
        }
    }
    // Loading modules and configuring a VM of each plugin leave freed memory scattered over
    // the allocator's pages, which it would keep for good on a thread that now waits
    // (850 KiB at the start of a gateway with the bundled chain; bench/README.md, "Memory").
    if !plugins.is_empty() {
        release_freed_memory();
    }
    if errors.is_empty() {
        Ok(built)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_counts_of_every_worker_are_summed() {
        let counts = Arc::new(CallbackCounts::default());
        let workers: Vec<_> = (0..4u64)
            .map(|worker| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    let mine = counts.for_worker();
                    for _ in 0..1000 {
                        mine.add(2, worker + 1);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(counts.callbacks(), 4 * 1000 * 2);
        assert_eq!(counts.nanos(), 1000 * (1 + 2 + 3 + 4));
    }

    #[test]
    fn grpc_messages_are_framed_and_split() {
        let mut buffer = grpc_frame(b"one").to_vec();
        buffer.extend_from_slice(&grpc_frame(b"two")[..6]);
        assert_eq!(take_grpc_message(&mut buffer).unwrap(), "one");
        assert_eq!(
            take_grpc_message(&mut buffer),
            None,
            "the second message is incomplete"
        );
        buffer.extend_from_slice(&grpc_frame(b"two")[6..]);
        assert_eq!(take_grpc_message(&mut buffer).unwrap(), "two");
        assert!(buffer.is_empty());
    }

    #[test]
    fn grpc_requests_carry_the_method_path_and_a_timeout_of_at_most_eight_digits() {
        let metadata: HeaderList = vec![("x-tenant".into(), b"acme".to_vec())];
        let request = grpc_request(
            "pkg.Service",
            "Call",
            &metadata,
            Some(Duration::from_millis(1500)),
            (),
        )
        .unwrap();
        assert_eq!(request.uri(), "/pkg.Service/Call");
        assert_eq!(request.headers()["grpc-timeout"], "1500m");
        assert_eq!(request.headers()["x-tenant"], "acme");
        assert_eq!(request.headers()["te"], "trailers");
        let long = Duration::from_millis(u64::from(u32::MAX));
        let request = grpc_request("pkg.Service", "Call", &Vec::new(), Some(long), ()).unwrap();
        assert_eq!(request.headers()["grpc-timeout"], "99999999m");
        // More methods than a worker keeps parsed: each still gets its own path.
        for round in 0..2 {
            for i in 0..40 {
                let method = format!("M{i}");
                let request = grpc_request("pkg.Service", &method, &Vec::new(), None, ()).unwrap();
                assert_eq!(
                    request.uri().path(),
                    format!("/pkg.Service/M{i}"),
                    "round {round}"
                );
                assert!(request.headers().get("grpc-timeout").is_none());
            }
        }
        // A name that cannot be a path is refused, not sent.
        assert!(grpc_request("pkg Service", "Call", &Vec::new(), None, ()).is_none());
    }

    #[test]
    fn a_grpc_message_is_measured_by_its_announced_length() {
        let framed = grpc_frame(b"hello");
        assert!(!grpc_message_exceeds(&framed, 10));
        assert!(grpc_message_exceeds(&framed, 9));
        // The prefix alone tells: nothing of the message needs to be buffered.
        assert!(grpc_message_exceeds(&framed[..5], 9));
        assert!(!grpc_message_exceeds(&framed[..3], 9));
        assert!(grpc_message_exceeds(&[0; 4], 3));
    }

    #[test]
    fn string_configuration_is_raw_and_other_values_are_json() {
        use serde_json::json;
        assert_eq!(json_bytes(&json!("Hello")), "Hello");
        assert_eq!(json_bytes(&json!("")), "");
        assert_eq!(json_bytes(&json!("{\"a\":1}")), "{\"a\":1}");
        assert_eq!(json_bytes(&json!({ "a": "b" })), r#"{"a":"b"}"#);
        assert_eq!(json_bytes(&json!(["x", 2])), r#"["x",2]"#);
        assert_eq!(json_bytes(&json!(42)), "42");
        assert_eq!(json_bytes(&json!(true)), "true");
        assert_eq!(json_bytes(&serde_json::Value::Null), "");
    }
}
