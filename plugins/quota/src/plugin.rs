//! The proxy-wasm glue.

use std::rc::Rc;

use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};
use tollgate_sdk::shared::SharedData;

use crate::config::{self, Quotas};
use crate::logic::{self, Verdict};

#[cfg(target_arch = "wasm32")]
tollgate_sdk::proxy_wasm::main! {{
    tollgate_sdk::proxy_wasm::set_log_level(tollgate_sdk::proxy_wasm::types::LogLevel::Info);
    tollgate_sdk::proxy_wasm::set_root_context(|_| root_context());
}}

/// A fresh root context: what the host gets at start-up, and what the native benches
/// (`plugins/bench`) drive.
pub fn root_context() -> Box<dyn RootContext> {
    Box::new(Root {
        quotas: None,
        plugin: String::new(),
    })
}

struct Root {
    quotas: Option<Rc<Quotas>>,
    plugin: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.plugin =
            tollgate_sdk::property_string(&["plugin_name"]).unwrap_or_else(|| "quota".into());
        let bytes = tollgate_sdk::config::plugin_configuration();
        self.quotas = tollgate_sdk::config::report("quota", config::parse(&bytes)).map(Rc::new);
        self.quotas.is_some()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Quota {
            quotas: self.quotas.clone()?,
            plugin: self.plugin.clone(),
            verdict: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Quota {
    quotas: Rc<Quotas>,
    plugin: String,
    verdict: Option<Verdict>,
}

impl Context for Quota {}

impl HttpContext for Quota {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let rule = self.quotas.routes.for_current_route();
        if !rule.enabled {
            return Action::Continue;
        }
        let consumer = tollgate_sdk::consumer::name();
        // The address counts only for anonymous requests: read it only then.
        let ip = if consumer.as_deref().is_none_or(str::is_empty) {
            tollgate_sdk::client_ip()
        } else {
            None
        };
        let Some(subject) = logic::subject(&self.quotas, consumer.as_deref(), ip.as_deref()) else {
            return Action::Continue;
        };
        let Some(plan) = self.quotas.plans.get(&subject.plan) else {
            return Action::Continue;
        };
        let now_secs = tollgate_sdk::now_nanos() / 1_000_000_000;
        let windows = logic::windows(&self.plugin, &subject, plan, now_secs);
        let verdict = match logic::check(&SharedData, &windows, rule.cost) {
            Ok(Some(verdict)) => verdict,
            Ok(None) => return Action::Continue,
            Err(error) => {
                tollgate_sdk::log(LogLevel::Warn, &format!("quota: {error}; request allowed"));
                return Action::Continue;
            }
        };
        if verdict.allowed {
            self.verdict = Some(verdict);
            return Action::Continue;
        }
        let (headers, body) = logic::deny_response(&self.quotas.header, &verdict);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send_http_response(429, headers, Some(body.as_bytes()));
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(verdict) = &self.verdict {
            for (name, value) in logic::allow_headers(&self.quotas.header, verdict) {
                self.set_http_response_header(&name, Some(&value));
            }
        }
        Action::Continue
    }
}
