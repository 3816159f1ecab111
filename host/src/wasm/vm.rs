//! One VM: a wasmtime store and instance of a plugin's module, its root contexts and the
//! stream contexts of the requests in flight on its worker. Every guest call goes through
//! [`Vm::call`], which starts the CPU deadline ([`CpuBudget`]), and turns a trap into
//! [`VmTrap`] that marks the VM broken.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::{Instance, Store, TypedFunc, UpdateDeadline, WasmParams, WasmResults};

use super::callbacks::{Callbacks, StreamCallback};
use super::engine::{runtime, CompiledModule};
use super::host::{HostState, PendingCallout, PluginIdentity, RootState};

/// What a gRPC stream delivers, in order: metadata, messages, trailers, close.
#[derive(Debug)]
pub enum GrpcStreamEvent {
    InitialMetadata(super::header_map::PseudoHeaderMap),
    Message(Bytes),
    TrailingMetadata(super::header_map::PseudoHeaderMap),
    Close(u32, Bytes),
}

/// A trap (or a refusal) in a plugin callback, with what is known about it.
#[derive(Debug, Clone)]
pub struct VmTrap {
    pub plugin: String,
    pub callback: &'static str,
    pub reason: String,
}

impl std::fmt::Display for VmTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {:?}: {}: {}",
            self.plugin, self.callback, self.reason
        )
    }
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseCallback = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// An optional guest export, shared so that calling it needs no clone of its type.
type Export<P, R> = Option<Arc<TypedFunc<P, R>>>;

struct Exports {
    on_context_create: Arc<TypedFunc<(u32, u32), ()>>,
    on_vm_start: Export<(u32, u32), u32>,
    on_configure: Export<(u32, u32), u32>,
    on_tick: Export<u32, ()>,
    on_queue_ready: Export<(u32, u32), ()>,
    on_request_headers: Export<(u32, u32, u32), u32>,
    on_request_body: Export<(u32, u32, u32), u32>,
    on_request_trailers: Export<(u32, u32), u32>,
    on_response_headers: Export<(u32, u32, u32), u32>,
    on_response_body: Export<(u32, u32, u32), u32>,
    on_response_trailers: Export<(u32, u32), u32>,
    on_log: Export<u32, ()>,
    on_done: Export<u32, u32>,
    on_delete: Export<u32, ()>,
    on_http_call_response: Option<Arc<CallResponseCallback>>,
    on_grpc_receive_initial_metadata: Export<(u32, u32, u32), ()>,
    on_grpc_receive: Export<(u32, u32, u32), ()>,
    on_grpc_receive_trailing_metadata: Export<(u32, u32, u32), ()>,
    on_grpc_close: Export<(u32, u32, u32), ()>,
}

/// A module without the one export every proxy-wasm plugin has.
#[derive(Debug, thiserror::Error)]
#[error("the module does not export proxy_on_context_create(i32, i32)")]
struct NoContextCreate;

impl Exports {
    fn find(store: &mut Store<HostState>, instance: &Instance) -> Result<Self, NoContextCreate> {
        macro_rules! optional {
            ($name:literal) => {
                optional_export(store, instance, $name).map(Arc::new)
            };
        }
        Ok(Self {
            on_context_create: instance
                .get_typed_func(&mut *store, "proxy_on_context_create")
                .map(Arc::new)
                .map_err(|_| NoContextCreate)?,
            on_vm_start: optional!("proxy_on_vm_start"),
            on_configure: optional!("proxy_on_configure"),
            on_tick: optional!("proxy_on_tick"),
            on_queue_ready: optional!("proxy_on_queue_ready"),
            on_request_headers: optional!("proxy_on_request_headers"),
            on_request_body: optional!("proxy_on_request_body"),
            on_request_trailers: optional!("proxy_on_request_trailers"),
            on_response_headers: optional!("proxy_on_response_headers"),
            on_response_body: optional!("proxy_on_response_body"),
            on_response_trailers: optional!("proxy_on_response_trailers"),
            on_log: optional!("proxy_on_log"),
            on_done: optional!("proxy_on_done"),
            on_delete: optional!("proxy_on_delete"),
            on_http_call_response: optional!("proxy_on_http_call_response"),
            on_grpc_receive_initial_metadata: optional!("proxy_on_grpc_receive_initial_metadata"),
            on_grpc_receive: optional!("proxy_on_grpc_receive"),
            on_grpc_receive_trailing_metadata: optional!("proxy_on_grpc_receive_trailing_metadata"),
            on_grpc_close: optional!("proxy_on_grpc_close"),
        })
    }

    /// Forgets the callbacks the module declares it does not implement: they are never
    /// entered, as if the module did not export them.
    fn forget_undeclared(&mut self, declared: Callbacks) {
        macro_rules! forget_unless {
            ($($export:ident: $callbacks:expr),* $(,)?) => {
                $(if !declared.includes($callbacks) {
                    self.$export = None;
                })*
            };
        }
        forget_unless! {
            on_request_headers: Callbacks::of(StreamCallback::RequestHeaders),
            on_request_body: Callbacks::of(StreamCallback::RequestBody),
            on_request_trailers: Callbacks::of(StreamCallback::RequestTrailers),
            on_response_headers: Callbacks::of(StreamCallback::ResponseHeaders),
            on_response_body: Callbacks::of(StreamCallback::ResponseBody),
            on_response_trailers: Callbacks::of(StreamCallback::ResponseTrailers),
            on_log: Callbacks::LOG,
            on_done: Callbacks::DONE,
        }
    }
}

/// An export of this name and type, if the module has one. Absent exports are looked up
/// without an error value: building one captures a backtrace when `RUST_BACKTRACE` is set,
/// which reads the host's unwind tables into memory for every VM started.
fn optional_export<Params, Results>(
    store: &mut Store<HostState>,
    instance: &Instance,
    name: &str,
) -> Option<TypedFunc<Params, Results>>
where
    Params: WasmParams,
    Results: WasmResults,
{
    instance
        .get_func(&mut *store, name)
        .and_then(|func| func.typed(&*store).ok())
}

pub struct Vm {
    store: Store<HostState>,
    instance: Instance,
    memory: Option<wasmtime::Memory>,
    exports: Exports,
    /// Guest calls made, for sampling their duration.
    calls: u64,
    /// The CPU time each callback may use (`callback_timeout`).
    callback_timeout: Duration,
    /// What finished stream contexts left for the next ones (a free list).
    // Boxed on purpose: a context goes between this list and `HostState::streams` by
    // pointer, not by copying the whole state.
    #[allow(clippy::vec_box)]
    spare_streams: Vec<Box<super::host::StreamState>>,
}

/// How many finished stream contexts a VM keeps for reuse: as many as it serves at once in
/// the common case.
const SPARE_STREAMS: usize = 64;

/// The CPU time the calling thread has run.
#[allow(unsafe_code)] // a system call that fills in a value of ours
fn thread_cpu_time() -> Duration {
    /// `struct timespec` on 64-bit Linux.
    #[repr(C)]
    struct Timespec {
        seconds: i64,
        nanoseconds: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut time = Timespec {
        seconds: 0,
        nanoseconds: 0,
    };
    // SAFETY: `time` is a valid, writable `struct timespec`, the only memory the call writes.
    if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut time) } == 0 {
        return Duration::new(time.seconds as u64, time.nanoseconds as u32);
    }
    // Linux always has the clock; were it refused, the wall clock keeps deadlines working.
    static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);
    STARTED.elapsed()
}

/// Asked by the engine when a guest call runs into its epoch deadline.
fn on_epoch_deadline(
    mut store: wasmtime::StoreContextMut<'_, HostState>,
) -> wasmtime::Result<UpdateDeadline> {
    Ok(store.data_mut().cpu.at_tick(thread_cpu_time()))
}

impl Vm {
    /// Instantiates the module and runs its initialisers (`_initialize`, then `main` if
    /// exported; else `_start`).
    pub fn new(
        module: &CompiledModule,
        identity: Arc<PluginIdentity>,
        memory_limit: usize,
        callback_timeout: Duration,
    ) -> Result<Self, VmTrap> {
        let plugin = identity.name.clone();
        let trap = |callback: &'static str, reason: String| VmTrap {
            plugin: plugin.clone(),
            callback,
            reason,
        };
        let mut store = Store::new(&runtime().engine, HostState::new(identity, memory_limit));
        store.limiter(|state| &mut state.limits);
        if super::engine::epochs_enabled() {
            store.epoch_deadline_callback(on_epoch_deadline);
            // Start-up may compile regexes or parse large configurations: give it longer.
            store
                .data_mut()
                .cpu
                .start(callback_timeout.max(Duration::from_secs(1)));
            store.set_epoch_deadline(1);
        }
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|error| trap("instantiate", describe(&error)))?;
        let initialize = optional_export::<(), ()>(&mut store, &instance, "_initialize");
        let start = optional_export::<(), ()>(&mut store, &instance, "_start");
        if let Some(initialize) = initialize {
            initialize
                .call(&mut store, ())
                .map_err(|error| trap("_initialize", describe(&error)))?;
            if let Some(main) = optional_export::<(u32, u32), u32>(&mut store, &instance, "main") {
                main.call(&mut store, (0, 0))
                    .map_err(|error| trap("main", describe(&error)))?;
            }
        } else if let Some(start) = start {
            start
                .call(&mut store, ())
                .map_err(|error| trap("_start", describe(&error)))?;
        }
        let mut exports = Exports::find(&mut store, &instance)
            .map_err(|missing| trap("instantiate", missing.to_string()))?;
        exports.forget_undeclared(module.callbacks);
        let memory = instance.get_memory(&mut store, "memory");
        Ok(Self {
            store,
            instance,
            memory,
            exports,
            calls: 0,
            callback_timeout,
            spare_streams: Vec::new(),
        })
    }

    /// Sets an exported mutable i32 global (benchmarks and tests steer hand-written modules
    /// with one).
    pub fn set_global_i32(&mut self, name: &str, value: i32) {
        let instance = self.instance;
        if let Some(global) = instance.get_global(&mut self.store, name) {
            let _ = global.set(&mut self.store, wasmtime::Val::I32(value));
        }
    }

    /// The guest's linear memory in bytes.
    pub fn memory_size(&mut self) -> u64 {
        self.memory
            .map_or(0, |memory| memory.data_size(&self.store) as u64)
    }

    pub fn state(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    pub fn state_ref(&self) -> &HostState {
        self.store.data()
    }

    fn plugin_name(&self) -> String {
        self.store.data().plugin.name.clone()
    }

    /// Calls a guest function under the CPU deadline. A trap is returned as [`VmTrap`]; the
    /// caller must treat the VM as broken afterwards.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        callback: &'static str,
        func: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, VmTrap> {
        if super::engine::epochs_enabled() {
            self.store.data_mut().cpu.start(self.callback_timeout);
            self.store.set_epoch_deadline(1);
        }
        // Callback time is sampled (one call in 8, counted 8 times) to keep two clock reads
        // off most calls.
        self.calls = self.calls.wrapping_add(1);
        let sampled = self.calls.is_multiple_of(8);
        let started = sampled.then(std::time::Instant::now);
        let result = func.call(&mut self.store, params);
        let state = self.store.data_mut();
        state.callbacks += 1;
        if let Some(started) = started {
            state.callback_nanos += 8 * started.elapsed().as_nanos() as u64;
        }
        result.map_err(|error| VmTrap {
            plugin: self.plugin_name(),
            callback,
            reason: describe(&error),
        })
    }

    /// Creates a root context and runs `on_vm_start` and `on_configure` with `configuration`.
    /// A `false` from either refuses the plugin, quoting its log lines; so does a trap (a
    /// panic's message is among them).
    pub fn create_root(
        &mut self,
        vm_configuration_size: usize,
        configuration: Bytes,
    ) -> Result<u32, VmTrap> {
        self.start_root(vm_configuration_size, configuration)
            .map_err(|mut trap| {
                let lines = self.state().startup_log.clone().unwrap_or_default();
                if !lines.is_empty() && !trap.reason.contains("the plugin logged") {
                    trap.reason =
                        format!("{}; the plugin logged: {}", trap.reason, lines.join(" | "));
                }
                trap
            })
    }

    fn start_root(
        &mut self,
        vm_configuration_size: usize,
        configuration: Bytes,
    ) -> Result<u32, VmTrap> {
        let id = self.state().new_context_id();
        self.state().roots.insert(
            id,
            RootState {
                configuration: configuration.clone(),
                tick_period: None,
                callbacks: Callbacks::ALL,
            },
        );
        self.state().effective_context = id;
        let create = self.exports.on_context_create.clone();
        self.call("on_context_create", &create, (id, 0))?;
        if let Some(start) = self.exports.on_vm_start.clone() {
            self.state().effective_context = id;
            if self.call("on_vm_start", &start, (id, vm_configuration_size as u32))? == 0 {
                return Err(self.refusal("on_vm_start"));
            }
        }
        if let Some(configure) = self.exports.on_configure.clone() {
            self.state().effective_context = id;
            self.state().configuring = configuration.clone();
            let accepted =
                self.call("on_configure", &configure, (id, configuration.len() as u32))?;
            self.state().configuring = Bytes::new();
            if accepted == 0 {
                return Err(self.refusal("on_configure"));
            }
        }
        Ok(id)
    }

    fn refusal(&mut self, callback: &'static str) -> VmTrap {
        let lines = self.state().startup_log.clone().unwrap_or_default();
        let reason = if lines.is_empty() {
            "returned false (the plugin logged nothing)".to_string()
        } else {
            format!("returned false; the plugin logged: {}", lines.join(" | "))
        };
        VmTrap {
            plugin: self.plugin_name(),
            callback,
            reason,
        }
    }

    /// Start-up is over: stop keeping log lines for refusals.
    pub fn started(&mut self) {
        self.state().startup_log = None;
    }

    /// Creates a stream context for a request under `root`, from what a finished one left
    /// when there is one; returns it, what wakes the request when the plugin resumes it, and
    /// the callbacks the root context's configuration needs.
    pub fn create_stream(
        &mut self,
        root: u32,
        info: Arc<super::host::StreamInfo>,
    ) -> Result<(u32, Arc<tokio::sync::Notify>, Callbacks), VmTrap> {
        let callbacks = self
            .state()
            .roots
            .get(&root)
            .map_or(Callbacks::ALL, |root| root.callbacks);
        let stream = match self.spare_streams.pop() {
            Some(mut spare) => {
                spare.reuse(root, callbacks, info);
                spare
            }
            None => Box::new(super::host::StreamState::new(root, callbacks, info)),
        };
        let wake = stream.wake.clone();
        let id = self.state().new_context_id();
        self.state().streams.insert(id, stream);
        self.state().effective_context = id;
        let create = self.exports.on_context_create.clone();
        self.call("on_context_create", &create, (id, root))?;
        Ok((id, wake, callbacks))
    }

    /// Runs one of the header/body/trailer callbacks; a module without it continues.
    pub fn stream_callback(
        &mut self,
        context: u32,
        callback: StreamCallback,
        size: usize,
        end_of_stream: bool,
    ) -> Result<super::abi::Action, VmTrap> {
        let state = self.state();
        state.effective_context = context;
        // A callback the stream's configuration said it does not need is not entered.
        if state
            .streams
            .get(&context)
            .is_some_and(|stream| !stream.callbacks.has(callback))
        {
            return Ok(super::abi::Action::Continue);
        }
        let eos = u32::from(end_of_stream);
        let size = size as u32;
        let raw = match callback {
            StreamCallback::RequestHeaders => match self.exports.on_request_headers.clone() {
                Some(f) => self.call(callback.name(), &f, (context, size, eos))?,
                None => 0,
            },
            StreamCallback::RequestBody => match self.exports.on_request_body.clone() {
                Some(f) => self.call(callback.name(), &f, (context, size, eos))?,
                None => 0,
            },
            StreamCallback::RequestTrailers => match self.exports.on_request_trailers.clone() {
                Some(f) => self.call(callback.name(), &f, (context, size))?,
                None => 0,
            },
            StreamCallback::ResponseHeaders => match self.exports.on_response_headers.clone() {
                Some(f) => self.call(callback.name(), &f, (context, size, eos))?,
                None => 0,
            },
            StreamCallback::ResponseBody => match self.exports.on_response_body.clone() {
                Some(f) => self.call(callback.name(), &f, (context, size, eos))?,
                None => 0,
            },
            StreamCallback::ResponseTrailers => match self.exports.on_response_trailers.clone() {
                Some(f) => self.call(callback.name(), &f, (context, size))?,
                None => 0,
            },
        };
        Ok(super::abi::Action::from_raw(raw))
    }

    /// `on_log`, `on_done`, `on_delete` for a finished stream, then forgets it and cancels
    /// its outstanding callouts.
    pub fn finish_stream(&mut self, context: u32) -> Result<(), VmTrap> {
        // Its configuration may not need `on_log` or `on_done`; every stream is deleted.
        let Some(needs) = self
            .state()
            .streams
            .get(&context)
            .map(|stream| stream.callbacks)
        else {
            return Ok(());
        };
        self.state().effective_context = context;
        let result = (|| {
            if let Some(f) = self.exports.on_log.clone() {
                if needs.includes(Callbacks::LOG) {
                    self.call("on_log", &f, context)?;
                }
            }
            if let Some(f) = self.exports.on_done.clone() {
                if needs.includes(Callbacks::DONE) {
                    self.call("on_done", &f, context)?;
                }
            }
            if let Some(f) = self.exports.on_delete.clone() {
                self.call("on_delete", &f, context)?;
            }
            Ok(())
        })();
        let state = self.state();
        let finished = state.streams.remove(&context);
        if !state.callouts.is_empty() {
            state.callouts.retain(|_, owner| *owner != context);
        }
        if let Some(mut finished) = finished {
            if self.spare_streams.len() < SPARE_STREAMS {
                finished.recycle();
                self.spare_streams.push(finished);
            }
        }
        result
    }

    /// `proxy_on_done` for a root context the host is retiring. `true`: the plugin is done
    /// with it now (a module without the export is); `false`: it finishes its work first and
    /// says so with `proxy_done`.
    pub fn on_root_done(&mut self, root: u32) -> Result<bool, VmTrap> {
        self.state().effective_context = root;
        match self.exports.on_done.clone() {
            Some(f) => Ok(self.call("on_done", &f, root)? != 0),
            None => Ok(true),
        }
    }

    /// Whether `root` has called `proxy_done`.
    pub fn root_called_done(&self, root: u32) -> bool {
        self.state_ref().done_roots.contains(&root)
    }

    pub fn on_tick(&mut self, root: u32) -> Result<(), VmTrap> {
        self.state().effective_context = root;
        match self.exports.on_tick.clone() {
            Some(f) => self.call("on_tick", &f, root),
            None => Ok(()),
        }
    }

    pub fn on_queue_ready(&mut self, root: u32, queue: u32) -> Result<(), VmTrap> {
        self.state().effective_context = root;
        match self.exports.on_queue_ready.clone() {
            Some(f) => self.call("on_queue_ready", &f, (root, queue)),
            None => Ok(()),
        }
    }

    /// Delivers a callout's answer to the context that made it, exactly once: a token that
    /// is no longer outstanding (its request ended) is dropped.
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        response: Option<super::host::CallResponse>,
    ) -> Result<bool, VmTrap> {
        let Some(context) = self.state().callouts.remove(&token) else {
            return Ok(false);
        };
        let (headers, body, trailers) = match &response {
            Some(r) => (r.headers.len(), r.body.len(), r.trailers.len()),
            None => (0, 0, 0),
        };
        self.state().call_response = response;
        self.state().effective_context = context;
        let result = match self.exports.on_http_call_response.clone() {
            Some(f) => self.call(
                "on_http_call_response",
                &f,
                (context, token, headers as u32, body as u32, trailers as u32),
            ),
            None => Ok(()),
        };
        self.state().call_response = None;
        result.map(|()| true)
    }

    /// Delivers a unary gRPC answer: the message on success, the status on failure.
    pub fn on_grpc_call_response(
        &mut self,
        token: u32,
        status: u32,
        message: Option<super::host::CallResponse>,
    ) -> Result<bool, VmTrap> {
        let Some(context) = self.state().callouts.remove(&token) else {
            return Ok(false);
        };
        self.state().effective_context = context;
        let result = match message {
            Some(response) if status == 0 => {
                let size = response.body.len() as u32;
                self.state().call_response = Some(response);
                match self.exports.on_grpc_receive.clone() {
                    Some(f) => self.call("on_grpc_receive", &f, (context, token, size)),
                    None => Ok(()),
                }
            }
            _ => match self.exports.on_grpc_close.clone() {
                Some(f) => self.call("on_grpc_close", &f, (context, token, status)),
                None => Ok(()),
            },
        };
        self.state().call_response = None;
        result.map(|()| true)
    }

    /// One event of a gRPC stream, delivered to the context that opened it while the
    /// stream is outstanding; `Close` ends it.
    pub fn on_grpc_stream_event(
        &mut self,
        token: u32,
        event: GrpcStreamEvent,
    ) -> Result<bool, VmTrap> {
        let Some(&context) = self.state().callouts.get(&token) else {
            return Ok(false);
        };
        self.state().effective_context = context;
        let result = match event {
            GrpcStreamEvent::InitialMetadata(headers) => {
                let count = headers.len() as u32;
                self.state().call_response = Some(super::host::CallResponse {
                    headers,
                    ..Default::default()
                });
                match self.exports.on_grpc_receive_initial_metadata.clone() {
                    Some(f) => self.call(
                        "on_grpc_receive_initial_metadata",
                        &f,
                        (context, token, count),
                    ),
                    None => Ok(()),
                }
            }
            GrpcStreamEvent::Message(body) => {
                let size = body.len() as u32;
                self.state().call_response = Some(super::host::CallResponse {
                    body,
                    ..Default::default()
                });
                match self.exports.on_grpc_receive.clone() {
                    Some(f) => self.call("on_grpc_receive", &f, (context, token, size)),
                    None => Ok(()),
                }
            }
            GrpcStreamEvent::TrailingMetadata(trailers) => {
                let count = trailers.len() as u32;
                self.state().call_response = Some(super::host::CallResponse {
                    trailers,
                    ..Default::default()
                });
                match self.exports.on_grpc_receive_trailing_metadata.clone() {
                    Some(f) => self.call(
                        "on_grpc_receive_trailing_metadata",
                        &f,
                        (context, token, count),
                    ),
                    None => Ok(()),
                }
            }
            GrpcStreamEvent::Close(status, message) => {
                self.state().callouts.remove(&token);
                self.state().status = (status, message);
                match self.exports.on_grpc_close.clone() {
                    Some(f) => self.call("on_grpc_close", &f, (context, token, status)),
                    None => Ok(()),
                }
            }
        };
        self.state().call_response = None;
        result.map(|()| true)
    }

    /// The callouts the last callbacks asked for, to be started by the caller; `None` (no
    /// list taken out and dropped) after the callbacks of nearly every request, which make
    /// none.
    pub fn take_pending(&mut self) -> Option<Vec<PendingCallout>> {
        let pending = &mut self.state().pending;
        (!pending.is_empty()).then(|| std::mem::take(pending))
    }

    /// Roots with a tick period, for the VM's event loop.
    pub fn tick_periods(&self) -> Vec<(u32, Duration)> {
        self.state_ref()
            .roots
            .iter()
            .filter_map(|(id, root)| root.tick_period.map(|period| (*id, period)))
            .collect()
    }
}

/// A trap's reason and the guest backtrace (with function names when the module has them).
fn describe(error: &wasmtime::Error) -> String {
    let reason = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "CPU deadline exceeded (epoch interruption)".to_string(),
        Some(trap) => trap.to_string(),
        // A host function's own error (`proc_exit`, say) lies under wasmtime's context.
        None => error.root_cause().to_string(),
    };
    match error.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(backtrace) if !backtrace.frames().is_empty() => {
            let frames: Vec<String> = backtrace
                .frames()
                .iter()
                .take(12)
                .map(|frame| frame.func_name().unwrap_or("<unnamed>").to_string())
                .collect();
            format!("{reason}; guest backtrace: {}", frames.join(" <- "))
        }
        _ => reason,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::wasm::engine::EPOCH_TICK;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `proxy_on_configure` counts the global `spin` down to zero: CPU work, no host call.
    const SPINNER: &str = r#"
    (module
      (memory (export "memory") 1)
      (global $spin (export "spin") (mut i32) (i32.const 0))
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (local $left i32)
        (local.set $left (global.get $spin))
        (block $done
          (loop $again
            (br_if $done (i32.eqz (local.get $left)))
            (local.set $left (i32.sub (local.get $left) (i32.const 1)))
            (br $again)))
        (i32.const 1))
    )"#;

    fn spinner(callback_timeout: Duration) -> Vm {
        let module = runtime()
            .load_bytes(Path::new("spinner.wat"), SPINNER.as_bytes())
            .expect("the module loads");
        let identity = Arc::new(PluginIdentity {
            name: "spinner".into(),
            root_id: "spinner".into(),
            ..Default::default()
        });
        Vm::new(&module, identity, 64 << 20, callback_timeout).expect("instantiates")
    }

    /// Runs `proxy_on_configure` counting down from `spin`: its result, the CPU time it
    /// used and how long it took.
    fn configure(vm: &mut Vm, spin: i32) -> (Result<u32, VmTrap>, Duration, Duration) {
        vm.set_global_i32("spin", spin);
        let (cpu, wall) = (thread_cpu_time(), Instant::now());
        let result = vm.create_root(0, Bytes::new());
        (result, thread_cpu_time() - cpu, wall.elapsed())
    }

    /// Threads that keep one CPU busy until dropped.
    struct Hogs {
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Hogs {
        fn on(cpu: usize, count: usize) -> Self {
            let stop = Arc::new(AtomicBool::new(false));
            let threads = (0..count)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        pin_this_thread(cpu);
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })
                })
                .collect();
            Self { stop, threads }
        }
    }

    impl Drop for Hogs {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
        }
    }

    fn pin_this_thread(cpu: usize) {
        let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        let tid = link
            .file_name()
            .expect("a thread id")
            .to_string_lossy()
            .into_owned();
        let pinned = std::process::Command::new("taskset")
            .args(["-p", "-c", &cpu.to_string(), &tid])
            .output()
            .expect("taskset runs");
        assert!(pinned.status.success(), "taskset: {pinned:?}");
    }

    fn first_allowed_cpu() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let list = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list");
        let first = list.trim().split([',', '-']).next().expect("a CPU");
        first.parse().expect("a CPU number")
    }

    #[test]
    fn a_callback_waiting_for_a_cpu_keeps_its_budget_and_one_that_uses_it_is_cut() {
        let timeout = ms(40);
        // About 15 ms of CPU, measured on this machine before the CPU gets busy: the fastest
        // of three runs after a first one, so that neither the first run's warm-up nor a
        // run slowed by other tests makes the work shorter than it is meant to be.
        let mut vm = spinner(timeout);
        let calibration = 2_000_000;
        let fastest = (0..4)
            .map(|_| {
                let (result, used, _) = configure(&mut vm, calibration);
                result.expect("a short callback runs");
                used
            })
            .skip(1)
            .min()
            .expect("three runs");
        let per_ms = f64::from(calibration) / fastest.as_secs_f64().max(1e-6) / 1000.0;
        let spin = (15.0 * per_ms) as i32;

        // Four threads share this thread's CPU: the callback gets about a fifth of it, so its
        // 15 ms of CPU take longer than its 40 ms budget of wall-clock time.
        let cpu = first_allowed_cpu();
        pin_this_thread(cpu);
        let hogs = Hogs::on(cpu, 4);
        let (result, used, took) = configure(&mut vm, spin);
        assert!(
            took > timeout,
            "the callback did not have to wait for the CPU ({used:?} of CPU in {took:?}): the test proves nothing"
        );
        result.unwrap_or_else(|trap| {
            panic!("a callback that used {used:?} of CPU in {took:?} was cut: {trap}")
        });

        // Work of ten times what ran above (some 150 ms of CPU) is cut once the budget is
        // used, not before, and not much later (the count starts at the first tick, and
        // looks once a tick).
        let (result, used, took) = configure(&mut spinner(timeout), spin.saturating_mul(10));
        drop(hogs);
        let trap = result.expect_err("150 ms of CPU against a budget of 40 ms");
        assert!(trap.reason.contains("CPU deadline"), "{trap}");
        assert!(
            used >= timeout && used < timeout + 4 * EPOCH_TICK,
            "cut after {used:?} of CPU ({took:?})"
        );
    }
}
