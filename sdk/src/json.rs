//! JSON body helpers: get, set, remove, rename and redact fields by dotted path.
//!
//! A path is a dot-separated list of segments: object keys, array indexes (`items.0.id`),
//! and `*` for every element of an array or every value of an object (`items.*.card`).
//! `get` returns the first match; the editing functions apply to every match and return
//! how many places they changed. Keys containing `.` cannot be addressed.
//!
//! ```
//! use serde_json::json;
//! use tollgate_sdk::json;
//! let mut body = json!({"user": {"name": "ann", "card": "4111"}, "items": [{"sku": 1}, {"sku": 2}]});
//! assert_eq!(json::get(&body, "items.1.sku"), Some(&json!(2)));
//! assert_eq!(json::redact(&mut body, "user.card", json!("***")), 1);
//! assert_eq!(json::rename(&mut body, "items.*.sku", "id"), 2);
//! json::set(&mut body, "meta.source", json!("gateway"));
//! assert_eq!(json::remove(&mut body, "user.name"), 1);
//! assert_eq!(body, json!({"user": {"card": "***"}, "items": [{"id": 1}, {"id": 2}],
//!                         "meta": {"source": "gateway"}}));
//! ```

use serde_json::{Map, Value};

fn segments(path: &str) -> Vec<&str> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').collect()
    }
}

fn child<'a>(value: &'a Value, segment: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    }
}

/// The first value at `path` (`*` matches any key or index).
pub fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    fn walk<'a>(value: &'a Value, segments: &[&str]) -> Option<&'a Value> {
        let Some((first, rest)) = segments.split_first() else {
            return Some(value);
        };
        if *first == "*" {
            return match value {
                Value::Object(map) => map.values().find_map(|v| walk(v, rest)),
                Value::Array(items) => items.iter().find_map(|v| walk(v, rest)),
                _ => None,
            };
        }
        walk(child(value, first)?, rest)
    }
    walk(value, &segments(path))
}

/// Calls `edit(parent, last_segment)` for every parent of a match of `path` (the parent
/// exists; the last segment may not); returns how many calls returned `true`.
fn for_each_parent(
    value: &mut Value,
    path: &str,
    edit: &mut dyn FnMut(&mut Value, &str) -> bool,
) -> usize {
    fn walk(
        value: &mut Value,
        segments: &[&str],
        edit: &mut dyn FnMut(&mut Value, &str) -> bool,
    ) -> usize {
        match segments {
            [] => 0,
            [last] if *last != "*" => usize::from(edit(value, last)),
            [first, rest @ ..] if *first == "*" => match value {
                Value::Object(map) => map.values_mut().map(|v| walk(v, rest, edit)).sum(),
                Value::Array(items) => items.iter_mut().map(|v| walk(v, rest, edit)).sum(),
                _ => 0,
            },
            [first, rest @ ..] => {
                let next = match value {
                    Value::Object(map) => map.get_mut(*first),
                    Value::Array(items) => {
                        first.parse::<usize>().ok().and_then(|i| items.get_mut(i))
                    }
                    _ => None,
                };
                next.map_or(0, |next| walk(next, rest, edit))
            }
        }
    }
    let segments = segments(path);
    if segments.last() == Some(&"*") {
        // A trailing `*` addresses every child: edit each of them through the parent.
        let parent_path = &segments[..segments.len() - 1];
        let mut count = 0;
        let mut on_parent = |parent: &mut Value| {
            let keys: Vec<String> = match parent {
                Value::Object(map) => map.keys().cloned().collect(),
                Value::Array(items) => (0..items.len()).rev().map(|i| i.to_string()).collect(),
                _ => Vec::new(),
            };
            for key in keys {
                count += usize::from(edit(parent, &key));
            }
        };
        if let Some(parent) = pointer_mut(value, parent_path) {
            on_parent(parent);
        }
        return count;
    }
    walk(value, &segments, edit)
}

fn pointer_mut<'a>(value: &'a mut Value, segments: &[&str]) -> Option<&'a mut Value> {
    let mut current = value;
    for segment in segments {
        current = match current {
            Value::Object(map) => map.get_mut(*segment)?,
            Value::Array(items) => items.get_mut(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Sets the value at `path`, creating missing objects on the way (an index one past the
/// end of an array appends). Returns whether it was set (false when the path runs into a
/// scalar or an index beyond the end). `*` is not allowed here.
pub fn set(value: &mut Value, path: &str, new: Value) -> bool {
    let segments = segments(path);
    let Some((last, parents)) = segments.split_last() else {
        *value = new;
        return true;
    };
    let mut current = value;
    for segment in parents {
        if current.is_null() {
            *current = Value::Object(Map::new());
        }
        current = match current {
            Value::Object(map) => map
                .entry((*segment).to_owned())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => match segment.parse::<usize>() {
                Ok(i) if i < items.len() => &mut items[i],
                _ => return false,
            },
            _ => return false,
        };
    }
    if current.is_null() {
        *current = Value::Object(Map::new());
    }
    match current {
        Value::Object(map) => {
            map.insert((*last).to_owned(), new);
            true
        }
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items[i] = new;
                true
            }
            Ok(i) if i == items.len() => {
                items.push(new);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Removes every match of `path`; returns how many were removed.
pub fn remove(value: &mut Value, path: &str) -> usize {
    for_each_parent(value, path, &mut |parent, last| match parent {
        Value::Object(map) => map.remove(last).is_some(),
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    })
}

/// Renames the key of every match of `path` (an object member) to `new_key`, keeping its
/// value; an existing `new_key` is replaced. Returns how many were renamed.
pub fn rename(value: &mut Value, path: &str, new_key: &str) -> usize {
    for_each_parent(value, path, &mut |parent, last| match parent {
        Value::Object(map) => match map.remove(last) {
            Some(moved) => {
                map.insert(new_key.to_owned(), moved);
                true
            }
            None => false,
        },
        _ => false,
    })
}

/// Replaces the value of every match of `path` with `replacement`; returns how many.
pub fn redact(value: &mut Value, path: &str, replacement: Value) -> usize {
    for_each_parent(value, path, &mut |parent, last| {
        let slot = match parent {
            Value::Object(map) => map.get_mut(last),
            Value::Array(items) => last.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        match slot {
            Some(slot) => {
                *slot = replacement.clone();
                true
            }
            None => false,
        }
    })
}

/// Parses a body as JSON; `None` when it is not JSON.
pub fn parse_body(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// Whether a `content-type` is JSON (`application/json`, `application/problem+json`, ...).
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn get_follows_keys_indexes_and_stars() {
        let body = json!({"a": {"b": [{"c": 1}, {"c": 2, "d": true}]}});
        assert_eq!(get(&body, "a.b.1.c"), Some(&json!(2)));
        assert_eq!(get(&body, "a.b.*.d"), Some(&json!(true)));
        assert_eq!(get(&body, "a.b.5.c"), None);
        assert_eq!(get(&body, "a.x"), None);
        assert_eq!(get(&body, ""), Some(&body));
    }

    #[test]
    fn set_creates_objects_and_appends() {
        let mut body = json!({"list": [1]});
        assert!(set(&mut body, "a.b.c", json!("x")));
        assert!(set(&mut body, "list.1", json!(2)));
        assert!(set(&mut body, "list.0", json!(0)));
        assert!(!set(&mut body, "list.5", json!(5)));
        assert!(!set(&mut body, "a.b.c.d", json!(1)), "c is a string");
        assert_eq!(body, json!({"list": [0, 2], "a": {"b": {"c": "x"}}}));
        let mut null = Value::Null;
        assert!(set(&mut null, "x", json!(1)));
        assert_eq!(null, json!({"x": 1}));
    }

    #[test]
    fn remove_rename_redact_apply_to_every_match() {
        let mut body = json!({"users": [{"pw": "a", "n": 1}, {"pw": "b", "n": 2}, {"n": 3}]});
        assert_eq!(redact(&mut body, "users.*.pw", json!("***")), 2);
        assert_eq!(rename(&mut body, "users.*.n", "id"), 3);
        assert_eq!(remove(&mut body, "users.0.pw"), 1);
        assert_eq!(remove(&mut body, "users.9"), 0);
        assert_eq!(
            body,
            json!({"users": [{"id": 1}, {"pw": "***", "id": 2}, {"id": 3}]})
        );
        assert_eq!(remove(&mut body, "users.*"), 3);
        assert_eq!(body, json!({"users": []}));
    }

    #[test]
    fn trailing_star_on_objects() {
        let mut body = json!({"secrets": {"a": 1, "b": 2}});
        assert_eq!(redact(&mut body, "secrets.*", json!(null)), 2);
        assert_eq!(body, json!({"secrets": {"a": null, "b": null}}));
    }

    #[test]
    fn content_types() {
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/problem+json"));
        assert!(!is_json_content_type("text/plain"));
        assert_eq!(parse_body(b"{\"a\":1}"), Some(json!({"a": 1})));
        assert_eq!(parse_body(b"nope"), None);
    }
}
