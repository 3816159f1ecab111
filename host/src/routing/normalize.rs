//! Canonical hosts and paths: what routing matches, plugins see and upstreams receive.
//!
//! An attacker who can spell one resource two ways can reach it past a rule written for one
//! spelling, so every request is brought to one spelling before the first decision is made.
//! The steps mirror Envoy's `normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action` and `strip_trailing_host_dot`; Tollgate turns them all
//! on by default (see policies/README.md, "Request normalization").
//!
//! Pure functions: no allocation when the input is already canonical, which it nearly
//! always is.

use std::borrow::Cow;
use std::fmt;

use crate::config::EscapedSlashesAction;
use crate::config::Normalization;

/// Why a host or path cannot be made canonical; the request is answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Empty, a character no host name has, a bad port or a broken IPv6 literal.
    InvalidHost,
    /// `user@host`: credentials have no place in a request's authority (RFC 9110 §4.2.4).
    HostUserinfo,
    /// `%2F` or `%5C` with `path_with_escaped_slashes_action: reject`.
    EscapedSlashInPath,
    /// Not an absolute path, a broken or NUL percent escape, or a raw control character.
    InvalidPath,
}

impl Rejection {
    /// The access-log `detail` of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidHost => "invalid_host",
            Self::HostUserinfo => "host_userinfo",
            Self::EscapedSlashInPath => "escaped_slash_in_path",
            Self::InvalidPath => "invalid_path",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidHost => "the request's host is not a valid host name",
            Self::HostUserinfo => "the request's authority carries user information",
            Self::EscapedSlashInPath => "the request path contains an encoded slash or backslash",
            Self::InvalidPath => "the request path is not a valid absolute path",
        })
    }
}

/// The host an authority (`Host` header, `:authority`, absolute-form target) names:
/// lower-case, without its port, without a trailing dot when `strip_trailing_host_dot` is
/// on; IPv6 literals keep their brackets. Host names may hold letters, digits, `-`, `_` and
/// non-empty dot-separated labels; anything else is refused rather than guessed at.
pub fn host(authority: &str, settings: &Normalization) -> Result<String, Rejection> {
    if authority.contains('@') {
        return Err(Rejection::HostUserinfo);
    }
    let (name, _) = split_port(authority)?;
    if name.starts_with('[') {
        let inner = &name[1..name.len() - 1];
        let valid = !inner.is_empty()
            && inner.contains(':')
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        return if valid {
            Ok(name.to_ascii_lowercase())
        } else {
            Err(Rejection::InvalidHost)
        };
    }
    // A fully qualified name keeps its one trailing dot when stripping is off.
    let (name, labels) = match name.strip_suffix('.') {
        Some(stripped) if settings.strip_trailing_host_dot => (stripped, stripped),
        Some(stripped) => (name, stripped),
        None => (name, name),
    };
    if !is_host_name(labels) {
        return Err(Rejection::InvalidHost);
    }
    // Room for the whole authority: the caller appends the port without growing it.
    let mut host = String::with_capacity(authority.len());
    host.push_str(name);
    host.make_ascii_lowercase();
    Ok(host)
}

/// The length of the host in an authority that is canonical as it stands: a host name in
/// lower case, and a port of digits if any (`api.example.com`, `127.0.0.1:8080`). What
/// [`host`] and [`port`] make of such an authority is the authority itself, which this finds
/// in one pass and without a copy; `None` for anything else (upper case, a trailing dot, an
/// IPv6 literal, user information, anything refused), which takes the steps above.
pub fn canonical_host_len(authority: &str) -> Option<usize> {
    let bytes = authority.as_bytes();
    let mut label_len = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label_len += 1,
            b'.' if label_len > 0 => label_len = 0,
            b':' if label_len > 0 => {
                let port = &bytes[at + 1..];
                let digits = !port.is_empty() && port.len() <= 5;
                return (digits && port.iter().all(u8::is_ascii_digit)).then_some(at);
            }
            _ => return None,
        }
    }
    (label_len > 0).then_some(bytes.len())
}

/// Non-empty labels of letters, digits, `-` and `_`, separated by single dots; one pass.
fn is_host_name(name: &str) -> bool {
    let mut label_len = 0;
    for &byte in name.as_bytes() {
        match byte {
            b'.' if label_len == 0 => return false,
            b'.' => label_len = 0,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => label_len += 1,
            _ => return false,
        }
    }
    label_len > 0
}

/// The port of an authority, if it names one (`None` for `host`, `host:` and `[::1]`).
pub fn port(authority: &str) -> Option<&str> {
    split_port(authority)
        .ok()
        .and_then(|(_, port)| port)
        .filter(|port| !port.is_empty())
}

/// Splits `host[:port]` / `[v6][:port]`; a port must be digits (RFC 3986 allows it empty).
fn split_port(authority: &str) -> Result<(&str, Option<&str>), Rejection> {
    let (name, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(Rejection::InvalidHost)?;
        let (name, rest) = authority.split_at(end + 1);
        match rest {
            "" => (name, None),
            _ => (
                name,
                Some(rest.strip_prefix(':').ok_or(Rejection::InvalidHost)?),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    let port_ok =
        port.is_none_or(|port| port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
    if name.is_empty() || !port_ok {
        return Err(Rejection::InvalidHost);
    }
    Ok((name, port))
}

/// The canonical form of a request path (without its query), in this order:
///
/// 1. `%2F` / `%5C` (any case): refused, kept or decoded per `escaped_slashes` — applied
///    whatever `normalize_path` says, as Envoy does.
/// 2. `normalize_path`: percent-encoded unreserved characters (RFC 3986 §2.3) decoded, other
///    escapes' hex upper-cased, `\` turned into `/` (as Envoy's and browsers' URL
///    canonicalizers do), raw bytes outside printable ASCII percent-encoded; a broken escape
///    or `%00` is refused.
/// 3. `merge_slashes`: `//` becomes `/`.
/// 4. `normalize_path`: dot segments removed (RFC 3986 §5.2.4), never above the root.
///
/// `*` (`OPTIONS *`) and the empty path of an authority-form target are returned as they are.
pub fn path<'a>(path: &'a str, settings: &Normalization) -> Result<Cow<'a, str>, Rejection> {
    if path.is_empty() || path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(Rejection::InvalidPath);
    }
    if is_canonical(path, settings) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, settings)?;
    let canonical = remove_dot_segments(&decoded, settings);
    if canonical == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(canonical))
    }
}

/// A quick scan that proves most paths canonical without building anything. Any `%` sends
/// the path down the slow road, which is the only place escapes are judged.
fn is_canonical(path: &str, settings: &Normalization) -> bool {
    let bytes = path.as_bytes();
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'/' => match bytes.get(i + 1) {
                Some(b'/') if settings.merge_slashes => return false,
                Some(b'.') if settings.normalize_path && is_dot_segment(&bytes[i + 1..]) => {
                    return false
                }
                _ => {}
            },
            b'%' => return false,
            b'\\' if settings.normalize_path => return false,
            0x21..=0x7e => {}
            _ if settings.normalize_path => return false,
            _ => {}
        }
    }
    true
}

/// Whether `rest` (what follows a `/`, starting with `.`) begins with the segment `.` or `..`.
fn is_dot_segment(rest: &[u8]) -> bool {
    matches!(
        rest,
        [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
    )
}

/// Steps 1 and 2: escapes, backslashes and raw bytes.
fn decode(path: &str, settings: &Normalization) -> Result<String, Rejection> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let value = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            let Some(value) = value else {
                if settings.normalize_path {
                    return Err(Rejection::InvalidPath);
                }
                out.push('%');
                i += 1;
                continue;
            };
            let original = &path[i..i + 3];
            i += 3;
            if value == b'/' || value == b'\\' {
                match settings.escaped_slashes {
                    EscapedSlashesAction::Reject => return Err(Rejection::EscapedSlashInPath),
                    EscapedSlashesAction::Unescape => {
                        out.push(if value == b'\\' && !settings.normalize_path {
                            '\\'
                        } else {
                            '/'
                        });
                    }
                    EscapedSlashesAction::Keep if settings.normalize_path => {
                        out.push_str(if value == b'/' { "%2F" } else { "%5C" });
                    }
                    EscapedSlashesAction::Keep => out.push_str(original),
                }
            } else if !settings.normalize_path {
                out.push_str(original);
            } else if value == 0 {
                return Err(Rejection::InvalidPath);
            } else if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(value));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(value >> 4)]));
                out.push(char::from(HEX[usize::from(value & 0x0f)]));
            }
            continue;
        }
        i += 1;
        match byte {
            b'\\' if settings.normalize_path => out.push('/'),
            0x21..=0x7e => out.push(char::from(byte)),
            // Refused as `%00` is: encoding it would give a path that the next look at it
            // refuses, and no honest path holds a NUL.
            0 if settings.normalize_path => return Err(Rejection::InvalidPath),
            _ if settings.normalize_path => {
                out.push('%');
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0x0f)]));
            }
            // Left as received: the path is a valid `&str`, so a multi-byte character is
            // copied whole one byte at a time into the same UTF-8 sequence.
            _ => {
                let start = i - 1;
                let end = (start + 1..=path.len())
                    .find(|&end| path.is_char_boundary(end))
                    .unwrap_or(path.len());
                out.push_str(&path[start..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// Steps 3 and 4 on an absolute path: merged slashes, then dot segments.
fn remove_dot_segments(path: &str, settings: &Normalization) -> String {
    let rest = &path[1..];
    let count = rest.split('/').count();
    let mut kept: Vec<&str> = Vec::with_capacity(count);
    for (index, segment) in rest.split('/').enumerate() {
        let last = index + 1 == count;
        match segment {
            "." if settings.normalize_path => {
                if last {
                    kept.push("");
                }
            }
            ".." if settings.normalize_path => {
                kept.pop();
                if last {
                    kept.push("");
                }
            }
            "" if settings.merge_slashes && !last => {}
            segment => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&kept.join("/"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_canonical_as_it_stands_is_what_the_full_steps_make_of_it() {
        let settings = Normalization::default();
        let alphabet = b"aZz09-_.:[]@%";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut fast = 0;
        for round in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let length = (seed % 12) as usize;
            let authority: String = (0..length)
                .map(|i| alphabet[((seed >> (4 * i + 8)) % alphabet.len() as u64) as usize] as char)
                .collect();
            // Every other round, a well-formed one, so that the fast path is taken often.
            let authority = if round % 2 == 0 {
                format!("h{}.example:{}", seed % 97, seed % 70_000)
            } else {
                authority
            };
            let Some(host_len) = canonical_host_len(&authority) else {
                continue;
            };
            fast += 1;
            assert_eq!(
                host(&authority, &settings).as_deref(),
                Ok(&authority[..host_len]),
                "{authority:?}"
            );
            let expected_port = (host_len < authority.len()).then(|| &authority[host_len + 1..]);
            assert_eq!(port(&authority), expected_port, "{authority:?}");
        }
        assert!(fast > 50_000, "the fast path was taken {fast} times");
    }

    fn defaults() -> Normalization {
        Normalization::default()
    }

    fn with(escaped: EscapedSlashesAction) -> Normalization {
        Normalization {
            escaped_slashes: escaped,
            ..defaults()
        }
    }

    fn raw() -> Normalization {
        Normalization {
            normalize_path: false,
            merge_slashes: false,
            escaped_slashes: EscapedSlashesAction::Keep,
            strip_trailing_host_dot: false,
        }
    }

    fn norm(text: &str) -> String {
        path(text, &defaults()).unwrap().into_owned()
    }

    #[test]
    fn host_forms_that_bypassed_a_virtual_host_all_name_it() {
        let settings = defaults();
        for form in [
            "api.demo.local",
            "api.demo.local.",
            "API.DEMO.LOCAL.",
            "api.demo.local.:80",
            "Api.Demo.Local:8080",
            "api.demo.local:",
        ] {
            assert_eq!(host(form, &settings).unwrap(), "api.demo.local", "{form}");
        }
    }

    #[test]
    fn trailing_dot_is_kept_when_stripping_is_off() {
        let settings = Normalization {
            strip_trailing_host_dot: false,
            ..defaults()
        };
        assert_eq!(
            host("API.demo.local.:80", &settings).unwrap(),
            "api.demo.local."
        );
    }

    #[test]
    fn ipv6_literals_keep_their_brackets() {
        let settings = defaults();
        assert_eq!(host("[::1]:8080", &settings).unwrap(), "[::1]");
        assert_eq!(host("[2001:DB8::1]", &settings).unwrap(), "[2001:db8::1]");
        assert_eq!(
            host("[::ffff:10.0.0.1]", &settings).unwrap(),
            "[::ffff:10.0.0.1]"
        );
        assert_eq!(port("[::1]:8080"), Some("8080"));
        assert_eq!(port("[::1]"), None);
        assert_eq!(port("a.test:"), None);
        assert_eq!(port("a.test:443"), Some("443"));
    }

    #[test]
    fn userinfo_is_refused() {
        let settings = defaults();
        for form in [
            "x@api.demo.local",
            "user:pass@api.demo.local:80",
            "@api.demo.local",
        ] {
            assert_eq!(
                host(form, &settings),
                Err(Rejection::HostUserinfo),
                "{form}"
            );
        }
        assert_eq!(Rejection::HostUserinfo.reason(), "host_userinfo");
    }

    #[test]
    fn malformed_hosts_are_refused() {
        let settings = defaults();
        for form in [
            "", ":80", ".", "..", "a..b", ".a.b", "a.b..", "a b", "a/b", "a%2eb", "a:b", "a:80:90",
            "a:123456", "::1", "[::1", "[]", "[::1]x", "[::g]", "[v1.x]", "a\\b",
        ] {
            assert_eq!(
                host(form, &settings),
                Err(Rejection::InvalidHost),
                "{form:?}"
            );
        }
        assert_eq!(Rejection::InvalidHost.reason(), "invalid_host");
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        let settings = defaults();
        for canonical in ["/", "/a/b", "/a/b/", "/a.b/c..d/.e/..f", "/a%20b", "*", ""] {
            assert!(
                matches!(path(canonical, &settings), Ok(Cow::Borrowed(_))),
                "{canonical}"
            );
        }
    }

    #[test]
    fn path_forms_that_bypassed_the_secure_route_all_name_it() {
        for form in [
            "/open/../secure/x",
            "//secure/x",
            "/%73ecure/x",
            "/SECURE/../secure/x",
            "/secure/./x",
            "/secure//x",
            "/./secure/x",
            "/../secure/x",
            "/%2e%2e/secure/x",
            "/%2E/secure/x",
            "/open/..\\secure/x",
            "/open/%2e%2e/secure/%78",
        ] {
            assert_eq!(norm(form), "/secure/x", "{form}");
        }
        assert_eq!(norm("/api/v1/../../admin"), "/admin");
    }

    #[test]
    fn dot_segments_never_climb_above_the_root() {
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/../../.."), "/");
        assert_eq!(norm("/a/../../../b"), "/b");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/b/."), "/a/b/");
        assert_eq!(norm("/a/."), "/a/");
    }

    #[test]
    fn rfc_3986_remove_dot_segments_examples() {
        // §5.2.4's worked examples (the second as an absolute path) and a selection of the
        // §5.4 reference resolutions against `/b/c/d;p`, written as absolute paths.
        assert_eq!(norm("/a/b/c/./../../g"), "/a/g");
        assert_eq!(norm("/mid/content=5/../6"), "/mid/6");
        assert_eq!(norm("/b/c/g"), "/b/c/g");
        assert_eq!(norm("/b/c/./g"), "/b/c/g");
        assert_eq!(norm("/b/c/g/"), "/b/c/g/");
        assert_eq!(norm("/b/c/."), "/b/c/");
        assert_eq!(norm("/b/c/./"), "/b/c/");
        assert_eq!(norm("/b/c/.."), "/b/");
        assert_eq!(norm("/b/c/../"), "/b/");
        assert_eq!(norm("/b/c/../g"), "/b/g");
        assert_eq!(norm("/b/c/../.."), "/");
        assert_eq!(norm("/b/c/../../"), "/");
        assert_eq!(norm("/b/c/../../g"), "/g");
        assert_eq!(norm("/b/c/../../../g"), "/g");
        assert_eq!(norm("/b/c/../../../../g"), "/g");
        assert_eq!(norm("/./g"), "/g");
        assert_eq!(norm("/../g"), "/g");
        assert_eq!(norm("/b/c/g."), "/b/c/g.");
        assert_eq!(norm("/b/c/.g"), "/b/c/.g");
        assert_eq!(norm("/b/c/g.."), "/b/c/g..");
        assert_eq!(norm("/b/c/..g"), "/b/c/..g");
        assert_eq!(norm("/b/c/./../g"), "/b/g");
        assert_eq!(norm("/b/c/./g/."), "/b/c/g/");
        assert_eq!(norm("/b/c/g/./h"), "/b/c/g/h");
        assert_eq!(norm("/b/c/g/../h"), "/b/c/h");
    }

    #[test]
    fn percent_escapes_are_made_canonical() {
        // Unreserved characters decoded (RFC 3986 §2.3), others' hex upper-cased (§6.2.2.1).
        assert_eq!(norm("/%41%7a%30%2D%2e%5F%7E"), "/Az0-._~");
        assert_eq!(norm("/a%20b%3f%c3%a9"), "/a%20b%3F%C3%A9");
        assert_eq!(norm("/a%3A"), "/a%3A");
        // Raw bytes outside printable ASCII are encoded.
        assert_eq!(norm("/caf\u{e9}"), "/caf%C3%A9");
        // Decoding happens once: `%252e` is `%2e` as text, not a dot.
        assert_eq!(norm("/%252e%252e/x"), "/%252e%252e/x");
    }

    #[test]
    fn broken_escapes_and_nul_are_refused() {
        for form in [
            "/a%",
            "/a%4",
            "/a%zz",
            "/a%4g/b",
            "/a%00b",
            "/a\0b",
            "/a\\../\0\0\\b",
        ] {
            assert_eq!(
                path(form, &defaults()),
                Err(Rejection::InvalidPath),
                "{form}"
            );
        }
        assert_eq!(path("relative", &defaults()), Err(Rejection::InvalidPath));
        assert_eq!(Rejection::InvalidPath.reason(), "invalid_path");
    }

    #[test]
    fn escaped_slashes_follow_the_configured_action() {
        for form in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb"] {
            assert_eq!(
                path(form, &defaults()),
                Err(Rejection::EscapedSlashInPath),
                "{form}"
            );
        }
        assert_eq!(
            Rejection::EscapedSlashInPath.reason(),
            "escaped_slash_in_path"
        );
        let keep = with(EscapedSlashesAction::Keep);
        assert_eq!(path("/a%2fb/../c", &keep).unwrap(), "/c");
        assert_eq!(path("/a%2fb%5c", &keep).unwrap(), "/a%2Fb%5C");
        assert_eq!(path("/..%2f..%2fadmin", &keep).unwrap(), "/..%2F..%2Fadmin");
        let unescape = with(EscapedSlashesAction::Unescape);
        assert_eq!(path("/a%2Fb", &unescape).unwrap(), "/a/b");
        assert_eq!(path("/a%5cb", &unescape).unwrap(), "/a/b");
        assert_eq!(path("/x/..%2F..%2Fsecure", &unescape).unwrap(), "/secure");
        assert_eq!(path("/a%2F%2Fb", &unescape).unwrap(), "/a/b");
    }

    #[test]
    fn escaped_slash_action_applies_without_normalize_path() {
        let settings = Normalization {
            normalize_path: false,
            ..defaults()
        };
        assert_eq!(
            path("/a%2Fb", &settings),
            Err(Rejection::EscapedSlashInPath)
        );
        let unescape = Normalization {
            escaped_slashes: EscapedSlashesAction::Unescape,
            ..settings
        };
        assert_eq!(path("/a%2F%2fb%5Cc", &unescape).unwrap(), "/a/b\\c");
    }

    #[test]
    fn each_step_can_be_turned_off() {
        assert!(matches!(
            path("/a//../b/./c%2f%7e\\d", &raw()),
            Ok(Cow::Borrowed(_))
        ));
        let no_merge = Normalization {
            merge_slashes: false,
            ..defaults()
        };
        assert_eq!(path("/a//b", &no_merge).unwrap(), "/a//b");
        // RFC 3986 keeps empty segments: `..` removes the empty one.
        assert_eq!(path("/a//../b", &no_merge).unwrap(), "/a/b");
        let only_merge = Normalization {
            merge_slashes: true,
            ..raw()
        };
        assert_eq!(
            path("//a//./b/../%7e", &only_merge).unwrap(),
            "/a/./b/../%7e"
        );
    }

    #[test]
    fn envoy_normalization_examples() {
        // The forms Envoy's documentation and Istio's normalization table give.
        assert_eq!(norm("/a/../b"), "/b");
        assert_eq!(norm("/a//b"), "/a/b");
        assert_eq!(norm("/a/b//c/../d"), "/a/b/d");
        assert_eq!(norm("/\\da"), "/da");
        assert_eq!(
            path("/a%2fb", &with(EscapedSlashesAction::Unescape)).unwrap(),
            "/a/b"
        );
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for settings in [
            defaults(),
            with(EscapedSlashesAction::Keep),
            with(EscapedSlashesAction::Unescape),
            Normalization {
                merge_slashes: false,
                ..defaults()
            },
        ] {
            for form in [
                "/a//..//b/./%2e%2E/c%2f%5C/%7e%41/",
                "//..//..//",
                "/x/.%2e/y/%2E./z",
                "/\\..\\..\\x",
            ] {
                let Ok(once) = path(form, &settings) else {
                    continue;
                };
                let twice = path(&once, &settings).unwrap();
                assert!(
                    matches!(twice, Cow::Borrowed(_)),
                    "{form} -> {once} -> {twice}"
                );
            }
        }
    }
}
