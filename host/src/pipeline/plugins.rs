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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::Notify;

use super::{local, ResponseBody};
use crate::config::raw::FailurePolicy;
use crate::upstream::BoxError;
use crate::wasm::abi::{Action, HeaderList};
use crate::wasm::circuit::Admission;
use crate::wasm::header_map::{Pseudo, PseudoHeaderMap};
use crate::wasm::host::{LocalResponse, StreamInfo, StreamState};
use crate::wasm::plugin::{Plugin, PluginFailure};
use crate::wasm::vm::{StreamCallback, StreamCallbacks};

/// The plugins that apply to a route, in request order.
pub type Chain = Arc<Vec<Arc<Plugin>>>;

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
    callbacks: StreamCallbacks,
    context: Option<u32>,
    wake: Option<Arc<Notify>>,
    /// fail_open: the plugin failed and is skipped for the rest of the request.
    skipped: bool,
    /// This request is the half-open probe of the plugin's circuit.
    probe: bool,
    /// The generation of the worker's VM that holds `context`.
    generation: u64,
    /// The plugin holds back part of the response body (paused, buffering).
    holding_body: bool,
    /// The plugin paused the request body before its end and holds data.
    holding_request_body: bool,
}

impl Entry {
    fn exports(&self, callback: StreamCallback) -> bool {
        self.callbacks.exports(callback)
    }
}

/// One request's walk through a chain.
pub struct PluginRun {
    entries: Vec<Entry>,
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

/// What one response body chunk did in one plugin.
enum ChunkOutcome {
    /// What the plugin passed on, and whether it holds back a part.
    Passed(Vec<u8>, bool),
    /// Holding the chunk would take the plugin past `max_buffered_body_bytes`.
    OverLimit,
    /// The plugin reset the stream (`proxy_close_stream`).
    Reset,
}

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

/// Which direction a pause is waiting on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

impl PluginRun {
    pub fn new(chain: &Chain, info: StreamInfo, wait_limit: Duration) -> Self {
        Self {
            entries: chain
                .iter()
                .map(|plugin| Entry {
                    plugin: plugin.clone(),
                    callbacks: plugin.callbacks,
                    context: None,
                    wake: None,
                    skipped: false,
                    probe: false,
                    generation: 0,
                    holding_body: false,
                    holding_request_body: false,
                })
                .collect(),
            info: Arc::new(info),
            wait_limit,
            response_limit: chain.len(),
            finished: false,
            final_status: None,
            request_size: 0,
            response_size: 0,
            phase: "request_headers",
            failed_phase: None,
            buffer_limit: usize::MAX,
        }
    }

    /// Updates how the request was answered, for the properties every plugin reads.
    pub fn update_outcome(&self, update: impl FnOnce(&mut crate::wasm::host::Outcome)) {
        if let Ok(mut outcome) = self.info.outcome.lock() {
            update(&mut outcome);
        }
    }

    /// Caps what one plugin may hold back of a body while it pauses
    /// (`server.max_buffered_body_bytes`).
    pub fn limit_buffering(&mut self, bytes: u64) {
        self.buffer_limit = usize::try_from(bytes).unwrap_or(usize::MAX);
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

    /// Applies the plugin's failure policy: fail_open skips it, anything else (`fail_closed`,
    /// `reload`) answers 503.
    fn fail(&mut self, index: usize, failure: PluginFailure) -> Result<(), Stopped> {
        let entry = &mut self.entries[index];
        if matches!(failure, PluginFailure::CircuitOpen) {
            // Once per request while open: the opening was logged as an error.
            tracing::debug!(plugin = %entry.plugin.name, route = %self.info.route_name, "plugin circuit open");
        } else {
            tracing::warn!(plugin = %entry.plugin.name, route = %self.info.route_name, phase = self.phase, error = %failure, "plugin failed");
        }
        if std::mem::take(&mut entry.probe) {
            entry.plugin.circuit.probe_failed();
        }
        if entry.plugin.failure_policy == FailurePolicy::FailOpen {
            entry.skipped = true;
            return Ok(());
        }
        self.failed_phase.get_or_insert(self.phase);
        // On a gRPC request this becomes UNAVAILABLE (14), as `local::for_grpc` maps a 503.
        let response = local::reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("plugin {:?} is unavailable\n", entry.plugin.name),
        );
        Err(Stopped::Failed(Box::new(response)))
    }

    /// Creates the plugin's stream context on first use, and again when another request's
    /// trap replaced the VM that held it: the plugin's state for this request is lost, but
    /// the request goes on and the plugin sees its remaining phases (a redactor still
    /// redacts the response, metering still gets `on_log`).
    fn context(&mut self, index: usize) -> Result<Option<u32>, Stopped> {
        if self.entries[index].skipped {
            return Ok(None);
        }
        if let Some(context) = self.entries[index].context {
            let entry = &self.entries[index];
            if entry.plugin.is_current(entry.generation) {
                return Ok(Some(context));
            }
            tracing::warn!(plugin = %entry.plugin.name, route = %self.info.route_name, phase = self.phase, "another request's trap replaced the plugin's VM; this request goes on with a fresh context");
            self.entries[index].context = None;
        }
        let plugin = self.entries[index].plugin.clone();
        // One relaxed atomic load while the circuit is closed.
        match plugin.circuit.admit() {
            Admission::Run => {}
            Admission::Probe => self.entries[index].probe = true,
            Admission::Refused => {
                return self.fail(index, PluginFailure::CircuitOpen).map(|()| None);
            }
        }
        let key = plugin.root_key(&self.info.route_name);
        let stream = StreamState::new(0, self.info.clone());
        let wake = stream.wake.clone();
        let created = plugin.with_vm(|vm, roots| {
            let root = roots
                .get(&key)
                .or_else(|| roots.get(&None))
                .copied()
                .unwrap_or(0);
            let mut stream = stream;
            stream.root_id = root;
            vm.create_stream(root, stream)
        });
        match created {
            Ok(context) => {
                let entry = &mut self.entries[index];
                entry.context = Some(context);
                entry.wake = Some(wake);
                entry.generation = plugin.generation();
                entry.holding_body = false;
                Ok(Some(context))
            }
            Err(failure) => self.fail(index, failure).map(|()| None),
        }
    }

    /// Runs a callback, then waits while the plugin pauses until it resumes, answers or
    /// resets the stream.
    async fn settle(
        &mut self,
        index: usize,
        direction: Direction,
        call: impl FnOnce(&mut crate::wasm::vm::Vm, u32) -> Result<Action, crate::wasm::vm::VmTrap>,
    ) -> Result<(), Stopped> {
        let Some(context) = self.context(index)? else {
            return Ok(());
        };
        let plugin = self.entries[index].plugin.clone();
        // The callback and a first look at what it decided, in one visit to the VM.
        let first = plugin.with_vm(|vm, _| {
            let action = call(vm, context)?;
            Ok((action, take_signals(vm, context, direction)))
        });
        let (action, mut signals) = match first {
            Ok(outcome) => outcome,
            Err(failure) => return self.fail(index, failure),
        };
        let wake = self.entries[index]
            .wake
            .clone()
            .expect("set with the context");
        let deadline = tokio::time::Instant::now() + self.wait_limit;
        let mut paused = action == Action::Pause;
        loop {
            let (local_response, reset, resumed) = signals;
            if let Some(local_response) = local_response {
                return Err(Stopped::Local(index, local_response));
            }
            if reset {
                tracing::debug!(plugin = %plugin.name, route = %self.info.route_name, phase = self.phase, "the plugin reset the stream");
                return Err(Stopped::Reset);
            }
            if resumed {
                paused = false;
            }
            if !paused {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                tracing::warn!(plugin = %plugin.name, route = %self.info.route_name, "plugin paused the stream and never resumed it");
                return Err(Stopped::Failed(Box::new(local::reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    "a plugin paused the request past its timeout\n",
                ))));
            }
            if !plugin.is_current(self.entries[index].generation) {
                // Another request's trap took the VM, with the decision this one waited
                // for and what it had handed the plugin: it can neither continue nor skip
                // the plugin, whatever the failure policy.
                tracing::warn!(plugin = %plugin.name, route = %self.info.route_name, phase = self.phase, "the plugin's VM was replaced while this request waited on it");
                self.failed_phase.get_or_insert(self.phase);
                return Err(Stopped::Failed(Box::new(local::reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("plugin {:?} is unavailable\n", plugin.name),
                ))));
            }
            signals = match plugin.with_vm(|vm, _| Ok(take_signals(vm, context, direction))) {
                Ok(signals) => signals,
                Err(failure) => return self.fail(index, failure),
            };
        }
    }

    /// Request headers through every plugin in order; `headers` carries the pseudo-headers.
    /// The run keeps the headers the plugins leave, which every later phase of every plugin
    /// reads (request properties), and returns them.
    pub async fn request_headers(
        &mut self,
        mut headers: PseudoHeaderMap,
        end_of_stream: bool,
    ) -> Result<PseudoHeaderMap, Stopped> {
        let result = self
            .request_headers_through(&mut headers, end_of_stream)
            .await;
        // Plugins that log this request later still read its properties, however the phase
        // ended; the request goes on with its own map.
        match result {
            Ok(()) => {
                let _ = self.info.request_headers.set(headers.clone());
                Ok(headers)
            }
            Err(stop) => {
                let _ = self.info.request_headers.set(headers);
                Err(stop)
            }
        }
    }

    async fn request_headers_through(
        &mut self,
        headers: &mut PseudoHeaderMap,
        end_of_stream: bool,
    ) -> Result<(), Stopped> {
        self.phase = "request_headers";
        for index in 0..self.entries.len() {
            if !self.entries[index].exports(StreamCallback::RequestHeaders) {
                // The context still starts with the stream, as every filter's does in Envoy.
                self.context(index)?;
                continue;
            }
            let count = headers.len();
            let moved = std::mem::take(headers);
            let mut moved = Some(moved);
            let result = self
                .settle(index, Direction::Request, |vm, context| {
                    if let Some(stream) = vm.state().streams.get_mut(&context) {
                        stream.request_headers = moved.take();
                    }
                    let action = vm.stream_callback(
                        context,
                        StreamCallback::RequestHeaders,
                        count,
                        end_of_stream,
                    );
                    rescue(vm, context, &action, &mut moved, |stream| {
                        stream.request_headers.take().unwrap_or_default()
                    });
                    action
                })
                .await;
            *headers = self.take_back(index, moved, |stream| {
                stream.request_headers.take().unwrap_or_default()
            });
            result?;
        }
        Ok(())
    }

    /// One piece of the request body through the chain in order, as Envoy's filter chain
    /// decodes data: each plugin that exports `proxy_on_request_body` gets it appended to
    /// what it holds and is called with the whole held buffer; what it continues goes on to
    /// the next plugin, and what this returns goes upstream. A plugin that pauses before the
    /// end only buffers (the next piece calls it again); one that pauses at `end_of_stream`
    /// is waited for until it resumes, answers, or the wait limit passes.
    pub async fn request_body_chunk(
        &mut self,
        mut data: Bytes,
        end_of_stream: bool,
    ) -> Result<Bytes, BodyStop> {
        self.request_size += data.len() as u64;
        for index in 0..self.entries.len() {
            let entry = &self.entries[index];
            if !entry.exports(StreamCallback::RequestBody) || entry.skipped {
                continue;
            }
            if data.is_empty() && !end_of_stream {
                break;
            }
            data = self.request_body_step(index, data, end_of_stream).await?;
        }
        Ok(data)
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

    /// Takes up what plugins that hold request body data decided since: one that resumed
    /// (`proxy_continue_stream`) lets what it holds go on, through the later plugins, as
    /// Envoy continues a filter's buffered data; one that answered or reset stops the
    /// request. Returns what goes upstream.
    pub async fn request_body_resumed(&mut self) -> Result<Bytes, BodyStop> {
        let mut data = Bytes::new();
        for index in 0..self.entries.len() {
            let entry = &self.entries[index];
            if !entry.exports(StreamCallback::RequestBody) || entry.skipped {
                continue;
            }
            if !data.is_empty() {
                data = self.request_body_step(index, data, false).await?;
                continue;
            }
            let (Some(context), true) = (entry.context, entry.holding_request_body) else {
                continue;
            };
            let decided = entry
                .plugin
                .with_vm(|vm, _| {
                    Ok(vm.state().streams.get(&context).is_some_and(|stream| {
                        let signals = &stream.signals;
                        signals.continue_request
                            || signals.local_response.is_some()
                            || signals.reset
                    }))
                })
                .unwrap_or(false);
            if !decided {
                continue;
            }
            self.phase = "request_body";
            let mut resumed = false;
            // No callback: settle takes up the decision (an answer, a reset) as for one.
            let result = self
                .settle(index, Direction::Request, |vm, context| {
                    if let Some(stream) = vm.state().streams.get_mut(&context) {
                        resumed = std::mem::take(&mut stream.signals.continue_request);
                    }
                    Ok(Action::Continue)
                })
                .await;
            result.map_err(BodyStop::Plugin)?;
            if resumed {
                self.entries[index].holding_request_body = false;
                data = self.take_held_request_body(index);
            }
        }
        Ok(data)
    }

    /// The request trailers through the chain in order, after the body. A plugin that held
    /// back body data (it paused, waiting for an end that trailers never mark) lets it go
    /// when its trailers callback continues; that data then goes through the later plugins'
    /// body callbacks before their trailers. Returns the body data released here, which goes
    /// upstream before the trailers.
    pub async fn request_trailers(
        &mut self,
        trailers: &mut PseudoHeaderMap,
    ) -> Result<Bytes, BodyStop> {
        let mut data = Bytes::new();
        for index in 0..self.entries.len() {
            if self.entries[index].skipped {
                continue;
            }
            if self.entries[index].exports(StreamCallback::RequestBody) && !data.is_empty() {
                data = self.request_body_step(index, data, false).await?;
            }
            if self.entries[index].exports(StreamCallback::RequestTrailers) {
                self.phase = "request_trailers";
                let count = trailers.len();
                let mut moved = Some(std::mem::take(trailers));
                let result = self
                    .settle(index, Direction::Request, |vm, context| {
                        if let Some(stream) = vm.state().streams.get_mut(&context) {
                            stream.request_trailers = moved.take().unwrap_or_default();
                        }
                        let action = vm.stream_callback(
                            context,
                            StreamCallback::RequestTrailers,
                            count,
                            true,
                        );
                        rescue(vm, context, &action, &mut moved, |stream| {
                            std::mem::take(&mut stream.request_trailers)
                        });
                        action
                    })
                    .await;
                *trailers = self.take_back(index, moved, |stream| {
                    std::mem::take(&mut stream.request_trailers)
                });
                result.map_err(BodyStop::Plugin)?;
            }
            if self.entries[index].exports(StreamCallback::RequestBody)
                && !self.entries[index].skipped
            {
                self.entries[index].holding_request_body = false;
                let held = self.take_held_request_body(index);
                data = match (data.is_empty(), held.is_empty()) {
                    (_, true) => data,
                    (true, false) => held,
                    (false, false) => [data, held].concat().into(),
                };
            }
        }
        Ok(data)
    }

    /// `data` through plugin `index`'s `on_request_body`; returns what the plugin lets go on
    /// (empty while it pauses before the end).
    async fn request_body_step(
        &mut self,
        index: usize,
        data: Bytes,
        end_of_stream: bool,
    ) -> Result<Bytes, BodyStop> {
        self.phase = "request_body";
        let limit = self.buffer_limit;
        let mut overflow = false;
        let mut released = None;
        let result = self
            .settle(index, Direction::Request, |vm, context| {
                let Some(stream) = vm.state().streams.get_mut(&context) else {
                    // No stream state to buffer in: the piece goes on untouched.
                    released = Some(data.clone());
                    return Ok(Action::Continue);
                };
                // A resume that came while the plugin held data before the end (a callout
                // answered) is taken up by this callback, which sees the held data and the
                // new piece together.
                stream.signals.continue_request = false;
                if stream.request_body.len() + data.len() > limit {
                    overflow = true;
                    return Ok(Action::Continue);
                }
                stream.request_body.extend_from_slice(&data);
                stream.request_size += data.len() as u64;
                let size = stream.request_body.len();
                let action =
                    vm.stream_callback(context, StreamCallback::RequestBody, size, end_of_stream)?;
                if action == Action::Continue {
                    if let Some(stream) = vm.state().streams.get_mut(&context) {
                        released = Some(release_request_body(stream, &data));
                    }
                }
                // Before the end a pause only buffers; settle waits only at the end.
                Ok(if end_of_stream {
                    action
                } else {
                    Action::Continue
                })
            })
            .await;
        result.map_err(BodyStop::Plugin)?;
        self.entries[index].holding_request_body = false;
        if overflow {
            let plugin = &self.entries[index].plugin.name;
            tracing::warn!(plugin = %plugin, route = %self.info.route_name, limit, "a plugin paused the request body past max_buffered_body_bytes");
            return Err(BodyStop::BufferFull);
        }
        if let Some(released) = released {
            return Ok(released);
        }
        if self.entries[index].skipped {
            // fail_open after a trap: the piece goes on as the plugin got it (what it held
            // before died with its VM).
            return Ok(data);
        }
        if end_of_stream {
            // Paused at the end, then resumed: what it holds, as it left it, goes on.
            return Ok(self.take_held_request_body(index));
        }
        self.entries[index].holding_request_body = true;
        Ok(Bytes::new())
    }

    /// What plugin `index` holds of the request body, taken out of its buffer.
    fn take_held_request_body(&self, index: usize) -> Bytes {
        let Some(context) = self.entries[index].context else {
            return Bytes::new();
        };
        self.entries[index]
            .plugin
            .with_vm(|vm, _| {
                Ok(vm
                    .state()
                    .streams
                    .get_mut(&context)
                    .map(|stream| release_request_body(stream, &Bytes::new()))
                    .unwrap_or_default())
            })
            .unwrap_or_default()
    }

    /// Response headers through the plugins in reverse order. A local reply from this phase
    /// replaces the response; its headers then continue through the remaining plugins.
    pub async fn response_headers(
        &mut self,
        headers: &mut PseudoHeaderMap,
        end_of_stream: bool,
    ) -> Result<Option<LocalResponse>, Stopped> {
        let status = headers
            .pseudo(Pseudo::Status)
            .and_then(|value| std::str::from_utf8(value).ok()?.parse::<u16>().ok());
        let mut replaced = None;
        self.phase = "response_headers";
        if let Some(status) = status {
            self.info
                .response_status
                .store(status, std::sync::atomic::Ordering::Relaxed);
        }
        for index in (0..self.response_limit.min(self.entries.len())).rev() {
            let entry = &self.entries[index];
            if entry.context.is_none() || !entry.exports(StreamCallback::ResponseHeaders) {
                continue;
            }
            let count = headers.len();
            let mut moved = Some(std::mem::take(headers));
            let result = self
                .settle(index, Direction::Response, |vm, context| {
                    if let Some(stream) = vm.state().streams.get_mut(&context) {
                        stream.response_headers = moved.take();
                        stream.response_code = status;
                    }
                    let action = vm.stream_callback(
                        context,
                        StreamCallback::ResponseHeaders,
                        count,
                        end_of_stream,
                    );
                    rescue(vm, context, &action, &mut moved, |stream| {
                        stream.response_headers.take().unwrap_or_default()
                    });
                    action
                })
                .await;
            *headers = self.take_back(index, moved, |stream| {
                stream.response_headers.take().unwrap_or_default()
            });
            match result {
                Ok(()) => {}
                Err(Stopped::Local(_, answer)) => {
                    let answer = if self.info.grpc {
                        local::grpc_answer(&answer)
                    } else {
                        answer
                    };
                    *headers = local_reply_head(&answer);
                    replaced = Some(answer);
                }
                Err(failed) => return Err(failed),
            }
        }
        Ok(replaced)
    }

    /// Returns what a callback left in the stream state; if the VM is gone (a trap), what
    /// was never handed over.
    fn take_back<T: Default>(
        &self,
        index: usize,
        unmoved: Option<T>,
        take: impl FnOnce(&mut StreamState) -> T,
    ) -> T {
        if let Some(value) = unmoved {
            return value;
        }
        let Some(context) = self.entries[index].context else {
            return T::default();
        };
        self.entries[index]
            .plugin
            .with_vm(|vm, _| {
                Ok(vm
                    .state()
                    .streams
                    .get_mut(&context)
                    .map(take)
                    .unwrap_or_default())
            })
            .unwrap_or_default()
    }

    /// Limits the response phase to the plugins up to one that answered locally.
    pub fn answered_by(&mut self, index: usize) {
        self.response_limit = index + 1;
    }

    /// One response body chunk through the plugins in reverse order (synchronous: called
    /// while the body streams). A plugin that pauses keeps buffering; at the end of the
    /// stream everything buffered is released. A trap fails the body (the stream is reset)
    /// whatever the failure policy: the head is sent, and what the plugin held back is lost.
    fn response_body_chunk(
        &mut self,
        mut data: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Vec<u8>, BoxError> {
        for index in (0..self.response_limit.min(self.entries.len())).rev() {
            let entry = &self.entries[index];
            if entry.context.is_none()
                || entry.skipped
                || !entry.exports(StreamCallback::ResponseBody)
            {
                continue;
            }
            if data.is_empty() && !end_of_stream {
                break;
            }
            let context = self.body_context(index, "response_body")?;
            let plugin = self.entries[index].plugin.clone();
            let limit = self.buffer_limit;
            let result = plugin.with_vm(|vm, _| {
                let Some(stream) = vm.state().streams.get_mut(&context) else {
                    return Ok(ChunkOutcome::Passed(Vec::new(), false));
                };
                if stream.response_body.len() + data.len() > limit {
                    return Ok(ChunkOutcome::OverLimit);
                }
                stream.response_body.extend_from_slice(&data);
                stream.response_size += data.len() as u64;
                let size = stream.response_body.len();
                let action =
                    vm.stream_callback(context, StreamCallback::ResponseBody, size, end_of_stream)?;
                let stream = vm.state().streams.get_mut(&context).expect("checked above");
                if std::mem::take(&mut stream.signals.reset) {
                    return Ok(ChunkOutcome::Reset);
                }
                let released =
                    action == Action::Continue || end_of_stream || stream.signals.continue_response;
                stream.signals.continue_response = false;
                Ok(if released {
                    ChunkOutcome::Passed(std::mem::take(&mut stream.response_body), false)
                } else {
                    ChunkOutcome::Passed(Vec::new(), !stream.response_body.is_empty())
                })
            });
            (data, self.entries[index].holding_body) = match result {
                Ok(ChunkOutcome::Passed(out, holding)) => (out, holding),
                Ok(ChunkOutcome::Reset) => {
                    return Err(Box::new(self.body_reset(index, "response_body")))
                }
                Ok(ChunkOutcome::OverLimit) => {
                    tracing::warn!(plugin = %plugin.name, route = %self.info.route_name, limit, "a plugin paused the response body past max_buffered_body_bytes; resetting the response");
                    return Err(Box::new(BufferLimitExceeded {
                        plugin: plugin.name.clone(),
                        limit,
                    }));
                }
                Err(failure) => {
                    return Err(Box::new(self.body_failure(
                        index,
                        "response_body",
                        &failure,
                    )))
                }
            };
        }
        self.response_size += data.len() as u64;
        Ok(data)
    }

    /// A plugin failed after the response head was sent: it is out of this request, and the
    /// response stream is to be reset.
    fn body_failure(
        &mut self,
        index: usize,
        phase: &'static str,
        failure: &PluginFailure,
    ) -> PluginBodyFailure {
        let entry = &mut self.entries[index];
        entry.skipped = true;
        self.failed_phase.get_or_insert(phase);
        tracing::warn!(plugin = %entry.plugin.name, route = %self.info.route_name, phase, error = %failure, "plugin failed after the response head was sent; resetting the response");
        PluginBodyFailure {
            plugin: entry.plugin.name.clone(),
            phase,
            reset: false,
        }
    }

    /// A plugin reset the stream after the response head was sent: the body ends in an
    /// error, as after a failure, and the plugin sees nothing more but its log phase.
    fn body_reset(&mut self, index: usize, phase: &'static str) -> PluginBodyFailure {
        self.update_outcome(|outcome| outcome.detail = "plugin_reset");
        let entry = &mut self.entries[index];
        entry.skipped = true;
        tracing::debug!(plugin = %entry.plugin.name, route = %self.info.route_name, phase, "the plugin reset the stream");
        PluginBodyFailure {
            plugin: entry.plugin.name.clone(),
            phase,
            reset: true,
        }
    }

    /// The plugin's context for a response body or trailers callback. When another
    /// request's trap took the VM, a fresh context carries on, unless the old one held back
    /// part of the body: that part is gone, so the response is reset.
    fn body_context(
        &mut self,
        index: usize,
        phase: &'static str,
    ) -> Result<u32, PluginBodyFailure> {
        let entry = &self.entries[index];
        if entry.holding_body && !entry.plugin.is_current(entry.generation) {
            let lost = PluginFailure::Unavailable(
                "the VM was replaced while the plugin held back part of the response body".into(),
            );
            return Err(self.body_failure(index, phase, &lost));
        }
        self.phase = phase;
        match self.context(index) {
            Ok(Some(context)) => Ok(context),
            // No fresh context (the circuit is open, or creating it trapped): the rest of the
            // body would go out unprocessed, under every policy a reset.
            Ok(None) | Err(_) => {
                let failure = PluginFailure::Unavailable("no fresh stream context".into());
                Err(self.body_failure(index, phase, &failure))
            }
        }
    }

    fn response_trailers(
        &mut self,
        trailers: &mut PseudoHeaderMap,
    ) -> Result<(), PluginBodyFailure> {
        for index in (0..self.response_limit.min(self.entries.len())).rev() {
            let entry = &self.entries[index];
            if entry.context.is_none()
                || entry.skipped
                || !entry.exports(StreamCallback::ResponseTrailers)
            {
                continue;
            }
            let context = self.body_context(index, "response_trailers")?;
            let plugin = self.entries[index].plugin.clone();
            let count = trailers.len();
            let moved = std::mem::take(trailers);
            let result = plugin.with_vm(|vm, _| {
                if let Some(stream) = vm.state().streams.get_mut(&context) {
                    stream.response_trailers = moved;
                }
                vm.stream_callback(context, StreamCallback::ResponseTrailers, count, true)?;
                Ok(vm.state().streams.get_mut(&context).map(|stream| {
                    let reset = std::mem::take(&mut stream.signals.reset);
                    (std::mem::take(&mut stream.response_trailers), reset)
                }))
            });
            match result {
                Ok(Some((_, true))) => return Err(self.body_reset(index, "response_trailers")),
                Ok(Some((list, false))) => *trailers = list,
                Ok(None) => *trailers = PseudoHeaderMap::default(),
                Err(failure) => {
                    return Err(self.body_failure(index, "response_trailers", &failure));
                }
            }
        }
        Ok(())
    }

    /// Records the response head that went downstream, which plugins read from then on.
    pub fn set_final_response(&mut self, status: u16, headers: PseudoHeaderMap) {
        self.final_status = Some(status);
        let _ = self.info.response_headers.set(headers);
    }

    /// The log phase: `on_log`, `on_done`, `on_delete` for every plugin of the chain, in
    /// order. As in Envoy, where every filter of the chain has a context from the start, a
    /// plugin that never ran because an earlier one answered still gets its `on_log` (so
    /// that metering bills refused requests too).
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let finished = SystemTime::now();
        for index in 0..self.entries.len() {
            let Ok(Some(context)) = self.context(index) else {
                continue;
            };
            let run = &*self;
            let _ = run.entries[index].plugin.with_vm(|vm, _| {
                if let Some(stream) = vm.state().streams.get_mut(&context) {
                    stream.finished = Some(finished);
                    stream.response_code = stream.response_code.or(run.final_status);
                    stream.request_size = stream.request_size.max(run.request_size);
                    stream.response_size = run.response_size;
                }
                vm.finish_stream(context)
            });
        }
        // A probe that trapped opened the circuit again; otherwise this closes it.
        for entry in &self.entries {
            if entry.probe {
                entry.plugin.circuit.probe_done();
            }
        }
    }
}

impl Drop for PluginRun {
    fn drop(&mut self) {
        self.finish();
    }
}

/// After a trap, takes back what the callback was handed from the dying VM's stream state, so
/// that a `fail_open` plugin that trapped passes on the request as it got it (as far as it
/// had not changed it) rather than an empty one. Costs nothing unless the callback trapped.
fn rescue<T>(
    vm: &mut crate::wasm::vm::Vm,
    context: u32,
    action: &Result<Action, crate::wasm::vm::VmTrap>,
    moved: &mut Option<T>,
    take: impl FnOnce(&mut StreamState) -> T,
) {
    if action.is_ok() || moved.is_some() {
        return;
    }
    *moved = vm.state().streams.get_mut(&context).map(take);
}

/// Takes what a plugin let go of the request body out of its buffer, which keeps its
/// capacity for the next piece. When the plugin left the piece it was handed as it was (the
/// common case: it only read it), that piece goes on without a copy.
fn release_request_body(stream: &mut StreamState, handed: &Bytes) -> Bytes {
    let released = if stream.request_body[..] == handed[..] {
        handed.clone()
    } else {
        Bytes::copy_from_slice(&stream.request_body)
    };
    stream.request_body.clear();
    released
}

/// What the plugin decided for a stream since the last look: a local reply, a reset, and
/// whether it resumed the given direction.
fn take_signals(
    vm: &mut crate::wasm::vm::Vm,
    context: u32,
    direction: Direction,
) -> (Option<LocalResponse>, bool, bool) {
    let Some(stream) = vm.state().streams.get_mut(&context) else {
        return (None, false, false);
    };
    let signals = &mut stream.signals;
    let resumed = match direction {
        Direction::Request => std::mem::take(&mut signals.continue_request),
        Direction::Response => std::mem::take(&mut signals.continue_response),
    };
    (
        signals.local_response.take(),
        std::mem::take(&mut signals.reset),
        resumed,
    )
}

/// A local reply's head as the response plugins see it (`:status` first).
pub fn local_reply_head(answer: &LocalResponse) -> PseudoHeaderMap {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    PseudoHeaderMap::response(
        status,
        PseudoHeaderMap::from_pairs(&answer.headers).into_headers(),
    )
}

/// Builds the response for a local reply.
pub fn local_response(answer: &LocalResponse) -> Response<ResponseBody> {
    let mut response = Response::new(local::body(answer.body.clone()));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    if answer.grpc_status >= 0 {
        if let Ok(value) = HeaderValue::from_str(&answer.grpc_status.to_string()) {
            response.headers_mut().insert("grpc-status", value);
        }
    }
    response.extensions_mut().insert(local::LocalReply {
        grpc_status: u32::try_from(answer.grpc_status).ok(),
        message: answer.body.clone(),
    });
    response
}

/// The headers of a list but its pseudo-headers, as a `HeaderMap`; names and values `http`
/// refuses are left out.
pub fn header_map(list: &HeaderList) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        if name.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// Wraps a run so that the request body task and the response phase can share it.
pub fn share(run: PluginRun) -> SharedRun {
    Arc::new(tokio::sync::Mutex::new(run))
}

/// The response body as the plugins see it, chunk by chunk; the log phase runs when it ends.
pub fn filter_response_body(body: ResponseBody, run: SharedRun) -> ResponseBody {
    FilteredBody {
        inner: body,
        run,
        waiting: None,
        done: false,
        trailers_done: false,
    }
    .boxed()
}

/// The wait for a run the request body task holds (a plugin paused the request at its end).
type RunWait = std::pin::Pin<
    Box<dyn std::future::Future<Output = tokio::sync::OwnedMutexGuard<PluginRun>> + Send + Sync>,
>;

struct FilteredBody {
    inner: ResponseBody,
    run: SharedRun,
    waiting: Option<RunWait>,
    done: bool,
    /// The trailers went through the plugins already (they may follow a flushed body).
    trailers_done: bool,
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            // The run first, then the frame: a frame is never read and then held back
            // waiting for the run.
            let mut run = match self.poll_run(cx) {
                Poll::Ready(run) => run,
                Poll::Pending => return Poll::Pending,
            };
            let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !run.reads_response_body() => {
                        // No plugin of the chain reads the body: it passes as it came.
                        run.response_size += data.len() as u64;
                        if self.inner.is_end_stream() {
                            self.done = true;
                        }
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        if self.done {
                            return Poll::Ready(None);
                        }
                    }
                    Ok(data) => {
                        let end = self.inner.is_end_stream();
                        let out = match run.response_body_chunk(data.to_vec(), end) {
                            Ok(out) => out,
                            Err(failure) => return self.reset(failure),
                        };
                        if end {
                            self.done = true;
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                        if self.done {
                            return Poll::Ready(None);
                        }
                    }
                    Err(frame) if self.trailers_done => {
                        self.done = true;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Err(frame) => {
                        self.trailers_done = true;
                        // Trailers end the stream: release any buffered body first is not
                        // possible in one frame, so flush it and keep the trailers for later.
                        let flushed = match run.response_body_chunk(Vec::new(), true) {
                            Ok(flushed) => flushed,
                            Err(failure) => return self.reset(failure),
                        };
                        let mut trailers = PseudoHeaderMap::from_headers(
                            frame.into_trailers().unwrap_or_default(),
                        );
                        if let Err(failure) = run.response_trailers(&mut trailers) {
                            return self.reset(failure);
                        }
                        self.done = true;
                        let map = trailers.into_headers();
                        if !flushed.is_empty() {
                            // Send the released body now; the trailers follow as the final frame.
                            let pending_trailers = map;
                            self.inner = http_body_util::Empty::new()
                                .map_err(|never| match never {})
                                .with_trailers(async move { Some(Ok(pending_trailers)) })
                                .boxed();
                            self.done = false;
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(flushed)))));
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    let out = match run.response_body_chunk(Vec::new(), true) {
                        Ok(out) => out,
                        Err(failure) => return self.reset(failure),
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl FilteredBody {
    /// The run, at once unless the request body task holds it; then woken when it lets go.
    fn poll_run(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<tokio::sync::OwnedMutexGuard<PluginRun>> {
        if self.waiting.is_none() {
            match self.run.clone().try_lock_owned() {
                Ok(run) => return std::task::Poll::Ready(run),
                Err(_) => self.waiting = Some(Box::pin(self.run.clone().lock_owned())),
            }
        }
        let waiting = self.waiting.as_mut().expect("set above");
        let run = std::task::ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        std::task::Poll::Ready(run)
    }

    /// Ends the body in an error: hyper resets an HTTP/2 stream and closes an HTTP/1.1
    /// connection before the body's end, so the client can tell the body is incomplete.
    fn reset(
        &mut self,
        failure: impl Into<BoxError>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        std::task::Poll::Ready(Some(Err(failure.into())))
    }
}
