//! Which of a plugin's request callbacks the host enters: one set of bits, the same as the
//! SDK's `Callbacks`, for what a module exports, what it declares it implements, and what a
//! configuration says it needs.
//!
//! A module declares in a custom section named `tollgate.callbacks` of one byte (the SDK's
//! `plugin!` writes it from `Plugin::CALLBACKS`): bits 0 to 5 `on_request_headers`, `_body`,
//! `_trailers`, `on_response_headers`, `_body`, `_trailers`; bit 6 `on_log`; bit 7
//! `on_done`. The host never enters an export the module leaves out, as if it were not
//! exported: a module built with the Rust proxy-wasm crate exports every callback, and the
//! ones its plugin does not implement only run the crate's defaults (continue; `on_done`
//! answers done), at a VM entry each. Envoy ignores the section and calls them all, with
//! the same outcome.
//!
//! A root context may narrow the set for the requests of its own configuration, with the
//! same byte, through the foreign function of the same name (see `abi::misc`).

/// Which callback a stream call is, for the callbacks that share a shape.
#[derive(Debug, Clone, Copy)]
pub enum StreamCallback {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

impl StreamCallback {
    pub const ALL: [StreamCallback; 6] = [
        Self::RequestHeaders,
        Self::RequestBody,
        Self::RequestTrailers,
        Self::ResponseHeaders,
        Self::ResponseBody,
        Self::ResponseTrailers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::RequestHeaders => "on_request_headers",
            Self::RequestBody => "on_request_body",
            Self::RequestTrailers => "on_request_trailers",
            Self::ResponseHeaders => "on_response_headers",
            Self::ResponseBody => "on_response_body",
            Self::ResponseTrailers => "on_response_trailers",
        }
    }

    /// The guest export that implements the callback.
    pub fn export(self) -> &'static str {
        match self {
            Self::RequestHeaders => "proxy_on_request_headers",
            Self::RequestBody => "proxy_on_request_body",
            Self::RequestTrailers => "proxy_on_request_trailers",
            Self::ResponseHeaders => "proxy_on_response_headers",
            Self::ResponseBody => "proxy_on_response_body",
            Self::ResponseTrailers => "proxy_on_response_trailers",
        }
    }
}

/// A set of request callbacks (see the module docs for the bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callbacks(u8);

impl Callbacks {
    /// The custom section, and the foreign function, that carry the byte.
    pub const SECTION: &'static str = "tollgate.callbacks";
    pub const ALL: Self = Self(u8::MAX);
    pub const NONE: Self = Self(0);
    pub const LOG: Self = Self(1 << 6);
    pub const DONE: Self = Self(1 << 7);

    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The one stream callback.
    pub const fn of(callback: StreamCallback) -> Self {
        Self(1 << callback as u8)
    }

    /// The callbacks `module` exports.
    pub fn exported_by(module: &wasmtime::Module) -> Self {
        let exports = |name: &str| module.get_export(name).is_some();
        let mut bits = StreamCallback::ALL
            .iter()
            .filter(|callback| exports(callback.export()))
            .fold(Self::NONE, |set, callback| set.and(Self::of(*callback)));
        if exports("proxy_on_log") {
            bits = bits.and(Self::LOG);
        }
        if exports("proxy_on_done") {
            bits = bits.and(Self::DONE);
        }
        bits
    }

    /// The declaration in a module's bytes (binary or text): [`ALL`](Self::ALL) without the
    /// section; an error for a section that is not one byte, or that appears twice.
    pub fn declared_in(module: &[u8]) -> Result<Self, String> {
        let binary = wat::parse_bytes(module).map_err(|error| error.to_string())?;
        let mut found = None;
        for payload in wasmparser::Parser::new(0).parse_all(&binary) {
            let Ok(wasmparser::Payload::CustomSection(section)) = payload else {
                // Other sections, or where the module stops parsing (the engine has already
                // checked it).
                continue;
            };
            if section.name() != Self::SECTION {
                continue;
            }
            if found.is_some() {
                return Err(format!("more than one {} section", Self::SECTION));
            }
            let [bits] = section.data() else {
                return Err(format!(
                    "the {} section holds {} bytes, not 1",
                    Self::SECTION,
                    section.data().len()
                ));
            };
            found = Some(Self(*bits));
        }
        Ok(found.unwrap_or(Self::ALL))
    }

    /// These callbacks and those of `other` (as the SDK's `Callbacks::and`).
    #[must_use]
    pub const fn and(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The callbacks of this set that `other` has too.
    #[must_use]
    pub fn restricted_to(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The callbacks of this set that `other` does not have.
    #[must_use]
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether the set has some callback of `other`.
    pub fn overlaps(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether every callback of `other` is in the set.
    pub fn includes(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn has(self, callback: StreamCallback) -> bool {
        self.includes(Self::of(callback))
    }
}

/// Every callback: what a module or configuration that says nothing gets.
impl Default for Callbacks {
    fn default() -> Self {
        Self::ALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary module of custom sections only, each as (name, payload).
    fn with_sections(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        for (name, payload) in sections {
            let size = 1 + name.len() + payload.len();
            assert!(size < 128 && name.len() < 128, "one-byte sizes");
            module.extend([0, size as u8, name.len() as u8]);
            module.extend(name.as_bytes());
            module.extend(*payload);
        }
        module
    }

    #[test]
    fn declared_callbacks_are_read_from_the_section() {
        let of = |sections: &[(&str, &[u8])]| Callbacks::declared_in(&with_sections(sections));
        assert_eq!(of(&[]), Ok(Callbacks::ALL), "no section: every callback");
        assert_eq!(
            of(&[("name", b"\x03abc"), ("tollgate.callbacks", &[0b0100_1001])]),
            Ok(Callbacks(0b0100_1001))
        );
        let declared = of(&[("tollgate.callbacks", &[0b0100_1001])]).unwrap();
        assert!(declared.includes(Callbacks::LOG));
        assert!(!declared.includes(Callbacks::DONE));
        assert!(declared.has(StreamCallback::RequestHeaders));
        assert!(declared.has(StreamCallback::ResponseHeaders));
        assert!(!declared.has(StreamCallback::RequestBody));
        assert_eq!(
            of(&[("tollgate.callbacks", &[1, 2])]),
            Err("the tollgate.callbacks section holds 2 bytes, not 1".to_string())
        );
        assert_eq!(
            of(&[("tollgate.callbacks", &[1]), ("tollgate.callbacks", &[1])]),
            Err("more than one tollgate.callbacks section".to_string())
        );
        // A text module declares with an annotation.
        let text = r#"(module (@custom "tollgate.callbacks" "\09"))"#;
        assert_eq!(Callbacks::declared_in(text.as_bytes()), Ok(Callbacks(9)));
    }

    #[test]
    fn exported_callbacks_are_the_module_exports() {
        // The serving engine has no compiler; any engine reads a module's exports.
        let module = wasmtime::Module::new(
            &wasmtime::Engine::default(),
            r#"(module
                (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
                (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) i32.const 0)
                (func (export "proxy_on_log") (param i32)))"#,
        )
        .expect("the module compiles");
        let callbacks = Callbacks::exported_by(&module);
        let exported: Vec<_> = StreamCallback::ALL
            .iter()
            .filter(|callback| callbacks.has(**callback))
            .map(|callback| callback.name())
            .collect();
        assert_eq!(exported, ["on_request_headers", "on_response_body"]);
        assert!(callbacks.includes(Callbacks::LOG));
        assert!(!callbacks.includes(Callbacks::DONE));
        // What a declaration of request headers and `on_done` leaves of them.
        let declared = Callbacks::of(StreamCallback::RequestHeaders).and(Callbacks::DONE);
        assert_eq!(
            callbacks.restricted_to(declared),
            Callbacks::of(StreamCallback::RequestHeaders)
        );
        assert!(!Callbacks::NONE.has(StreamCallback::RequestHeaders));
    }

    #[test]
    fn a_set_without_some_callbacks_overlaps_only_the_rest() {
        let headers = Callbacks::of(StreamCallback::RequestHeaders);
        let after_headers = Callbacks::ALL.without(headers);
        assert!(!after_headers.has(StreamCallback::RequestHeaders));
        assert!(after_headers.has(StreamCallback::ResponseHeaders));
        assert!(after_headers.includes(Callbacks::LOG.and(Callbacks::DONE)));
        assert!(!headers.overlaps(after_headers));
        assert!(headers.and(Callbacks::LOG).overlaps(after_headers));
        assert!(!Callbacks::NONE.overlaps(Callbacks::ALL));
    }
}
