//! Secrets (API keys, password digests, signatures) compared so that the time taken tells
//! nothing about how much of them matched.

/// Whether `a` and `b` hold the same bytes. Every byte is read whatever the bytes are, so
/// the time depends on the lengths alone. Eight bytes a turn: in the guest, each turn of a
/// loop is also a check of the host's CPU deadline, and a byte-wise loop costs about three
/// times as much.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() < 8 {
        return a
            .iter()
            .zip(b)
            .fold(0, |difference, (x, y)| difference | (x ^ y))
            == 0;
    }
    // Whole words, then the last eight bytes, which may overlap the last whole word.
    let tail = a.len() - 8;
    let last = word(&a[tail..]) ^ word(&b[tail..]);
    let difference = a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .fold(last, |difference, (x, y)| difference | (word(x) ^ word(y)));
    difference == 0
}

fn word(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes.try_into().expect("chunks of eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bytes_of_every_length_match() {
        let bytes: Vec<u8> = (0..40).collect();
        let copy = bytes.clone();
        for length in 0..=bytes.len() {
            assert!(
                same_bytes(&bytes[..length], &copy[..length]),
                "length {length}"
            );
        }
    }

    #[test]
    fn a_difference_anywhere_or_another_length_does_not_match() {
        let bytes: Vec<u8> = (0..21).collect();
        for at in 0..bytes.len() {
            let mut other = bytes.clone();
            other[at] ^= 0x80;
            assert!(!same_bytes(&bytes, &other), "byte {at} differs");
        }
        assert!(!same_bytes(&bytes, &bytes[..20]));
        assert!(!same_bytes(b"", b"a"));
    }
}
