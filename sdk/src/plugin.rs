//! The one shape of a plugin: a type implementing [`Plugin`], a generic root context
//! [`Root`] that does the rest, and the [`plugin!`](crate::plugin!) entry point.
//!
//! A plugin names three things: its configuration as written (a serde type), what every
//! request of one configuration shares (the type implementing [`Plugin`], built from the
//! configuration by [`Plugin::from_config`], which checks what serde cannot), and the
//! context of one request (an [`HttpContext`]). [`Root<P>`] is the root context the host
//! talks to: in `on_configure` it reads the plugin configuration, parses it with
//! [`config::parse`] (errors name the field), builds the plugin and keeps it in an [`Rc`];
//! an invalid configuration is logged as `NAME: invalid configuration: field "...": ...`
//! and refused (`on_configure` returns `false`, so the host does not start the plugin).
//! Each request gets a context from [`Plugin::request`], holding a clone of that `Rc`.
//!
//! The hooks with defaults cover what only some plugins need: [`Plugin::on_vm_start`],
//! periodic work ([`Plugin::tick_period`] and [`Plugin::on_tick`]), the answers to the
//! root context's callouts ([`Plugin::on_http_call_response`]) and shared queues
//! ([`Plugin::on_queue_ready`]; register them in `from_config`, which runs in
//! `on_configure` and may call the host). Everything else is the standard proxy-wasm ABI,
//! so the module runs in Envoy as it does in Tollgate.
//!
//! [`Plugin::CALLBACKS`] names the request callbacks the plugin's request context
//! implements. `plugin!` writes it into the module as the custom section
//! `tollgate.callbacks`; Tollgate then never enters the others (they would only run the
//! proxy-wasm crate's defaults), while Envoy ignores the section and calls them all, with
//! the same outcome.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use serde::de::DeserializeOwned;

use crate::config::{self, ConfigError};

/// A plugin: what the requests of one configuration share. See the [module docs](self).
pub trait Plugin: Sized + 'static {
    /// The plugin's name, the prefix of its log lines
    /// (`key-auth: invalid configuration: ...`).
    const NAME: &'static str;

    /// The configuration as written (`config:` of the plugin in a Tollgate policy,
    /// `configuration` in Envoy), parsed with [`config::parse`]. Give it
    /// `#[serde(deny_unknown_fields)]` so that typos are errors.
    type Config: DeserializeOwned;

    /// The context of one HTTP request.
    type Request: HttpContext + 'static;

    /// The request callbacks [`Request`](Self::Request) implements: the rest are the
    /// proxy-wasm crate's defaults (continue; `on_done` returns `true`), which Tollgate then
    /// does not enter. The default, [`Callbacks::ALL`], is always right; a callback left
    /// out here is never called in Tollgate (Envoy still calls it), so name every one the
    /// request context or the root context overrides, `on_done` included.
    const CALLBACKS: Callbacks = Callbacks::ALL;

    /// The request callbacks this configuration's requests need, within
    /// [`CALLBACKS`](Self::CALLBACKS) (the default: all of those): a transformer without
    /// body rules reads no body. The root context tells Tollgate after each configuration
    /// (foreign function `tollgate.callbacks`), which then enters no other for the requests
    /// of this configuration; Envoy answers that it has no such function and calls them all.
    fn callbacks(&self) -> Callbacks {
        Self::CALLBACKS
    }

    /// Checks the parsed configuration beyond what serde can (errors name the field, with
    /// paths from the configuration root) and builds the plugin. Runs in `on_configure`:
    /// it may call the host (define metrics, register shared queues, read properties).
    fn from_config(config: Self::Config) -> Result<Self, ConfigError>;

    /// The context of a new request (`create_http_context`), sharing `plugin`.
    fn request(plugin: &Rc<Self>, context_id: u32) -> Self::Request;

    /// Once per VM, before its first configuration (`on_vm_start`, with the size of the VM
    /// configuration); `false` refuses the VM.
    fn on_vm_start(_vm_configuration_size: usize) -> bool {
        true
    }

    /// How often [`on_tick`](Self::on_tick) runs while this configuration is in force;
    /// `None` (the default) for never.
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic work, every [`tick_period`](Self::tick_period).
    fn on_tick(&self) {}

    /// A shared queue this VM registered has items (`on_queue_ready`).
    fn on_queue_ready(&self, _queue_id: u32) {}

    /// The answer to a callout the root context sent (from `on_tick`, say): read it with
    /// [`callout::read_response`](crate::callout::read_response).
    fn on_http_call_response(
        &self,
        _token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
    }
}

/// The foreign function that tells Tollgate which callbacks a configuration needs.
const CALLBACKS_FUNCTION: &str = "tollgate.callbacks";

/// A set of request callbacks (see [`Plugin::CALLBACKS`]), one bit each in the byte
/// `plugin!` writes into the module's `tollgate.callbacks` custom section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callbacks(u8);

impl Callbacks {
    /// `on_http_request_headers`
    pub const REQUEST_HEADERS: Self = Self(1);
    /// `on_http_request_body`
    pub const REQUEST_BODY: Self = Self(1 << 1);
    /// `on_http_request_trailers`
    pub const REQUEST_TRAILERS: Self = Self(1 << 2);
    /// `on_http_response_headers`
    pub const RESPONSE_HEADERS: Self = Self(1 << 3);
    /// `on_http_response_body`
    pub const RESPONSE_BODY: Self = Self(1 << 4);
    /// `on_http_response_trailers`
    pub const RESPONSE_TRAILERS: Self = Self(1 << 5);
    /// `on_log`
    pub const LOG: Self = Self(1 << 6);
    /// `on_done`, of request contexts and of the root context
    pub const DONE: Self = Self(1 << 7);
    /// Every callback: what a module without the section gets.
    pub const ALL: Self = Self(u8::MAX);
    /// No request callback: a configuration that changes nothing.
    pub const NONE: Self = Self(0);

    /// Both sets: `Callbacks::REQUEST_HEADERS.and(Callbacks::RESPONSE_HEADERS)`.
    pub const fn and(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every callback of `other` is in the set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The byte of the `tollgate.callbacks` section.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// The root context of plugin `P`: loads the configuration, keeps the plugin, creates the
/// request contexts and passes the hooks on. See the [module docs](self).
pub struct Root<P: Plugin> {
    /// `None` before the first configuration, and after one that was refused.
    plugin: Option<Rc<P>>,
    /// The callbacks last told to the host: [`Plugin::CALLBACKS`] (the module's section)
    /// until a configuration needs fewer.
    told: Callbacks,
}

impl<P: Plugin> Root<P> {
    /// A root context without configuration, as the host creates it at start-up.
    pub fn new() -> Self {
        Self {
            plugin: None,
            told: P::CALLBACKS,
        }
    }

    /// [`Root::new`] for `proxy_wasm::set_root_context` and the native benches.
    pub fn boxed() -> Box<dyn RootContext> {
        Box::new(Self::new())
    }

    /// The plugin of the configuration in force.
    pub fn plugin(&self) -> Option<&Rc<P>> {
        self.plugin.as_ref()
    }

    fn tick_period(&self) -> Option<Duration> {
        self.plugin.as_ref().and_then(|plugin| plugin.tick_period())
    }
}

impl<P: Plugin> Default for Root<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Plugin> Context for Root<P> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        if let Some(plugin) = &self.plugin {
            plugin.on_http_call_response(token_id, num_headers, body_size, num_trailers);
        }
    }
}

impl<P: Plugin> RootContext for Root<P> {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        P::on_vm_start(vm_configuration_size)
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let was_ticking = self.tick_period().is_some();
        let loaded =
            config::parse::<P::Config>(&config::plugin_configuration()).and_then(P::from_config);
        self.plugin = config::report(P::NAME, loaded).map(Rc::new);
        if let Some(plugin) = &self.plugin {
            let needed = plugin.callbacks();
            if needed != self.told {
                // Envoy has no such function (NotFound) and calls every callback.
                let _ =
                    hostcalls::call_foreign_function(CALLBACKS_FUNCTION, Some(&[needed.bits()]));
                self.told = needed;
            }
        }
        match self.tick_period() {
            Some(period) => {
                let _ = hostcalls::set_tick_period(period);
            }
            // The configuration before ticked, this one does not: stop the ticks.
            None if was_ticking => {
                let _ = hostcalls::set_tick_period(Duration::ZERO);
            }
            None => {}
        }
        self.plugin.is_some()
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            plugin.on_tick();
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(plugin) = &self.plugin {
            plugin.on_queue_ready(queue_id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.as_ref()?;
        Some(Box::new(P::request(plugin, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The entry point of a plugin module.
///
/// `tollgate_sdk::plugin!(KeyAuth)` defines `pub fn root_context() -> Box<dyn RootContext>`
/// (a fresh [`Root<KeyAuth>`](Root), also what native benches drive) and, on wasm32, the
/// module's `_initialize`: log level `Info`, and a `root_context()` for every plugin the
/// host configures; and the `tollgate.callbacks` section (see [`Plugin::CALLBACKS`]). A
/// plugin with a root context of its own writes `tollgate_sdk::plugin!(root = root_context)`,
/// naming a function that returns it; its module has no section, so every callback runs.
#[macro_export]
macro_rules! plugin {
    (root = $root:path) => {
        #[cfg(target_arch = "wasm32")]
        $crate::proxy_wasm::main! {{
            $crate::proxy_wasm::set_log_level($crate::proxy_wasm::types::LogLevel::Info);
            $crate::proxy_wasm::set_root_context(|_| $root());
        }}
    };
    ($plugin:ty) => {
        /// A fresh root context: what the host gets at start-up, and what the native
        /// benches drive.
        pub fn root_context() -> ::std::boxed::Box<dyn $crate::proxy_wasm::traits::RootContext> {
            $crate::Root::<$plugin>::boxed()
        }

        // The request callbacks the plugin implements, for the host (`Plugin::CALLBACKS`).
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[link_section = "tollgate.callbacks"]
        static TOLLGATE_CALLBACKS: [u8; 1] = [<$plugin as $crate::Plugin>::CALLBACKS.bits()];

        $crate::plugin!(root = root_context);
    };
}

/// Names the functions the gateway places first when it compiles this module: `file` (next
/// to the crate's `Cargo.toml`) holds one function name per line, as bench/layout.sh writes
/// it from a profile of the gateway running the plugin. The code a plugin's VMs run then lies
/// together, and the rest of its compiled code is never mapped into the gateway's memory. The
/// list goes into the module's `tollgate.layout` custom section, which other hosts ignore; a
/// stale list only places fewer functions first.
///
/// ```ignore
/// tollgate_sdk::layout!("layout.txt");
/// ```
#[macro_export]
macro_rules! layout {
    ($file:literal) => {
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[link_section = "tollgate.layout"]
        static TOLLGATE_LAYOUT: [u8; include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/",
            $file
        ))
        .len()] = *include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $file));
    };
}
