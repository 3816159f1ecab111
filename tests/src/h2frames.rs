//! A raw HTTP/2 frame writer and reader for tests that must send what no HTTP/2 library
//! would: resets by the thousand, endless CONTINUATION frames, SETTINGS and PING floods.
//!
//! Header blocks are HPACK "literal header field never indexed, new name" representations
//! (RFC 7541 §6.2.3) with raw (not Huffman) strings, so no table state is involved.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error code CANCEL, as browsers send when a user navigates away.
pub const CANCEL: u32 = 0x8;

/// One frame: 9-byte header then payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    assert!(length < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An empty SETTINGS frame (the client's part of the preface, or a flood of them).
pub fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[])
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &data)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK block of never-indexed literals, in the order given (pseudo-headers first).
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0x10);
        hpack_string(&mut block, name.as_bytes());
        hpack_string(&mut block, value.as_bytes());
    }
    block
}

/// An HPACK string literal: length as a 7-bit-prefix integer (Huffman bit clear), then bytes.
fn hpack_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut length = bytes.len();
    if length < 127 {
        out.push(length as u8);
    } else {
        out.push(127);
        length -= 127;
        while length >= 128 {
            out.push((length % 128) as u8 | 0x80);
            length /= 128;
        }
        out.push(length as u8);
    }
    out.extend_from_slice(bytes);
}

/// The pseudo-headers of a GET to `authority` and `path` over h2c.
pub fn get_headers<'a>(authority: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
    ]
}

/// A complete request: one HEADERS frame with END_HEADERS and END_STREAM.
pub fn get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &header_block(&get_headers(authority, path)),
    )
}

/// A frame as read back from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// A raw h2c connection: the preface is sent on connect.
pub struct RawH2 {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

/// How reading from a [`RawH2`] ended.
#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    /// The server closed the connection (FIN or reset).
    Closed,
    /// Nothing arrived in time.
    TimedOut,
}

impl RawH2 {
    /// Connects, sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&settings());
        stream.write_all(&hello).await?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Writes bytes; an error means the server closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame from the server.
    pub async fn read_frame(&mut self, timeout: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buffer.len() >= 9 {
                let length = u32::from_be_bytes([0, self.buffer[0], self.buffer[1], self.buffer[2]])
                    as usize;
                if self.buffer.len() >= 9 + length {
                    let frame = Frame {
                        kind: self.buffer[3],
                        flags: self.buffer[4],
                        stream: u32::from_be_bytes([
                            self.buffer[5],
                            self.buffer[6],
                            self.buffer[7],
                            self.buffer[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buffer[9..9 + length].to_vec(),
                    };
                    self.buffer.drain(..9 + length);
                    return Read::Frame(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Read::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(read)) => self.buffer.extend_from_slice(&chunk[..read]),
            }
        }
    }

    /// Reads frames until `stop` says so, the connection closes, or `timeout` passes;
    /// returns the frames read and how reading ended (the stopping frame is the last one).
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(&Frame) -> bool,
    ) -> (Vec<Frame>, Read) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Read::Frame(frame) => {
                    let done = stop(&frame);
                    frames.push(frame.clone());
                    if done {
                        return (frames, Read::Frame(frame));
                    }
                }
                other => return (frames, other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_wire_layout() {
        let bytes = frame(HEADERS, END_HEADERS, 3, b"abc");
        assert_eq!(bytes, [0, 0, 3, 1, 4, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(
            rst_stream(1, CANCEL),
            [0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 8]
        );
    }

    #[test]
    fn hpack_literals_use_the_integer_prefix() {
        assert_eq!(header_block(&[("a", "b")]), [0x10, 1, b'a', 1, b'b']);
        let long = "v".repeat(300);
        let block = header_block(&[("x", &long)]);
        // 300 = 127 + 173; 173 = 0x80 | 45, then 1.
        assert_eq!(&block[..6], &[0x10, 1, b'x', 127, 45 | 0x80, 1]);
        assert_eq!(block.len(), 6 + 300);
    }
}
