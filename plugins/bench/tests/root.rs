//! The SDK's generic root context (`tollgate_sdk::Root`) driven through the proxy-wasm ABI
//! by the in-memory host: it loads and checks the configuration the one way, refuses a bad
//! one with a log line naming the field, shares the plugin with every request, and passes
//! the tick hooks on.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use plugin_bench::{with_host, Host};
use serde::Deserialize;
use tollgate_sdk::config::{ensure, ConfigError};
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tollgate_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};
use tollgate_sdk::{Plugin, Root};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    header: String,
    #[serde(default)]
    tick_ms: u64,
}

/// Sets `header` on every request to the id of the request's context.
struct Tagger {
    header: String,
    tick_period: Option<Duration>,
    ticks: Cell<u32>,
}

impl Plugin for Tagger {
    const NAME: &'static str = "tagger";
    type Config = Config;
    type Request = Request;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        ensure(!config.header.is_empty(), "header", "must not be empty")?;
        Ok(Self {
            header: config.header,
            tick_period: (config.tick_ms > 0).then(|| Duration::from_millis(config.tick_ms)),
            ticks: Cell::new(0),
        })
    }

    fn request(plugin: &Rc<Self>, context_id: u32) -> Request {
        Request {
            plugin: plugin.clone(),
            context_id,
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        self.tick_period
    }

    fn on_tick(&self) {
        self.ticks.set(self.ticks.get() + 1);
    }
}

struct Request {
    plugin: Rc<Tagger>,
    context_id: u32,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let id = self.context_id.to_string();
        self.set_http_request_header(&self.plugin.header, Some(&id));
        Action::Continue
    }
}

/// Gives the host `configuration` and calls `on_configure`, as a host loading the plugin.
fn configure(root: &mut Root<Tagger>, configuration: &str) -> bool {
    with_host(|host| {
        *host = Host {
            keep_logs: true,
            ..Host::default()
        };
        host.plugin_configuration = configuration.as_bytes().to_vec();
    });
    root.on_configure(configuration.len())
}

fn logs() -> Vec<(LogLevel, String)> {
    with_host(|host| std::mem::take(&mut host.logs))
}

#[test]
fn a_valid_configuration_is_shared_by_every_request() {
    let mut root = Root::<Tagger>::new();
    assert!(root.on_vm_start(0));
    assert_eq!(root.get_type(), Some(ContextType::HttpContext));
    assert!(
        root.create_http_context(2).is_none(),
        "no configuration yet"
    );

    assert!(configure(&mut root, r#"{"header": "x-context"}"#));
    assert!(logs().is_empty());
    let mut first = root.create_http_context(2).expect("a request context");
    let mut second = root.create_http_context(3).expect("a request context");
    let plugin = root.plugin().expect("the plugin");
    assert_eq!(
        Rc::strong_count(plugin),
        3,
        "one plugin, shared by both requests"
    );

    assert_eq!(first.on_http_request_headers(0, true), Action::Continue);
    let headers = with_host(|host| std::mem::take(&mut host.request_headers));
    assert_eq!(headers, [("x-context".to_owned(), "2".to_owned())]);
    second.on_http_request_headers(0, true);
    let headers = with_host(|host| std::mem::take(&mut host.request_headers));
    assert_eq!(headers, [("x-context".to_owned(), "3".to_owned())]);
}

#[test]
fn an_invalid_configuration_is_refused_with_the_field_named() {
    let mut root = Root::<Tagger>::new();
    for (configuration, line) in [
        (
            r#"{"header": ""}"#,
            "tagger: invalid configuration: field \"header\": must not be empty",
        ),
        (
            r#"{"header": "x", "tick_ms": "soon"}"#,
            "tagger: invalid configuration: field \"tick_ms\": invalid type: string \"soon\", expected u64",
        ),
        ("", "tagger: invalid configuration: configuration is required"),
    ] {
        assert!(!configure(&mut root, configuration), "{configuration}");
        assert_eq!(logs(), [(LogLevel::Error, line.to_owned())]);
        assert!(root.create_http_context(2).is_none());
    }

    // A refused configuration after a good one leaves no plugin to serve with.
    assert!(configure(&mut root, r#"{"header": "x-context"}"#));
    assert!(!configure(
        &mut root,
        r#"{"header": "x-context", "colour": 1}"#
    ));
    assert!(logs()[0]
        .1
        .contains("field \"colour\": unknown field `colour`"));
    assert!(root.plugin().is_none());
}

#[test]
fn ticks_follow_the_configuration_in_force() {
    let mut root = Root::<Tagger>::new();
    assert!(configure(&mut root, r#"{"header": "x"}"#));
    assert_eq!(
        with_host(|host| host.tick_period_ms),
        None,
        "no ticks asked for"
    );

    assert!(configure(&mut root, r#"{"header": "x", "tick_ms": 250}"#));
    assert_eq!(with_host(|host| host.tick_period_ms), Some(250));
    root.on_tick();
    root.on_tick();
    assert_eq!(root.plugin().expect("the plugin").ticks.get(), 2);

    // A configuration without ticks stops them.
    with_host(|host| host.tick_period_ms = None);
    let configuration = r#"{"header": "x"}"#;
    with_host(|host| host.plugin_configuration = configuration.as_bytes().to_vec());
    assert!(root.on_configure(configuration.len()));
    assert_eq!(with_host(|host| host.tick_period_ms), Some(0));
}
