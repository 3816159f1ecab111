//! `tp-metrics`: plugin-defined metrics. No configuration.
//!
//! `on_vm_start` defines a counter `tp_requests_total`, a gauge `tp_inflight` and a histogram
//! `tp_body_size`. Per request: `on_http_request_headers` increments `tp_requests_total` by 1
//! and `tp_inflight` by 1; `on_http_request_body` sums the body bytes it is shown (it never
//! pauses); `on_log` records that sum in `tp_body_size` (0 for a request without a body) and
//! decrements `tp_inflight` by 1. Response headers get `x-tp-requests: <get_metric of
//! tp_requests_total>`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { ids: None }) });
}}

#[derive(Clone, Copy)]
struct Ids {
    requests: u32,
    inflight: u32,
    body_size: u32,
}

struct Root {
    ids: Option<Ids>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.ids = Some(Ids {
            requests: hostcalls::define_metric(MetricType::Counter, "tp_requests_total").unwrap(),
            inflight: hostcalls::define_metric(MetricType::Gauge, "tp_inflight").unwrap(),
            body_size: hostcalls::define_metric(MetricType::Histogram, "tp_body_size").unwrap(),
        });
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Metrics {
            ids: self.ids?,
            body: 0,
            counted: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Metrics {
    ids: Ids,
    body: u64,
    counted: bool,
}

impl Context for Metrics {}

impl HttpContext for Metrics {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        hostcalls::increment_metric(self.ids.requests, 1).unwrap();
        hostcalls::increment_metric(self.ids.inflight, 1).unwrap();
        self.counted = true;
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.body += body_size as u64;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let requests = hostcalls::get_metric(self.ids.requests).unwrap();
        self.add_http_response_header("x-tp-requests", &requests.to_string());
        Action::Continue
    }

    fn on_log(&mut self) {
        hostcalls::record_metric(self.ids.body_size, self.body).unwrap();
        if self.counted {
            hostcalls::increment_metric(self.ids.inflight, -1).unwrap();
        }
    }
}
