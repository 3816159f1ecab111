//! How the gateway's HTTP/1.1 client reads an upstream's answer
//! (`tollgate::upstream::http1`): the head parser, the choice of body framing and the body
//! decoder, with the bytes arriving in pieces as reads return them.
//!
//! Checks: nothing panics; a head is found, or refused, the same whether its bytes come at
//! once or a piece at a time, and is never longer than `MAX_HEAD_BYTES`; a body delimited by
//! its length yields no byte past that length and ends only when all of it has come; a body
//! delimited by the close yields every byte; a chunked body encoded from the input's own
//! chunks (with extensions, and trailers or not) decodes to the same bytes and trailers in
//! any pieces, and leaves what follows it unread.
//!
//! The input's first byte picks the mode (raw answer or chunked round trip) and the
//! request's method; the second, the size of the pieces; the rest is the answer or the
//! chunks' bytes.

#![no_main]

use bytes::BytesMut;
use http::{HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use tollgate::upstream::http1::{
    body_decoder, parse_head, Chunk, Decoded, Decoding, MAX_HEAD_BYTES,
};

fuzz_target!(|input: &[u8]| {
    let [mode, piece, data @ ..] = input else {
        return;
    };
    let piece = usize::from(*piece % 64) + 1;
    if mode & 1 == 0 {
        raw_answer(
            data,
            piece,
            if mode & 2 == 0 {
                Method::GET
            } else {
                Method::HEAD
            },
        );
    } else {
        chunked_round_trip(data, piece, mode & 2 != 0);
    }
});

/// What parsing `bytes` as an answer head gives: `Some(length)`, `None` (incomplete) or
/// `Err(())`.
fn head_outcome(bytes: &[u8]) -> Result<Option<usize>, ()> {
    let mut fields = Vec::new();
    match parse_head(bytes, &mut fields) {
        Ok(Some(head)) => Ok(Some(head.length)),
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

fn raw_answer(bytes: &[u8], piece: usize, method: Method) {
    let whole = head_outcome(bytes);
    // The same bytes a piece at a time, as reads bring them.
    let mut end = 0;
    let piecewise = loop {
        end = (end + piece).min(bytes.len());
        match head_outcome(&bytes[..end]) {
            Ok(None) if end < bytes.len() => continue,
            outcome => break outcome,
        }
    };
    assert_eq!(
        whole, piecewise,
        "the head read at once and in pieces of {piece}"
    );
    let Ok(Some(_)) = whole else {
        return;
    };

    let mut fields = Vec::new();
    let head = parse_head(bytes, &mut fields).unwrap().unwrap();
    assert!(head.length <= MAX_HEAD_BYTES && head.length <= bytes.len());
    for field in fields {
        if HeaderValue::from_bytes(&bytes[field.value]).is_err() {
            return; // refused as the client refuses it: an invalid field value
        }
    }
    let Ok(decoder) = body_decoder(&method, head.status, &head.framing) else {
        return;
    };
    let body = &bytes[head.length..];
    let expected = match decoder.kind {
        Decoding::Length(length) => Some(length),
        _ => None,
    };
    let close_delimited = matches!(decoder.kind, Decoding::Close);
    let (data, ended) = decode(decoder.kind, body, piece, &mut BytesMut::new());
    if let Some(length) = expected {
        assert!(data.len() as u64 <= length, "more than the Content-Length");
        assert_eq!(
            ended,
            data.len() as u64 == length,
            "ended exactly at the length"
        );
    }
    if close_delimited {
        assert!(ended);
        assert_eq!(data, body, "a close-delimited body is every byte");
    }
}

/// Decodes `body` arriving in pieces of `piece` bytes, then the connection's close: the
/// data, and whether the body ended cleanly. `read` keeps what was not consumed.
fn decode(
    mut decoding: Decoding,
    body: &[u8],
    piece: usize,
    read: &mut BytesMut,
) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let mut offset = 0;
    loop {
        match decoding.decode(read) {
            Ok(Decoded::Frame(frame)) => match frame.into_data() {
                Ok(bytes) => {
                    assert!(!bytes.is_empty(), "an empty data frame");
                    data.extend_from_slice(&bytes);
                }
                Err(_) => {} // trailers
            },
            Ok(Decoded::End) => return (data, true),
            Ok(Decoded::More) if offset < body.len() => {
                let end = (offset + piece).min(body.len());
                read.extend_from_slice(&body[offset..end]);
                offset = end;
            }
            Ok(Decoded::More) => return (data, decoding.at_close().is_ok()),
            Err(_) => return (data, false),
        }
    }
}

fn chunked_round_trip(bytes: &[u8], piece: usize, with_trailers: bool) {
    // The input cut into chunks: each byte below 32 starts a new chunk.
    let chunks: Vec<&[u8]> = bytes
        .split(|&b| b < 32)
        .filter(|chunk| !chunk.is_empty())
        .collect();
    let mut wire = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        if i % 2 == 0 {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        } else {
            wire.extend_from_slice(format!("{:X};name=\"v;\"\r\n", chunk.len()).as_bytes());
        }
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n");
    if with_trailers {
        wire.extend_from_slice(b"x-checksum: 1234\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    let next = b"HTTP/1.1 200 OK\r\n";
    wire.extend_from_slice(next);

    let mut read = BytesMut::new();
    let mut decoding = Decoding::Chunked(Chunk::Size);
    let mut data = Vec::new();
    let mut trailers = None;
    let mut offset = 0;
    loop {
        match decoding
            .decode(&mut read)
            .expect("a well-formed chunked body")
        {
            Decoded::Frame(frame) => match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Decoded::End => break,
            Decoded::More => {
                assert!(offset < wire.len(), "the body did not end");
                let end = (offset + piece).min(wire.len());
                read.extend_from_slice(&wire[offset..end]);
                offset = end;
            }
        }
    }
    assert_eq!(data, chunks.concat(), "the chunks' bytes");
    assert_eq!(
        trailers
            .as_ref()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.as_bytes().to_vec()),
        with_trailers.then(|| b"1234".to_vec()),
        "the trailers"
    );
    // What follows the body is left as it came (the next answer on the connection).
    let mut rest = read.to_vec();
    rest.extend_from_slice(&wire[offset..]);
    assert_eq!(rest, next, "the bytes after the body");
}
