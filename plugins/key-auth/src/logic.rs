//! Pure key-auth logic: configuration, key lookup and query-string handling.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use serde::Deserialize;
use tollgate_sdk::config::ConfigError;
use tollgate_sdk::{consumer, secret};

/// The plugin configuration (see the crate README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Header names and query parameter names that may carry the key, tried in order.
    #[serde(default = "default_key_names")]
    pub key_names: Vec<String>,
    /// Look for the key in request headers.
    #[serde(default = "yes")]
    pub key_in_header: bool,
    /// Look for the key in query parameters.
    #[serde(default = "yes")]
    pub key_in_query: bool,
    /// Remove the key header / query parameter before forwarding.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// The known consumers and their keys.
    pub consumers: Vec<Consumer>,
}

/// One consumer and the keys that identify it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub name: String,
    pub keys: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

fn default_key_names() -> Vec<String> {
    vec!["apikey".into(), "x-api-key".into()]
}

fn yes() -> bool {
    true
}

fn default_realm() -> String {
    "tollgate".into()
}

/// The validated configuration: keys indexed for lookup.
#[derive(Debug, Clone)]
pub struct KeyAuth {
    pub config: Config,
    /// key → index into `config.consumers`.
    keys: KeyIndex,
    /// Per consumer (same index), its groups joined for the groups header.
    groups: Vec<String>,
}

impl KeyAuth {
    /// Validates the configuration; the error names the offending field.
    pub fn new(mut config: Config) -> Result<Self, ConfigError> {
        if config.key_names.is_empty() {
            return Err(ConfigError::new(
                "key_names",
                "must name at least one header or query parameter",
            ));
        }
        for (i, name) in config.key_names.iter_mut().enumerate() {
            if name.is_empty() {
                return Err(ConfigError::new(
                    format!("key_names[{i}]"),
                    "must not be empty",
                ));
            }
            *name = name.to_ascii_lowercase();
        }
        if !config.key_in_header && !config.key_in_query {
            return Err(ConfigError::new(
                "key_in_header",
                "key_in_header and key_in_query cannot both be false",
            ));
        }
        let mut keys = KeyIndex::default();
        for (i, consumer) in config.consumers.iter().enumerate() {
            if consumer.name.is_empty() {
                return Err(ConfigError::new(
                    format!("consumers[{i}].name"),
                    "must not be empty",
                ));
            }
            if !consumer::is_valid_name(&consumer.name) {
                return Err(ConfigError::new(
                    format!("consumers[{i}].name"),
                    "must be visible ASCII without commas",
                ));
            }
            consumer::check_groups(&consumer.groups, &format!("consumers[{i}].groups"))?;
            for (j, key) in consumer.keys.iter().enumerate() {
                if key.is_empty() {
                    return Err(ConfigError::new(
                        format!("consumers[{i}].keys[{j}]"),
                        "must not be empty",
                    ));
                }
                if !keys.insert(key, i) {
                    return Err(ConfigError::new(
                        format!("consumers[{i}].keys[{j}]"),
                        "this key is given to two consumers",
                    ));
                }
            }
        }
        let groups = config
            .consumers
            .iter()
            .map(|consumer| consumer::format_groups(&consumer.groups))
            .collect();
        Ok(Self {
            config,
            keys,
            groups,
        })
    }

    /// The consumer owning `key`.
    pub fn consumer(&self, key: &str) -> Option<&Consumer> {
        self.keys.get(key).map(|i| &self.config.consumers[i])
    }

    /// The name and joined groups of the consumer owning `key`
    /// (for `tollgate_sdk::consumer::set_parts`).
    pub fn identity(&self, key: &str) -> Option<(&str, &str)> {
        let i = self.keys.get(key)?;
        Some((&self.config.consumers[i].name, &self.groups[i]))
    }

    /// The `WWW-Authenticate` challenge.
    pub fn challenge(&self) -> String {
        format!("Key realm=\"{}\"", self.config.realm.replace('"', ""))
    }
}

/// The configured keys, each with its consumer's index. A key is looked up by its SipHash
/// under a random seed, so where its hash lands tells a client nothing about the keys, and
/// confirmed by [`secret::same_bytes`], so the comparison's time does not tell how much of a
/// key matched either.
#[derive(Debug, Clone, Default)]
struct KeyIndex {
    seed: RandomState,
    /// The keys by their hash: one key, or more only when two hashes collide.
    by_hash: HashMap<u64, Vec<KeyOwner>, BuildHasherDefault<KnownHash>>,
}

/// A key and the index of its consumer.
type KeyOwner = (Box<[u8]>, usize);

impl KeyIndex {
    /// Adds `key` for consumer `index`; `false` if the key is there already.
    fn insert(&mut self, key: &str, index: usize) -> bool {
        let keys = self.by_hash.entry(self.hash(key)).or_default();
        if keys.iter().any(|(known, _)| **known == *key.as_bytes()) {
            return false;
        }
        keys.push((key.as_bytes().into(), index));
        true
    }

    /// The key's bytes hashed alone (`hash_one` would hash their length too).
    fn hash(&self, key: &str) -> u64 {
        let mut hasher = self.seed.build_hasher();
        hasher.write(key.as_bytes());
        hasher.finish()
    }

    /// The index of the consumer that owns `key`.
    fn get(&self, key: &str) -> Option<usize> {
        self.by_hash
            .get(&self.hash(key))?
            .iter()
            .find(|(known, _)| secret::same_bytes(known, key.as_bytes()))
            .map(|(_, index)| *index)
    }
}

/// The hasher of a map whose keys are hashes already: it keeps the one it is given.
#[derive(Default)]
struct KnownHash(u64);

impl Hasher for KnownHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach this hasher, through `write_u64`.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// Where the key was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    Header(&'a str),
    Query(&'a str),
}

/// Finds the key: headers first (by `key_names` order), then the query string of `path`.
/// `header` looks a request header up by lower-case name.
/// `path` gives the request's `:path`, asked for only when no header has the key.
pub fn find_key<'a>(
    config: &'a Config,
    header: impl Fn(&str) -> Option<String>,
    path: impl FnOnce() -> String,
) -> Option<(Found<'a>, String)> {
    if config.key_in_header {
        for name in &config.key_names {
            if let Some(value) = header(name) {
                let trimmed = value.trim();
                if trimmed.is_empty() {
                    continue;
                }
                // The host's copy is the key unless it must be trimmed.
                let value = if trimmed.len() == value.len() {
                    value
                } else {
                    trimmed.to_owned()
                };
                return Some((Found::Header(name), value));
            }
        }
    }
    if config.key_in_query {
        let path = path();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        for name in &config.key_names {
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if percent_decode(k).eq_ignore_ascii_case(name) {
                    let value = percent_decode(v);
                    if !value.is_empty() {
                        return Some((Found::Query(name), value));
                    }
                }
            }
        }
    }
    None
}

/// `path` without the query parameter `name` (every occurrence); `?` dropped if nothing remains.
pub fn strip_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !percent_decode(key).eq_ignore_ascii_case(name)
        })
        .collect();
    let kept: Vec<&str> = kept.into_iter().filter(|p| !p.is_empty()).collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes stay as written.
pub fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(json: &str) -> KeyAuth {
        let config: Config = serde_json_config(json);
        KeyAuth::new(config).unwrap()
    }

    fn serde_json_config(json: &str) -> Config {
        tollgate_sdk::config::parse(json.as_bytes()).unwrap()
    }

    const CONFIG: &str = r#"{"consumers":[{"name":"alice","keys":["k1","k2"],"groups":["gold"]},{"name":"bob","keys":["k3"]}]}"#;

    #[test]
    fn keys_map_to_consumers() {
        let auth = auth(CONFIG);
        assert_eq!(auth.consumer("k2").unwrap().name, "alice");
        assert_eq!(auth.consumer("k3").unwrap().name, "bob");
        assert!(auth.consumer("nope").is_none());
        assert_eq!(auth.challenge(), "Key realm=\"tollgate\"");
    }

    #[test]
    fn every_key_of_many_finds_its_consumer_and_a_near_miss_none() {
        let consumers: Vec<String> = (0..500)
            .map(|i| format!(r#"{{"name":"c{i}","keys":["key-{i:05}-a","key-{i:05}-b"]}}"#))
            .collect();
        let auth = auth(&format!(r#"{{"consumers":[{}]}}"#, consumers.join(",")));
        for i in 0..500 {
            let name = format!("c{i}");
            assert_eq!(auth.consumer(&format!("key-{i:05}-a")).unwrap().name, name);
            assert_eq!(auth.identity(&format!("key-{i:05}-b")).unwrap().0, name);
            assert!(auth.consumer(&format!("key-{i:05}-c")).is_none());
            assert!(auth.consumer(&format!("key-{i:05}-")).is_none());
        }
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let config = serde_json_config(
            r#"{"consumers":[{"name":"a","keys":["k1"]},{"name":"b","keys":["k2","k1"]}]}"#,
        );
        let error = KeyAuth::new(config).unwrap_err().to_string();
        assert!(error.contains("consumers[1].keys[1]"), "{error}");
    }

    #[test]
    fn headers_win_over_the_query() {
        let auth = auth(CONFIG);
        let header = |name: &str| (name == "x-api-key").then(|| "k1".to_owned());
        assert_eq!(
            find_key(&auth.config, header, || "/a?apikey=k3".into()),
            Some((Found::Header("x-api-key"), "k1".into()))
        );
        assert_eq!(
            find_key(&auth.config, |_| None, || "/a?x=1&apikey=k%33".into()),
            Some((Found::Query("apikey"), "k3".into()))
        );
        assert_eq!(
            find_key(&auth.config, |_| None, || "/a?apikey=".into()),
            None
        );
        assert_eq!(find_key(&auth.config, |_| None, || "/a".into()), None);
    }

    #[test]
    fn query_only_and_header_only() {
        let mut auth = auth(CONFIG);
        auth.config.key_in_query = false;
        assert_eq!(
            find_key(&auth.config, |_| None, || "/a?apikey=k1".into()),
            None
        );
        auth.config.key_in_query = true;
        auth.config.key_in_header = false;
        assert_eq!(
            find_key(&auth.config, |_| Some("k1".into()), || "/a".into()),
            None
        );
    }

    #[test]
    fn query_params_are_stripped() {
        assert_eq!(strip_query_param("/a?apikey=1", "apikey"), "/a");
        assert_eq!(
            strip_query_param("/a?x=1&apikey=1&y=2", "apikey"),
            "/a?x=1&y=2"
        );
        assert_eq!(strip_query_param("/a?x=1", "apikey"), "/a?x=1");
        assert_eq!(strip_query_param("/a", "apikey"), "/a");
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let dup = r#"{"consumers":[{"name":"a","keys":["k"]},{"name":"b","keys":["k"]}]}"#;
        assert!(KeyAuth::new(serde_json_config(dup)).unwrap_err().path() == "consumers[1].keys[0]");
        let empty = r#"{"key_names":[],"consumers":[]}"#;
        assert!(KeyAuth::new(serde_json_config(empty)).unwrap_err().path() == "key_names");
        let unknown = tollgate_sdk::config::parse::<Config>(
            br#"{"consumers":[{"name":"a","keys":[],"grups":[]}]}"#,
        );
        assert!(unknown.unwrap_err().to_string().contains("grups"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
