//! The state a VM's host functions work on: it lives in the wasmtime `Store`'s data, never
//! in globals. One `HostState` per VM; it holds the VM's root contexts, the stream contexts
//! of the requests in flight on this VM's worker, outstanding callouts and what a callback
//! may read (a callout's response, a gRPC message).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tokio::sync::Notify;
use wasmtime::{StoreLimits, UpdateDeadline};

use super::abi::{HeaderList, LogLevel};
use super::callbacks::Callbacks;
use super::engine::EPOCH_TICK;
use super::header_map::{PseudoHeaderMap, EMPTY};

/// What a plugin instance is, as its VMs see it.
#[derive(Debug, Default)]
pub struct PluginIdentity {
    pub name: String,
    pub vm_id: String,
    pub root_id: String,
    pub vm_configuration: Bytes,
    pub env: Vec<(String, String)>,
    /// Clusters a callout may name.
    pub clusters: rustc_hash::FxHashSet<String>,
    /// `server.plugin_limits` of the snapshot that built the plugin.
    pub limits: crate::config::PluginLimits,
    /// `server.node` of the snapshot that built the plugin (the `node` property).
    pub node: Arc<crate::config::NodeSettings>,
    /// The gateway's shared data, queues and metric registries.
    pub registries: Arc<super::PluginRegistries>,
}

/// Per-request values shared by every plugin of a request: `set_property` writes here
/// (Envoy's filter state), and any later plugin reads it.
pub type FilterState = Mutex<FilterValues>;

/// The values of a request's filter state, by key (the property path's bytes). A request
/// carries a handful (an auth plugin's consumer and groups, say), so they sit one after the
/// other in one buffer inside the request's facts: setting and reading them allocates
/// nothing until they outgrow it, and a key is found by a walk over so few entries sooner
/// than by hashing it.
#[derive(Debug, Default)]
pub struct FilterValues {
    /// Each entry's key, then its value, one entry after another.
    bytes: SmallVec<[u8; 128]>,
    /// The length of each entry's key and of its value, in the order of `bytes`.
    lengths: SmallVec<[(usize, usize); 4]>,
}

impl FilterValues {
    /// The value set for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let found = self.find(key)?;
        Some(&self.bytes[found.value_start()..found.end()])
    }

    /// Sets `key` to `value`, replacing the value it had.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        if let Some(found) = self.find(key) {
            if found.value_len == value.len() {
                self.bytes[found.value_start()..found.end()].copy_from_slice(value);
                return;
            }
            self.bytes.drain(found.start..found.end());
            self.lengths.remove(found.index);
        }
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.lengths.push((key.len(), value.len()));
    }

    fn find(&self, key: &[u8]) -> Option<FilterEntry> {
        let mut start = 0;
        for (index, &(key_len, value_len)) in self.lengths.iter().enumerate() {
            if key_len == key.len() && self.bytes[start..start + key_len] == *key {
                return Some(FilterEntry {
                    index,
                    start,
                    key_len,
                    value_len,
                });
            }
            start += key_len + value_len;
        }
        None
    }
}

/// Where one entry of [`FilterValues`] lies.
struct FilterEntry {
    index: usize,
    start: usize,
    key_len: usize,
    value_len: usize,
}

impl FilterEntry {
    fn value_start(&self) -> usize {
        self.start + self.key_len
    }

    fn end(&self) -> usize {
        self.value_start() + self.value_len
    }
}

/// A guest call's CPU deadline: the CPU time it may use, counted on its thread's own clock.
///
/// The engine's epoch advances with the wall clock, so it cannot be the measure: a worker
/// waiting for a CPU (a busy machine, a noisy neighbour) would see its callback's deadline
/// pass while the callback ran nothing, and lose the VM to a trap. The epoch only says when
/// to look. A call starts with a deadline of the next tick, and most end before it. One that
/// runs into a tick has its thread's CPU clock read there (the VM's epoch callback calls
/// [`CpuBudget::at_tick`]): its CPU time counts from that moment, it gets the ticks its
/// budget has left, and it traps once the budget is used. A call that never stops is cut
/// after its budget plus at most one tick of CPU time.
#[derive(Debug, Default)]
pub struct CpuBudget {
    /// What the current call may use.
    limit: Duration,
    /// The thread's CPU clock when the current call first ran into a tick.
    counted_from: Option<Duration>,
}

impl CpuBudget {
    /// A guest call begins, with `limit` to use.
    pub fn start(&mut self, limit: Duration) {
        self.limit = limit;
        self.counted_from = None;
    }

    /// At a tick the current call ran into, the thread's CPU clock reading `now`: the ticks
    /// to wait before looking again, or the trap.
    pub fn at_tick(&mut self, now: Duration) -> UpdateDeadline {
        let counted_from = *self.counted_from.get_or_insert(now);
        match self.limit.checked_sub(now.saturating_sub(counted_from)) {
            Some(left) if !left.is_zero() => {
                UpdateDeadline::Continue(left.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64)
            }
            _ => UpdateDeadline::Interrupt,
        }
    }
}

/// The request facts that properties expose, one per request, shared by every plugin of
/// it. Most do not change during the request; `outcome` is filled in as the request is
/// answered, and the final request and response heads are recorded once each, so that later
/// phases of every plugin read them here instead of from a copy per plugin.
#[derive(Debug)]
pub struct StreamInfo {
    /// Shared with the request's `x-request-id` header (no copy per request).
    pub request_id: http::HeaderValue,
    pub started: SystemTime,
    pub protocol: &'static str,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub connection_id: u64,
    pub tls_version: Option<&'static str>,
    pub mtls: bool,
    pub server_name: Option<String>,
    /// Shared with the access record (no copy per request).
    pub route_name: Arc<str>,
    /// The route's first target, if it forwards.
    pub cluster_name: Option<Arc<str>>,
    /// The request is a gRPC call: local answers to it are sent trailers-only.
    pub grpc: bool,
    /// The matched virtual host (its name is a property), shared with the route table.
    pub virtual_host: Arc<crate::config::VirtualHost>,
    /// The downstream TLS session (certificates included), on an HTTPS listener.
    pub tls: Option<crate::tls::TlsInfo>,
    pub outcome: Mutex<Outcome>,
    pub filter_state: FilterState,
    /// The request headers (pseudo-headers first) as the request phase left them, for the
    /// plugins that read them later. Boxed, as the response headers: most requests keep
    /// neither, and the facts are moved whole into their shared handle on every request.
    pub request_headers: OnceLock<Box<PseudoHeaderMap>>,
    /// The response headers (`:status` first) as they went downstream.
    pub response_headers: OnceLock<Box<PseudoHeaderMap>>,
    /// The response status the response phase started with (0 until then).
    pub response_status: AtomicU16,
    /// The request's trace when tracing is on: the parent of the plugin-phase spans.
    pub trace: Option<crate::telemetry::tracing::RequestTrace>,
}

impl StreamInfo {
    /// What a finished stream context holds in place of its last request's facts: those
    /// are the request's own, kept by its run and let go with it. A context kept for reuse
    /// that held on to them would keep the request's header copies alive, and with them
    /// the connection buffers whose bytes they share: the client connection's read buffer
    /// could then not be reused in place, and the next request would pay for a new one.
    pub fn no_request() -> Arc<StreamInfo> {
        thread_local! {
            // One per thread: no cache line shared between workers for its count.
            static NO_REQUEST: Arc<StreamInfo> = Arc::new(StreamInfo::blank());
        }
        NO_REQUEST.with(Arc::clone)
    }

    /// The facts of no request: empty names, unspecified addresses, nothing recorded. Tests
    /// and benches fill in what they need over it.
    pub fn blank() -> StreamInfo {
        StreamInfo {
            request_id: http::HeaderValue::from_static(""),
            started: SystemTime::UNIX_EPOCH,
            protocol: "",
            downstream_remote: SocketAddr::from(([0, 0, 0, 0], 0)),
            downstream_local: SocketAddr::from(([0, 0, 0, 0], 0)),
            connection_id: 0,
            tls_version: None,
            mtls: false,
            server_name: None,
            route_name: "".into(),
            cluster_name: None,
            grpc: false,
            virtual_host: Arc::new(crate::config::VirtualHost {
                name: String::new(),
                domains: Vec::new(),
                listeners: None,
                routes: Vec::new(),
            }),
            tls: None,
            outcome: Default::default(),
            filter_state: Default::default(),
            request_headers: Default::default(),
            response_headers: Default::default(),
            response_status: Default::default(),
            trace: None,
        }
    }

    /// How the request has been answered so far.
    pub fn outcome(&self) -> Outcome {
        self.outcome
            .lock()
            .map(|outcome| outcome.clone())
            .unwrap_or_default()
    }

    /// The response status as far as the response phase has seen it.
    pub fn response_status(&self) -> Option<u16> {
        Some(self.response_status.load(Ordering::Relaxed)).filter(|status| *status != 0)
    }
}

/// How the gateway answered a request, as far as it knows when a plugin asks: what the
/// access log records, which `response.code_details`, `response.flags` and `upstream.*`
/// are drawn from.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The access log's `detail` (`-` or empty for a plain forward).
    pub detail: &'static str,
    /// The details string a plugin gave its local reply.
    pub plugin_details: String,
    /// The cluster the request was sent to.
    pub cluster: Option<Arc<str>>,
    /// The endpoint of the last try.
    pub upstream: Option<Arc<crate::upstream::Endpoint>>,
    /// Tries made upstream (retries included).
    pub attempts: u32,
}

/// A local response a plugin asked for.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub body: Bytes,
    pub headers: HeaderList,
    /// -1: not gRPC; otherwise the gRPC status for `grpc-status`.
    pub grpc_status: i32,
}

/// What a paused stream is waiting for and what plugins decided meanwhile.
#[derive(Debug, Default)]
pub struct StreamSignals {
    pub continue_request: bool,
    pub continue_response: bool,
    pub local_response: Option<LocalResponse>,
    /// `proxy_close_stream`: the plugin wants the stream reset.
    pub reset: bool,
}

/// One HTTP stream context (a request) on this VM.
pub struct StreamState {
    pub root_id: u32,
    /// Its root context's [`RootState::callbacks`]: the callbacks this stream is entered for.
    pub callbacks: Callbacks,
    pub info: Arc<StreamInfo>,
    /// The request's own headers while this plugin's request-headers callback runs (moved
    /// in and back out, boxed so that the hand-over moves a pointer, not the map); `None`
    /// otherwise (properties then read the request's final headers from `info`).
    pub request_headers: Option<Box<PseudoHeaderMap>>,
    pub request_trailers: PseudoHeaderMap,
    /// As `request_headers`, for the response headers.
    pub response_headers: Option<Box<PseudoHeaderMap>>,
    pub response_trailers: PseudoHeaderMap,
    /// The body bytes the current body callback sees (cumulative while the plugin pauses).
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub signals: StreamSignals,
    /// Wakes the request task when a callback (e.g. a callout's) resumes or answers it.
    pub wake: Arc<Notify>,
    /// Response headers have gone downstream: a local response is no longer possible.
    pub response_started: bool,
    pub response_code: Option<u16>,
    pub request_size: u64,
    pub response_size: u64,
    pub finished: Option<SystemTime>,
}

impl StreamState {
    pub fn new(root_id: u32, callbacks: Callbacks, info: Arc<StreamInfo>) -> Self {
        Self {
            root_id,
            callbacks,
            info,
            request_headers: None,
            request_trailers: PseudoHeaderMap::default(),
            response_headers: None,
            response_trailers: PseudoHeaderMap::default(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            signals: StreamSignals::default(),
            wake: Arc::new(Notify::new()),
            response_started: false,
            response_code: None,
            request_size: 0,
            response_size: 0,
            finished: None,
        }
    }

    /// A stream context whose request ended, made ready to serve another one on its VM
    /// (see [`StreamState::reuse`]): its body buffers, trailer maps and wake-up are kept, so
    /// that a VM's contexts allocate nothing once it has served a few requests.
    pub fn recycle(&mut self) {
        /// A body buffer larger than this is not kept for another request.
        const KEPT_BUFFER: usize = 64 * 1024;
        for buffer in [&mut self.request_body, &mut self.response_body] {
            buffer.clear();
            if buffer.capacity() > KEPT_BUFFER {
                *buffer = Vec::new();
            }
        }
        self.request_trailers.clear();
        self.response_trailers.clear();
        self.request_headers = None;
        self.response_headers = None;
        self.signals = StreamSignals::default();
        self.info = StreamInfo::no_request();
    }

    /// Starts a recycled context for a new request.
    pub fn reuse(&mut self, root_id: u32, callbacks: Callbacks, info: Arc<StreamInfo>) {
        // The old request's task may still hold the wake-up (it is dropped with the
        // request's run); then it gets a fresh one. A permit the old request left makes at
        // most one spurious wake-up, which a waiting request checks and waits again after.
        if Arc::strong_count(&self.wake) != 1 {
            self.wake = Arc::new(Notify::new());
        }
        self.root_id = root_id;
        self.callbacks = callbacks;
        self.info = info;
        self.response_started = false;
        self.response_code = None;
        self.request_size = 0;
        self.response_size = 0;
        self.finished = None;
    }

    /// The request headers as this plugin sees them now: those its callback was handed,
    /// else the request's final ones.
    pub fn request_headers_view(&self) -> &PseudoHeaderMap {
        self.request_headers
            .as_deref()
            .or_else(|| self.info.request_headers.get().map(|headers| &**headers))
            .unwrap_or(&EMPTY)
    }

    /// The response headers as this plugin sees them now: those its callback was handed,
    /// else those that went downstream.
    pub fn response_headers_view(&self) -> &PseudoHeaderMap {
        self.response_headers
            .as_deref()
            .or_else(|| self.info.response_headers.get().map(|headers| &**headers))
            .unwrap_or(&EMPTY)
    }

    /// The request headers to edit: a plugin that edits them after the request phase edits
    /// its own copy of the final ones, made only then.
    pub fn request_headers_mut(&mut self) -> &mut PseudoHeaderMap {
        let info = &self.info;
        self.request_headers
            .get_or_insert_with(|| info.request_headers.get().cloned().unwrap_or_default())
    }

    /// As [`Self::request_headers_mut`], for the response headers.
    pub fn response_headers_mut(&mut self) -> &mut PseudoHeaderMap {
        let info = &self.info;
        self.response_headers
            .get_or_insert_with(|| info.response_headers.get().cloned().unwrap_or_default())
    }
}

/// A root context: one per plugin configuration (the default and each per-route override).
#[derive(Debug, Default)]
pub struct RootState {
    pub configuration: Bytes,
    pub tick_period: Option<Duration>,
    /// The request callbacks this configuration's requests need, as the plugin said in
    /// `on_configure` (foreign function `tollgate.callbacks`); all until it says.
    pub callbacks: Callbacks,
}

/// An HTTP or gRPC callout the host must start once the current callback returns.
#[derive(Debug)]
pub enum PendingCallout {
    Http {
        token: u32,
        context_id: u32,
        cluster: String,
        headers: HeaderList,
        body: Bytes,
        trailers: HeaderList,
        timeout: Duration,
    },
    Grpc {
        token: u32,
        context_id: u32,
        cluster: String,
        service: String,
        method: String,
        metadata: HeaderList,
        /// `None` for a stream: messages follow with `proxy_grpc_send`.
        message: Option<Bytes>,
        timeout: Duration,
    },
    GrpcSend {
        token: u32,
        message: Bytes,
        end_stream: bool,
    },
    /// `proxy_grpc_cancel` / `proxy_grpc_close` for an outstanding call or stream.
    GrpcCancel { token: u32 },
}

/// The answer to a callout, readable while its callback runs.
#[derive(Debug, Default)]
pub struct CallResponse {
    pub headers: PseudoHeaderMap,
    pub body: Bytes,
    pub trailers: PseudoHeaderMap,
}

/// The data of a VM's store.
pub struct HostState {
    pub plugin: Arc<PluginIdentity>,
    pub limits: StoreLimits,
    pub log_level: LogLevel,
    /// Log lines the plugin wrote while starting, kept for the error if it refuses to start.
    pub startup_log: Option<Vec<String>>,
    pub effective_context: u32,
    pub next_context_id: u32,
    pub roots: FxHashMap<u32, RootState>,
    /// Boxed: a context moves in and out of this map and the VM's spares by pointer.
    pub streams: FxHashMap<u32, Box<StreamState>>,
    /// Outstanding callout tokens and the context that owns each.
    pub callouts: FxHashMap<u32, u32>,
    pub next_token: u32,
    pub pending: Vec<PendingCallout>,
    pub call_response: Option<CallResponse>,
    /// For `proxy_get_status`: the last callout's gRPC status and message.
    pub status: (u32, Bytes),
    /// Shared queues registered by this VM's root contexts: queue id → root context.
    pub registered_queues: FxHashMap<u32, u32>,
    /// `proxy_done` was called by this root context.
    pub done_roots: Vec<u32>,
    /// The configuration `on_configure` is reading (`PluginConfiguration` buffer).
    pub configuring: Bytes,
    /// This VM's event loop, for shared-queue wake-ups from any thread.
    pub events: Option<tokio::sync::mpsc::UnboundedSender<super::shared::VmEvent>>,
    /// Metrics this VM defined, by id, so that updates need no global lookup.
    pub metrics: FxHashMap<u32, Arc<super::metrics::PluginMetric>>,
    /// The guest's memory and allocator, cached by the guest-memory module.
    pub guest: super::memory::GuestExports,
    /// Guest calls made and the time spent in them since the plugin last collected them.
    pub callbacks: u64,
    pub callback_nanos: u64,
    /// The current guest call's CPU deadline.
    pub cpu: CpuBudget,
    /// The gateway's shared data, queues and metric registries, from the plugin at VM creation.
    pub registries: Arc<super::PluginRegistries>,
}

impl HostState {
    pub fn new(plugin: Arc<PluginIdentity>, memory_limit: usize) -> Self {
        Self {
            registries: plugin.registries.clone(),
            plugin,
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .table_elements(100_000)
                .instances(1)
                .memories(1)
                .tables(4)
                .trap_on_grow_failure(true)
                .build(),
            log_level: LogLevel::from_tracing(),
            startup_log: Some(Vec::new()),
            effective_context: 0,
            next_context_id: 1,
            roots: FxHashMap::default(),
            streams: FxHashMap::default(),
            callouts: FxHashMap::default(),
            next_token: 1,
            pending: Vec::new(),
            call_response: None,
            status: (0, Bytes::new()),
            registered_queues: FxHashMap::default(),
            done_roots: Vec::new(),
            configuring: Bytes::new(),
            events: None,
            metrics: FxHashMap::default(),
            guest: Default::default(),
            callbacks: 0,
            callback_nanos: 0,
            cpu: Default::default(),
        }
    }

    pub fn plugin_clusters_contains(&self, cluster: &str) -> bool {
        self.plugin.clusters.contains(cluster)
    }

    pub fn new_context_id(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(1);
        id
    }

    /// A token no outstanding callout uses.
    pub fn new_token(&mut self) -> u32 {
        loop {
            let token = self.next_token;
            self.next_token = self.next_token.wrapping_add(1).max(1);
            if !self.callouts.contains_key(&token) {
                return token;
            }
        }
    }

    pub fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams
            .get_mut(&self.effective_context)
            .map(|stream| &mut **stream)
    }

    /// The root context the effective context belongs to.
    pub fn effective_root(&self) -> u32 {
        match self.streams.get(&self.effective_context) {
            Some(stream) => stream.root_id,
            None => self.effective_context,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The ticks a budget grants, `None` for the trap.
    fn granted(update: UpdateDeadline) -> Option<u64> {
        match update {
            UpdateDeadline::Continue(ticks) => Some(ticks),
            _ => None,
        }
    }

    #[test]
    fn the_budget_counts_cpu_time_from_the_first_tick() {
        let mut budget = CpuBudget::default();
        budget.start(ms(50));
        // The first tick starts the count: the whole budget is left, ten ticks of 5 ms.
        assert_eq!(granted(budget.at_tick(ms(1000))), Some(10));
        // 20 ms of CPU later, however long the wait: 30 ms are left.
        assert_eq!(granted(budget.at_tick(ms(1020))), Some(6));
        let almost = ms(1050) - Duration::from_micros(1);
        assert_eq!(granted(budget.at_tick(almost)), Some(1));
        assert_eq!(granted(budget.at_tick(ms(1050))), None);
        // The next call counts anew.
        budget.start(ms(50));
        assert_eq!(granted(budget.at_tick(ms(2000))), Some(10));
    }

    #[test]
    fn filter_values_are_set_replaced_and_read_by_their_whole_key() {
        let mut values = FilterValues::default();
        assert_eq!(values.get(b"a"), None);
        values.set(b"a", b"1");
        values.set(b"ab", b"22");
        values.set(b"", b"empty key");
        values.set(b"c", b"");
        assert_eq!(values.get(b"a"), Some(&b"1"[..]));
        assert_eq!(values.get(b"ab"), Some(&b"22"[..]));
        assert_eq!(values.get(b""), Some(&b"empty key"[..]));
        assert_eq!(values.get(b"c"), Some(&b""[..]));
        assert_eq!(
            values.get(b"b"),
            None,
            "a key is never matched by a prefix or a value"
        );
        // The same length is written over; another length moves the entry to the end.
        values.set(b"a", b"9");
        values.set(b"ab", b"a much longer value than the first");
        values.set(b"", b"");
        assert_eq!(values.get(b"a"), Some(&b"9"[..]));
        assert_eq!(
            values.get(b"ab"),
            Some(&b"a much longer value than the first"[..])
        );
        assert_eq!(values.get(b""), Some(&b""[..]));
        assert_eq!(values.get(b"c"), Some(&b""[..]));
        // Past the inline buffer the values move to the heap and stay readable.
        let long = vec![7u8; 1000];
        for i in 0..20u8 {
            values.set(&[b'k', i], &long[..usize::from(i) * 10]);
        }
        for i in 0..20u8 {
            assert_eq!(values.get(&[b'k', i]), Some(&long[..usize::from(i) * 10]));
        }
        assert_eq!(values.get(b"a"), Some(&b"9"[..]));
        assert_eq!(values.lengths.len(), 24);
    }

    fn info() -> Arc<StreamInfo> {
        Arc::new(StreamInfo {
            request_id: http::HeaderValue::from_static("id"),
            started: SystemTime::now(),
            protocol: "HTTP/1.1",
            route_name: "route".into(),
            cluster_name: Some("cluster".into()),
            ..StreamInfo::blank()
        })
    }

    fn path(value: &str) -> PseudoHeaderMap {
        let mut map = PseudoHeaderMap::default();
        map.add(b":path", value.as_bytes());
        map
    }

    fn status(value: &str) -> PseudoHeaderMap {
        let mut map = PseudoHeaderMap::default();
        map.add(b":status", value.as_bytes());
        map
    }

    #[test]
    fn streams_read_the_requests_final_heads_without_a_copy() {
        let info = info();
        let mut first = StreamState::new(1, Callbacks::ALL, info.clone());
        let second = StreamState::new(1, Callbacks::ALL, info.clone());
        assert!(first.request_headers_view().is_empty());
        first.request_headers = Some(Box::new(path("/handed")));
        assert_eq!(
            first.request_headers_view().value(b":path"),
            Some(&b"/handed"[..])
        );
        first.request_headers = None;
        info.request_headers.set(Box::new(path("/final"))).unwrap();
        info.response_headers.set(Box::new(status("200"))).unwrap();
        for stream in [&first, &second] {
            assert_eq!(
                stream.request_headers_view().value(b":path"),
                Some(&b"/final"[..])
            );
            assert_eq!(
                stream.response_headers_view().value(b":status"),
                Some(&b"200"[..])
            );
            assert!(stream.request_headers.is_none(), "no copy per stream");
        }
    }

    #[test]
    fn a_context_kept_for_reuse_lets_its_requests_facts_go() {
        let info = info();
        info.request_headers.set(Box::new(path("/kept"))).unwrap();
        let mut stream = StreamState::new(1, Callbacks::ALL, info.clone());
        stream.recycle();
        // The request's run holds the only handle left: its heads go when the request ends.
        assert_eq!(Arc::strong_count(&info), 1);
        assert!(stream.request_headers_view().is_empty());
        let next = self::info();
        stream.reuse(2, Callbacks::ALL, next.clone());
        assert!(Arc::ptr_eq(&stream.info, &next));
    }

    #[test]
    fn an_edit_after_the_phase_changes_only_the_plugins_own_copy() {
        let info = info();
        info.request_headers.set(Box::new(path("/final"))).unwrap();
        let mut editing = StreamState::new(1, Callbacks::ALL, info.clone());
        let reading = StreamState::new(1, Callbacks::ALL, info.clone());
        editing.request_headers_mut().add(b"x-late", b"1");
        assert_eq!(editing.request_headers_view().len(), 2);
        assert_eq!(reading.request_headers_view().len(), 1);
        assert_eq!(info.request_headers.get().unwrap().len(), 1);
        assert_eq!(info.response_status(), None);
        info.response_status.store(204, Ordering::Relaxed);
        assert_eq!(info.response_status(), Some(204));
    }
}
