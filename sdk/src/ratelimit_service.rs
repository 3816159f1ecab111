//! Envoy's rate limit service API, as a client: the `ShouldRateLimit` request a plugin sends
//! with `proxy_grpc_call`, and the answer it reads back. The same calls work against
//! `tollgate ratelimit` and against Envoy's own rate limit service, which is how the
//! rate-limit and quota plugins share their counters between gateway replicas.
//!
//! The messages are written and read here directly in the protobuf wire format (field
//! numbers of `envoy.service.ratelimit.v3`), which keeps a plugin free of a protobuf
//! runtime: a request is a few strings and numbers.
//!
//! ```
//! use tollgate_sdk::ratelimit_service::{Descriptor, Unit, RateLimitRequest};
//! let request = RateLimitRequest {
//!     domain: "shop".into(),
//!     descriptors: vec![Descriptor {
//!         entries: vec![("consumer".into(), "alice".into())],
//!         limit: Some((30, Unit::Minute)),
//!         hits: None,
//!     }],
//!     hits_addend: 1,
//! };
//! let bytes = request.encode();
//! assert_eq!(&bytes[..6], b"\x0a\x04shop");
//! ```

/// The gRPC service and method to call.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// A window's unit (`envoy.type.v3.RateLimitUnit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
}

/// One thing to count: its entries (key, value) and the limit it is held to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    /// Requests per unit, sent as the descriptor's limit override.
    pub limit: Option<(u32, Unit)>,
    /// Hits for this descriptor alone, instead of the request's `hits_addend`.
    pub hits: Option<u64>,
}

/// `RateLimitRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitRequest {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
    /// Hits to add to each descriptor (0 counts as 1 at the service).
    pub hits_addend: u32,
}

/// The service's verdict (`RateLimitResponse.Code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(value: u64) -> Self {
        match value {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// One descriptor's status in the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: Option<Code>,
    /// The limit applied: requests per unit (0 when the service applied none).
    pub requests_per_unit: u32,
    pub limit_remaining: u32,
    /// Seconds until the window resets, when the service says.
    pub seconds_until_reset: Option<u64>,
}

/// `RateLimitResponse`, the fields a plugin acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitResponse {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
}

impl RateLimitRequest {
    /// The request message, protobuf-encoded (what `proxy_grpc_call` sends).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        put_string(&mut out, 1, &self.domain);
        for descriptor in &self.descriptors {
            let mut inner = Vec::with_capacity(48);
            for (key, value) in &descriptor.entries {
                let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
                put_string(&mut entry, 1, key);
                put_string(&mut entry, 2, value);
                put_bytes(&mut inner, 1, &entry);
            }
            if let Some((requests, unit)) = descriptor.limit {
                let mut limit = Vec::with_capacity(8);
                put_varint_field(&mut limit, 1, u64::from(requests));
                put_varint_field(&mut limit, 2, unit as u64);
                put_bytes(&mut inner, 2, &limit);
            }
            if let Some(hits) = descriptor.hits {
                let mut value = Vec::with_capacity(10);
                put_varint_field(&mut value, 1, hits);
                put_bytes(&mut inner, 3, &value);
            }
            put_bytes(&mut out, 2, &inner);
        }
        if self.hits_addend != 0 {
            put_varint_field(&mut out, 3, u64::from(self.hits_addend));
        }
        out
    }
}

impl RateLimitResponse {
    /// Reads a `RateLimitResponse`; `None` when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut overall_code = Code::Unknown;
        let mut statuses = Vec::new();
        for field in Fields::new(bytes) {
            match field? {
                (1, Value::Varint(code)) => overall_code = Code::from_wire(code),
                (2, Value::Bytes(status)) => statuses.push(decode_status(status)?),
                _ => {}
            }
        }
        Some(Self {
            overall_code,
            statuses,
        })
    }
}

fn decode_status(bytes: &[u8]) -> Option<DescriptorStatus> {
    let mut status = DescriptorStatus::default();
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Varint(code)) => status.code = Some(Code::from_wire(code)),
            (2, Value::Bytes(limit)) => {
                for field in Fields::new(limit) {
                    if let (1, Value::Varint(requests)) = field? {
                        status.requests_per_unit = u32::try_from(requests).ok()?;
                    }
                }
            }
            (3, Value::Varint(remaining)) => {
                status.limit_remaining = u32::try_from(remaining).ok()?;
            }
            (4, Value::Bytes(duration)) => {
                let mut seconds = 0;
                for field in Fields::new(duration) {
                    if let (1, Value::Varint(value)) = field? {
                        seconds = value;
                    }
                }
                status.seconds_until_reset = Some(seconds);
            }
            _ => {}
        }
    }
    Some(status)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, value);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_string(out: &mut Vec<u8>, field: u32, text: &str) {
    if !text.is_empty() {
        put_bytes(out, field, text.as_bytes());
    }
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// The fields of one protobuf message, in order; `None` for bytes that are not a message.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first()?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        if self.rest.len() < length {
            return None;
        }
        let (taken, rest) = self.rest.split_at(length);
        self.rest = rest;
        Some(taken)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u64, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => self.take(8).map(|_| Value::Other)?,
                2 => {
                    let length = usize::try_from(self.varint()?).ok()?;
                    Value::Bytes(self.take(length)?)
                }
                5 => self.take(4).map(|_| Value::Other)?,
                _ => return None,
            };
            Some((key >> 3, value))
        })();
        if field.is_none() {
            // Stop at the first malformed field, reporting it once.
            self.rest = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding_matches_the_wire_format() {
        let request = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![Descriptor {
                entries: vec![("k".into(), "v".into())],
                limit: Some((300, Unit::Minute)),
                hits: Some(0),
            }],
            hits_addend: 2,
        };
        let expected: &[u8] = &[
            0x0a, 1, b'd', // domain
            0x12, 19, // descriptor, 19 bytes
            0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', // entry
            0x12, 5, 0x08, 0xac, 0x02, 0x10, 2, // limit: 300 per MINUTE
            0x1a, 2, 0x08, 0, // hits_addend { value: 0 }
            0x18, 2, // hits_addend
        ];
        assert_eq!(request.encode(), expected);
    }

    #[test]
    fn responses_decode_and_skip_unknown_fields() {
        let bytes: &[u8] = &[
            0x08, 2, // overall_code OVER_LIMIT
            0x12, 14, // status
            0x08, 2, // code
            0x12, 4, 0x08, 30, 0x10, 2, // current_limit 30 / MINUTE
            0x18, 0, // limit_remaining
            0x22, 2, 0x08, 42, // duration_until_reset 42 s
            0x2a, 1, b'x', // raw_body: unknown here, skipped
        ];
        let response = RateLimitResponse::decode(bytes).unwrap();
        assert_eq!(response.overall_code, Code::OverLimit);
        assert_eq!(
            response.statuses,
            vec![DescriptorStatus {
                code: Some(Code::OverLimit),
                requests_per_unit: 30,
                limit_remaining: 0,
                seconds_until_reset: Some(42),
            }]
        );
        assert_eq!(RateLimitResponse::decode(&[0x12, 5, 0x08]), None);
        assert_eq!(
            RateLimitResponse::decode(&[]).unwrap().overall_code,
            Code::Unknown
        );
    }
}
