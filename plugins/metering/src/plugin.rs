//! The proxy-wasm glue: the root context owns the backlog and flushes it on ticks; each
//! request's context observes it and hands a record over in `on_log`. When the host retires
//! the plugin (`on_done`: shutdown, a module swap, a policy reload) the root context flushes
//! everything left — the records of requests still in flight too — and calls `done()` once
//! the last batch is answered.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tollgate_sdk::callout::{read_response, HttpCall};
use tollgate_sdk::proxy_wasm::hostcalls;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use tollgate_sdk::usage::UsageRecord;

use crate::config::{self, Config};
use crate::logic::{self, Delivery, Observed, Outcome, SeriesLimiter};

/// The header that carries a batch's key, for the billing service to drop repeats by.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root { state: None })
}

const SENT: &str = "metering.records_sent";
const DROPPED: &str = "metering.records_dropped";
const FAILED: &str = "metering.batches_failed";
const BACKLOG: &str = "metering.backlog";

struct State {
    config: Config,
    delivery: Delivery,
    series: SeriesLimiter,
    metrics: HashMap<String, u32>,
    /// Requests whose record is still to come (`on_log`).
    open_requests: usize,
    /// The host retired the plugin: flush without waiting for ticks, then say `done`.
    closing: bool,
}

impl State {
    fn metric(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.metrics.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        self.metrics.insert(name.to_owned(), id);
        Some(id)
    }

    fn add(&mut self, name: &str, delta: u64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.metric(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, delta as i64);
        }
    }

    fn set_backlog_gauge(&mut self) {
        let len = self.delivery.waiting() as u64;
        if let Some(id) = self.metric(MetricType::Gauge, BACKLOG) {
            let _ = hostcalls::record_metric(id, len);
        }
    }

    fn observe(&mut self, record: UsageRecord) {
        if self.config.metrics {
            let series = self.series.name(&record, self.config.max_metric_series);
            self.add(&format!("{series}.requests"), record.requests);
            self.add(
                &format!("{series}.status.{}", record.status_class),
                record.requests,
            );
            self.add(&format!("{series}.request_bytes"), record.request_bytes);
            self.add(&format!("{series}.response_bytes"), record.response_bytes);
            if let Some(id) = self.metric(MetricType::Histogram, &format!("{series}.latency_ms")) {
                let _ = hostcalls::record_metric(id, record.latency_ms);
            }
        }
        let dropped = self.delivery.backlog.push(record);
        self.add(DROPPED, dropped);
    }

    /// Retired, and every record is delivered: nothing is left for this VM to do.
    fn finished(&self) -> bool {
        self.closing && self.open_requests == 0 && self.delivery.is_idle()
    }

    /// Sends the next batch if none is in flight.
    fn flush(&mut self) {
        let Some(batch) = self.delivery.next_batch(self.config.max_batch) else {
            self.set_backlog_gauge();
            return;
        };
        let authority = self
            .config
            .authority
            .clone()
            .unwrap_or_else(|| self.config.billing_cluster.clone());
        let call = HttpCall::post(&authority, &self.config.path)
            .header("content-type", "application/json")
            .header(IDEMPOTENCY_KEY, &batch.key)
            .body(logic::batch_body(&batch))
            .timeout(Duration::from_millis(self.config.timeout_ms));
        match call.dispatch(&self.config.billing_cluster) {
            Ok(token) => self.delivery.dispatched(token, batch),
            Err(status) => {
                tollgate_sdk::log(
                    LogLevel::Warn,
                    &format!(
                        "metering: cannot call cluster {:?} ({status:?}); {} records kept for the next tick",
                        self.config.billing_cluster,
                        batch.records.len()
                    ),
                );
                self.delivery.not_dispatched(batch);
                self.add(FAILED, 1);
            }
        }
        self.set_backlog_gauge();
    }
}

struct Root {
    state: Option<Rc<RefCell<State>>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(state) = &self.state else { return };
        let mut state = state.borrow_mut();
        let response = read_response(num_headers, body_size);
        match state.delivery.answered(token, response.status) {
            Outcome::Delivered(count) => {
                state.add(SENT, count as u64);
                // More waiting than one batch, or retired: keep going without waiting for
                // the next tick.
                if state.closing || state.delivery.backlog.len() >= state.config.max_batch {
                    state.flush();
                }
            }
            Outcome::Retrying => {
                tollgate_sdk::log(
                    LogLevel::Warn,
                    &format!(
                        "metering: billing answered {} ; batch kept for the next tick",
                        response.status
                    ),
                );
                state.add(FAILED, 1);
            }
            Outcome::Unknown => {}
        }
        state.set_backlog_gauge();
        if state.finished() {
            drop(state);
            self.done();
        }
    }

    /// Retired by the host: done now if nothing waits, else once the last batch is answered
    /// (failed batches are retried on ticks meanwhile, as usual).
    fn on_done(&mut self) -> bool {
        let Some(state) = &self.state else {
            return true;
        };
        let mut state = state.borrow_mut();
        state.closing = true;
        state.flush();
        state.finished()
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = tollgate_sdk::config::plugin_configuration();
        let Some(config) = tollgate_sdk::config::report("metering", config::parse(&bytes)) else {
            return false;
        };
        let _ = hostcalls::set_tick_period(Duration::from_millis(config.flush_interval_ms));
        match &self.state {
            // A new configuration keeps the records not delivered yet.
            Some(state) => state.borrow_mut().config = config,
            None => {
                let mut state = State {
                    delivery: Delivery::new(config.max_backlog, logic::random_id()),
                    config,
                    series: SeriesLimiter::default(),
                    metrics: HashMap::new(),
                    open_requests: 0,
                    closing: false,
                };
                for name in [SENT, DROPPED, FAILED] {
                    state.metric(MetricType::Counter, name);
                }
                state.set_backlog_gauge();
                self.state = Some(Rc::new(RefCell::new(state)));
            }
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = &self.state else { return };
        let mut state = state.borrow_mut();
        state.flush();
        if state.finished() {
            drop(state);
            self.done();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        state.borrow_mut().open_requests += 1;
        Some(Box::new(Meter {
            state,
            observed: Observed::default(),
            logged: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Meter {
    state: Rc<RefCell<State>>,
    observed: Observed,
    /// The record was handed over (`on_log` runs once; `Drop` covers a context that ends
    /// without it).
    logged: bool,
}

impl Drop for Meter {
    fn drop(&mut self) {
        if !self.logged {
            if let Ok(mut state) = self.state.try_borrow_mut() {
                state.open_requests -= 1;
            }
        }
    }
}

fn header_u64(map: MapType, name: &str) -> Option<u64> {
    hostcalls::get_map_value(map, name)
        .ok()
        .flatten()?
        .trim()
        .parse()
        .ok()
}

impl Context for Meter {}

impl HttpContext for Meter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let observed = &mut self.observed;
        observed.start_nanos = tollgate_sdk::property_u64(&["request", "time"])
            .unwrap_or_else(tollgate_sdk::now_nanos);
        observed.method = method;
        observed.route = tollgate_sdk::route::current_route_name();
        observed.consumer = tollgate_sdk::consumer::name();
        observed.request_bytes =
            header_u64(MapType::HttpRequestHeaders, "content-length").unwrap_or(0);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.observed.status = header_u64(MapType::HttpResponseHeaders, ":status").unwrap_or(0);
        self.observed.response_bytes =
            header_u64(MapType::HttpResponseHeaders, "content-length").unwrap_or(0);
        Action::Continue
    }

    fn on_log(&mut self) {
        let observed = &mut self.observed;
        observed.end_nanos = tollgate_sdk::now_nanos();
        if observed.start_nanos == 0 {
            observed.start_nanos = observed.end_nanos;
        }
        if let Some(status) = tollgate_sdk::property_u64(&["response", "code"]) {
            observed.status = status;
        }
        if let Some(size) = tollgate_sdk::property_u64(&["request", "size"]) {
            observed.request_bytes = size;
        }
        if let Some(size) = tollgate_sdk::property_u64(&["response", "size"]) {
            observed.response_bytes = size;
        }
        if observed.consumer.is_none() {
            observed.consumer = tollgate_sdk::consumer::name();
        }
        if observed.route.is_none() {
            observed.route = tollgate_sdk::route::current_route_name();
        }
        // Answered by an earlier plugin (401, 429): the request phase never reached us.
        if observed.method.is_empty() {
            observed.method =
                tollgate_sdk::property_string(&["request", "method"]).unwrap_or_default();
        }
        let record = logic::record(observed);
        let mut state = self.state.borrow_mut();
        state.observe(record);
        self.logged = true;
        state.open_requests -= 1;
        // Retired: this record is among the last, send it now rather than at the next tick
        // (the root context says `done` once it is answered).
        if state.closing {
            state.flush();
        }
    }
}
