//! `tp-retire`: a root context that is not done when the host retires it, and finishes
//! later through a callout and a tick — or never.
//!
//! Configuration: `{"cluster": "<cluster name>", "tag": "<text>", "finish": true|false}`
//! (`cluster` and `tag` required; otherwise a log line and `on_configure` returns false).
//!
//! Requests pass unchanged (no HTTP context behaviour).
//!
//! `on_done` of the root context (the host retires the plugin): dispatches
//! `GET /retire/<tag>/on-done` to the cluster (`:authority` the cluster, 5 s timeout) and
//! returns false. When that callout is answered (any answer), sets a 50 ms tick period.
//! On the first tick after that: stops ticking and dispatches `GET /retire/<tag>/tick`.
//! When that one is answered: with `finish` true calls `proxy_done()`; with `finish` false
//! does nothing more, so only the host's drain timeout ends the VM. Before `on_done` ticks
//! are off and nothing is called.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: None, step: Step::Serving })
    });
}}

#[derive(Clone, serde::Deserialize)]
struct Config {
    cluster: String,
    tag: String,
    #[serde(default)]
    finish: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Serving,
    /// `on_done` called; the first callout is on its way.
    Retiring,
    /// The first callout was answered; waiting for a tick.
    Ticking,
    /// The tick's callout is on its way.
    Finishing,
    Finished,
}

struct Root {
    config: Option<Config>,
    step: Step,
}

impl Root {
    fn call(&self, what: &str) {
        let Some(config) = &self.config else { return };
        let path = format!("/retire/{}/{what}", config.tag);
        let result = self.dispatch_http_call(
            &config.cluster,
            vec![
                (":method", "GET"),
                (":path", &path),
                (":authority", &config.cluster),
            ],
            None,
            vec![],
            Duration::from_secs(5),
        );
        if let Err(status) = result {
            let _ = hostcalls::log(
                LogLevel::Error,
                &format!("tp-retire: dispatch {path} failed: {status:?}"),
            );
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _: usize) {
        match self.step {
            Step::Retiring => {
                self.step = Step::Ticking;
                let _ = hostcalls::set_tick_period(Duration::from_millis(50));
            }
            Step::Finishing => {
                self.step = Step::Finished;
                if self.config.as_ref().is_some_and(|config| config.finish) {
                    let _ = hostcalls::log(LogLevel::Info, "tp-retire: calling proxy_done");
                    self.done();
                }
            }
            _ => {}
        }
    }

    fn on_done(&mut self) -> bool {
        if self.step == Step::Serving {
            self.step = Step::Retiring;
            self.call("on-done");
        }
        false
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Some(config);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(
                    LogLevel::Error,
                    &format!("tp-retire: bad configuration: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PassThrough))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn on_tick(&mut self) {
        if self.step == Step::Ticking {
            self.step = Step::Finishing;
            let _ = hostcalls::set_tick_period(Duration::ZERO);
            self.call("tick");
        }
    }
}

/// Requests pass unchanged.
struct PassThrough;

impl Context for PassThrough {}

impl HttpContext for PassThrough {}
