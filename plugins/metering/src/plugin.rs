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
use tollgate_sdk::headers;
use tollgate_sdk::metrics;
use tollgate_sdk::proxy_wasm::hostcalls;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use tollgate_sdk::usage::UsageRecord;

use crate::config::{self, Config};
use crate::logic::{self, Delivery, Observed, Outcome, Series, SeriesLimiter};

/// The header that carries a batch's key, for the billing service to drop repeats by.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

// Not the SDK's `Root`, which builds a new plugin for each configuration: this root context
// keeps its backlog across configurations (a new one must not drop records not delivered
// yet), answers the billing callouts itself, counts the requests still to log, and holds
// the host's `on_done` until the last batch is answered.
tollgate_sdk::plugin!(root = root_context);
tollgate_sdk::layout!("layout.txt");

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root { state: None })
}

const SENT: &str = "metering.records_sent";
const DROPPED: &str = "metering.records_dropped";
const FAILED: &str = "metering.batches_failed";
const BACKLOG: &str = "metering.backlog";

/// The id of metric `name`, defined with the host the first time.
fn metric_id(metrics: &mut HashMap<String, u32>, kind: MetricType, name: &str) -> Option<u32> {
    if let Some(id) = metrics.get(name) {
        return Some(*id);
    }
    let id = metrics::define(kind, name)?;
    metrics.insert(name.to_owned(), id);
    Some(id)
}

// Slots of `SeriesMetrics::ids`; the status counters (`0xx` .. `5xx`) come last.
const REQUESTS: usize = 0;
const REQUEST_BYTES: usize = 1;
const RESPONSE_BYTES: usize = 2;
const LATENCY_MS: usize = 3;
const STATUS: usize = 4;
const SERIES_METRICS: usize = STATUS + 6;

/// `"2xx"` → 2; anything unexpected → 0 (`0xx`).
fn status_class_index(class: &str) -> usize {
    match class.as_bytes().first() {
        Some(digit @ b'1'..=b'5') => usize::from(digit - b'0'),
        _ => 0,
    }
}

/// The metric ids of one (consumer, route) series, each defined when first needed.
struct SeriesMetrics {
    /// Its consumer and route (consumer `other` once the limit is reached).
    series: Series,
    ids: [Option<u32>; SERIES_METRICS],
}

impl SeriesMetrics {
    /// The id in `slot`, defining the metric (by its full name) the first time.
    /// `status_class` names the metric of a status slot.
    fn id(
        &mut self,
        metrics: &mut HashMap<String, u32>,
        slot: usize,
        kind: MetricType,
        status_class: &str,
    ) -> Option<u32> {
        if let Some(id) = self.ids[slot] {
            return Some(id);
        }
        let series = &self.series;
        let name = match slot {
            REQUESTS => series.metric("usage_requests"),
            REQUEST_BYTES => series.metric("usage_request_bytes"),
            RESPONSE_BYTES => series.metric("usage_response_bytes"),
            LATENCY_MS => series.metric("usage_latency_ms"),
            _ => series
                .metric("usage_responses")
                .tag("status_class", status_class),
        };
        self.ids[slot] = metric_id(metrics, kind, &name.build());
        self.ids[slot]
    }
}

struct State {
    config: Config,
    delivery: Delivery,
    series: SeriesLimiter,
    metrics: HashMap<String, u32>,
    /// consumer → route → its series' metrics; at most `2 × max_metric_series + 16`
    /// entries (`cached_series`), beyond which a series' ids are looked up by name again.
    series_metrics: HashMap<String, HashMap<String, SeriesMetrics>>,
    cached_series: usize,
    /// Requests whose record is still to come (`on_log`).
    open_requests: usize,
    /// The host retired the plugin: flush without waiting for ticks, then say `done`.
    closing: bool,
}

impl State {
    fn metric(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        metric_id(&mut self.metrics, kind, name)
    }

    fn add(&mut self, name: &str, delta: u64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.metric(MetricType::Counter, name) {
            metrics::increment(id, delta as i64);
        }
    }

    fn set_backlog_gauge(&mut self) {
        let len = self.delivery.waiting() as u64;
        if let Some(id) = self.metric(MetricType::Gauge, BACKLOG) {
            metrics::record(id, len);
        }
    }

    fn new_series(&mut self, record: &UsageRecord) -> SeriesMetrics {
        SeriesMetrics {
            series: self.series.series(record, self.config.max_metric_series),
            ids: [None; SERIES_METRICS],
        }
    }

    fn observe(&mut self, record: UsageRecord) {
        if self.config.metrics {
            // A known series updates its metrics by id: no metric name is built per request.
            let known = self
                .series_metrics
                .get(&record.consumer)
                .is_some_and(|routes| routes.contains_key(&record.route));
            let mut uncached = None;
            if !known {
                let series = self.new_series(&record);
                if self.cached_series < self.config.max_metric_series.saturating_mul(2) + 16 {
                    self.cached_series += 1;
                    self.series_metrics
                        .entry(record.consumer.clone())
                        .or_default()
                        .insert(record.route.clone(), series);
                } else {
                    uncached = Some(series);
                }
            }
            let series = match uncached.as_mut() {
                Some(series) => series,
                None => self
                    .series_metrics
                    .get_mut(&record.consumer)
                    .and_then(|routes| routes.get_mut(&record.route))
                    .expect("cached above"),
            };
            let status_slot = STATUS + status_class_index(&record.status_class);
            let metrics = &mut self.metrics;
            let counters = [
                (REQUESTS, record.requests),
                (status_slot, record.requests),
                (REQUEST_BYTES, record.request_bytes),
                (RESPONSE_BYTES, record.response_bytes),
            ];
            // A counter is defined with its first non-zero increment, as it always was.
            for (slot, delta) in counters {
                if delta == 0 {
                    continue;
                }
                let id = series.id(metrics, slot, MetricType::Counter, &record.status_class);
                if let Some(id) = id {
                    metrics::increment(id, delta as i64);
                }
            }
            let latency = series.id(metrics, LATENCY_MS, MetricType::Histogram, "");
            if let Some(id) = latency {
                metrics::record(id, record.latency_ms);
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
                    series_metrics: HashMap::new(),
                    cached_series: 0,
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
    headers::value(map, name)?.trim().parse().ok()
}

impl Context for Meter {}

impl HttpContext for Meter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let method = headers::request(":method").unwrap_or_default();
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
        let record = logic::record(std::mem::take(observed));
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
