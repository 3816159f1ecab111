//! Answers the gateway gives itself: errors, direct responses and redirects.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};

use super::ResponseBody;
use crate::config::{DirectResponse, PathMatch, Redirect};

pub fn body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text answer from the gateway.
pub fn reply(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut response = Response::new(body(text.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub fn direct_response(direct: &DirectResponse) -> Response<ResponseBody> {
    let mut response = Response::new(body(direct.body.clone()));
    *response.status_mut() = direct.status;
    for (name, value) in &direct.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// Builds the `Location` of a redirect from the request and the route's redirect fields.
pub fn redirect(
    redirect: &Redirect,
    matched: &PathMatch,
    uri: &Uri,
    authority: &str,
    scheme: &str,
) -> Response<ResponseBody> {
    let location = location(redirect, matched, uri, authority, scheme);
    let mut response = Response::new(body(Bytes::new()));
    *response.status_mut() = redirect.code;
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "redirect target is not a valid header value\n",
        ),
    }
}

fn location(
    redirect: &Redirect,
    matched: &PathMatch,
    uri: &Uri,
    authority: &str,
    scheme: &str,
) -> String {
    let (request_host, request_port) = split_authority(authority);
    let scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    let host = redirect.host.as_deref().unwrap_or(request_host);
    // Keep the request's port only when neither scheme nor host changed; a new scheme or
    // host implies its default port unless one is given.
    let port = match redirect.port {
        Some(port) => Some(port.to_string()),
        None if redirect.scheme.is_none() && redirect.host.is_none() => {
            request_port.map(str::to_string)
        }
        None => None,
    };
    let port =
        port.filter(|port| !matches!((scheme, port.as_str()), ("http", "80") | ("https", "443")));
    let request_path = uri.path();
    let path = match (&redirect.path, &redirect.prefix, matched) {
        (Some(path), _, _) => path.clone(),
        (None, Some(prefix), PathMatch::Prefix(matched)) => {
            format!(
                "{prefix}{}",
                request_path
                    .strip_prefix(matched.as_str())
                    .unwrap_or(request_path)
            )
        }
        _ => request_path.to_string(),
    };
    let query = match uri.query() {
        Some(query) if !redirect.strip_query => format!("?{query}"),
        _ => String::new(),
    };
    match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}{query}"),
        None => format!("{scheme}://{host}{path}{query}"),
    }
}

fn split_authority(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                (host, Some(port))
            } else {
                (authority, None)
            }
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> Redirect {
        Redirect {
            scheme: None,
            host: None,
            port: None,
            path: None,
            prefix: None,
            code: StatusCode::MOVED_PERMANENTLY,
            strip_query: false,
        }
    }

    #[test]
    fn prefix_redirect_keeps_rest_query_and_port() {
        let r = Redirect {
            prefix: Some("/docs".into()),
            ..redirect()
        };
        let uri: Uri = "/old-docs/intro?lang=en".parse().unwrap();
        let matched = PathMatch::Prefix("/old-docs".into());
        assert_eq!(
            location(&r, &matched, &uri, "demo.local:8080", "http"),
            "http://demo.local:8080/docs/intro?lang=en"
        );
    }

    #[test]
    fn scheme_change_drops_the_port_unless_given() {
        let uri: Uri = "/a?b=1".parse().unwrap();
        let https = Redirect {
            scheme: Some("https".into()),
            strip_query: true,
            ..redirect()
        };
        assert_eq!(
            location(&https, &PathMatch::Any, &uri, "demo.local:8080", "http"),
            "https://demo.local/a"
        );
        let with_port = Redirect {
            port: Some(8443),
            ..https
        };
        assert_eq!(
            location(&with_port, &PathMatch::Any, &uri, "demo.local:8080", "http"),
            "https://demo.local:8443/a"
        );
    }

    #[test]
    fn host_and_path_replacement() {
        let r = Redirect {
            host: Some("docs.example.com".into()),
            path: Some("/".into()),
            ..redirect()
        };
        let uri: Uri = "/anything".parse().unwrap();
        assert_eq!(
            location(&r, &PathMatch::Any, &uri, "demo.local", "https"),
            "https://docs.example.com/"
        );
    }
}
