//! Running a route's plugin chain for one request: request phase in order, response phase in
//! reverse, log phase at the end, with Envoy's pause, resume and local-reply semantics and
//! each plugin's failure policy.
//!
//! A plugin that traps fails only this request (the worker gets a fresh VM, see
//! `wasm::plugin`). Until the response head is sent, the failure policy answers: 503 under
//! `fail_closed` (and `reload`), the plugin skipped for the rest of the request under
//! `fail_open`, with what the plugin was handed (headers, body) passed on. Once the head is
//! sent, a trap in the response body or trailers resets the stream (HTTP/2 RST_STREAM,
//! HTTP/1.1 closes the connection before the body's end) under every policy: the body the
//! plugin held back died with its VM, and passing on the rest unprocessed would deliver a
//! partial body, or one the plugin was there to redact.
//!
//! [`PluginRun`] is the one type between the pipeline and the plugins' VMs: it owns a
//! request's plugin contexts and what they decided.
//!
//! | module | role |
//! |---|---|
//! | this one | the run's state, the queries the pipeline makes of it, its errors |
//! | [`run`] | the phases, in the order a request meets them: the hot path |
//! | [`body`] | the response body as the plugins see it, chunk by chunk |
//! | [`head`] | plugin answers and header lists as the pipeline sends them |

mod body;
mod head;
mod run;

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use smallvec::SmallVec;
use tokio::sync::Notify;

use super::ResponseBody;
use crate::snapshot::Chain;
use crate::wasm::callbacks::{Callbacks, StreamCallback};
use crate::wasm::host::{LocalResponse, StreamInfo};
use crate::wasm::plugin::{Plugin, VmTicket};

pub use body::filter_response_body;
pub use head::{header_map, local_reply_head, local_response};

/// How a phase ended when it did not simply continue.
pub enum Stopped {
    /// A plugin answered (its index, and the answer); response callbacks run for the
    /// plugins up to and including it.
    Local(usize, LocalResponse),
    /// The gateway answers (plugin failure, wait timeout); no response callbacks.
    Failed(Box<Response<ResponseBody>>),
    /// A plugin reset the stream (`proxy_close_stream`): no response at all.
    Reset,
}

struct Entry {
    plugin: Arc<Plugin>,
    /// The stream callbacks the plugin's module exports: a phase without its callback skips
    /// the plugin without visiting its VM.
    callbacks: Callbacks,
    context: Option<u32>,
    wake: Option<Arc<Notify>>,
    /// fail_open: the plugin failed and is skipped for the rest of the request.
    skipped: bool,
    /// This request is the half-open probe of the plugin's circuit.
    probe: bool,
    /// The worker's VM that holds `context`.
    vm: VmTicket,
    /// The plugin holds back part of the response body (paused, buffering).
    holding_body: bool,
    /// The plugin paused the request body before its end and holds data.
    holding_request_body: bool,
}

impl Entry {
    fn exports(&self, callback: StreamCallback) -> bool {
        self.callbacks.has(callback)
    }
}

/// Chains up to this long keep their per-request state inside the run.
const INLINE_PLUGINS: usize = 4;

/// One request's walk through a chain.
pub struct PluginRun {
    /// One per plugin of the chain, inline for the chains most routes have.
    entries: SmallVec<[Entry; INLINE_PLUGINS]>,
    /// What every plugin of the request reads as its properties (the route's name among
    /// them), the final request and response heads included.
    info: Arc<StreamInfo>,
    /// How long a paused stream may wait for a plugin to resume it.
    wait_limit: Duration,
    /// Plugins whose response callbacks run: all, or those up to a local reply.
    response_limit: usize,
    finished: bool,
    /// Request-wide facts for the properties of plugins that did not see every phase (one
    /// after a plugin that answered locally still gets `on_log`, and reads these).
    final_status: Option<u16>,
    request_size: u64,
    response_size: u64,
    /// The phase running now, and the one where a plugin failure stopped the request.
    phase: &'static str,
    failed_phase: Option<&'static str>,
    /// `server.max_buffered_body_bytes`: what one plugin may hold back of a body.
    buffer_limit: usize,
}

/// One request's run, shared by the task that streams the request body through the chain
/// and the response phase, which may start before the request body ends (a bidirectional
/// stream). Callbacks are synchronous: the lock is held across an await only while a
/// plugin pauses the request at its end (or at its trailers) and the host waits for it.
pub type SharedRun = Arc<tokio::sync::Mutex<PluginRun>>;

/// Why the request body stopped going through the chain.
pub enum BodyStop {
    /// A plugin answered or failed, as in the other phases.
    Plugin(Stopped),
    /// A plugin paused with more than `max_buffered_body_bytes` held back (Envoy's buffer
    /// limit: `413`).
    BufferFull,
}

/// A plugin paused a response body with more than `max_buffered_body_bytes` held back: the
/// response is reset (its head is sent).
#[derive(Debug)]
pub struct BufferLimitExceeded {
    pub plugin: String,
    pub limit: usize,
}

impl std::fmt::Display for BufferLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {:?} held back more than max_buffered_body_bytes ({} bytes) of the response body",
            self.plugin, self.limit
        )
    }
}

impl std::error::Error for BufferLimitExceeded {}

/// A plugin trapped after the response head was sent: the body stream ends in this error,
/// which resets it.
#[derive(Debug)]
pub struct PluginBodyFailure {
    pub plugin: String,
    /// `response_body` or `response_trailers`.
    pub phase: &'static str,
    /// The plugin did not fail but reset the stream itself (`proxy_close_stream`).
    pub reset: bool,
}

impl std::fmt::Display for PluginBodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reset {
            return write!(
                f,
                "plugin {:?} reset the stream in the {} phase",
                self.plugin, self.phase
            );
        }
        write!(
            f,
            "plugin {:?} failed in the {} phase; the response is reset",
            self.plugin, self.phase
        )
    }
}

impl std::error::Error for PluginBodyFailure {}

impl PluginRun {
    /// A request's run over `chain`, made in the allocation the request body task and the
    /// response phase share (written there, not moved in: a run is hundreds of bytes).
    /// `buffer_limit` is `server.max_buffered_body_bytes`.
    pub fn new_shared(
        chain: &Chain,
        info: Arc<StreamInfo>,
        wait_limit: Duration,
        buffer_limit: u64,
    ) -> SharedRun {
        crate::arc!(tokio::sync::Mutex::new(Self {
            entries: chain
                .iter()
                .map(|plugin| Entry {
                    plugin: plugin.clone(),
                    callbacks: plugin.callbacks,
                    context: None,
                    wake: None,
                    skipped: false,
                    probe: false,
                    vm: VmTicket::default(),
                    holding_body: false,
                    holding_request_body: false,
                })
                .collect(),
            info,
            wait_limit,
            response_limit: chain.len(),
            finished: false,
            final_status: None,
            request_size: 0,
            response_size: 0,
            phase: "request_headers",
            failed_phase: None,
            buffer_limit: usize::try_from(buffer_limit).unwrap_or(usize::MAX),
        }))
    }

    /// Updates how the request was answered, for the properties every plugin reads.
    pub fn update_outcome(&self, update: impl FnOnce(&mut crate::wasm::host::Outcome)) {
        if let Ok(mut outcome) = self.info.outcome.lock() {
            update(&mut outcome);
        }
    }

    /// Whether some plugin of the chain exports `proxy_on_request_body`: only then can the
    /// body change on its way (and its length with it).
    pub fn reads_request_body(&self) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.exports(StreamCallback::RequestBody))
    }

    /// Whether some plugin of the chain exports `proxy_on_response_body`: when none does,
    /// the response body passes without a copy.
    fn reads_response_body(&self) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.exports(StreamCallback::ResponseBody))
    }

    /// Whether the request body or its trailers go through some plugin at all; when not, the
    /// body streams to the upstream as it would on a route without plugins.
    pub fn reads_request_stream(&self) -> bool {
        self.entries.iter().any(|entry| {
            entry.exports(StreamCallback::RequestBody)
                || entry.exports(StreamCallback::RequestTrailers)
        })
    }

    /// The phase in which a plugin failure answered the request (for the access log).
    pub fn failed_phase(&self) -> Option<&'static str> {
        self.failed_phase
    }

    /// Whether some plugin paused the request body before its end and holds data: then a
    /// resume (or an answer) from it, say when its callout answers, is to be taken up
    /// without waiting for more of the body (see `request_body_resumed`).
    pub fn holds_request_body(&self) -> bool {
        self.entries.iter().any(|entry| entry.holding_request_body)
    }

    /// What wakes the request when a plugin that reads the request body resumes or answers
    /// it.
    pub fn request_body_wakes(&self) -> Vec<Arc<Notify>> {
        self.entries
            .iter()
            .filter(|entry| entry.exports(StreamCallback::RequestBody))
            .filter_map(|entry| entry.wake.clone())
            .collect()
    }

    /// Limits the response phase to the plugins up to one that answered locally.
    pub fn answered_by(&mut self, index: usize) {
        self.response_limit = index + 1;
    }

    /// Whether some plugin may still read a head of this request once the head has gone on:
    /// it has one of the callbacks `later` (as far as its configuration is known), or a
    /// callout of this request still unanswered (the answer's callback may read the heads
    /// too). The run keeps a copy of a head only for such a reader: a chain of plugins that
    /// only look at the request headers (most authentication) costs no copy of either head.
    fn read_later(&self, later: Callbacks) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.callbacks.overlaps(later))
            || self.awaits_callouts()
    }

    /// Whether a plugin may read the request head after the request headers phase.
    pub fn reads_request_head_later(&self) -> bool {
        self.read_later(AFTER_REQUEST_HEADERS)
    }

    /// Whether a plugin may read the response head after the response headers phase.
    pub fn reads_response_head_later(&self) -> bool {
        self.read_later(AFTER_RESPONSE_HEADERS)
    }

    /// Whether some plugin's callout for this request has not been answered yet.
    fn awaits_callouts(&self) -> bool {
        self.entries.iter().any(|entry| {
            let Some(context) = entry.context else {
                return false;
            };
            // A plugin that never called out has nothing to wait for (no visit to its VM);
            // a VM replaced since holds no callout of this request.
            entry.plugin.may_await_callouts()
                && entry.plugin.is_current(entry.vm)
                && entry
                    .plugin
                    .peek_vm(|vm| {
                        let callouts = &vm.state_ref().callouts;
                        !callouts.is_empty() && callouts.values().any(|owner| *owner == context)
                    })
                    .unwrap_or(false)
        })
    }
}

/// The callbacks that may run after a request's headers have gone on.
const AFTER_REQUEST_HEADERS: Callbacks =
    Callbacks::ALL.without(Callbacks::of(StreamCallback::RequestHeaders));

/// The callbacks that may run after a response's headers have gone on (the request body
/// may still be streaming).
const AFTER_RESPONSE_HEADERS: Callbacks =
    AFTER_REQUEST_HEADERS.without(Callbacks::of(StreamCallback::ResponseHeaders));

impl Drop for PluginRun {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Whether `run` is the run's only handle: the request body task ended or never started, so
/// no one else can reach the run, and it is worked on in place (see [`unshared`]) rather than
/// under its lock, which costs an atomic round trip and the lock's waiter list each time.
pub fn is_unshared(run: &SharedRun) -> bool {
    Arc::strong_count(run) == 1 && Arc::weak_count(run) == 0
}

/// The run of a handle that [`is_unshared`].
pub fn unshared(run: &mut SharedRun) -> &mut PluginRun {
    Arc::get_mut(run)
        .expect("a run is reached in place only through its only handle")
        .get_mut()
}
