//! A header map as plugins see it, kept where the request or response keeps it: the
//! pseudo-headers (`:method`, `:scheme`, `:authority`, `:path`, `:status`) as fields, every
//! other header in the message's own `http::HeaderMap`, which the pipeline moves in before a
//! phase and takes back after it. The host functions read and edit it in place: no list of
//! pairs is built for a plugin, and none is turned back into a map afterwards.
//!
//! Pairs come in the order Envoy gives them: the pseudo-headers first, then the headers in
//! the map's order (a name's values together, where it first appeared). Names are
//! lower-case. A pair no HTTP message may carry (a name or value `http` refuses, an unknown
//! pseudo-header) is left out, as it would be from the message: the call still succeeds,
//! since the SDKs treat any other answer as a failure of the plugin. A pseudo-header takes
//! any bytes (the pipeline checks what a plugin set, as it checks what a client sends).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, StatusCode};
use rustc_hash::FxHashSet;
use smallvec::SmallVec;

use super::abi::HeaderList;

/// The pseudo-headers a map can hold, in the order plugins get them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Scheme,
    Authority,
    Path,
    Status,
}

impl Pseudo {
    const ALL: [Pseudo; 5] = [
        Pseudo::Method,
        Pseudo::Scheme,
        Pseudo::Authority,
        Pseudo::Path,
        Pseudo::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pseudo::Method => ":method",
            Pseudo::Scheme => ":scheme",
            Pseudo::Authority => ":authority",
            Pseudo::Path => ":path",
            Pseudo::Status => ":status",
        }
    }

    /// The pseudo-header a name stands for (any case), if it is one.
    fn from_name(name: &[u8]) -> Option<Pseudo> {
        Pseudo::ALL
            .into_iter()
            .find(|pseudo| pseudo.name().as_bytes().eq_ignore_ascii_case(name))
    }
}

/// Request or response headers, trailers or a callout's metadata, as one plugin-facing map.
#[derive(Debug, Clone, Default)]
pub struct PseudoHeaderMap {
    pseudo: [Option<Bytes>; 5],
    headers: HeaderMap,
    /// How many values of the map are the client's `Host`, which `:authority` stands for:
    /// they stay where they are (taking them out would move another header into their
    /// place) but are no pairs. Counted once, since every header callback is told the
    /// number of pairs.
    hidden_hosts: usize,
    /// The names in their order, while removals have left the map's own order wrong (the
    /// `http` crate's map fills a removed name's place with its last name); put back once,
    /// when the map is next taken whole. `None` while the map's order is right.
    order: Option<Vec<HeaderName>>,
}

/// A value as the map keeps it.
enum Found<'a> {
    Pseudo(&'a Bytes),
    Header(&'a HeaderValue),
}

/// A value of the map that lives on by itself (see [`PseudoHeaderMap::shared_value`]).
pub enum SharedValue {
    Pseudo(Bytes),
    Header(HeaderValue),
}

impl AsRef<[u8]> for SharedValue {
    fn as_ref(&self) -> &[u8] {
        match self {
            SharedValue::Pseudo(value) => value,
            SharedValue::Header(value) => value.as_bytes(),
        }
    }
}

/// An empty map, for a phase that has none yet.
pub static EMPTY: LazyLock<PseudoHeaderMap> = LazyLock::new(PseudoHeaderMap::default);

impl PseudoHeaderMap {
    /// Headers with no pseudo-headers: trailers, gRPC metadata.
    pub fn from_headers(headers: HeaderMap) -> Self {
        Self {
            pseudo: Default::default(),
            headers,
            hidden_hosts: 0,
            order: None,
        }
    }

    /// A request head as Envoy gives it to plugins: `Host` only as `:authority`.
    pub fn request(
        method: &Method,
        scheme: &'static str,
        authority: &str,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Self {
        let mut map = Self::from_headers(headers);
        map.hidden_hosts = map.headers.get_all(HOST).iter().count();
        map.pseudo[Pseudo::Method as usize] = Some(method_bytes(method));
        map.pseudo[Pseudo::Scheme as usize] = Some(Bytes::from_static(scheme.as_bytes()));
        map.pseudo[Pseudo::Authority as usize] = Some(shared_copy(authority.as_bytes()));
        map.pseudo[Pseudo::Path as usize] = Some(shared_copy(path_and_query.as_bytes()));
        map
    }

    /// A response head: `:status`, then the headers.
    pub fn response(status: StatusCode, headers: HeaderMap) -> Self {
        let mut map = Self::from_headers(headers);
        map.pseudo[Pseudo::Status as usize] = Some(status_bytes(status));
        map
    }

    /// Room for the headers a chain's plugins typically add to a head, made at once before
    /// they run: a map parsed from a message is sized to it, and would otherwise grow
    /// (rehashing every header) at several of the plugins' additions.
    pub fn make_room(&mut self) {
        self.headers.reserve(Self::ROOM_FOR_PLUGINS);
    }

    /// Headers the plugins of a chain add to a head, room made for them up front.
    const ROOM_FOR_PLUGINS: usize = 8;

    /// A map of the pairs a plugin wrote whole (`set_header_map_pairs`, a local reply's
    /// headers); a pair `http` refuses is left out.
    pub fn from_pairs(pairs: &HeaderList) -> Self {
        let mut map = Self::default();
        map.headers.reserve(pairs.len());
        for (name, value) in pairs {
            map.add(name.as_bytes(), value);
        }
        map
    }

    /// The headers but the pseudo-headers, as pairs.
    pub fn headers(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let host_hidden = self.hidden_hosts > 0;
        self.in_order()
            .filter(move |(name, _)| !(host_hidden && *name == HOST))
    }

    /// Every header in order, a client's `Host` included.
    fn in_order(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let (as_stored, by_order) = match &self.order {
            None => (Some(self.headers.iter()), None),
            Some(order) => (None, Some(order.iter())),
        };
        let by_order = by_order.into_iter().flatten().flat_map(|name| {
            self.headers
                .get_all(name)
                .iter()
                .map(move |value| (name, value))
        });
        as_stored.into_iter().flatten().chain(by_order)
    }

    /// The header map as the message carries it, for the message: a client's `Host`
    /// stays in it (the pipeline sets it from `:authority`).
    pub fn clone_headers(&self) -> HeaderMap {
        if self.order.is_none() {
            return self.headers.clone();
        }
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in self.in_order() {
            map.append(name.clone(), value.clone());
        }
        map
    }

    /// Takes the header map out (the pseudo-headers stay), leaving an empty one; as
    /// [`Self::clone_headers`].
    pub fn take_headers(&mut self) -> HeaderMap {
        self.restore_order();
        self.hidden_hosts = 0;
        std::mem::take(&mut self.headers)
    }

    /// The header map, the rest consumed; as [`Self::clone_headers`].
    pub fn into_headers(mut self) -> HeaderMap {
        self.restore_order();
        self.headers
    }

    /// Puts the map's names back in their order after removals (see `order`): one map
    /// built anew, however many names were removed. It keeps the old map's room, so that
    /// later additions do not grow it again.
    fn restore_order(&mut self) {
        let Some(order) = self.order.take() else {
            return;
        };
        let old = std::mem::take(&mut self.headers);
        self.headers.reserve(old.capacity());
        for name in order {
            for value in old.get_all(&name) {
                self.headers.append(name.clone(), value.clone());
            }
        }
    }

    /// A pseudo-header's value.
    pub fn pseudo(&self, pseudo: Pseudo) -> Option<&[u8]> {
        self.pseudo[pseudo as usize].as_deref()
    }

    /// The number of pairs, pseudo-headers included (what a header callback is told).
    pub fn len(&self) -> usize {
        self.pseudo.iter().flatten().count() + self.headers.len() - self.hidden_hosts
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every pair in order: the pseudo-headers, then the headers.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let pseudo = Pseudo::ALL.into_iter().filter_map(|pseudo| {
            let value = self.pseudo[pseudo as usize].as_deref()?;
            Some((pseudo.name().as_bytes(), value))
        });
        let headers = self
            .headers()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        pseudo.chain(headers)
    }

    /// The first value of a name (any case), pseudo-headers included.
    pub fn value(&self, name: &[u8]) -> Option<&[u8]> {
        match self.find(name)? {
            Found::Pseudo(value) => Some(value),
            Found::Header(value) => Some(value.as_bytes()),
        }
    }

    /// As [`Self::value`], a copy that shares the value's buffer (a count, not the bytes),
    /// for a caller that needs the value after the map may have changed.
    pub fn shared_value(&self, name: &[u8]) -> Option<SharedValue> {
        Some(match self.find(name)? {
            Found::Pseudo(value) => SharedValue::Pseudo(value.clone()),
            Found::Header(value) => SharedValue::Header(value.clone()),
        })
    }

    fn find(&self, name: &[u8]) -> Option<Found<'_>> {
        if name.first() == Some(&b':') {
            let value = self.pseudo[Pseudo::from_name(name)? as usize].as_ref()?;
            return Some(Found::Pseudo(value));
        }
        if self.hidden_hosts > 0 && name.eq_ignore_ascii_case(b"host") {
            return None;
        }
        // A name the plugins wrote is kept parsed (see `HeaderBytes`): looked up by it, the
        // bytes are neither checked as text nor parsed again.
        let kept =
            HEADER_BYTES.with_borrow(|made| made.known(name).map(|kept| self.headers.get(kept)));
        let value = match kept {
            Some(value) => value,
            None => self.headers.get(std::str::from_utf8(name).ok()?),
        };
        value.map(Found::Header)
    }

    /// Adds a value; a pseudo-header has one value, which this sets.
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        if name.first() == Some(&b':') {
            return self.set_pseudo(name, value);
        }
        let Some((name, value)) = header(name, value) else {
            return;
        };
        if name == HOST && std::mem::take(&mut self.hidden_hosts) > 0 {
            // The plugin's `Host` is the only one.
            self.remove_name(&name);
        }
        self.note_if_new(&name);
        self.headers.append(name, value);
    }

    /// A name about to be added goes at the end of the order kept after removals.
    fn note_if_new(&mut self, name: &HeaderName) {
        if let Some(order) = &mut self.order {
            if !self.headers.contains_key(name) {
                order.push(name.clone());
            }
        }
    }

    /// Replaces every value of a name with one, where its first value was (added at the end
    /// when missing), as Envoy's `setCopy`. A value no message may carry leaves the name
    /// with none.
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        if name.first() == Some(&b':') {
            return self.set_pseudo(name, value);
        }
        let Some((name, value)) = header(name, value) else {
            return self.remove(name);
        };
        if name == HOST {
            self.hidden_hosts = 0;
        }
        self.note_if_new(&name);
        self.headers.insert(name, value);
    }

    /// Removes every value of a name (any case); the other pairs keep their order.
    pub fn remove(&mut self, name: &[u8]) {
        if name.first() == Some(&b':') {
            if let Some(pseudo) = Pseudo::from_name(name) {
                self.pseudo[pseudo as usize] = None;
            }
            return;
        }
        let Some(name) = header_name(name) else {
            return;
        };
        if name == HOST {
            self.hidden_hosts = 0;
        }
        self.remove_name(&name);
    }

    fn remove_name(&mut self, name: &HeaderName) {
        if !self.headers.contains_key(name) {
            return;
        }
        if self.order.is_none() && self.remove_keeping_order(name) {
            return;
        }
        // `HeaderMap::remove` moves the last name into the removed one's place: the order
        // the names had is kept beside the map and put back once, when the map is taken
        // whole, so that a plugin removing many headers in a row does not rebuild the map
        // for each.
        let headers = &self.headers;
        let order = self
            .order
            .get_or_insert_with(|| headers.keys().cloned().collect());
        if let Some(at) = order.iter().position(|kept| kept == name) {
            order.remove(at);
        }
        self.headers.remove(name);
    }

    /// Removes `name` (present) and keeps the order of the names after it, where those are
    /// few and, but for the first, have one value each, as they commonly are (a plugin
    /// removing a credential the client sent). `HeaderMap::remove` moves the map's last name
    /// into the removed one's place, so the names after the first come off the end first,
    /// where removing moves nothing; then the first of them is the last, and takes `name`'s
    /// place, which is its own; the others go back on after it, in their order. With one name
    /// after `name`, or none, that is one removal. False, with the map as it was, otherwise.
    fn remove_keeping_order(&mut self, name: &HeaderName) -> bool {
        /// Names taken off the end and put back this way; past them, the order is kept aside.
        const MOVED: usize = 8;
        let mut later: SmallVec<[HeaderName; MOVED]> = SmallVec::new();
        // `name` itself, then the name that will take its place.
        for later_name in self.headers.keys().skip_while(|n| *n != name).skip(2) {
            if later.len() == MOVED {
                return false;
            }
            later.push(later_name.clone());
        }
        if later
            .iter()
            .any(|later_name| self.headers.get_all(later_name).iter().nth(1).is_some())
        {
            return false;
        }
        let mut moved: SmallVec<[(HeaderName, HeaderValue); MOVED]> = SmallVec::new();
        while let Some(later_name) = later.pop() {
            if let Some(value) = self.headers.remove(&later_name) {
                moved.push((later_name, value));
            }
        }
        self.headers.remove(name);
        while let Some((later_name, value)) = moved.pop() {
            self.headers.append(later_name, value);
        }
        true
    }

    /// Empties the map, which keeps its capacity.
    pub fn clear(&mut self) {
        self.pseudo = Default::default();
        self.headers.clear();
        self.hidden_hosts = 0;
        self.order = None;
    }

    /// Replaces the whole map with the pairs a plugin wrote (`set_header_map_pairs`); the
    /// map keeps its capacity.
    pub fn set_pairs(&mut self, pairs: &HeaderList) {
        self.clear();
        for (name, value) in pairs {
            self.add(name.as_bytes(), value);
        }
    }

    fn set_pseudo(&mut self, name: &[u8], value: &[u8]) {
        if let Some(pseudo) = Pseudo::from_name(name) {
            self.pseudo[pseudo as usize] = Some(shared_copy(value));
        }
    }
}

/// A name and value as `http` takes them (the name lower-cased), if it takes them.
fn header(name: &[u8], value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let name = header_name(name)?;
    let value = HeaderValue::from_maybe_shared(shared_copy(value)).ok()?;
    Some((name, value))
}

/// Names and values the host makes from plugins' bytes, one set per worker thread (a
/// thread runs its plugins' VMs one callback at a time, so no lock is taken).
///
/// Plugins write the same few header names on every request: the names they wrote are
/// kept, found by their bytes through a hash, and one of them costs neither a parse nor an
/// allocation, and a copy of it only a reference count. Values are cut from one shared
/// buffer, so that a value costs no allocation of its own, and neither does a copy of it
/// (the request and response heads later phases read are copies); the buffer is reused once
/// no value in it lives on.
struct HeaderBytes {
    /// Lower-case names; when full, emptied before the next one goes in (the names a
    /// worker's plugins write come back at their next request). A plugin may write names a
    /// client chose; the set's bound, not its hash, keeps any lookup short.
    names: FxHashSet<KeptName>,
    values: BytesMut,
}

/// A kept name, found by its bytes.
#[derive(PartialEq, Eq)]
struct KeptName(HeaderName);

impl Hash for KeptName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the bytes it is looked up by hash.
        self.0.as_str().as_bytes().hash(state);
    }
}

impl Borrow<[u8]> for KeptName {
    fn borrow(&self) -> &[u8] {
        self.0.as_str().as_bytes()
    }
}

impl HeaderBytes {
    /// Names kept: more than a chain's plugins write on a request.
    const NAMES: usize = 64;
    /// The buffer values are cut from: a request's worth of values the plugins write.
    const VALUES: usize = 1024;

    /// The kept name of these (lower-case) bytes.
    fn known(&self, bytes: &[u8]) -> Option<&HeaderName> {
        self.names.get(bytes).map(|kept| &kept.0)
    }

    fn name(&mut self, bytes: &[u8]) -> Option<HeaderName> {
        if let Some(known) = self.known(bytes) {
            return Some(known.clone());
        }
        let name = HeaderName::from_bytes(bytes).ok()?;
        // A name written in upper case is made anew each time rather than kept twice.
        if name.as_str().as_bytes() == bytes {
            if self.names.len() == Self::NAMES {
                self.names.clear();
            }
            self.names.insert(KeptName(name.clone()));
        }
        Some(name)
    }

    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if self.values.capacity() < bytes.len() {
            // Reclaims the buffer in place once every value cut from it is gone.
            self.values.reserve(bytes.len().max(Self::VALUES));
        }
        self.values.extend_from_slice(bytes);
        self.values.split().freeze()
    }
}

thread_local! {
    static HEADER_BYTES: RefCell<HeaderBytes> = RefCell::new(HeaderBytes {
        names: FxHashSet::default(),
        values: BytesMut::with_capacity(HeaderBytes::VALUES),
    });
}

/// A header name from a plugin's bytes (any case), if `http` takes it.
fn header_name(bytes: &[u8]) -> Option<HeaderName> {
    HEADER_BYTES.with_borrow_mut(|made| made.name(bytes))
}

/// A copy of a plugin's bytes that shares its buffer (see [`HeaderBytes`]).
fn shared_copy(bytes: &[u8]) -> Bytes {
    if bytes.is_empty() {
        return Bytes::new();
    }
    HEADER_BYTES.with_borrow_mut(|made| made.copy(bytes))
}

/// The method's name, without a copy for the standard ones.
fn method_bytes(method: &Method) -> Bytes {
    let name: &'static str = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return Bytes::copy_from_slice(method.as_str().as_bytes()),
    };
    Bytes::from_static(name.as_bytes())
}

/// The status code's digits, without a copy for the common ones.
fn status_bytes(status: StatusCode) -> Bytes {
    let digits: &'static str = match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return Bytes::copy_from_slice(status.as_str().as_bytes()),
    };
    Bytes::from_static(digits.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(map: &PseudoHeaderMap) -> Vec<(String, String)> {
        map.pairs()
            .map(|(name, value)| {
                (
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect()
    }

    fn request() -> PseudoHeaderMap {
        let mut headers = HeaderMap::new();
        headers.append("host", HeaderValue::from_static("example.com"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-b", HeaderValue::from_static("2"));
        headers.append("x-a", HeaderValue::from_static("3"));
        headers.append("x-c", HeaderValue::from_static("4"));
        PseudoHeaderMap::request(&Method::GET, "http", "example.com", "/p?q=1", headers)
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn pairs_come_pseudo_headers_first_and_host_only_as_authority() {
        let map = request();
        assert_eq!(
            pairs(&map),
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "example.com"),
                (":path", "/p?q=1"),
                ("x-a", "1"),
                ("x-a", "3"),
                ("x-b", "2"),
                ("x-c", "4"),
            ])
        );
        assert_eq!(map.len(), 8);
        let response = PseudoHeaderMap::response(StatusCode::IM_A_TEAPOT, HeaderMap::new());
        assert_eq!(pairs(&response), owned(&[(":status", "418")]));
    }

    #[test]
    fn pseudo_headers_are_read_and_changed_as_fields() {
        let mut map = request();
        assert_eq!(map.value(b":PATH"), Some(&b"/p?q=1"[..]));
        map.replace(b":path", b"/new");
        map.add(b":authority", b"other");
        assert_eq!(map.pseudo(Pseudo::Path), Some(&b"/new"[..]));
        assert_eq!(map.pseudo(Pseudo::Authority), Some(&b"other"[..]));
        // A pseudo-header takes any bytes: the pipeline judges what a plugin set.
        map.replace(b":path", b"no spaces allowed\n");
        map.remove(b":method");
        assert_eq!(map.pseudo(Pseudo::Method), None);
        assert_eq!(pairs(&map)[0].0, ":scheme");
        assert!(map.value(b"host").is_none());
        assert!(map.headers().all(|(name, _)| name != HOST));
        assert_eq!(
            map.clone_headers()[HOST],
            "example.com",
            "the message keeps it"
        );
        map.add(b"Host", b"plugin.example");
        assert_eq!(map.value(b"host"), Some(&b"plugin.example"[..]));
        assert_eq!(map.clone_headers().get_all(HOST).iter().count(), 1);
    }

    #[test]
    fn removing_a_repeated_header_removes_every_value_and_keeps_the_order() {
        let mut map = request();
        map.remove(b"X-A");
        assert_eq!(pairs(&map)[4..], owned(&[("x-b", "2"), ("x-c", "4")])[..],);
        let mut map = request();
        map.remove(b"x-b");
        assert_eq!(
            pairs(&map)[4..],
            owned(&[("x-a", "1"), ("x-a", "3"), ("x-c", "4")])[..],
        );
        map.remove(b"x-missing");
        assert_eq!(map.len(), 7);
        // The name right after the removed one may have several values: it takes the
        // removed one's place; the names after it, with one value each, move back after it.
        let mut map = request();
        map.replace(b"host", b"plugin.example");
        map.remove(b"host");
        assert_eq!(
            pairs(&map)[4..],
            owned(&[("x-a", "1"), ("x-a", "3"), ("x-b", "2"), ("x-c", "4")])[..],
        );
        map.add(b"x-d", b"5");
        map.remove(b"x-b");
        assert_eq!(
            pairs(&map)[4..],
            owned(&[("x-a", "1"), ("x-a", "3"), ("x-c", "4"), ("x-d", "5")])[..],
        );
        assert!(map.order.is_none(), "the map's own order stayed right");
        // A later name with several values: the order is kept aside, and still right.
        let mut map = request();
        map.add(b"x-b", b"5");
        map.remove(b"host");
        assert!(map.order.is_some(), "the order was kept aside");
        assert_eq!(
            pairs(&map)[4..],
            owned(&[
                ("x-a", "1"),
                ("x-a", "3"),
                ("x-b", "2"),
                ("x-b", "5"),
                ("x-c", "4")
            ])[..],
        );
    }

    /// What the map must hold, as Envoy's header map keeps it: the names in the order they
    /// came, each with its values in theirs.
    #[derive(Default)]
    struct Model(Vec<(String, Vec<String>)>);

    impl Model {
        fn add(&mut self, name: &str, value: &str) {
            match self.0.iter_mut().find(|(kept, _)| kept == name) {
                Some((_, values)) => values.push(value.into()),
                None => self.0.push((name.into(), vec![value.into()])),
            }
        }
        fn replace(&mut self, name: &str, value: &str) {
            match self.0.iter_mut().find(|(kept, _)| kept == name) {
                Some((_, values)) => *values = vec![value.into()],
                None => self.0.push((name.into(), vec![value.into()])),
            }
        }
        fn remove(&mut self, name: &str) {
            self.0.retain(|(kept, _)| kept != name);
        }
        fn pairs(&self) -> Vec<(String, String)> {
            let mut pairs = Vec::new();
            for (name, values) in &self.0 {
                for value in values {
                    pairs.push((name.clone(), value.clone()));
                }
            }
            pairs
        }
    }

    #[test]
    fn edits_in_any_order_keep_envoys_order_whichever_way_the_map_is_read() {
        // Many removals in a row (past what moves back in place) mixed with additions,
        // replacements and names removed and added again, checked after every edit
        // against the model, through every way the map is read.
        let mut state = 0x2545_f491_u32;
        let mut next = |bound: u32| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state % bound
        };
        for round in 0..40 {
            let mut map = PseudoHeaderMap::from_headers(HeaderMap::new());
            let mut model = Model::default();
            for step in 0..60 {
                let name = format!("x-{}", next(24));
                let value = format!("{round}-{step}");
                match next(4) {
                    0 => {
                        map.add(name.as_bytes(), value.as_bytes());
                        model.add(&name, &value);
                    }
                    1 => {
                        map.replace(name.as_bytes(), value.as_bytes());
                        model.replace(&name, &value);
                    }
                    _ => {
                        map.remove(name.as_bytes());
                        model.remove(&name);
                    }
                }
                assert_eq!(pairs(&map), model.pairs(), "round {round}, step {step}");
                assert_eq!(map.len(), model.pairs().len());
                let cloned = map_pairs(&map.clone_headers());
                assert_eq!(cloned, model.pairs(), "round {round}, step {step}");
            }
            let taken = map_pairs(&map.take_headers());
            assert_eq!(taken, model.pairs(), "round {round}");
        }
        // Twenty names removed first to last, after the client's own headers.
        let mut map = request();
        let before = pairs(&map);
        for i in 0..20 {
            map.add(format!("x-heavy-{i}").as_bytes(), b"v");
        }
        for i in 0..20 {
            map.remove(format!("x-heavy-{i}").as_bytes());
        }
        assert_eq!(pairs(&map), before);
        map.add(b"x-after", b"1");
        let into = map_pairs(&map.into_headers());
        assert_eq!(into.last().map(|(name, _)| name.as_str()), Some("x-after"));
    }

    /// A message's header map as pairs, in its order.
    fn map_pairs(map: &HeaderMap) -> Vec<(String, String)> {
        map.iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn replacing_a_multi_valued_header_leaves_one_value_in_its_place() {
        let mut map = request();
        map.replace(b"x-a", b"new");
        assert_eq!(
            pairs(&map)[4..],
            owned(&[("x-a", "new"), ("x-b", "2"), ("x-c", "4")])[..],
        );
        map.replace(b"X-New", b"5");
        assert_eq!(
            pairs(&map).last(),
            Some(&("x-new".to_string(), "5".to_string()))
        );
    }

    #[test]
    fn names_are_kept_and_values_share_one_buffer() {
        let first = header_name(b"x-kept").unwrap();
        assert_eq!(header_name(b"x-kept").unwrap(), first);
        assert_eq!(header_name(b"X-Kept").unwrap(), first, "any case");
        assert!(header_name(b"bad name").is_none());
        for n in 0..2 * HeaderBytes::NAMES {
            header_name(format!("x-{n}").as_bytes()).unwrap();
        }
        HEADER_BYTES.with_borrow(|made| assert!(made.names.len() <= HeaderBytes::NAMES));
        assert_eq!(header_name(b"x-kept").unwrap(), first, "made anew");
        HEADER_BYTES.with_borrow(|made| {
            assert!(made.known(b"x-kept").is_some());
            assert!(made.known(b"X-Kept").is_none(), "kept lower-case only");
        });

        let (a, b) = (shared_copy(b"one"), shared_copy(b"two"));
        assert_eq!((&a[..], &b[..]), (&b"one"[..], &b"two"[..]));
        assert_eq!(a.as_ptr().wrapping_add(3), b.as_ptr(), "one buffer");
        let big = shared_copy(&[b'v'; 3 * HeaderBytes::VALUES]);
        assert_eq!(big.len(), 3 * HeaderBytes::VALUES);
        assert_eq!(&shared_copy(b"after")[..], b"after");
        let mut map = request();
        map.add(b"x-d", b"5");
        map.replace(b":path", b"/q");
        assert_eq!(map.value(b"x-d"), Some(&b"5"[..]));
        assert_eq!(map.pseudo(Pseudo::Path), Some(&b"/q"[..]));
    }

    #[test]
    fn pairs_no_message_may_carry_are_left_out() {
        let mut map = request();
        map.add(b"bad name", b"v");
        map.add(b"x-ok", b"line\r\nbreak");
        map.add(b":unknown", b"x");
        assert_eq!(map.len(), 8);
        map.replace(b"x-a", b"line\nbreak");
        assert_eq!(
            map.value(b"x-a"),
            None,
            "the invalid replacement leaves no value"
        );
        let list = vec![
            (":status".to_string(), b"201".to_vec()),
            ("x-bad".to_string(), b"bad\n".to_vec()),
            ("X-Y".to_string(), b"1".to_vec()),
        ];
        map.set_pairs(&list);
        assert_eq!(pairs(&map), owned(&[(":status", "201"), ("x-y", "1")]));
    }
}
