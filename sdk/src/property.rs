//! Properties read and written with the path made on the stack.
//!
//! The ABI takes a property's path as its segments joined by NUL bytes. The upstream
//! crate's `get_property` and `set_property` take the segments as a `Vec` and join them into
//! a second one: two allocations and two frees for every property a request reads, where
//! the paths plugins use (`consumer`, `xds.route_name`, `source.address`) are a few bytes.
//! Here a one-segment path is sent as it is, a longer one is joined in a buffer on the
//! stack, and only a path longer than that buffer is joined on the heap; the host call
//! itself is `tollgate-abi`'s.

/// Joined paths up to this many bytes are made on the stack.
const STACK_PATH: usize = 64;

/// `f` with `path`'s segments joined by NUL bytes, as the ABI sends a path.
fn with_path<T>(path: &[&str], f: impl FnOnce(&[u8]) -> T) -> T {
    if let [segment] = path {
        return f(segment.as_bytes());
    }
    let size = path.iter().map(|segment| segment.len() + 1).sum::<usize>();
    let size = size.saturating_sub(1);
    let mut stack = [0u8; STACK_PATH];
    let mut heap = Vec::new();
    let joined = if size <= STACK_PATH {
        &mut stack[..size]
    } else {
        heap.resize(size, 0);
        &mut heap[..]
    };
    let mut at = 0;
    for (index, segment) in path.iter().enumerate() {
        if index > 0 {
            joined[at] = 0;
            at += 1;
        }
        joined[at..at + segment.len()].copy_from_slice(segment.as_bytes());
        at += segment.len();
    }
    f(joined)
}

/// The property at `path` (`["xds", "route_name"]`); `None` when the host has none, or
/// refused the read.
pub fn get(path: &[&str]) -> Option<Vec<u8>> {
    with_path(path, tollgate_abi::get_property)
}

/// Sets the property at `path` to `value` (for the rest of the request, in the request's
/// context); false when the host refused it.
pub fn set(path: &[&str], value: &[u8]) -> bool {
    with_path(path, |joined| tollgate_abi::set_property(joined, value))
}

#[cfg(test)]
mod tests {
    use super::with_path;

    fn joined(path: &[&str]) -> Vec<u8> {
        with_path(path, <[u8]>::to_vec)
    }

    #[test]
    fn a_path_is_its_segments_joined_by_nul() {
        assert_eq!(joined(&["consumer"]), b"consumer");
        assert_eq!(joined(&["xds", "route_name"]), b"xds\0route_name");
        assert_eq!(joined(&["a", "", "b"]), b"a\0\0b");
        assert_eq!(joined(&[]), b"");
        let long = "x".repeat(40);
        assert_eq!(
            joined(&[&long, &long]),
            format!("{long}\0{long}").into_bytes()
        );
    }
}
