//! The proxy-wasm header-map wire format (`tollgate::wasm::abi::{encode_pairs,
//! decode_pairs}`): what the host decodes from guest memory in
//! `proxy_set_header_map_pairs`, `proxy_send_local_response` and `proxy_http_call`, and
//! encodes for `proxy_get_header_map_pairs`.
//!
//! Checks: decoding arbitrary bytes never panics, and never allocates more than a small
//! multiple of the input (a plugin must not make the host reserve memory for a count it
//! merely claims); what decodes re-encodes to bytes that decode to the same pairs; and any
//! header list survives encode → decode unchanged.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tollgate::wasm::abi::{decode_pairs, encode_pairs, HeaderList};

/// Counts the bytes live on the heap, and their peak since the last reset, so that the
/// target can bound what one decode allocates.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes a decode may allocate beyond what was live before it, for `input_len` bytes of
/// input. Per pair (at least 10 input bytes each) the decoder keeps two lengths (16 bytes)
/// and a `(String, Vec<u8>)` (48 bytes); keys and values copy at most the input, and lossy
/// UTF-8 decoding can triple a key (one invalid byte becomes U+FFFD, three bytes). So about
/// 10 bytes per input byte; 16 leaves room without letting a claimed count through.
fn decode_budget(input_len: usize) -> usize {
    16 * input_len + 256
}

/// Input: the first byte chooses how the rest is read.
fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        decode_arbitrary(rest);
    } else {
        round_trip(rest);
    }
}

fn decode_arbitrary(bytes: &[u8]) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = decode_pairs(bytes);
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        used <= decode_budget(bytes.len()),
        "decoding {} bytes allocated {used} bytes",
        bytes.len()
    );
    let Some(pairs) = decoded else {
        return;
    };
    let encoded = encode_pairs(&pairs);
    assert!(
        encoded.len() <= 3 * bytes.len(),
        "re-encoding {} bytes gave {} bytes",
        bytes.len(),
        encoded.len()
    );
    assert_eq!(
        decode_pairs(&encoded).as_ref(),
        Some(&pairs),
        "decoded pairs do not survive encode → decode"
    );
}

/// Header lists as plugins and the host build them: any names, any value bytes.
fn round_trip(bytes: &[u8]) {
    let mut input = Unstructured::new(bytes);
    let Ok(pairs) = <Vec<(String, Vec<u8>)>>::arbitrary(&mut input) else {
        return;
    };
    let pairs: HeaderList = pairs;
    let encoded = encode_pairs(&pairs);
    let expected_len = if pairs.is_empty() {
        0
    } else {
        4 + pairs
            .iter()
            .map(|(key, value)| 8 + key.len() + 1 + value.len() + 1)
            .sum::<usize>()
    };
    assert_eq!(encoded.len(), expected_len, "encoded size");
    assert_eq!(
        decode_pairs(&encoded),
        Some(pairs),
        "encode → decode changed the list"
    );
}

fuzz_target!(|data: &[u8]| check(data));
