//! What the access log must not show: the values of configured query parameters and headers
//! (and of the names key-auth plugins read keys from) are written as [`REDACTED`]. Built
//! with each snapshot, read by every access-log line.

use std::borrow::Cow;

/// The value written in place of a redacted one.
pub const REDACTED: &str = "REDACTED";

/// Query parameters and headers whose values the access log writes as [`REDACTED`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redaction {
    /// Lower-case names.
    query_params: Vec<String>,
    /// Lower-case names.
    headers: Vec<String>,
}

impl Redaction {
    /// Names are compared without regard to case; duplicates are dropped.
    pub fn new<'a>(
        query_params: impl IntoIterator<Item = &'a str>,
        headers: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let lower_unique = |names: &mut dyn Iterator<Item = &'a str>| {
            let mut names: Vec<String> = names.map(str::to_ascii_lowercase).collect();
            names.sort();
            names.dedup();
            names
        };
        Self {
            query_params: lower_unique(&mut query_params.into_iter()),
            headers: lower_unique(&mut headers.into_iter()),
        }
    }

    pub fn query_params(&self) -> &[String] {
        &self.query_params
    }

    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// `path_and_query` with the values of redacted parameters replaced; borrowed (no
    /// allocation) when nothing needs redacting. A parameter name is compared after
    /// percent-decoding, so `api%6Bey=` is caught as well as `apikey=`.
    pub fn path<'a>(&self, path_and_query: &'a str) -> Cow<'a, str> {
        if self.query_params.is_empty() {
            return Cow::Borrowed(path_and_query);
        }
        let Some((path, query)) = path_and_query.split_once('?') else {
            return Cow::Borrowed(path_and_query);
        };
        let redacted = |pair: &str| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            self.is_redacted_param(name)
        };
        if !query.split('&').any(redacted) {
            return Cow::Borrowed(path_and_query);
        }
        let mut out = String::with_capacity(path_and_query.len());
        out.push_str(path);
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if redacted(pair) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
        Cow::Owned(out)
    }

    /// `value`, or [`REDACTED`] when the header `name` (lower-case) is redacted.
    pub fn header<'a>(&self, name: &str, value: &'a str) -> &'a str {
        if value != "-" && self.headers.iter().any(|redacted| redacted == name) {
            REDACTED
        } else {
            value
        }
    }

    fn is_redacted_param(&self, name: &str) -> bool {
        let decoded = percent_decode(name);
        self.query_params
            .iter()
            .any(|redacted| redacted.eq_ignore_ascii_case(&decoded))
    }
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as written.
fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redaction() -> Redaction {
        Redaction::new(["apikey", "Token"], ["x-api-key", "user-agent"])
    }

    #[test]
    fn redacts_named_query_parameters_only() {
        let redaction = redaction();
        assert_eq!(
            redaction.path("/a?apikey=s3cret&page=2&TOKEN=t&x=apikey"),
            "/a?apikey=REDACTED&page=2&TOKEN=REDACTED&x=apikey"
        );
        assert_eq!(
            redaction.path("/a?api%6Bey=s3cret&apikey"),
            "/a?api%6Bey=REDACTED&apikey"
        );
    }

    #[test]
    fn borrows_when_nothing_is_redacted() {
        let redaction = redaction();
        assert!(matches!(redaction.path("/a?page=2"), Cow::Borrowed(_)));
        assert!(matches!(redaction.path("/a"), Cow::Borrowed(_)));
        assert!(matches!(
            Redaction::default().path("/a?apikey=1"),
            Cow::Borrowed("/a?apikey=1")
        ));
    }

    #[test]
    fn redacts_named_headers() {
        let redaction = redaction();
        assert_eq!(redaction.header("user-agent", "secret-agent"), REDACTED);
        assert_eq!(redaction.header("user-agent", "-"), "-");
        assert_eq!(redaction.header("host", "shop.test"), "shop.test");
    }

    #[test]
    fn decodes_escapes_leniently() {
        assert_eq!(percent_decode("a%41+b"), "aA b");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
