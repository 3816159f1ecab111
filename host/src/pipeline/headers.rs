//! Header hygiene on the way through: hop-by-hop removal (on arrival, before any plugin),
//! X-Forwarded-*, request ids.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Leaves an upstream answer's head with the one body framing the client can trust. The
/// upstream client has already decoded a `Transfer-Encoding` body, so a `Content-Length`
/// beside it (which RFC 9112 §6.3 says to ignore) would frame the decoded body wrongly for
/// the client: it goes. A length the upstream repeated (`5, 5`, or the field twice), accepted
/// because every copy agrees, goes on as one value, as the gateway asks of its own clients.
/// Call it before [`remove_hop_by_hop`], which removes `Transfer-Encoding`.
pub fn one_body_framing(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        return;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return;
    };
    if lengths.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let length = first
        .to_str()
        .ok()
        .and_then(|value| value.split(',').next())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match length {
        Some(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        // The upstream client refuses lengths that differ or do not parse; should one pass
        // anyway, the client is better off with no length (the body ends at the close).
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
}

/// Removes the headers that describe one connection and must not be forwarded (RFC 9110
/// §7.6.1): `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding`, `Trailer`, `Upgrade` (unless an upgrade is being proxied) and `TE`
/// except for `TE: trailers`, which gRPC needs end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these, or only `Connection: keep-alive`: one pass over the
    // names (comparisons, no hashing) finds which are there, and only those are looked up.
    let present = HopByHop::present_in(headers);
    if present.is_empty() && !keep_upgrade {
        return;
    }
    if present.has(HopByHop::CONNECTION) {
        remove_named_in_connection(headers, keep_upgrade);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        for (name, bit) in [
            (&header::CONNECTION, HopByHop::CONNECTION),
            (&header::UPGRADE, HopByHop::UPGRADE),
        ] {
            if present.has(bit) {
                headers.remove(name);
            }
        }
    }
    for (name, bit) in [
        (&KEEP_ALIVE, HopByHop::KEEP_ALIVE),
        (&PROXY_CONNECTION, HopByHop::PROXY_CONNECTION),
        (&header::TRANSFER_ENCODING, HopByHop::TRANSFER_ENCODING),
        (&header::TRAILER, HopByHop::TRAILER),
    ] {
        if present.has(bit) {
            headers.remove(name);
        }
    }
    if present.has(HopByHop::TE) {
        let te_trailers = headers
            .get_all(header::TE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|value| value.trim().eq_ignore_ascii_case("trailers"));
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// Removes the headers the `Connection` header names (but `Upgrade` when an upgrade is
/// proxied).
fn remove_named_in_connection(headers: &mut HeaderMap, keep_upgrade: bool) {
    // `Connection: keep-alive`, what most upstreams send, names only a header removed anyway:
    // no list to build.
    let names_only_keep_alive = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .all(|name| name.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
    if names_only_keep_alive {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Which hop-by-hop headers a message has, one bit per name (see [`HopByHop::bit`]).
#[derive(Debug, Clone, Copy)]
struct HopByHop(u8);

impl HopByHop {
    const CONNECTION: u8 = 1;
    const UPGRADE: u8 = 1 << 1;
    const KEEP_ALIVE: u8 = 1 << 2;
    const PROXY_CONNECTION: u8 = 1 << 3;
    const TRANSFER_ENCODING: u8 = 1 << 4;
    const TRAILER: u8 = 1 << 5;
    const TE: u8 = 1 << 6;

    fn present_in(headers: &HeaderMap) -> Self {
        Self(
            headers
                .keys()
                .fold(0, |present, name| present | Self::bit(name)),
        )
    }

    /// The bit of one of the headers [`remove_hop_by_hop`] removes by name; 0 for others.
    fn bit(name: &HeaderName) -> u8 {
        if name == header::CONNECTION {
            Self::CONNECTION
        } else if name == header::UPGRADE {
            Self::UPGRADE
        } else if name == KEEP_ALIVE {
            Self::KEEP_ALIVE
        } else if name == PROXY_CONNECTION {
            Self::PROXY_CONNECTION
        } else if name == header::TRANSFER_ENCODING {
            Self::TRANSFER_ENCODING
        } else if name == header::TRAILER {
            Self::TRAILER
        } else if name == header::TE {
            Self::TE
        } else {
            0
        }
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the header of `bit` (one of the constants above) is there.
    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// Prefix of the headers that carry the consumer identity set by authentication plugins.
pub const RESERVED_PREFIX: &str = "x-tollgate-consumer";

/// Removes client-sent copies of the reserved consumer-identity headers.
pub fn remove_reserved(headers: &mut HeaderMap) {
    if !headers
        .keys()
        .any(|name| name.as_str().starts_with(RESERVED_PREFIX))
    {
        return;
    }
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
}

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` plus `Upgrade: ...`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` from what the gateway itself saw, so clients cannot forge the latter two.
///
/// Every `X-Forwarded-For` line is kept, in arrival order, merged into one list (RFC 9110
/// §5.3 makes repeated lines one comma-separated list): a load balancer that adds its own
/// line rather than appending to the client's must not lose the addresses before it.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    scheme: &str,
    host: Option<&HeaderValue>,
) {
    let mut buffer = [0u8; 48];
    let client = address_text(client, &mut buffer);
    // One lookup finds the client's lines and replaces them (a `get_all` and an `insert`
    // would hash the name twice).
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(vacant) => {
            if let Ok(value) = HeaderValue::from_bytes(client) {
                vacant.insert(value);
            }
        }
        Entry::Occupied(mut occupied) => {
            let mut joined = String::new();
            for line in occupied
                .iter()
                .filter_map(|line| line.to_str().ok())
                .map(|line| line.trim().trim_matches(',').trim())
                .filter(|line| !line.is_empty())
            {
                joined.push_str(line);
                joined.push_str(", ");
            }
            joined.push_str(std::str::from_utf8(client).unwrap_or_default());
            if let Ok(value) = HeaderValue::from_str(&joined) {
                occupied.insert(value);
            }
        }
    }
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if scheme == "https" { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
}

/// `address` as text, written into `buffer` on the stack (an IPv6 address takes at most 45
/// bytes). IPv4, what nearly every client has, is written digit by digit: the formatting
/// machinery costs more than the rest of the forwarded headers together.
fn address_text(address: IpAddr, buffer: &mut [u8; 48]) -> &[u8] {
    let written = match address {
        IpAddr::V4(v4) => {
            let mut at = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buffer[at] = b'.';
                    at += 1;
                }
                if octet >= 100 {
                    buffer[at] = b'0' + octet / 100;
                    at += 1;
                }
                if octet >= 10 {
                    buffer[at] = b'0' + octet / 10 % 10;
                    at += 1;
                }
                buffer[at] = b'0' + octet % 10;
                at += 1;
            }
            at
        }
        IpAddr::V6(_) => {
            let mut unused = &mut buffer[..];
            let _ = std::io::Write::write_fmt(&mut unused, format_args!("{address}"));
            48 - unused.len()
        }
    };
    &buffer[..written]
}

/// Keeps a client's `x-request-id` when it is a sane token, otherwise sets a new random one.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup for the check and the write: the name is hashed once.
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(mut existing) => {
            let value = existing.get();
            let sane = !value.is_empty()
                && value.len() <= 128
                && value.as_bytes().iter().all(|b| b.is_ascii_graphic());
            if !sane {
                // Replaces every line the client sent.
                existing.insert(new_request_id());
            }
            existing.get().clone()
        }
        Entry::Vacant(vacant) => vacant.insert(new_request_id()).clone(),
    }
}

/// A random UUID (version 4) in its usual text form.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // On every request: written into a fixed buffer, no formatting machinery.
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_go() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "gzip, trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("traceparent", "00-abc-def-01"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let mut names: Vec<_> = map.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "traceparent"]);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn a_length_beside_transfer_encoding_goes_and_a_repeated_length_goes_on_once() {
        let lengths = |map: &HeaderMap| -> Vec<String> {
            map.get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|value| value.to_str().unwrap().to_string())
                .collect()
        };
        let mut both = headers(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        one_body_framing(&mut both);
        assert!(lengths(&both).is_empty());
        assert_eq!(both["transfer-encoding"], "chunked");

        for repeated in [
            &[("content-length", "5, 5")][..],
            &[("content-length", "5"), ("content-length", "5")][..],
            &[("content-length", " 5 ,5")][..],
        ] {
            let mut map = headers(repeated);
            one_body_framing(&mut map);
            assert_eq!(lengths(&map), ["5"], "{repeated:?}");
        }

        let mut one = headers(&[("content-length", "12")]);
        one_body_framing(&mut one);
        assert_eq!(lengths(&one), ["12"]);
        let mut none = headers(&[("content-type", "text/plain")]);
        one_body_framing(&mut none);
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn each_hop_by_hop_header_goes_alone() {
        for name in [
            "connection",
            "upgrade",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "trailer",
            "te",
        ] {
            let mut map = headers(&[(name, "x"), ("x-other", "1"), ("tx", "1")]);
            remove_hop_by_hop(&mut map, false);
            assert!(!map.contains_key(name), "{name} stayed");
            assert_eq!(map.len(), 2, "{name}: another header went");
        }
    }

    #[test]
    fn reserved_identity_headers_from_clients_are_removed() {
        let mut map = headers(&[
            ("x-tollgate-consumer", "admin"),
            ("x-tollgate-consumer-groups", "root"),
            ("x-other", "1"),
        ]);
        remove_reserved(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("x-other"));
    }

    #[test]
    fn upgrades_keep_their_upgrade_headers() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_for_appends_and_proto_host_are_overwritten() {
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut map,
            "127.0.0.1".parse().unwrap(),
            "http",
            Some(&HeaderValue::from_static("shop.test:8080")),
        );
        assert_eq!(map["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "shop.test:8080");
    }

    #[test]
    fn every_forwarded_for_line_is_kept_in_order() {
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.7, 198.51.100.2"),
            ("x-forwarded-for", " "),
            ("x-forwarded-for", "10.0.0.5,"),
        ]);
        let host = HeaderValue::from_static("shop.test");
        set_forwarded(&mut map, "::1".parse().unwrap(), "https", Some(&host));
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            map["x-forwarded-for"],
            "203.0.113.7, 198.51.100.2, 10.0.0.5, ::1"
        );
        let mut map = HeaderMap::new();
        set_forwarded(&mut map, "127.0.0.1".parse().unwrap(), "http", Some(&host));
        assert_eq!(map["x-forwarded-for"], "127.0.0.1");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for address in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.0.9",
            "203.0.113.255",
            "100.99.1.10",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let address: IpAddr = address.parse().unwrap();
            let mut buffer = [0u8; 48];
            assert_eq!(
                address_text(address, &mut buffer),
                address.to_string().as_bytes()
            );
        }
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut map = headers(&[("host", "shop.test"), ("accept", "*/*")]);
        remove_hop_by_hop(&mut map, false);
        assert_eq!(map.len(), 2);
        let mut map = headers(&[("accept", "*/*"), ("te", "trailers, gzip")]);
        remove_hop_by_hop(&mut map, false);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let mut map = headers(&[("x-request-id", "abc-123")]);
        assert_eq!(ensure_request_id(&mut map), "abc-123");
        let mut map = HeaderMap::new();
        let id = ensure_request_id(&mut map);
        assert_eq!(id.len(), 36);
        assert_eq!(map["x-request-id"], id);
        let text = id.to_str().unwrap();
        assert_eq!(&text[14..15], "4");
        let dashes: Vec<usize> = text.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, vec![8, 13, 18, 23]);
        assert!(text.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        // A client's id that is not a sane token is replaced, every line of it.
        let mut map = headers(&[("x-request-id", "has space"), ("x-request-id", "second")]);
        let id = ensure_request_id(&mut map);
        assert_eq!(id.len(), 36);
        assert_eq!(
            map.get_all("x-request-id").iter().collect::<Vec<_>>(),
            [&id]
        );
    }
}
