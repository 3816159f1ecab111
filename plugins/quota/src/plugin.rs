//! The proxy-wasm glue.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::{Action, LogLevel};
use tollgate_sdk::shared::SharedData;
use tollgate_sdk::Plugin;

use crate::config::{Quotas, RawConfig};
use crate::logic::{self, Verdict};

tollgate_sdk::plugin!(Quota);

/// The quotas of one configuration.
pub struct Quota {
    quotas: Quotas,
    /// The plugin's name (`plugin_name`), the prefix of its shared-data keys.
    plugin: String,
}

impl Plugin for Quota {
    const NAME: &'static str = "quota";
    type Config = RawConfig;
    type Request = Request;

    fn from_config(config: RawConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            quotas: config.validate()?,
            plugin: tollgate_sdk::plugin_name(Self::NAME),
        })
    }

    fn request(quota: &Rc<Self>, _context_id: u32) -> Request {
        Request {
            quota: quota.clone(),
            verdict: None,
        }
    }
}

/// The context of one request.
pub struct Request {
    quota: Rc<Quota>,
    verdict: Option<Verdict>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let rule = self.quota.quotas.routes.for_current_route();
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
        let Some(subject) = logic::subject(&self.quota.quotas, consumer.as_deref(), ip.as_deref())
        else {
            return Action::Continue;
        };
        let Some(plan) = self.quota.quotas.plans.get(&subject.plan) else {
            return Action::Continue;
        };
        let now_secs = tollgate_sdk::now_nanos() / 1_000_000_000;
        let windows = logic::windows(&self.quota.plugin, &subject, plan, now_secs);
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
        let (headers, body) = logic::deny_response(&self.quota.quotas.header, &verdict);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send_http_response(429, headers, Some(body.as_bytes()));
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(verdict) = &self.verdict {
            for (name, value) in logic::allow_headers(&self.quota.quotas.header, verdict) {
                self.set_http_response_header(&name, Some(&value));
            }
        }
        Action::Continue
    }
}
