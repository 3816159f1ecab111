//! The proxy-wasm glue: configuration in the root context, one bucket check per request.

use std::rc::Rc;

use tollgate_sdk::proxy_wasm::hostcalls;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use tollgate_sdk::shared::{Decision, SharedData};

use crate::config::{self, KeySource, Limits, WhenMissing};
use crate::logic::{self, RequestFacts};

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root {
        limits: None,
        plugin: String::new(),
    })
}

struct Root {
    limits: Option<Rc<Limits>>,
    plugin: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.plugin =
            tollgate_sdk::property_string(&["plugin_name"]).unwrap_or_else(|| "rate-limit".into());
        let bytes = tollgate_sdk::config::plugin_configuration();
        self.limits =
            tollgate_sdk::config::report("rate-limit", config::parse(&bytes)).map(Rc::new);
        self.limits.is_some()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimit {
            limits: self.limits.clone()?,
            plugin: self.plugin.clone(),
            decision: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimit {
    limits: Rc<Limits>,
    plugin: String,
    decision: Option<Decision>,
}

impl Context for RateLimit {}

impl HttpContext for RateLimit {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only what the rules key on is read from the host (each read is a copy).
        let mut route = None;
        if self.limits.rules.routes().next().is_some() {
            route = tollgate_sdk::route::current_route_name();
        }
        let rules = self.limits.rules.get(route.as_deref());
        if route.is_none() && matches!(rules.key, KeySource::Route) {
            route = tollgate_sdk::route::current_route_name();
        }
        let consumer = match rules.key {
            KeySource::Consumer => tollgate_sdk::consumer::name(),
            _ => None,
        };
        let header = match &rules.key {
            KeySource::Header(name) => hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten(),
            _ => None,
        };
        let keyed_value_missing = match rules.key {
            KeySource::Consumer => consumer.as_deref().is_none_or(str::is_empty),
            KeySource::Header(_) => header.as_deref().is_none_or(str::is_empty),
            KeySource::Ip | KeySource::Route => false,
        };
        let ip = if matches!(rules.key, KeySource::Ip)
            || (rules.when_missing == WhenMissing::Ip && keyed_value_missing)
        {
            tollgate_sdk::client_ip()
        } else {
            None
        };
        let facts = RequestFacts {
            consumer: consumer.as_deref(),
            ip: ip.as_deref(),
            header: header.as_deref(),
            route: route.as_deref(),
        };
        let Some(target) = logic::target(rules, &self.plugin, &facts) else {
            return Action::Continue;
        };
        let decision = match target.plan.bucket.try_take(
            &SharedData,
            &target.key,
            tollgate_sdk::now_nanos(),
            1,
        ) {
            Ok(decision) => decision,
            Err(error) => {
                // Fail open: a limiter that cannot count must not take the API down.
                tollgate_sdk::log(
                    LogLevel::Warn,
                    &format!("rate-limit: {error}; request allowed"),
                );
                return Action::Continue;
            }
        };
        if decision.allowed {
            self.decision = Some(decision);
            return Action::Continue;
        }
        let (headers, body) = logic::deny_response(&decision, &target.plan.name);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(429, headers, Some(body.as_bytes()));
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(decision), true) = (&self.decision, self.limits.headers) {
            let mut digits = [0; 20];
            for (name, value) in logic::allow_headers(decision) {
                let value = tollgate_sdk::decimal(value, &mut digits);
                self.set_http_response_header(name, Some(value));
            }
        }
        Action::Continue
    }
}
