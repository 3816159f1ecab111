//! Request host and path normalization (`tollgate::routing::normalize`) under every
//! combination of the `server` normalization settings.
//!
//! Checks: nothing panics; normalizing is idempotent — an accepted path or host normalized
//! again comes back unchanged and a path is never rejected the second time (a
//! double-decoding or half-merging normalizer would route one request two ways); an
//! accepted path starts with `/`, has no `//` with `merge_slashes`, and no `.` or `..`
//! segment with `normalize_path`; with `path_with_escaped_slashes_action: reject` an
//! accepted path holds no `%2F` or `%5C`.
//!
//! The input's first byte picks the settings; the rest, as text, is the path and the host.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::EscapedSlashesAction;
use tollgate::config::Normalization;
use tollgate::routing::normalize;

/// Every combination of the settings, from the bits of one byte.
fn settings(bits: u8) -> Normalization {
    Normalization {
        normalize_path: bits & 1 != 0,
        merge_slashes: bits & 2 != 0,
        escaped_slashes: match (bits >> 2) & 3 {
            0 => EscapedSlashesAction::Reject,
            1 => EscapedSlashesAction::Keep,
            _ => EscapedSlashesAction::Unescape,
        },
        strip_trailing_host_dot: bits & 16 != 0,
    }
}

fn check_path(input: &str, settings: &Normalization) {
    let Ok(normalized) = normalize::path(input, settings) else {
        return;
    };
    let normalized: &str = &normalized;
    match normalize::path(normalized, settings) {
        Ok(again) => assert_eq!(
            &*again, normalized,
            "{settings:?}: {input:?} → {normalized:?} is not stable"
        ),
        Err(rejection) => panic!(
            "{settings:?}: {input:?} → {normalized:?}, which is then rejected: {rejection:?}"
        ),
    }
    // `*` (OPTIONS *) and the empty path of an authority-form target pass through as they are.
    if normalized.is_empty() || normalized == "*" {
        return;
    }
    let path = normalized;
    assert!(
        path.starts_with('/'),
        "{settings:?}: {input:?} → {normalized:?} does not start with /"
    );
    if settings.merge_slashes {
        assert!(
            !path.contains("//"),
            "{settings:?}: {input:?} → {normalized:?} keeps //"
        );
    }
    if settings.normalize_path {
        assert!(
            !path
                .split('/')
                .any(|segment| segment == "." || segment == ".."),
            "{settings:?}: {input:?} → {normalized:?} keeps a dot segment"
        );
    }
    if settings.escaped_slashes == EscapedSlashesAction::Reject {
        let upper = path.to_ascii_uppercase();
        assert!(
            !upper.contains("%2F") && !upper.contains("%5C"),
            "{settings:?}: {input:?} → {normalized:?} keeps an escaped slash"
        );
    }
}

fn check_host(input: &str, settings: &Normalization) {
    let Ok(normalized) = normalize::host(input, settings) else {
        return;
    };
    match normalize::host(&normalized, settings) {
        Ok(again) => assert_eq!(
            again, normalized,
            "{settings:?}: host {input:?} → {normalized:?} is not stable"
        ),
        Err(rejection) => panic!(
            "{settings:?}: host {input:?} → {normalized:?}, which is then rejected: {rejection:?}"
        ),
    }
    assert!(
        !normalized.bytes().any(|b| b.is_ascii_uppercase()),
        "{settings:?}: host {input:?} → {normalized:?} keeps upper case"
    );
    assert!(
        !normalized.contains('@'),
        "{settings:?}: host {input:?} → {normalized:?} keeps user information"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&bits, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let settings = settings(bits);
    // `path` takes what the pipeline gives it, the URI's path: it ends at `?` or `#`.
    let path = text.split(['?', '#']).next().unwrap_or_default();
    check_path(path, &settings);
    check_host(text, &settings);
});
