//! Header hygiene on the way through: X-Forwarded-*, request ids, the reserved identity
//! headers (hop-by-hop removal is [`crate::fields`]).

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::fields;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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
        && fields::lists_token(headers.get_all(header::CONNECTION), b"upgrade")
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` from what the gateway itself saw, so clients cannot forge the latter two.
///
/// Every `X-Forwarded-For` line is kept, in arrival order, merged into one list (RFC 9110
/// §5.3 makes repeated lines one comma-separated list): a load balancer that adds its own
/// line rather than appending to the client's must not lose the addresses before it.
///
/// `client` is the client's address as [`address_value`] writes it.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    scheme: &str,
    host: Option<&HeaderValue>,
) {
    // One lookup finds the client's lines and replaces them (a `get_all` and an `insert`
    // would hash the name twice).
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(vacant) => {
            vacant.insert(client.clone());
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
            joined.push_str(client.to_str().unwrap_or_default());
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

/// `address` as a header value, as `X-Forwarded-For` carries it. A connection makes it once
/// (`Downstream::client_address`), and each of its requests shares it.
pub fn address_value(address: IpAddr) -> HeaderValue {
    let mut buffer = [0u8; 48];
    HeaderValue::from_bytes(address_text(address, &mut buffer))
        .expect("an address's text is a valid header value")
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
    // Where each byte's two digits go: groups of 4, 2, 2, 2 and 6 bytes, dashes between.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // On every request: written into a fixed buffer, no formatting machinery, no branch.
    let mut text = [0u8; 36];
    text[8] = b'-';
    text[13] = b'-';
    text[18] = b'-';
    text[23] = b'-';
    for (byte, at) in bytes.into_iter().zip(AT) {
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
    }
    // In a buffer that its clones share by count (the access record keeps one): one
    // allocation, where a copied slice would take a second on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::header_map as headers;

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
    fn upgrade_requests_name_upgrade_in_connection() {
        let upgrade = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade_request(&upgrade));
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert!(!is_upgrade_request(&no_connection));
        let not_named = headers(&[("connection", "upgraded"), ("upgrade", "websocket")]);
        assert!(!is_upgrade_request(&not_named));
    }

    #[test]
    fn forwarded_for_appends_and_proto_host_are_overwritten() {
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut map,
            &address_value("127.0.0.1".parse().unwrap()),
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
        set_forwarded(
            &mut map,
            &address_value("::1".parse().unwrap()),
            "https",
            Some(&host),
        );
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            map["x-forwarded-for"],
            "203.0.113.7, 198.51.100.2, 10.0.0.5, ::1"
        );
        let mut map = HeaderMap::new();
        let loopback = address_value("127.0.0.1".parse().unwrap());
        set_forwarded(&mut map, &loopback, "http", Some(&host));
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
    fn request_ids_are_kept_or_generated() {
        let mut map = headers(&[("x-request-id", "abc-123")]);
        assert_eq!(ensure_request_id(&mut map), "abc-123");
        let mut map = HeaderMap::new();
        let id = ensure_request_id(&mut map);
        assert_eq!(id.len(), 36);
        assert_eq!(map["x-request-id"], id);
        let text = id.to_str().unwrap();
        assert_eq!(&text[14..15], "4");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
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
