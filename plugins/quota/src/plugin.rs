//! The proxy-wasm glue.

use std::rc::Rc;

use tollgate_sdk::config::ConfigError;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::{Action, LogLevel};
use tollgate_sdk::shared::SharedData;
use tollgate_sdk::{Callbacks, Plugin};

use crate::config::{Quotas, RawConfig};
use crate::logic::{self, Verdict};

tollgate_sdk::plugin!(Quota);
tollgate_sdk::layout!("layout.txt");

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
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS.and(Callbacks::RESPONSE_HEADERS);

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
            pending: Vec::new(),
        }
    }
}

/// The context of one request.
pub struct Request {
    quota: Rc<Quota>,
    verdict: Option<Verdict>,
    /// Global mode: the windows of the call waiting for the service's answer.
    pending: Vec<&'static str>,
}

impl Request {
    fn deny(&self, verdict: &Verdict) {
        let (headers, body) = logic::deny_response(&self.quota.quotas.header, verdict);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send_http_response(429, headers, Some(body.as_bytes()));
    }

    /// The rate limit service gave no usable answer: the failure mode decides.
    fn service_failed(&self, reason: &str) -> Action {
        match &self.quota.quotas.global {
            Some(global) => global.fail(&self.quota.plugin, reason, "quota_unavailable"),
            None => Action::Continue,
        }
    }
}

impl Context for Request {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let Some(global) = &self.quota.quotas.global else {
            return;
        };
        let names = std::mem::take(&mut self.pending);
        let verdict = global
            .response(status_code, response_size)
            .map(|response| logic::global_verdict(&names, &response));
        match verdict {
            Ok(Some(verdict)) if !verdict.allowed => self.deny(&verdict),
            Ok(verdict) => {
                self.verdict = verdict;
                self.resume_http_request();
            }
            Err(reason) => {
                if self.service_failed(&reason) == Action::Continue {
                    self.resume_http_request();
                }
            }
        }
    }
}

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
        if let Some(global) = &self.quota.quotas.global {
            // Counted by the rate limit service shared by every replica; the answer resumes
            // (or refuses) the request in `on_grpc_call_response`.
            let (names, descriptors) =
                logic::descriptors(&self.quota.plugin, &subject, plan, rule.cost);
            return match global.dispatch(descriptors) {
                Ok(_) => {
                    self.pending = names;
                    Action::Pause
                }
                Err(status) => self.service_failed(&format!("the call failed: {status:?}")),
            };
        }
        let now_secs = tollgate_sdk::now_secs();
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
        self.deny(&verdict);
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
