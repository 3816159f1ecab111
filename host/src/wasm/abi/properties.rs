//! Properties with Envoy's names, paths and encodings (policies/README.md lists them all).
//!
//! A property is looked up as Envoy's wasm host does: the first segments name an attribute,
//! which is a typed value (string, integer, boolean, timestamp, map, list, or a message such
//! as the node); any further segments walk into it (a map's key, a message's field). The
//! value is then encoded as Envoy encodes it: strings and bytes raw, integers as 8-byte
//! little-endian, doubles as 8-byte IEEE little-endian, booleans as one byte, timestamps and
//! durations as i64 nanoseconds, maps in the pairs format (values encoded the same way),
//! lists in the pairs format with each item as a key and an empty value, messages as
//! serialized protobuf. `set_property` writes per-request filter state that later plugins
//! read.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;
use wasmtime::{Caller, Linker};

use super::{status, Status};
use crate::config::NodeSettings;
use crate::telemetry::response_details::response_details;
use crate::tls::CertificateFacts;
use crate::wasm::header_map::PseudoHeaderMap;
use crate::wasm::host::{HostState, StreamInfo, StreamState};
use crate::wasm::memory;

type Ctx<'a> = Caller<'a, HostState>;

/// Envoy's `TrafficDirection` for `listener_direction`: a front-door gateway sends its
/// clients' requests out to the services behind it, which is how Istio declares its
/// gateways' listeners (`OUTBOUND`, 2; `INBOUND` is 1, `UNSPECIFIED` 0).
pub const LISTENER_DIRECTION: i64 = 2;

/// A property's value, typed as Envoy's attribute expressions type it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// Strings and bytes.
    Bytes(Vec<u8>),
    /// Integers, timestamps and durations (as nanoseconds).
    Int(i64),
    Double(f64),
    Bool(bool),
    /// A JSON `null` in node metadata: it has no encoding.
    Null,
    Map(Vec<(String, Value)>),
    List(Vec<Value>),
    Message(Message),
}

/// The protobuf messages properties return whole, or walk by field name.
#[derive(Debug, Clone, PartialEq)]
enum Message {
    Node(Arc<NodeSettings>),
    Locality(Arc<NodeSettings>),
    /// `envoy.config.core.v3.Metadata`: filter name → struct.
    Metadata(Vec<(String, serde_json::Map<String, serde_json::Value>)>),
}

impl Value {
    fn text(text: impl Into<String>) -> Self {
        Value::Bytes(text.into().into_bytes())
    }

    fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> Self {
        Value::List(
            items
                .into_iter()
                .map(|item| Value::text(item.as_str()))
                .collect(),
        )
    }

    fn from_json(value: &serde_json::Value) -> Self {
        use serde_json::Value as Json;
        match value {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            // A protobuf Struct holds every number as a double.
            Json::Number(n) => Value::Double(n.as_f64().unwrap_or_default()),
            Json::String(s) => Value::text(s.as_str()),
            Json::Array(items) => Value::List(items.iter().map(Value::from_json).collect()),
            Json::Object(map) => Value::from_json_object(map),
        }
    }

    fn from_json_object(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        Value::Map(
            map.iter()
                .map(|(key, value)| (key.clone(), Value::from_json(value)))
                .collect(),
        )
    }

    /// One path segment further in: a map's key or a message's field.
    fn field(self, name: &str) -> Option<Value> {
        match self {
            Value::Map(entries) => entries
                .into_iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value),
            Value::Message(message) => message.field(name),
            _ => None,
        }
    }

    /// The bytes a plugin gets; `None` (NOT_FOUND) for what has no encoding.
    fn encode(&self) -> Option<Vec<u8>> {
        Some(match self {
            Value::Bytes(bytes) => bytes.clone(),
            Value::Int(n) => n.to_le_bytes().to_vec(),
            Value::Double(d) => d.to_le_bytes().to_vec(),
            Value::Bool(b) => vec![u8::from(*b)],
            Value::Null => return None,
            Value::Map(entries) => {
                pairs(entries.iter().map(|(key, value)| {
                    (key.as_bytes().to_vec(), value.encode().unwrap_or_default())
                }))
            }
            Value::List(items) => pairs(
                items
                    .iter()
                    .map(|item| (item.encode().unwrap_or_default(), Vec::new())),
            ),
            Value::Message(message) => message.encode(),
        })
    }
}

impl Message {
    fn field(self, name: &str) -> Option<Value> {
        match (self, name) {
            (Message::Node(node), "id") => Some(Value::text(node.id.as_str())),
            (Message::Node(node), "cluster") => Some(Value::text(node.cluster.as_str())),
            (Message::Node(node), "metadata") => Some(Value::from_json_object(&node.metadata)),
            (Message::Node(node), "locality") => Some(Value::Message(Message::Locality(node))),
            (Message::Locality(node), "region") => Some(Value::text(node.locality.region.as_str())),
            (Message::Locality(node), "zone") => Some(Value::text(node.locality.zone.as_str())),
            (Message::Locality(node), "sub_zone") => {
                Some(Value::text(node.locality.sub_zone.as_str()))
            }
            (Message::Metadata(filters), "filter_metadata") => Some(Value::Map(
                filters
                    .iter()
                    .map(|(filter, fields)| (filter.clone(), Value::from_json_object(fields)))
                    .collect(),
            )),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Node(node) => {
                proto::string(&mut out, 1, &node.id);
                proto::string(&mut out, 2, &node.cluster);
                if !node.metadata.is_empty() {
                    proto::bytes(&mut out, 3, &proto::structure(&node.metadata));
                }
                let locality = Message::Locality(node.clone()).encode();
                if !locality.is_empty() {
                    proto::bytes(&mut out, 4, &locality);
                }
            }
            Message::Locality(node) => {
                proto::string(&mut out, 1, &node.locality.region);
                proto::string(&mut out, 2, &node.locality.zone);
                proto::string(&mut out, 3, &node.locality.sub_zone);
            }
            Message::Metadata(filters) => {
                for (filter, fields) in filters {
                    let mut entry = Vec::new();
                    proto::string(&mut entry, 1, filter);
                    proto::bytes(&mut entry, 2, &proto::structure(fields));
                    proto::bytes(&mut out, 1, &entry);
                }
            }
        }
        out
    }
}

/// Protobuf wire encoding of the few messages properties return.
mod proto {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    /// A length-delimited field (strings, bytes, messages), always written.
    pub fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
        varint(out, u64::from(field << 3 | 2));
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }

    /// A proto3 string field: left out when empty.
    pub fn string(out: &mut Vec<u8>, field: u32, value: &str) {
        if !value.is_empty() {
            bytes(out, field, value.as_bytes());
        }
    }

    /// `google.protobuf.Struct`.
    pub fn structure(fields: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in fields {
            let mut entry = Vec::new();
            bytes(&mut entry, 1, key.as_bytes());
            bytes(&mut entry, 2, &self::value(value));
            bytes(&mut out, 1, &entry);
        }
        out
    }

    /// `google.protobuf.Value`: the set member of its oneof is written even when it holds
    /// the default.
    fn value(value: &serde_json::Value) -> Vec<u8> {
        use serde_json::Value as Json;
        let mut out = Vec::new();
        match value {
            Json::Null => {
                varint(&mut out, 1 << 3);
                varint(&mut out, 0);
            }
            Json::Number(n) => {
                varint(&mut out, 2 << 3 | 1);
                out.extend_from_slice(&n.as_f64().unwrap_or_default().to_le_bytes());
            }
            Json::String(s) => bytes(&mut out, 3, s.as_bytes()),
            Json::Bool(b) => {
                varint(&mut out, 4 << 3);
                varint(&mut out, u64::from(*b));
            }
            Json::Object(map) => bytes(&mut out, 5, &structure(map)),
            Json::Array(items) => {
                let mut list = Vec::new();
                for item in items {
                    bytes(&mut list, 1, &self::value(item));
                }
                bytes(&mut out, 6, &list);
            }
        }
        out
    }
}

/// The pairs format of proxy-wasm: a count, each key and value length, then each key and
/// value NUL-terminated. An empty map is its count alone, as Envoy writes it.
fn pairs(entries: impl Iterator<Item = (Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    let entries: Vec<_> = entries.collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (key, value) in &entries {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (key, value) in &entries {
        out.extend_from_slice(key);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

fn nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn header<'a>(pairs: &'a PseudoHeaderMap, name: &str) -> Option<&'a [u8]> {
    pairs.value(name.as_bytes())
}

fn header_map(pairs: &PseudoHeaderMap) -> Value {
    Value::Map(
        pairs
            .headers()
            .map(|(k, v)| (k.as_str().to_string(), Value::Bytes(v.as_bytes().to_vec())))
            .collect(),
    )
}

fn headers_size(pairs: &PseudoHeaderMap) -> u64 {
    pairs.pairs().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

/// A property's value as the guest gets it; one of a few dozen bytes (most are) is kept
/// inline, not allocated.
type PropertyBytes = SmallVec<[u8; 64]>;

/// Looks a property up; `None` is NOT_FOUND.
pub fn lookup(state: &HostState, key: &[u8]) -> Option<PropertyBytes> {
    let stream = state
        .streams
        .get(&state.effective_context)
        .map(|stream| &**stream);
    // Attributes are named in text; a path with a segment that is not UTF-8 names none.
    let path: Option<SmallVec<[&str; 4]>> = key
        .split(|byte| *byte == 0)
        .map(|segment| std::str::from_utf8(segment).ok())
        .collect();
    if let Some(value) = path.and_then(|path| resolve(state, stream, &path)) {
        return value.encode().map(SmallVec::from_vec);
    }
    // Filter state written by `set_property`: the whole path is the key, as its bytes.
    stream?
        .info
        .filter_state
        .lock()
        .ok()?
        .get(key)
        .map(SmallVec::from_slice)
}

/// The attribute the first segments name, walked into by the rest.
fn resolve(state: &HostState, stream: Option<&StreamState>, path: &[&str]) -> Option<Value> {
    let plugin = &state.plugin;
    let (value, rest) = match path {
        ["plugin_name", rest @ ..] => (Value::text(plugin.name.as_str()), rest),
        ["plugin_root_id", rest @ ..] => (Value::text(plugin.root_id.as_str()), rest),
        ["plugin_vm_id", rest @ ..] => (Value::text(plugin.vm_id.as_str()), rest),
        ["node", rest @ ..] | ["xds", "node", rest @ ..] => {
            (Value::Message(Message::Node(plugin.node.clone())), rest)
        }
        ["listener_direction", rest @ ..] | ["xds", "listener_direction", rest @ ..] => {
            (Value::Int(LISTENER_DIRECTION), rest)
        }
        [section, field, rest @ ..] => {
            let stream = stream?;
            let value = match *section {
                "request" => request(stream, field)?,
                "response" => response(stream, field)?,
                "connection" => connection(&stream.info, field)?,
                "source" => peer(&stream.info.downstream_remote, field)?,
                "destination" => peer(&stream.info.downstream_local, field)?,
                "upstream" => upstream(&stream.info, field)?,
                "xds" => xds(&stream.info, field)?,
                "tracing" => tracing(&stream.info, field)?,
                _ => return wasm_attribute(stream, path),
            };
            (value, rest)
        }
        _ => return wasm_attribute(stream?, path),
    };
    rest.iter()
        .try_fold(value, |value, segment| value.field(segment))
}

/// The one-segment attributes of Envoy's wasm host that are per request.
fn wasm_attribute(stream: &StreamState, path: &[&str]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let value = match *first {
        "cluster_name" => xds(&stream.info, "cluster_name")?,
        "route_name" => xds(&stream.info, "route_name")?,
        "upstream_host_metadata" => xds(&stream.info, "upstream_host_metadata")?,
        _ => return None,
    };
    rest.iter()
        .try_fold(value, |value, segment| value.field(segment))
}

/// The request's trace, when `server.tracing` is on: its trace id and the gateway's server
/// span id, in hex as `traceparent` writes them.
fn tracing(info: &StreamInfo, field: &str) -> Option<Value> {
    let trace = info.trace.as_ref()?;
    Some(match field {
        "trace_id" => Value::text(trace.trace_id()),
        "span_id" => Value::text(trace.span_id()),
        _ => return None,
    })
}

fn request(stream: &StreamState, field: &str) -> Option<Value> {
    let info = &stream.info;
    let headers = stream.request_headers_view();
    let path = || header(headers, ":path");
    Some(match field {
        "path" => Value::Bytes(path()?.to_vec()),
        "url_path" => Value::Bytes(path()?.split(|b| *b == b'?').next()?.to_vec()),
        "host" => Value::Bytes(header(headers, ":authority")?.to_vec()),
        "scheme" => Value::Bytes(header(headers, ":scheme")?.to_vec()),
        "method" => Value::Bytes(header(headers, ":method")?.to_vec()),
        "headers" => header_map(headers),
        "referer" => Value::Bytes(header(headers, "referer")?.to_vec()),
        "useragent" => Value::Bytes(header(headers, "user-agent")?.to_vec()),
        "time" => Value::Int(nanos(info.started)),
        "id" => Value::Bytes(info.request_id.as_bytes().to_vec()),
        "protocol" => Value::text(info.protocol),
        "query" => {
            let path = path()?;
            let at = path.iter().position(|b| *b == b'?')?;
            Value::Bytes(path[at + 1..].to_vec())
        }
        "duration" => {
            let finished = stream.finished?;
            Value::Int(
                finished
                    .duration_since(info.started)
                    .map_or(0, |d| d.as_nanos() as i64),
            )
        }
        "size" => Value::Int(stream.request_size as i64),
        "total_size" => Value::Int((stream.request_size + headers_size(headers)) as i64),
        _ => return None,
    })
}

fn response(stream: &StreamState, field: &str) -> Option<Value> {
    let headers = stream.response_headers_view();
    let code = || {
        stream
            .response_code
            .or(stream.info.response_status())
            .or_else(|| {
                std::str::from_utf8(header(headers, ":status")?)
                    .ok()?
                    .parse()
                    .ok()
            })
    };
    Some(match field {
        "code" => Value::Int(i64::from(code()?)),
        "code_details" => {
            let outcome = stream.info.outcome();
            // Before the gateway has answered there are no details yet.
            if outcome.detail.is_empty() {
                return None;
            }
            Value::text(
                response_details(outcome.detail, &outcome.plugin_details, outcome.attempts).details,
            )
        }
        "flags" => {
            let outcome = stream.info.outcome();
            Value::Int(
                response_details(outcome.detail, &outcome.plugin_details, outcome.attempts).flags
                    as i64,
            )
        }
        "grpc_status" => {
            let value = header(&stream.response_trailers, "grpc-status")
                .or_else(|| header(headers, "grpc-status"))?;
            Value::Int(std::str::from_utf8(value).ok()?.parse().ok()?)
        }
        "headers" => header_map(headers),
        "trailers" => header_map(&stream.response_trailers),
        "size" => Value::Int(stream.response_size as i64),
        "total_size" => Value::Int((stream.response_size + headers_size(headers)) as i64),
        _ => return None,
    })
}

fn certificate_field(certificate: Option<&Arc<CertificateFacts>>, field: &str) -> Option<Value> {
    let empty = CertificateFacts::default();
    let facts = certificate.map_or(&empty, |facts| &**facts);
    Some(match field {
        "subject" => Value::text(facts.subject.as_str()),
        "dns_san" => Value::strings(&facts.dns_sans),
        "uri_san" => Value::strings(&facts.uri_sans),
        "sha256" => Value::text(facts.sha256.as_str()),
        _ => return None,
    })
}

fn connection(info: &StreamInfo, field: &str) -> Option<Value> {
    let tls = info.tls.as_ref();
    let certificate = |which: &str, field: &str| {
        let tls = tls?;
        let facts = if which == "local" {
            &tls.local
        } else {
            &tls.peer
        };
        certificate_field(facts.as_ref(), field)
    };
    Some(match field {
        "id" => Value::Int(info.connection_id as i64),
        "mtls" => Value::Bool(info.mtls),
        "requested_server_name" => Value::text(info.server_name.clone().unwrap_or_default()),
        "tls_version" => Value::text(info.tls_version?),
        "subject_local_certificate" => certificate("local", "subject")?,
        "subject_peer_certificate" => certificate("peer", "subject")?,
        "dns_san_local_certificate" => certificate("local", "dns_san")?,
        "dns_san_peer_certificate" => certificate("peer", "dns_san")?,
        "uri_san_local_certificate" => certificate("local", "uri_san")?,
        "uri_san_peer_certificate" => certificate("peer", "uri_san")?,
        "sha256_peer_certificate_digest" => certificate("peer", "sha256")?,
        // A request means the connection is up: no termination or failure to report.
        _ => return None,
    })
}

fn peer(address: &std::net::SocketAddr, field: &str) -> Option<Value> {
    Some(match field {
        "address" => Value::text(address.to_string()),
        "port" => Value::Int(i64::from(address.port())),
        _ => return None,
    })
}

fn upstream(info: &StreamInfo, field: &str) -> Option<Value> {
    let outcome = info.outcome();
    if field == "request_attempt_count" {
        return (outcome.attempts > 0).then(|| Value::Int(i64::from(outcome.attempts)));
    }
    let endpoint = outcome.upstream?;
    let address = endpoint.address.as_str();
    Some(match field {
        "address" => Value::text(address),
        "port" => Value::Int(address.rsplit_once(':')?.1.parse().ok()?),
        // The upstream connection's TLS session and local address stay inside the
        // connection pool: not found, as in Envoy for a plain-text upstream.
        _ => return None,
    })
}

fn xds(info: &StreamInfo, field: &str) -> Option<Value> {
    Some(match field {
        "cluster_name" => {
            let outcome = info.outcome();
            match outcome.cluster {
                Some(cluster) => Value::text(&*cluster),
                None => Value::text(&**info.cluster_name.as_ref()?),
            }
        }
        "route_name" => Value::text(&*info.route_name),
        "virtual_host_name" => Value::text(info.virtual_host.name.as_str()),
        "upstream_host_metadata" => {
            let endpoint = info.outcome().upstream?;
            let labels: serde_json::Map<_, _> = endpoint
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            // Endpoint labels are what Envoy's load balancer reads from `envoy.lb`.
            let filters = if labels.is_empty() {
                Vec::new()
            } else {
                vec![("envoy.lb".to_string(), labels)]
            };
            Value::Message(Message::Metadata(filters))
        }
        // Tollgate has no metadata on clusters, routes, virtual hosts or listeners, and no
        // filter chains: not found.
        _ => return None,
    })
}

/// A property path as the guest passes it (segments separated by NUL, a trailing NUL
/// allowed) as one key, its segments still separated by NUL: filter state is keyed so, by
/// the bytes as Envoy keys it (two names that differ only in bytes that are not UTF-8 are
/// two keys), and [`lookup`] splits it.
fn property_key(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(&[0]).unwrap_or(bytes)
}

fn get_property(
    mut caller: Ctx<'_>,
    path_ptr: u32,
    path_len: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<u32> {
    let found = memory::with_guest_bytes(&mut caller, path_ptr, path_len, |path, state| {
        lookup(state, property_key(path))
    });
    match found {
        Ok(Some(value)) => Ok(status(
            memory::return_bytes(&mut caller, &value, ret_ptr, ret_len)?.map_err(Status::from),
        )),
        Ok(None) => Ok(Status::NotFound as u32),
        Err(error) => Ok(Status::from(error) as u32),
    }
}

fn set_property(
    mut caller: Ctx<'_>,
    path_ptr: u32,
    path_len: u32,
    value_ptr: u32,
    value_len: u32,
) -> u32 {
    status((|| {
        // Path and value are copied from where the guest keeps them straight into the
        // request's filter state.
        memory::with_guest_byte_pair(
            &mut caller,
            (path_ptr, path_len),
            (value_ptr, value_len),
            |path, value, state| {
                let stream = state.stream().ok_or(Status::NotFound)?;
                stream
                    .info
                    .filter_state
                    .lock()
                    .map_err(|_| Status::InternalFailure)?
                    .set(property_key(path), value);
                Ok(())
            },
        )?
    })())
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_property", get_property)?;
    linker.func_wrap("env", "proxy_set_property", set_property)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Arc<NodeSettings> {
        let metadata = serde_json::json!({ "app": "edge", "n": 1, "on": false, "tags": ["a"] });
        Arc::new(NodeSettings {
            id: "n1".into(),
            cluster: "c".into(),
            metadata: metadata.as_object().unwrap().clone(),
            locality: crate::config::Locality {
                region: "r".into(),
                zone: String::new(),
                sub_zone: String::new(),
            },
        })
    }

    #[test]
    fn node_is_a_protobuf_message_walked_by_field_name() {
        let node = Value::Message(Message::Node(node()));
        let encoded = node.encode().unwrap();
        // id = 1, cluster = 2, then the metadata Struct (3) and the locality (4).
        assert!(encoded.starts_with(b"\x0a\x02n1\x12\x01c\x1a"));
        assert!(encoded.ends_with(b"\x22\x03\x0a\x01r"));
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(node.clone(), |value, segment| value.field(segment))
                .and_then(|value| value.encode())
        };
        assert_eq!(field(&["id"]), Some(b"n1".to_vec()));
        assert_eq!(field(&["metadata", "app"]), Some(b"edge".to_vec()));
        assert_eq!(
            field(&["metadata", "n"]),
            Some(1.0f64.to_le_bytes().to_vec())
        );
        assert_eq!(field(&["metadata", "on"]), Some(vec![0]));
        assert_eq!(field(&["locality", "region"]), Some(b"r".to_vec()));
        assert_eq!(field(&["no_such_field"]), None);
    }

    #[test]
    fn lists_and_maps_use_the_pairs_format() {
        let list = Value::List(vec![Value::text("a"), Value::text("bc")]);
        assert_eq!(
            list.encode().unwrap(),
            b"\x02\0\0\0\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0a\0\0bc\0\0".to_vec()
        );
        assert_eq!(Value::Map(Vec::new()).encode().unwrap(), vec![0, 0, 0, 0]);
        let map = Value::Map(vec![("k".into(), Value::Int(1))]);
        let encoded = map.encode().unwrap();
        assert_eq!(&encoded[..4], &[1, 0, 0, 0]);
        assert_eq!(&encoded[4..12], &[1, 0, 0, 0, 8, 0, 0, 0]);
    }

    #[test]
    fn paths_are_keys_with_or_without_a_trailing_nul() {
        assert_eq!(property_key(b"request\0path"), b"request\0path");
        assert_eq!(property_key(b"request\0path\0"), b"request\0path");
        assert_eq!(property_key(b"marker"), b"marker");
        assert_eq!(property_key(b"bad\xff\0x"), b"bad\xff\0x");
    }
}
