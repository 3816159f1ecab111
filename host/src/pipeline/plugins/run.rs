//! The phases of one request's run through its chain, in the order a request meets them:
//! request headers, body and trailers in chain order; response headers, body and trailers
//! in reverse; the log phase for every plugin. Every visit to a plugin's VM on a request's
//! path is here, and each is a call on the worker's own VM in place (`Plugin::with_vm`):
//! no message to another task, no channel per request, unless a plugin starts a callout or
//! the request body streams through the chain.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::super::local;
use super::super::refusal::Refusal;
use super::{
    local_reply_head, BodyStop, BufferLimitExceeded, PluginBodyFailure, PluginRun, Stopped,
};
use crate::config::FailurePolicy;
use crate::upstream::BoxError;
use crate::wasm::abi::Action;
use crate::wasm::callbacks::{Callbacks, StreamCallback};
use crate::wasm::circuit::Admission;
use crate::wasm::header_map::{Pseudo, PseudoHeaderMap};
use crate::wasm::host::{LocalResponse, StreamInfo, StreamState};
use crate::wasm::plugin::{Plugin, PluginFailure, Roots};

/// What one response body chunk did in one plugin.
enum ChunkOutcome {
    /// What the plugin passed on, and whether it holds back a part.
    Passed(Vec<u8>, bool),
    /// Holding the chunk would take the plugin past `max_buffered_body_bytes`.
    OverLimit,
    /// The plugin reset the stream (`proxy_close_stream`).
    Reset,
}

/// Which direction a pause is waiting on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// Where a plugin's part of a request starts in a visit to its VM.
enum StreamStart {
    /// The plugin's context for the request, created earlier.
    Running(u32),
    /// No context yet: one is created first, from the request's facts.
    Create(Arc<StreamInfo>),
}

/// A new stream context, its wake-up and the callbacks its configuration needs.
type CreatedStream = (u32, Arc<tokio::sync::Notify>, Callbacks);

/// Creates a request's context in the plugin's root context for its route.
fn create_stream(
    vm: &mut crate::wasm::vm::Vm,
    roots: &Roots,
    info: Arc<StreamInfo>,
) -> Result<CreatedStream, crate::wasm::vm::VmTrap> {
    let root = Plugin::root_context(roots, &info.route_name);
    vm.create_stream(root, info)
}

impl PluginRun {
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
        let response = Refusal::PluginFailed {
            plugin: entry.plugin.name.to_string(),
        }
        .response();
        Err(Stopped::Failed(Box::new(response)))
    }

    /// Creates the plugin's stream context on first use, and again when another request's
    /// trap replaced the VM that held it: the plugin's state for this request is lost, but
    /// the request goes on and the plugin sees its remaining phases (a redactor still
    /// redacts the response, metering still gets `on_log`).
    fn context(&mut self, index: usize) -> Result<Option<u32>, Stopped> {
        let info = match self.start(index)? {
            None => return Ok(None),
            Some(StreamStart::Running(context)) => return Ok(Some(context)),
            Some(StreamStart::Create(info)) => info,
        };
        let created = self.entries[index]
            .plugin
            .with_vm(|vm, roots| create_stream(vm, roots, info));
        match created {
            Ok(created) => Ok(Some(self.created(index, created))),
            Err(failure) => self.fail(index, failure).map(|()| None),
        }
    }

    /// What [`Self::context`] finds before it visits the VM: the plugin's context, or the
    /// facts to create one with once the circuit admits the plugin; `None` for a plugin
    /// skipped or refused (with its failure policy applied).
    fn start(&mut self, index: usize) -> Result<Option<StreamStart>, Stopped> {
        if self.entries[index].skipped {
            return Ok(None);
        }
        if let Some(context) = self.entries[index].context {
            let entry = &self.entries[index];
            if entry.plugin.is_current(entry.vm) {
                return Ok(Some(StreamStart::Running(context)));
            }
            tracing::warn!(plugin = %entry.plugin.name, route = %self.info.route_name, phase = self.phase, "another request's trap replaced the plugin's VM; this request goes on with a fresh context");
            self.entries[index].context = None;
        }
        // One relaxed atomic load while the circuit is closed.
        match self.entries[index].plugin.circuit.admit() {
            Admission::Run => {}
            Admission::Probe => self.entries[index].probe = true,
            Admission::Refused => {
                return self.fail(index, PluginFailure::CircuitOpen).map(|()| None);
            }
        }
        Ok(Some(StreamStart::Create(self.info.clone())))
    }

    /// Keeps what creating plugin `index`'s context made; returns the context.
    fn created(&mut self, index: usize, (context, wake, needed): CreatedStream) -> u32 {
        let vm = self.entries[index].plugin.vm_ticket();
        let entry = &mut self.entries[index];
        // The plugin's configuration for this route may need fewer callbacks than its
        // module has (a transformer without body rules reads no body).
        entry.callbacks = entry.callbacks.restricted_to(needed);
        entry.context = Some(context);
        entry.wake = Some(wake);
        entry.vm = vm;
        entry.holding_body = false;
        context
    }

    /// Runs a callback, then waits while the plugin pauses until it resumes, answers or
    /// resets the stream. With tracing on, the phase is a span whose verdict is how it ended.
    ///
    /// The callback runs before the first await, and the wait is a boxed future of its own:
    /// a callback that does not pause (nearly all of them) never touches the wait's state,
    /// and the futures of every phase above this one stay small, since they are moved whole
    /// on their way into their callers'.
    async fn settle(
        &mut self,
        index: usize,
        direction: Direction,
        call: impl FnOnce(&mut crate::wasm::vm::Vm, u32) -> Result<Action, crate::wasm::vm::VmTrap>,
    ) -> Result<(), Stopped> {
        let Some(start) = self.start(index)? else {
            return Ok(());
        };
        let span = self
            .info
            .trace
            .as_ref()
            .map(|trace| trace.plugin_phase(&self.entries[index].plugin.name, self.phase));
        let result = match self.run_callback(index, start, direction, call) {
            Ok(Some(context)) => {
                crate::boxed!(self.wait_for_decision(index, context, direction)).await
            }
            Ok(None) => Ok(()),
            Err(stopped) => Err(stopped),
        };
        if let Some(span) = span {
            span.end(match &result {
                Ok(()) if self.entries[index].skipped => "skipped",
                Ok(()) => "continue",
                Err(Stopped::Local(..)) => "local_reply",
                Err(Stopped::Reset) => "reset",
                Err(Stopped::Failed(_)) => "failed",
            });
        }
        result
    }

    /// The callback of [`Self::settle`] and a first look at what it decided, in one visit to
    /// the VM, which also creates the plugin's context when the request has none there yet:
    /// `Ok(Some(context))` when the plugin paused the stream and has not resumed it yet.
    fn run_callback(
        &mut self,
        index: usize,
        start: StreamStart,
        direction: Direction,
        call: impl FnOnce(&mut crate::wasm::vm::Vm, u32) -> Result<Action, crate::wasm::vm::VmTrap>,
    ) -> Result<Option<u32>, Stopped> {
        let first = self.entries[index].plugin.with_vm(|vm, roots| {
            let (context, created) = match start {
                StreamStart::Running(context) => (context, None),
                StreamStart::Create(info) => {
                    let created = create_stream(vm, roots, info)?;
                    (created.0, Some(created))
                }
            };
            let action = call(vm, context)?;
            Ok((
                context,
                created,
                action,
                take_signals(vm, context, direction),
            ))
        });
        match first {
            Ok((context, created, action, signals)) => {
                if let Some(created) = created {
                    self.created(index, created);
                }
                let paused = self.still_paused(index, action == Action::Pause, signals)?;
                Ok(paused.then_some(context))
            }
            // A context created in this visit went with the VM.
            Err(failure) => self.fail(index, failure).map(|()| None),
        }
    }

    /// What a plugin's signals decide for a stream: an answer or a reset stops it; `Ok` tells
    /// whether it stays paused (it was, and did not resume).
    fn still_paused(
        &self,
        index: usize,
        paused: bool,
        (local_response, reset, resumed): Signals,
    ) -> Result<bool, Stopped> {
        if let Some(local_response) = local_response {
            return Err(Stopped::Local(index, local_response));
        }
        if reset {
            tracing::debug!(plugin = %self.entries[index].plugin.name, route = %self.info.route_name, phase = self.phase, "the plugin reset the stream");
            return Err(Stopped::Reset);
        }
        Ok(paused && !resumed)
    }

    /// The wait after a callback that paused the stream, until the plugin resumes it,
    /// answers or resets it, or the wait limit passes.
    async fn wait_for_decision(
        &mut self,
        index: usize,
        context: u32,
        direction: Direction,
    ) -> Result<(), Stopped> {
        let plugin = self.entries[index].plugin.clone();
        let wake = self.entries[index]
            .wake
            .clone()
            .expect("set with the context");
        let deadline = tokio::time::Instant::now() + self.wait_limit;
        loop {
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                tracing::warn!(plugin = %plugin.name, route = %self.info.route_name, "plugin paused the stream and never resumed it");
                return Err(Stopped::Failed(Box::new(Refusal::PluginStalled.response())));
            }
            if !plugin.is_current(self.entries[index].vm) {
                // Another request's trap took the VM, with the decision this one waited
                // for and what it had handed the plugin: it can neither continue nor skip
                // the plugin, whatever the failure policy.
                tracing::warn!(plugin = %plugin.name, route = %self.info.route_name, phase = self.phase, "the plugin's VM was replaced while this request waited on it");
                self.failed_phase.get_or_insert(self.phase);
                let plugin = plugin.name.to_string();
                return Err(Stopped::Failed(Box::new(
                    Refusal::PluginFailed { plugin }.response(),
                )));
            }
            let signals = match plugin.with_vm(|vm, _| Ok(take_signals(vm, context, direction))) {
                Ok(signals) => signals,
                Err(failure) => return self.fail(index, failure),
            };
            if !self.still_paused(index, true, signals)? {
                return Ok(());
            }
        }
    }

    /// Request headers through every plugin in order; `headers` carries the pseudo-headers.
    /// Returns the headers the plugins leave; the run keeps a copy for the plugins that may
    /// read them in a later phase (request properties), if any.
    pub async fn request_headers(
        &mut self,
        headers: Box<PseudoHeaderMap>,
        end_of_stream: bool,
    ) -> Result<Box<PseudoHeaderMap>, Stopped> {
        let mut held = Some(headers);
        let result = self.request_headers_through(&mut held, end_of_stream).await;
        // Gone only with the VM of a plugin that paused while it held the map.
        let headers = held.unwrap_or_default();
        // Plugins that log this request later still read its properties, however the phase
        // ended; the request goes on with its own map.
        match result {
            Ok(()) => {
                if self.reads_request_head_later() {
                    let _ = self.info.request_headers.set(headers.clone());
                }
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
        headers: &mut Option<Box<PseudoHeaderMap>>,
        end_of_stream: bool,
    ) -> Result<(), Stopped> {
        self.phase = "request_headers";
        for index in 0..self.entries.len() {
            if !self.entries[index].exports(StreamCallback::RequestHeaders) {
                // The context still starts with the stream, as every filter's does in Envoy.
                self.context(index)?;
                continue;
            }
            self.header_callback(
                index,
                StreamCallback::RequestHeaders,
                headers,
                end_of_stream,
                |stream| &mut stream.request_headers,
            )
            .await?;
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
        self.with_stream(index, |stream| release_request_body(stream, &Bytes::new()))
    }

    /// Response headers through the plugins in reverse order. A local reply from this phase
    /// replaces the response; its headers then continue through the remaining plugins.
    /// Returns the head as the plugins left it, and the local reply if one replaced the
    /// response.
    pub async fn response_headers(
        &mut self,
        headers: Box<PseudoHeaderMap>,
        end_of_stream: bool,
    ) -> Result<(Box<PseudoHeaderMap>, Option<LocalResponse>), Stopped> {
        let status = headers
            .pseudo(Pseudo::Status)
            .and_then(|value| std::str::from_utf8(value).ok()?.parse::<u16>().ok());
        let mut replaced = None;
        self.response_phase_starts(status);
        let mut held = Some(headers);
        for index in (0..self.response_limit.min(self.entries.len())).rev() {
            if !self.enters_response_headers(index) {
                continue;
            }
            let result = self
                .header_callback(
                    index,
                    StreamCallback::ResponseHeaders,
                    &mut held,
                    end_of_stream,
                    |stream| {
                        stream.response_code = status;
                        &mut stream.response_headers
                    },
                )
                .await;
            match result {
                Ok(()) => {}
                Err(Stopped::Local(_, answer)) => {
                    let answer = if self.info.grpc {
                        local::grpc_answer(&answer)
                    } else {
                        answer
                    };
                    held = Some(Box::new(local_reply_head(&answer)));
                    replaced = Some(answer);
                }
                Err(failed) => return Err(failed),
            }
        }
        // Gone only with the VM of a plugin that paused while it held the map.
        Ok((held.unwrap_or_default(), replaced))
    }

    /// Whether plugin `index` is called with the response head: it has a context (it ran
    /// in the request phase) and exports `proxy_on_response_headers`.
    fn enters_response_headers(&self, index: usize) -> bool {
        let entry = &self.entries[index];
        entry.context.is_some() && entry.exports(StreamCallback::ResponseHeaders)
    }

    /// Whether some plugin reads the response head, in its headers callback or later: when
    /// none does, the head goes downstream as it came, with no map for the plugins
    /// (see [`Self::response_head_unread`]).
    pub fn reads_response_head(&self) -> bool {
        (0..self.response_limit.min(self.entries.len()))
            .any(|index| self.enters_response_headers(index))
            || self.reads_response_head_later()
    }

    /// The response phase of a run where no plugin reads the response head (a chain of
    /// request plugins, as most authentication is): only its status is recorded, for the
    /// properties the log phase reads.
    pub fn response_head_unread(&mut self, status: u16) {
        self.response_phase_starts(Some(status));
        self.set_final_status(status);
    }

    fn response_phase_starts(&mut self, status: Option<u16>) {
        self.phase = "response_headers";
        if let Some(status) = status {
            self.info
                .response_status
                .store(status, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A request or response headers callback of one plugin: the map (boxed: a hand-over
    /// moves a pointer) is moved into the plugin's stream state (`slot`) for the callback
    /// and straight back after it, or after the pause that followed; after a trap, what the
    /// callback was handed is taken back from the dying VM in the same visit, so that a
    /// `fail_open` plugin passes it on. `headers` is `None` afterwards only if the VM went
    /// while the plugin held the map (paused, then another request's trap).
    async fn header_callback(
        &mut self,
        index: usize,
        callback: StreamCallback,
        headers: &mut Option<Box<PseudoHeaderMap>>,
        end_of_stream: bool,
        slot: impl Fn(&mut StreamState) -> &mut Option<Box<PseudoHeaderMap>> + Copy,
    ) -> Result<(), Stopped> {
        let direction = match callback {
            StreamCallback::ResponseHeaders => Direction::Response,
            _ => Direction::Request,
        };
        let count = headers.as_ref().map_or(0, |headers| headers.len());
        // The map is with the plugin: handed over and not given back yet.
        let mut with_plugin = false;
        let result = self
            .settle(index, direction, |vm, context| {
                if let Some(stream) = vm.state().streams.get_mut(&context) {
                    *slot(stream) = headers.take();
                    with_plugin = true;
                }
                let action = vm.stream_callback(context, callback, count, end_of_stream);
                // Unless the plugin paused, the map comes back in this same visit to the VM:
                // after a trap too, before the VM is discarded.
                if with_plugin && !matches!(action, Ok(Action::Pause)) {
                    if let Some(stream) = vm.state().streams.get_mut(&context) {
                        *headers = slot(stream).take();
                        with_plugin = false;
                    }
                }
                action
            })
            .await;
        if with_plugin {
            *headers = self.with_stream(index, |stream| slot(stream).take());
        }
        result
    }

    /// Returns what a callback left in the stream state; if the VM is gone (a trap), what
    /// was never handed over.
    fn take_back<T: Default>(
        &self,
        index: usize,
        unmoved: Option<T>,
        take: impl FnOnce(&mut StreamState) -> T,
    ) -> T {
        match unmoved {
            Some(value) => value,
            None => self.with_stream(index, take),
        }
    }

    /// `f` on plugin `index`'s stream state; the default when it has none (or its VM went).
    fn with_stream<T: Default>(&self, index: usize, f: impl FnOnce(&mut StreamState) -> T) -> T {
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
                    .map(|stream| f(stream))
                    .unwrap_or_default())
            })
            .unwrap_or_default()
    }

    /// One response body chunk through the plugins in reverse order (synchronous: called
    /// while the body streams). A plugin that pauses keeps buffering; at the end of the
    /// stream everything buffered is released. A trap fails the body (the stream is reset)
    /// whatever the failure policy: the head is sent, and what the plugin held back is lost.
    pub(super) fn response_body_chunk(
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
        if entry.holding_body && !entry.plugin.is_current(entry.vm) {
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

    pub(super) fn response_trailers(
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
    pub fn set_final_response(&mut self, status: u16, headers: Box<PseudoHeaderMap>) {
        self.final_status = Some(status);
        let _ = self.info.response_headers.set(headers);
    }

    /// Records the status that went downstream, for a run whose plugins read no response
    /// head from then on (see [`PluginRun::reads_response_head_later`]).
    pub fn set_final_status(&mut self, status: u16) {
        self.final_status = Some(status);
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
    *moved = vm
        .state()
        .streams
        .get_mut(&context)
        .map(|stream| take(stream));
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

/// What a plugin decided for a stream since the last look: a local reply, a reset, and
/// whether it resumed the direction looked at.
type Signals = (Option<LocalResponse>, bool, bool);

/// What the plugin decided for a stream since the last look (see [`Signals`]).
fn take_signals(vm: &mut crate::wasm::vm::Vm, context: u32, direction: Direction) -> Signals {
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
