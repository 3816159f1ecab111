//! `tp-singleton`: one module in two roles, chosen by the VM configuration
//! `{"role": "singleton"}` or `{"role": "route"}`: a singleton that aggregates what route
//! plugins of the same `vm_id` enqueue, and the route plugin that enqueues and reports.
//! Shared values are decimal ASCII under the keys named below.
//!
//! Singleton role (plugin configuration `{"cluster": "<name>", "grpc_cluster": "<name>",
//! "tick_ms": <n>, "trap_at_tick": <n>}`; `cluster` required, `grpc_cluster` optional,
//! `tick_ms` 50 by default, `trap_at_tick` none by default):
//! - `on_vm_start`: adds 1 to `sg-starts`; the new value is this VM's number `<vm>`.
//! - `on_configure`: registers the shared queue `sg-queue` and sets the tick period.
//! - `on_tick`: adds 1 to `sg-ticks`. On this VM's first tick it dispatches
//!   `GET /singleton/tick/<vm>` to `cluster` (`:authority` the cluster, 5 s); its answer's
//!   `:status` goes to `sg-http-status`. With `grpc_cluster`, the same tick also calls
//!   `tollgate.test.Singleton/Tick` there with the message `tick` (5 s); the call's status
//!   goes to `sg-grpc-status`. When `sg-ticks` reaches `trap_at_tick` and `sg-trapped` is
//!   not set, it sets `sg-trapped` and traps (a panic), once per process.
//! - `on_queue_ready`: dequeues until the queue is empty; adds the number of items to
//!   `sg-dequeued` and their values (decimal) to `sg-sum`.
//! - `on_done`: sets `sg-done-<vm>` to the current `sg-starts`, dispatches
//!   `GET /singleton/on-done/<vm>?starts=<sg-starts>` to `cluster` and returns false; it
//!   calls `proxy_done` when that callout is answered (any answer).
//! - An HTTP context (which a singleton should never get) adds `sg-in-chain` and answers
//!   with response header `x-sg-singleton: invoked`.
//!
//! Route role (no plugin configuration): a request with header `x-sg-enqueue: <n>`
//! resolves `sg-queue` (vm_id `""`: its own) and enqueues `<n>`; when that fails the
//! response gets `x-sg-enqueue-failed: <Status>`. Every response gets `x-sg-starts`,
//! `x-sg-ticks`, `x-sg-dequeued`, `x-sg-sum`, `x-sg-http-status`, `x-sg-grpc-status`,
//! `x-sg-trapped`, `x-sg-in-chain` and `x-sg-done-1` (`0`, or `-` for a status that is
//! missing).

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { role: Role::Route, vm: 0, config: None, ticks: 0, done_token: None })
    });
}}

const QUEUE: &str = "sg-queue";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Singleton,
    Route,
}

#[derive(serde::Deserialize)]
struct VmConfig {
    role: String,
}

#[derive(serde::Deserialize)]
struct Config {
    cluster: String,
    #[serde(default)]
    grpc_cluster: Option<String>,
    #[serde(default = "default_tick_ms")]
    tick_ms: u64,
    #[serde(default)]
    trap_at_tick: Option<u64>,
}

fn default_tick_ms() -> u64 {
    50
}

fn read(key: &str) -> Option<u64> {
    let (value, _) = hostcalls::get_shared_data(key).ok()?;
    String::from_utf8(value?).ok()?.parse().ok()
}

fn set(key: &str, value: u64) {
    let _ = hostcalls::set_shared_data(key, Some(value.to_string().as_bytes()), None);
}

/// Adds `delta` to a shared counter (compare-and-swap, bounded retries); the new value.
fn add(key: &str, delta: u64) -> u64 {
    for _ in 0..10_000 {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let current: u64 = value
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let next = current + delta;
        match hostcalls::set_shared_data(key, Some(next.to_string().as_bytes()), cas) {
            Ok(()) => return next,
            Err(Status::CasMismatch) => continue,
            Err(other) => panic!("tp-singleton: set_shared_data({key}) failed: {other:?}"),
        }
    }
    panic!("tp-singleton: no CAS success on {key}");
}

fn log(message: &str) {
    let _ = hostcalls::log(LogLevel::Info, &format!("tp-singleton: {message}"));
}

struct Root {
    role: Role,
    /// This VM's number among the singleton's VMs of the process.
    vm: u64,
    config: Option<Config>,
    /// Ticks of this VM.
    ticks: u64,
    done_token: Option<u32>,
}

impl Root {
    fn get(&self, path: &str) -> Result<u32, Status> {
        let cluster = &self.config.as_ref().ok_or(Status::BadArgument)?.cluster;
        self.dispatch_http_call(
            cluster,
            vec![(":method", "GET"), (":path", path), (":authority", cluster)],
            None,
            vec![],
            Duration::from_secs(5),
        )
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, _body: usize, _: usize) {
        if self.done_token == Some(token) {
            log("on_done callout answered; calling proxy_done");
            self.done();
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|status| status.parse().ok())
            .unwrap_or(0);
        set("sg-http-status", status);
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, _size: usize) {
        set("sg-grpc-status", u64::from(status_code));
    }

    fn on_done(&mut self) -> bool {
        if self.role != Role::Singleton {
            return true;
        }
        let starts = read("sg-starts").unwrap_or(0);
        set(&format!("sg-done-{}", self.vm), starts);
        log(&format!("on_done of VM {}", self.vm));
        match self.get(&format!("/singleton/on-done/{}?starts={starts}", self.vm)) {
            Ok(token) => {
                self.done_token = Some(token);
                false
            }
            Err(_) => true,
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let vm_config = self.get_vm_configuration().unwrap_or_default();
        let role = serde_json::from_slice::<VmConfig>(&vm_config)
            .map(|config| config.role)
            .unwrap_or_default();
        if role == "singleton" {
            self.role = Role::Singleton;
            self.vm = add("sg-starts", 1);
            log(&format!("on_vm_start of VM {}", self.vm));
        }
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        if self.role != Role::Singleton {
            return true;
        }
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log(&format!("bad configuration: {e}"));
                return false;
            }
        };
        self.register_shared_queue(QUEUE);
        self.set_tick_period(Duration::from_millis(config.tick_ms));
        self.config = Some(config);
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let ticks = add("sg-ticks", 1);
        if self.ticks == 1 {
            if let Err(status) = self.get(&format!("/singleton/tick/{}", self.vm)) {
                log(&format!("tick callout failed: {status:?}"));
            }
            if let Some(grpc) = self.config.as_ref().and_then(|c| c.grpc_cluster.clone()) {
                let call = self.dispatch_grpc_call(
                    &grpc,
                    "tollgate.test.Singleton",
                    "Tick",
                    vec![],
                    Some(b"tick"),
                    Duration::from_secs(5),
                );
                if let Err(status) = call {
                    log(&format!("gRPC callout failed: {status:?}"));
                }
            }
        }
        let trap_at = self.config.as_ref().and_then(|config| config.trap_at_tick);
        if trap_at.is_some_and(|at| ticks >= at) && read("sg-trapped").is_none() {
            set("sg-trapped", 1);
            panic!("tp-singleton: trap at tick {ticks}");
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let (mut count, mut sum) = (0, 0);
        for _ in 0..100_000 {
            match self.dequeue_shared_queue(queue_id) {
                Ok(Some(item)) => {
                    count += 1;
                    sum += String::from_utf8(item)
                        .ok()
                        .and_then(|text| text.parse::<u64>().ok())
                        .unwrap_or(0);
                }
                _ => break,
            }
        }
        if count > 0 {
            add("sg-dequeued", count);
            add("sg-sum", sum);
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            role: self.role,
            enqueue_failed: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    role: Role,
    enqueue_failed: Option<String>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.role == Role::Singleton {
            add("sg-in-chain", 1);
            return Action::Continue;
        }
        if let Some(amount) = self.get_http_request_header("x-sg-enqueue") {
            let result = match self.resolve_shared_queue("", QUEUE) {
                Some(queue) => self.enqueue_shared_queue(queue, Some(amount.as_bytes())),
                None => Err(Status::NotFound),
            };
            if let Err(status) = result {
                self.enqueue_failed = Some(format!("{status:?}"));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.role == Role::Singleton {
            self.add_http_response_header("x-sg-singleton", "invoked");
            return Action::Continue;
        }
        if let Some(status) = &self.enqueue_failed {
            self.add_http_response_header("x-sg-enqueue-failed", status);
        }
        for key in [
            "sg-starts",
            "sg-ticks",
            "sg-dequeued",
            "sg-sum",
            "sg-http-status",
            "sg-grpc-status",
            "sg-trapped",
            "sg-in-chain",
            "sg-done-1",
        ] {
            let value = read(key).map_or("-".to_string(), |value| value.to_string());
            self.add_http_response_header(&format!("x-{key}"), &value);
        }
        Action::Continue
    }
}
