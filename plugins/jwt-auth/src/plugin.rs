//! proxy-wasm glue for jwt-auth.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tollgate_sdk::callout::{self, HttpCall};
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::consumer::{self, Consumer};
use tollgate_sdk::headers;
use tollgate_sdk::proxy_wasm::hostcalls;
use tollgate_sdk::proxy_wasm::traits::{Context, HttpContext};
use tollgate_sdk::proxy_wasm::types::{Action, LogLevel, MapType};
use tollgate_sdk::shared::{SharedData, SharedError, Store, MISSING_CAS};
use tollgate_sdk::{Callbacks, Plugin};

use crate::jwks::{FetchState, Jwks, Outcome};
use crate::logic::{Config, Failure, JwtAuth, KeySet, SignatureCache, Verified};

tollgate_sdk::plugin!(Gate);
tollgate_sdk::layout!("layout.txt");

/// The plugin of one configuration: the checks, and the fetched key set when `jwks` is set.
pub struct Gate {
    auth: JwtAuth,
    fetched: Option<Fetched>,
    /// Tokens this VM verified the signature of.
    signatures: SignatureCache,
}

/// How often every VM looks at the fetch schedule and at the requests waiting for keys.
const TICK: Duration = Duration::from_millis(100);

/// Compare-and-swap attempts on the fetch schedule before giving up for this round.
const CAS_ATTEMPTS: usize = 8;

impl Plugin for Gate {
    const NAME: &'static str = "jwt-auth";
    type Config = Config;
    type Request = Request;
    const CALLBACKS: Callbacks = Callbacks::REQUEST_HEADERS;

    fn from_config(config: Config) -> Result<Self, ConfigError> {
        let auth = JwtAuth::new(config)?;
        let fetched = auth.jwks.clone().map(Fetched::new);
        Ok(Self {
            auth,
            fetched,
            signatures: SignatureCache::default(),
        })
    }

    fn request(gate: &Rc<Self>, context_id: u32) -> Request {
        Request {
            gate: gate.clone(),
            context_id,
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        self.fetched.as_ref().map(|_| TICK)
    }

    fn on_tick(&self) {
        if let Some(fetched) = &self.fetched {
            fetched.fetch_if_due();
            fetched.resume_waiting(self);
        }
    }

    fn on_http_call_response(
        &self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(fetched) = &self.fetched {
            if fetched.call.get() == Some(token_id) {
                fetched.store(callout::read_response(num_headers, body_size));
                fetched.resume_waiting(self);
            }
        }
    }
}

impl Gate {
    fn verify(&self, token: &str, now: u64, fetched: Option<&KeySet>) -> Result<Verified, Failure> {
        self.auth
            .verify_cached(token, now, fetched, &self.signatures)
    }
}

/// The host's time in milliseconds since the epoch.
fn now_millis() -> u64 {
    tollgate_sdk::now_nanos() / 1_000_000
}

/// A request paused until a fetch ends (or its deadline passes).
struct Waiting {
    context_id: u32,
    token: String,
    deadline: u64,
    /// [`FetchState::completed`] when it started waiting.
    completed: u64,
}

/// The fetched key set as one VM sees it: where it lives in shared data, the keys parsed
/// from the version last read, this VM's callout and the requests waiting for keys.
struct Fetched {
    jwks: Jwks,
    keys_key: String,
    state_key: String,
    /// The shared-data version (CAS) of the key set and the keys parsed from it, so that
    /// requests parse a key set once per VM and version, not once each.
    parsed: RefCell<Option<(u32, Rc<KeySet>)>>,
    call: Cell<Option<u32>>,
    waiting: RefCell<Vec<Waiting>>,
}

impl Fetched {
    fn new(jwks: Jwks) -> Self {
        // Instances of the plugin that fetch the same key set share it.
        let prefix = format!(
            "{}.jwks.{}{}",
            tollgate_sdk::plugin_name(Gate::NAME),
            jwks.cluster,
            jwks.path
        );
        Self {
            keys_key: prefix.clone(),
            state_key: format!("{prefix}.state"),
            jwks,
            parsed: RefCell::new(None),
            call: Cell::new(None),
            waiting: RefCell::new(Vec::new()),
        }
    }

    /// The key set of the last good fetch, if any.
    fn keys(&self) -> Option<Rc<KeySet>> {
        let (Some(document), Some(version)) = hostcalls::get_shared_data(&self.keys_key).ok()?
        else {
            return None;
        };
        let mut parsed = self.parsed.borrow_mut();
        match &*parsed {
            Some((seen, keys)) if *seen == version => Some(keys.clone()),
            _ => {
                let mut keys = KeySet::from_jwks(&document).ok()?;
                keys.version = version;
                let keys = Rc::new(keys);
                *parsed = Some((version, keys.clone()));
                Some(keys)
            }
        }
    }

    fn state(&self) -> FetchState {
        let value = hostcalls::get_shared_data(&self.state_key)
            .ok()
            .and_then(|(value, _)| value);
        FetchState::decode(value.as_deref())
    }

    /// Applies `change` to the shared schedule with compare-and-swap; `true` when `change`
    /// said yes and its result was stored.
    fn update_state(&self, change: impl Fn(&mut FetchState) -> bool) -> bool {
        for _ in 0..CAS_ATTEMPTS {
            let Ok((value, version)) = hostcalls::get_shared_data(&self.state_key) else {
                return false;
            };
            if version.is_none() {
                // A key that does not exist yet cannot be compared-and-swapped: a write to it
                // always succeeds, so two VMs would both win the first lease. Create it with
                // the fresh schedule first, then change it under compare-and-swap like any
                // other time. The creation itself carries a version no key has: it creates
                // the missing key, and is refused if another VM created it (and perhaps
                // took the lease) in between, rather than writing over it.
                let fresh = FetchState::default().encode();
                match SharedData.set(&self.state_key, &fresh, Some(MISSING_CAS)) {
                    Ok(()) | Err(SharedError::CasMismatch) => continue,
                    Err(_) => return false,
                }
            }
            let mut state = FetchState::decode(value.as_deref());
            if !change(&mut state) {
                return false;
            }
            match SharedData.set(&self.state_key, &state.encode(), version) {
                Ok(()) => return true,
                Err(SharedError::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends the fetch when one is due and this VM wins the lease on it.
    fn fetch_if_due(&self) {
        if self.call.get().is_some() {
            return;
        }
        let lease = self.jwks.timeout + Duration::from_secs(1);
        if !self.update_state(|state| state.claim(now_millis(), lease)) {
            return;
        }
        let sent = HttpCall::get(&self.jwks.cluster, &self.jwks.path)
            .header("accept", "application/json")
            .timeout(self.jwks.timeout)
            .dispatch(&self.jwks.cluster);
        match sent {
            Ok(token) => self.call.set(Some(token)),
            Err(status) => self.finish(Err(format!("not sent ({status:?})"))),
        }
    }

    /// Stores the answer to this VM's fetch if it is a usable key set.
    fn store(&self, response: callout::CallResponse) {
        self.call.set(None);
        let checked = if response.is_success() {
            KeySet::from_jwks(&response.body).map(|_| response.body)
        } else if response.status == 0 {
            Err("no answer (timeout, reset or no endpoint)".to_owned())
        } else {
            Err(format!("status {}", response.status))
        };
        self.finish(checked);
    }

    fn finish(&self, fetched: Result<Vec<u8>, String>) {
        let outcome = match fetched {
            Ok(document) => {
                // A key set larger than the shared data allows is refused, not stored.
                if SharedData.set(&self.keys_key, &document, None).is_ok() {
                    Outcome::Loaded
                } else {
                    Outcome::Failed {
                        keys_loaded: self.keys().is_some(),
                    }
                }
            }
            Err(reason) => {
                let keys_loaded = self.keys().is_some();
                tollgate_sdk::log(
                    LogLevel::Warn,
                    &format!(
                        "jwt-auth: fetching the key set from cluster {} path {} failed: {reason}{}",
                        self.jwks.cluster,
                        self.jwks.path,
                        if keys_loaded {
                            "; the last good keys stay in use"
                        } else {
                            ""
                        }
                    ),
                );
                Outcome::Failed { keys_loaded }
            }
        };
        let refresh_interval = self.jwks.refresh_interval;
        self.update_state(|state| {
            state.finish(now_millis(), outcome, refresh_interval);
            true
        });
    }

    fn wait(&self, context_id: u32, token: String, completed: u64) {
        self.waiting.borrow_mut().push(Waiting {
            context_id,
            token,
            deadline: now_millis() + self.jwks.timeout.as_millis() as u64,
            completed,
        });
    }

    /// Answers the paused requests whose fetch has ended or whose deadline has passed.
    fn resume_waiting(&self, gate: &Gate) {
        if self.waiting.borrow().is_empty() {
            return;
        }
        let now = now_millis();
        let completed = self.state().completed;
        let ready: Vec<Waiting> = {
            let mut waiting = self.waiting.borrow_mut();
            let (ready, still) = std::mem::take(&mut *waiting)
                .into_iter()
                .partition(|w| w.completed != completed || now >= w.deadline);
            *waiting = still;
            ready
        };
        if ready.is_empty() {
            return;
        }
        let keys = self.keys();
        for request in ready {
            // A request that ended meanwhile has no context any more.
            if hostcalls::set_effective_context(request.context_id).is_err() {
                continue;
            }
            let verified = match gate.verify(&request.token, now / 1000, keys.as_deref()) {
                Err(Failure::NoKey(_)) if keys.is_none() => {
                    Err(Failure::Invalid("signing keys not available".into()))
                }
                other => other,
            };
            if answer(&gate.auth.config, verified) {
                let _ = hostcalls::resume_http_request();
            }
        }
    }
}

/// Admits the request of the effective context (claims to headers, consumer) or refuses it
/// with 401; `true` when admitted.
fn answer(config: &Config, verified: Result<Verified, Failure>) -> bool {
    match verified {
        Ok(verified) => {
            for (name, value) in &verified.headers {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
            if config.hide_credentials {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, &config.header);
            }
            consumer::set(&Consumer::new(verified.consumer, verified.groups));
            true
        }
        Err(failure) => {
            let body = serde_json::json!({ "message": failure.message() }).to_string();
            let _ = hostcalls::send_http_response(
                401,
                vec![
                    ("www-authenticate", &failure.challenge(&config.realm)),
                    ("content-type", "application/json"),
                ],
                Some(body.as_bytes()),
            );
            false
        }
    }
}

/// The context of one request.
pub struct Request {
    gate: Rc<Gate>,
    context_id: u32,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        consumer::strip_client_supplied();
        let auth = &self.gate.auth;
        let config = &auth.config;
        // Headers filled from claims are never taken from the client.
        for header in config.claims_to_headers.values() {
            self.set_http_request_header(header, None);
        }
        let path = headers::request(":path").unwrap_or_default();
        let header = headers::request(&config.header);
        let Some(token) = auth.token_from(header.as_deref(), &path) else {
            answer(config, Err(Failure::Missing));
            return Action::Pause;
        };
        let now = now_millis();
        let Some(fetched) = &self.gate.fetched else {
            return continue_if(answer(config, self.gate.verify(&token, now / 1000, None)));
        };
        let keys = fetched.keys();
        match self.gate.verify(&token, now / 1000, keys.as_deref()) {
            // No key fits: wait for the first key set, or for the refetch this token asks
            // for (at most one per 10 s), as a rotated key is published before it is used.
            Err(Failure::NoKey(reason)) => {
                let completed = fetched.state().completed;
                if keys.is_none() || fetched.update_state(|state| state.ask_refetch(now)) {
                    fetched.wait(self.context_id, token, completed);
                    return Action::Pause;
                }
                continue_if(answer(config, Err(Failure::NoKey(reason))))
            }
            verified => continue_if(answer(config, verified)),
        }
    }
}

fn continue_if(admitted: bool) -> Action {
    if admitted {
        Action::Continue
    } else {
        Action::Pause
    }
}
