//! HTTP fields that belong to one connection, and field values that are lists: what the
//! server side (requests from clients) and the upstream client (answers) both need, so that
//! one reading of RFC 9110 §5.6.1 and §7.6.1 serves both.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), each trimmed of spaces;
/// empty elements (`a,,b`, a trailing comma) are skipped, as recipients must.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// Whether any of `values` (the lines of one field) lists `token`, compared without case.
pub fn lists_token<'v>(values: impl IntoIterator<Item = &'v HeaderValue>, token: &[u8]) -> bool {
    values
        .into_iter()
        .flat_map(|value| list_elements(value.as_bytes()))
        .any(|element| element.eq_ignore_ascii_case(token))
}

/// Leaves an answer's head with the one body framing the client can trust. The upstream
/// client has already decoded a `Transfer-Encoding` body, so a `Content-Length` beside it
/// (which RFC 9112 §6.3 says to ignore) would frame the decoded body wrongly for the client:
/// it goes. A length the upstream repeated (`5, 5`, or the field twice), accepted because
/// every copy agrees, goes on as one value, as the gateway asks of its own clients. Call it
/// before [`remove_hop_by_hop`], which removes `Transfer-Encoding`.
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
    let length = list_elements(first.as_bytes())
        .next()
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse::<u64>().ok());
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
        let te_trailers = lists_token(headers.get_all(header::TE), b"trailers");
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
        .flat_map(|value| list_elements(value.as_bytes()))
        .all(|name| name.eq_ignore_ascii_case(b"keep-alive"));
    if names_only_keep_alive {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| list_elements(value.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Which hop-by-hop headers a message has, one bit per name (see [`HopByHop::bit`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct HopByHop(u8);

impl HopByHop {
    pub const CONNECTION: u8 = 1;
    pub const UPGRADE: u8 = 1 << 1;
    pub const KEEP_ALIVE: u8 = 1 << 2;
    pub const PROXY_CONNECTION: u8 = 1 << 3;
    pub const TRANSFER_ENCODING: u8 = 1 << 4;
    pub const TRAILER: u8 = 1 << 5;
    pub const TE: u8 = 1 << 6;

    fn present_in(headers: &HeaderMap) -> Self {
        Self(
            headers
                .keys()
                .fold(0, |present, name| present | Self::bit(name)),
        )
    }

    /// The bit of one of the headers [`remove_hop_by_hop`] removes by name; 0 for others.
    /// Every field of every message is put through it, so the name's length (names are
    /// lowercase) sorts out nearly all of them before any bytes are compared.
    pub fn bit(name: &HeaderName) -> u8 {
        let name = name.as_str();
        match name.len() {
            2 if name == "te" => Self::TE,
            7 if name == "upgrade" => Self::UPGRADE,
            7 if name == "trailer" => Self::TRAILER,
            10 if name == "connection" => Self::CONNECTION,
            10 if name == "keep-alive" => Self::KEEP_ALIVE,
            16 if name == "proxy-connection" => Self::PROXY_CONNECTION,
            17 if name == "transfer-encoding" => Self::TRANSFER_ENCODING,
            _ => 0,
        }
    }

    /// Takes the header of `bit` (one of the constants above) as present.
    pub fn add(&mut self, bit: u8) {
        self.0 |= bit;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the header of `bit` (one of the constants above) is there.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A header map of `pairs`, in order, for unit tests.
#[cfg(test)]
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use super::header_map as headers;
    use super::*;

    #[test]
    fn each_connection_field_has_its_bit_and_no_other_field_has_one() {
        for (name, bit) in [
            (header::CONNECTION, HopByHop::CONNECTION),
            (header::UPGRADE, HopByHop::UPGRADE),
            (KEEP_ALIVE.clone(), HopByHop::KEEP_ALIVE),
            (PROXY_CONNECTION.clone(), HopByHop::PROXY_CONNECTION),
            (header::TRANSFER_ENCODING, HopByHop::TRANSFER_ENCODING),
            (header::TRAILER, HopByHop::TRAILER),
            (header::TE, HopByHop::TE),
        ] {
            assert_eq!(HopByHop::bit(&name), bit, "{name}");
        }
        for other in [
            "tf",
            "upgrades",
            "trailers",
            "connexion",
            "x-keep-alive",
            "host",
            "etag",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(HopByHop::bit(&name), 0, "{other}");
        }
    }

    #[test]
    fn list_elements_are_trimmed_and_empty_ones_skipped() {
        let elements: Vec<&[u8]> = list_elements(b" a ,, b,\tc ,").collect();
        assert_eq!(elements, [&b"a"[..], b"b", b"c"]);
        assert_eq!(list_elements(b" , ").count(), 0);
        let lines = [
            HeaderValue::from_static("keep-alive"),
            HeaderValue::from_static("x-a, Upgrade"),
        ];
        assert!(lists_token(&lines, b"upgrade"));
        assert!(!lists_token(&lines, b"x"));
    }

    #[test]
    fn upgrades_keep_their_upgrade_headers() {
        let mut map = headers(&[
            ("connection", "Upgrade, x-private"),
            ("upgrade", "websocket"),
        ]);
        map.append("x-private", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
        assert!(!map.contains_key("x-private"));
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
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut map = headers(&[("host", "shop.test"), ("accept", "*/*")]);
        remove_hop_by_hop(&mut map, false);
        assert_eq!(map.len(), 2);
        let mut map = headers(&[("accept", "*/*"), ("te", "trailers, gzip")]);
        remove_hop_by_hop(&mut map, false);
        assert_eq!(map["te"], "trailers");
    }
}
