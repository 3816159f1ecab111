//! The gateway's HTTP/1.1 client towards upstreams.
//!
//! A request drives its connection itself: it writes its head and body and reads the
//! answer on the connection it took from the pool, and the response body reads the rest.
//! There is no task per connection and no channel between a request and its connection
//! (what a general-purpose client needs to let any task use any connection): a pooled
//! connection is used by one request at a time, on the worker that owns the pool.
//!
//! What it accepts from an upstream is what RFC 9112 allows, with a bound on everything a
//! hostile upstream could make it hold: an answer head of at most [`MAX_HEAD_BYTES`] and
//! [`MAX_HEADERS`] fields, at most [`MAX_INTERIM`] interim (1xx) answers before the final
//! one, chunk-size lines of at most [`MAX_CHUNK_LINE`] bytes. An answer framed two ways
//! (`Transfer-Encoding` and `Content-Length`) is read as chunked and its connection is not
//! used again; differing lengths are an error, never a guess.

use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::connector::UpstreamStream;
use super::{BoxError, UpstreamBody};
use crate::fields::{self, HopByHop};

/// The largest answer head (status line and fields) read from an upstream.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most fields an answer head (or a chunked body's trailers) may have.
pub const MAX_HEADERS: usize = 100;
/// The most interim answers (`100 Continue`, `103 Early Hints`) passed over before the final one.
pub const MAX_INTERIM: usize = 16;
/// The longest chunk-size line (size and extensions) of a chunked answer.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Fields an answer's header map has room for beyond its own (see `into_response`): the
/// `X-Forwarded-*` fields and `X-Request-Id` the gateway adds to a request, and a few a
/// plugin adds.
const ROOM_FOR_NEXT_REQUEST: usize = 8;

/// A read asks for at least this much room, and for up to `MAX_READ` while reads fill it:
/// small answers take one small buffer, large bodies move in fewer reads (and are written
/// on to the client in as few writes).
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;
/// A connection that stays idle keeps a read buffer up to this size; a larger one, grown by
/// a large body, is let go (see [`Connection::release_large_buffer`]).
const MAX_IDLE_READ: usize = 64 * 1024;

/// Why an exchange with an upstream failed.
#[derive(Debug)]
pub enum Http1Error {
    /// Reading from or writing to the connection failed.
    Io(io::Error),
    /// The upstream closed the connection before a complete answer head.
    ClosedBeforeAnswer,
    /// The answer head is not HTTP/1.x.
    InvalidHead(&'static str),
    /// The answer head is larger than [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`] fields.
    HeadTooLarge,
    /// More than [`MAX_INTERIM`] interim answers.
    TooManyInterim,
    /// The answer's body framing cannot be read one way (differing or invalid lengths).
    InvalidFraming(&'static str),
    /// The upstream closed the connection before the end of the answer's body.
    IncompleteBody,
    /// A chunked body broke its framing.
    InvalidChunk(&'static str),
    /// The request body failed (the client's side): the error is the body's.
    RequestBody(BoxError),
    /// The request body was longer or shorter than its `Content-Length`.
    RequestBodyLength,
}

impl fmt::Display for Http1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "upstream connection: {error}"),
            Self::ClosedBeforeAnswer => {
                f.write_str("the upstream closed the connection before answering")
            }
            Self::InvalidHead(what) => write!(f, "invalid answer head from the upstream: {what}"),
            Self::HeadTooLarge => write!(
                f,
                "the upstream's answer head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields"
            ),
            Self::TooManyInterim => {
                write!(
                    f,
                    "the upstream sent more than {MAX_INTERIM} interim answers"
                )
            }
            Self::InvalidFraming(what) => write!(f, "the upstream's answer framing: {what}"),
            Self::IncompleteBody => {
                f.write_str("the upstream closed the connection before the end of the body")
            }
            Self::InvalidChunk(what) => write!(f, "invalid chunked body from the upstream: {what}"),
            Self::RequestBody(error) => write!(f, "request body: {error}"),
            Self::RequestBodyLength => {
                f.write_str("the request body does not match its Content-Length")
            }
        }
    }
}

impl std::error::Error for Http1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(error) => Some(error),
            Self::RequestBody(error) => Some(error.as_ref()),
            _ => None,
        }
    }
}

/// An exchange that failed; `unsent` is the request when no byte of it was written, so it
/// may go on another connection.
pub struct Failed {
    pub error: Http1Error,
    pub unsent: Option<Request<UpstreamBody>>,
}

/// An open connection to an upstream, between exchanges or in one.
pub struct Connection {
    stream: UpstreamStream,
    /// Read from the stream and not consumed yet.
    read: BytesMut,
    /// How much room the next read asks for.
    read_size: usize,
    /// Request heads and chunk framing are written from here; kept for the next request.
    out: Vec<u8>,
    /// An answer head's fields between parsing and building its map; kept for the next.
    fields: Vec<FieldAt>,
}

impl Connection {
    pub fn new(stream: UpstreamStream) -> Box<Self> {
        Box::new(Self {
            stream,
            read: BytesMut::new(),
            read_size: MIN_READ,
            out: Vec::new(),
            fields: Vec::new(),
        })
    }

    /// Lets go of a read buffer that reads grew past [`MAX_IDLE_READ`] (the last body's bytes
    /// and the room left share one allocation), for a connection that has stayed idle: one
    /// in steady use keeps its buffer, so that answers of every size reuse it in place.
    pub fn release_large_buffer(&mut self) {
        if self.read.is_empty() && self.read_size > MAX_IDLE_READ {
            self.read = BytesMut::new();
            self.read_size = MAX_IDLE_READ;
        }
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it
    /// nor sent anything unasked (which would be read as the next answer).
    pub fn is_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        // Nobody waits on an idle connection, so no waker is needed: a stream with nothing
        // to read answers `Pending` (without a system call when its last read was short).
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_fill(&mut cx).is_pending()
    }

    /// Reads what the stream has into `read`: the number of bytes, 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < self.read_size / 2 {
            self.read.reserve(self.read_size);
        }
        let room = self.read.capacity() - self.read.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.read
        ))?;
        if read == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(read))
    }

    /// Sends `request` and reads the answer's head. The body is sent while the answer is
    /// awaited: an upstream may answer before it has read the whole body (a `413`), and that
    /// answer is passed on even when the upstream reads no more of it.
    pub async fn exchange(
        mut self: Box<Self>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, Failed> {
        let (parts, body) = request.into_parts();
        let (framing, close_requested) = write_head(&mut self.out, &parts, &body);
        let mut sending = Sending::new(body, framing);
        let answered = poll_fn(|cx| self.poll_answer(cx, &mut sending)).await;
        match answered
            .and_then(|head| self.into_response(head, &parts, sending.sent, close_requested))
        {
            Ok(response) => Ok(response),
            Err(error) if sending.written > 0 => Err(Failed {
                error,
                unsent: None,
            }),
            Err(error) => {
                // Nothing was written: the request can go on another connection, unless
                // its own body is what failed.
                let unsent = (!matches!(error, Http1Error::RequestBody(_)))
                    .then(|| Request::from_parts(parts, sending.into_unsent_body()));
                Err(Failed { error, unsent })
            }
        }
    }

    /// Drives the sending of the request and reads until a final answer head.
    fn poll_answer(
        &mut self,
        cx: &mut Context<'_>,
        sending: &mut Sending,
    ) -> Poll<Result<Head, Http1Error>> {
        if !sending.sent && sending.failed.is_none() {
            if let Poll::Ready(Err(error)) = sending.poll_send(&mut self.stream, &mut self.out, cx)
            {
                // Nothing of the request went out, or the client's body failed: no answer
                // is coming. Otherwise the upstream may have answered before the write
                // failed (an early `413`, then a close): read on.
                if sending.written == 0 || matches!(error, Http1Error::RequestBody(_)) {
                    return Poll::Ready(Err(error));
                }
                sending.failed = Some(error);
            }
        }
        loop {
            if let Some(head) = parse_head(&self.read, &mut self.fields)? {
                let Head { status, .. } = &head;
                if status.is_informational() && *status != StatusCode::SWITCHING_PROTOCOLS {
                    // Passed over, as every client does that did not ask for it.
                    self.read.advance(head.length);
                    self.fields.clear();
                    sending.interim += 1;
                    if sending.interim > MAX_INTERIM {
                        return Poll::Ready(Err(Http1Error::TooManyInterim));
                    }
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(sending
                        .failed
                        .take()
                        .unwrap_or(Http1Error::ClosedBeforeAnswer)))
                }
                Ok(_) => {}
                Err(error) => {
                    return Poll::Ready(Err(sending.failed.take().unwrap_or(Http1Error::Io(error))))
                }
            }
        }
    }

    /// The answer whose head was parsed, with a body that reads the rest from this
    /// connection (and hands it back for reuse when its exchange ended cleanly); an error
    /// when its fields or its framing cannot be taken.
    fn into_response(
        mut self: Box<Self>,
        head: Head,
        request: &http::request::Parts,
        sent_whole: bool,
        close_requested: bool,
    ) -> Result<Response<ResponseBody>, Http1Error> {
        let head_bytes = self.read.split_to(head.length).freeze();
        let framing = &head.framing;
        let upgrade = head.status == StatusCode::SWITCHING_PROTOCOLS;
        // The fields of this connection and a second framing are left out as the map is
        // built, in the common case; a `Connection` that names other fields takes the
        // general way through the map afterwards. A `101` keeps them for the tunnel. (`TE`,
        // a request field, goes whole: the `TE: trailers` a request keeps means nothing in
        // an answer.)
        let general = !upgrade && framing.names_other_fields;
        let one_length = framing.length_fields > 1 || framing.length_listed;
        let skip_lengths = !upgrade && !general && (framing.transfer_encoding || one_length);
        let skip_hop_by_hop = !upgrade && !general && !framing.hop_by_hop.is_empty();
        // Room for more than the answer's fields: once the answer is written, the server
        // side (hyper) keeps this map for the connection's next request, which gains the
        // forwarded headers and a request id before it goes upstream; without the room,
        // every request would grow its map once.
        let mut headers = HeaderMap::with_capacity(self.fields.len() + ROOM_FOR_NEXT_REQUEST);
        for field in self.fields.drain(..) {
            if (skip_hop_by_hop && field.hop_by_hop != 0)
                || (skip_lengths && field.name == header::CONTENT_LENGTH)
            {
                continue;
            }
            // httparse took the bytes as field content; the `http` crate is stricter.
            let value = HeaderValue::from_maybe_shared(head_bytes.slice(field.value))
                .map_err(|_| Http1Error::InvalidHead("field value"))?;
            headers.append(field.name, value);
        }
        if general {
            fields::one_body_framing(&mut headers);
            fields::remove_hop_by_hop(&mut headers, false);
            headers.remove(header::TE);
        } else if skip_lengths && !framing.transfer_encoding {
            // A repeated length, every copy equal (else the decoder below refuses it),
            // goes on once.
            if let Some(Ok(length)) = framing.content_length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
        }
        let decoder = body_decoder(&request.method, head.status, framing)?;
        let body = if upgrade {
            ResponseBody {
                upgraded: Some(Upgraded { connection: self }),
                ..ResponseBody::empty()
            }
        } else {
            let reusable = sent_whole
                && !decoder.framed_twice
                && !matches!(decoder.kind, Decoding::Close)
                && framing.keeps_alive(head.version)
                && !close_requested;
            ResponseBody {
                connection: Some(self),
                decoding: decoder.kind,
                reusable,
                upgraded: None,
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// One field of a parsed head: its name, its value as a range of the head's bytes, and
/// whether it is a field of the connection ([`HopByHop::bit`]).
pub struct FieldAt {
    pub name: HeaderName,
    pub value: std::ops::Range<usize>,
    pub hop_by_hop: u8,
}

/// A parsed answer head: its fields are in the `fields` given to [`parse_head`], as ranges
/// of its bytes.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// Bytes of the head, its blank line included.
    pub length: usize,
    /// What its fields say about the body's framing and the connection.
    pub framing: FramingFields,
}

/// The fields of a head that say how its body is delimited and whether its connection stays
/// open, read as the head is parsed or written (so that no field is looked up again).
#[derive(Default)]
pub struct FramingFields {
    /// The one length every `Content-Length` field (and list element) gives, or what is
    /// wrong with them.
    content_length: Option<Result<u64, &'static str>>,
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked_last: bool,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// `Connection` names a field other than `close` and `keep-alive`, to be removed too.
    names_other_fields: bool,
    /// The fields of one connection that the head has.
    hop_by_hop: HopByHop,
    /// How many `Content-Length` fields the head has (up to 2: more is the same case).
    length_fields: u8,
    /// A `Content-Length` value is a list (`5, 5`).
    length_listed: bool,
}

impl FramingFields {
    /// Takes one field of the head into account; returns its [`HopByHop::bit`].
    fn add(&mut self, name: &HeaderName, value: &[u8]) -> u8 {
        if *name == header::CONTENT_LENGTH {
            self.length_fields = (self.length_fields + 1).min(2);
            self.length_listed |= value.contains(&b',');
            for element in value.split(|&b| b == b',') {
                let length = parse_length(element.trim_ascii());
                self.content_length = match (self.content_length, length) {
                    (Some(Err(error)), _) | (_, Err(error)) => Some(Err(error)),
                    (Some(Ok(seen)), Ok(length)) if seen != length => {
                        Some(Err("differing Content-Length values"))
                    }
                    (_, Ok(length)) => Some(Ok(length)),
                };
            }
            return 0;
        }
        let bit = HopByHop::bit(name);
        self.hop_by_hop.add(bit);
        if bit == HopByHop::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            // The last field's last coding is the one that counts.
            self.chunked_last = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if bit == HopByHop::CONNECTION {
            for token in fields::list_elements(value) {
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                self.names_other_fields |= !close && !keep_alive;
            }
        }
        bit
    }

    /// Whether the upstream keeps the connection open after this answer.
    fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }
}

/// A `Content-Length` value: 1 to 19 digits (no sign, no space inside).
fn parse_length(digits: &[u8]) -> Result<u64, &'static str> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("invalid Content-Length");
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0')))
}

/// Parses an answer head at the start of `buffer`: `None` while it is incomplete.
pub fn parse_head(buffer: &[u8], fields: &mut Vec<FieldAt>) -> Result<Option<Head>, Http1Error> {
    // Left uninitialised: filling 100 empty fields cost more than parsing a small head.
    let mut parsed = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buffer,
        &mut parsed,
    ) {
        Ok(httparse::Status::Complete(length)) if length <= MAX_HEAD_BYTES => length,
        Ok(httparse::Status::Complete(_)) => return Err(Http1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => {
            return Err(Http1Error::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Http1Error::HeadTooLarge),
        Err(error) => return Err(Http1Error::InvalidHead(parse_error(error))),
    };
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(Http1Error::InvalidHead("version")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(Http1Error::InvalidHead("status"))?;
    fields.clear();
    let mut framing = FramingFields::default();
    let start = buffer.as_ptr() as usize;
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Http1Error::InvalidHead("field name"))?;
        let hop_by_hop = framing.add(&name, field.value);
        let offset = field.value.as_ptr() as usize - start;
        fields.push(FieldAt {
            name,
            value: offset..offset + field.value.len(),
            hop_by_hop,
        });
    }
    Ok(Some(Head {
        status,
        version,
        length,
        framing,
    }))
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "field name",
        httparse::Error::HeaderValue => "field value",
        httparse::Error::NewLine => "line ending",
        httparse::Error::Status => "status",
        httparse::Error::Token => "token",
        httparse::Error::TooManyHeaders => "too many fields",
        httparse::Error::Version => "version",
    }
}

/// How an answer's body is delimited (RFC 9112 §6.3).
pub struct Decoder {
    pub kind: Decoding,
    /// Both `Transfer-Encoding` and `Content-Length`: read as chunked, but the connection
    /// is not trusted with another request (the two framings may be a smuggling attempt).
    pub framed_twice: bool,
}

/// Where a body's decoding is.
pub enum Decoding {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the upstream closes the connection.
    Close,
    Done,
}

/// Where a chunked body's decoding is.
#[derive(Clone, Copy)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes to come.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, or the final CRLF.
    Trailers,
}

/// What the bytes read so far hold of an answer's body.
pub enum Decoded {
    /// The next frame: data, or the trailers of a chunked body.
    Frame(Frame<Bytes>),
    /// The body has ended.
    End,
    /// More bytes are needed.
    More,
}

impl Decoding {
    /// Takes the body's next frame from the front of `read`: data is split off without a
    /// copy; chunk framing is consumed and checked.
    pub fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, Http1Error> {
        loop {
            match self {
                Decoding::Done => return Ok(Decoded::End),
                Decoding::Length(remaining) | Decoding::Chunked(Chunk::Data(remaining))
                    if !read.is_empty() =>
                {
                    let take = (*remaining).min(read.len() as u64) as usize;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        *self = match self {
                            Decoding::Chunked(_) => Decoding::Chunked(Chunk::DataEnd),
                            _ => Decoding::Done,
                        };
                    }
                    return Ok(Decoded::Frame(Frame::data(read.split_to(take).freeze())));
                }
                Decoding::Close if !read.is_empty() => {
                    return Ok(Decoded::Frame(Frame::data(read.split().freeze())));
                }
                Decoding::Chunked(Chunk::Size) => {
                    let Some((size, length)) =
                        chunk_size_line(read).map_err(Http1Error::InvalidChunk)?
                    else {
                        return Ok(Decoded::More);
                    };
                    read.advance(length);
                    *self = Decoding::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Decoding::Chunked(Chunk::DataEnd) => {
                    if read.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err(Http1Error::InvalidChunk("no CRLF after a chunk"));
                    }
                    read.advance(2);
                    *self = Decoding::Chunked(Chunk::Size);
                }
                Decoding::Chunked(Chunk::Trailers) => {
                    let Some((fields, length)) =
                        trailers(read).map_err(Http1Error::InvalidChunk)?
                    else {
                        return Ok(Decoded::More);
                    };
                    read.advance(length);
                    *self = Decoding::Done;
                    return Ok(match fields {
                        Some(fields) => Decoded::Frame(Frame::trailers(fields)),
                        None => Decoded::End,
                    });
                }
                _ => return Ok(Decoded::More),
            }
        }
    }

    /// The connection has ended: the end of a body delimited by it, else an error.
    pub fn at_close(&mut self) -> Result<(), Http1Error> {
        match self {
            Decoding::Close | Decoding::Done => {
                *self = Decoding::Done;
                Ok(())
            }
            _ => Err(Http1Error::IncompleteBody),
        }
    }
}

/// How the body of an answer with `status` and `framing` fields to a `method` request is
/// delimited.
pub fn body_decoder(
    method: &Method,
    status: StatusCode,
    framing: &FramingFields,
) -> Result<Decoder, Http1Error> {
    let mut decoder = Decoder {
        kind: Decoding::Done,
        framed_twice: false,
    };
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(decoder);
    }
    if framing.transfer_encoding {
        decoder.framed_twice = framing.content_length.is_some();
        decoder.kind = if framing.chunked_last {
            Decoding::Chunked(Chunk::Size)
        } else {
            // A coding other than chunked last: the body ends with the connection.
            Decoding::Close
        };
        return Ok(decoder);
    }
    decoder.kind = match framing.content_length {
        Some(Err(what)) => return Err(Http1Error::InvalidFraming(what)),
        Some(Ok(0)) => Decoding::Done,
        Some(Ok(length)) => Decoding::Length(length),
        None => Decoding::Close,
    };
    Ok(decoder)
}

/// How the request body is framed on the wire.
enum Framing {
    /// No body.
    None,
    /// This many bytes still to send.
    Length(u64),
    Chunked,
}

/// Writes the request head into `out` (cleared first): the request line, the fields as
/// they are, and a framing field when the body needs one the fields do not give. Returns
/// the body's framing, and whether the request asks for the connection to close after it.
fn write_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    body: &UpstreamBody,
) -> (Framing, bool) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut fields = FramingFields::default();
    for (name, value) in &parts.headers {
        fields.add(name, value.as_bytes());
        write_field(out, name, value);
    }
    let framing = match fields.content_length {
        Some(Ok(length)) => Framing::Length(length),
        _ if fields.transfer_encoding && fields.chunked_last => Framing::Chunked,
        _ if body.is_end_stream() => Framing::None,
        _ => match body.size_hint().exact() {
            Some(length) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                out.extend_from_slice(b"\r\n");
                Framing::Length(length)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    (framing, fields.close)
}

/// One `name: value` line of a head or of trailers.
fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The sending side of an exchange: the head in `Connection::out`, then the body's frames.
struct Sending {
    body: UpstreamBody,
    framing: Framing,
    /// Bytes of `out` written so far.
    out_written: usize,
    /// The data frame being written, after whatever is left in `out`.
    data: Bytes,
    /// What follows `data`: a chunk's CRLF (and, after the last one, the last chunk).
    suffix: &'static [u8],
    /// Every frame of the body has been taken.
    body_done: bool,
    /// The whole request has been written.
    sent: bool,
    /// Bytes written in all.
    written: u64,
    /// A write that failed after part of the request went out (the answer may still come).
    failed: Option<Http1Error>,
    interim: usize,
    /// The frame taken from the body before anything was written, should it go back.
    taken: Option<Bytes>,
}

impl Sending {
    fn new(body: UpstreamBody, framing: Framing) -> Self {
        let body_done =
            matches!(framing, Framing::None | Framing::Length(0)) || body.is_end_stream();
        Self {
            body,
            framing,
            out_written: 0,
            data: Bytes::new(),
            suffix: b"",
            body_done,
            sent: false,
            written: 0,
            failed: None,
            interim: 0,
            taken: None,
        }
    }

    /// The request body as it was before anything was written: the frame taken for the
    /// first write goes back in front.
    fn into_unsent_body(self) -> UpstreamBody {
        match self.taken {
            Some(first) => http_body_util::BodyExt::boxed(Prepended {
                first: Some(first),
                rest: self.body,
            }),
            None => self.body,
        }
    }

    /// Writes what is ready of the request: `Ready(Ok)` when all of it is written.
    fn poll_send(
        &mut self,
        stream: &mut UpstreamStream,
        out: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Http1Error>> {
        loop {
            // A frame that is ready goes out with what precedes it (the head and a small
            // body in one write).
            if self.data.is_empty() && self.suffix.is_empty() && !self.body_done {
                if let Poll::Ready(result) = self.poll_body(out, cx) {
                    result?;
                    continue;
                }
            }
            let pending = out.len() - self.out_written + self.data.len() + self.suffix.len();
            if pending == 0 {
                if self.body_done {
                    out.clear();
                    self.out_written = 0;
                    self.sent = true;
                    return Poll::Ready(Ok(()));
                }
                // Waiting for the body (its waker is registered).
                return Poll::Pending;
            }
            let slices = [
                IoSlice::new(&out[self.out_written..]),
                IoSlice::new(&self.data),
                IoSlice::new(self.suffix),
            ];
            let mut written = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices))
                .map_err(Http1Error::Io)?;
            if written == 0 {
                return Poll::Ready(Err(Http1Error::Io(io::ErrorKind::WriteZero.into())));
            }
            self.written += written as u64;
            self.taken = None;
            let in_out = written.min(out.len() - self.out_written);
            self.out_written += in_out;
            written -= in_out;
            if self.out_written == out.len() {
                out.clear();
                self.out_written = 0;
            }
            let in_data = written.min(self.data.len());
            self.data.advance(in_data);
            written -= in_data;
            self.suffix = &self.suffix[written..];
        }
    }

    /// Takes the body's next frame into the write (`out`, `data`, `suffix`).
    fn poll_body(
        &mut self,
        out: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Http1Error>> {
        let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Err(Http1Error::RequestBody(error))),
            None => {
                self.body_done = true;
                return Poll::Ready(match self.framing {
                    Framing::Chunked => {
                        out.extend_from_slice(b"0\r\n\r\n");
                        Ok(())
                    }
                    Framing::Length(0) | Framing::None => Ok(()),
                    Framing::Length(_) => Err(Http1Error::RequestBodyLength),
                });
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers: the end of the body; only chunked framing can carry them.
                self.body_done = true;
                if let Framing::Chunked = self.framing {
                    out.extend_from_slice(b"0\r\n");
                    if let Ok(trailers) = frame.into_trailers() {
                        for (name, value) in &trailers {
                            write_field(out, name, value);
                        }
                    }
                    out.extend_from_slice(b"\r\n");
                } else if let Framing::Length(remaining) = self.framing {
                    if remaining > 0 {
                        return Poll::Ready(Err(Http1Error::RequestBodyLength));
                    }
                }
                return Poll::Ready(Ok(()));
            }
        };
        if data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.written == 0 {
            self.taken = Some(data.clone());
        }
        let ends = self.body.is_end_stream();
        match &mut self.framing {
            Framing::Length(remaining) => {
                *remaining = remaining
                    .checked_sub(data.len() as u64)
                    .ok_or(Http1Error::RequestBodyLength)?;
                if *remaining == 0 {
                    self.body_done = true;
                } else if ends {
                    return Poll::Ready(Err(Http1Error::RequestBodyLength));
                }
            }
            Framing::Chunked => {
                let mut size = [0u8; 16];
                out.extend_from_slice(hex(data.len() as u64, &mut size));
                out.extend_from_slice(b"\r\n");
                self.suffix = if ends { b"\r\n0\r\n\r\n" } else { b"\r\n" };
                self.body_done = ends;
            }
            Framing::None => {
                // The fields said no body; what comes is not sent.
                return Poll::Ready(Ok(()));
            }
        }
        self.data = data;
        Poll::Ready(Ok(()))
    }
}

/// `value` in upper-case hex digits, written into `buffer`.
fn hex(mut value: u64, buffer: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = DIGITS[(value & 0xf) as usize];
        value >>= 4;
        if value == 0 {
            return &buffer[start..];
        }
    }
}

/// A body with one frame put back in front of the rest.
struct Prepended {
    first: Option<Bytes>,
    rest: UpstreamBody,
}

impl Body for Prepended {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |first| first.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + first);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}

/// An upstream answer's body, read from its connection as it is polled.
pub struct ResponseBody {
    connection: Option<Box<Connection>>,
    decoding: Decoding,
    /// Whether the connection may take another request once the body has ended.
    reusable: bool,
    /// After `101 Switching Protocols`: the connection, for the tunnel.
    upgraded: Option<Upgraded>,
}

impl ResponseBody {
    fn empty() -> Self {
        Self {
            connection: None,
            decoding: Decoding::Done,
            reusable: false,
            upgraded: None,
        }
    }

    /// The connection, once the body has ended and the connection can take another
    /// request; `None` otherwise (it closes when the body is dropped).
    pub fn take_reusable(&mut self) -> Option<Box<Connection>> {
        if !self.reusable || !matches!(self.decoding, Decoding::Done) {
            return None;
        }
        self.reusable = false;
        let connection = self.connection.take()?;
        // Bytes after the answer's end were not asked for: the connection is out of step.
        connection.read.is_empty().then_some(connection)
    }

    /// After `101 Switching Protocols`, the connection for the tunnel, once.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        self.upgraded.take()
    }

    fn fail(&mut self, error: Http1Error) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        self.decoding = Decoding::Done;
        self.reusable = false;
        self.connection = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Http1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_deref_mut() else {
                return Poll::Ready(None);
            };
            match this.decoding.decode(&mut connection.read) {
                Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(error) => return this.fail(error),
            }
            match ready!(connection.poll_fill(cx)) {
                Ok(0) => match this.decoding.at_close() {
                    Ok(()) => {
                        this.reusable = false;
                        return Poll::Ready(None);
                    }
                    Err(error) => return this.fail(error),
                },
                Ok(_) => {}
                Err(error) => return this.fail(Http1Error::Io(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoding, Decoding::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoding {
            Decoding::Length(remaining) => SizeHint::with_exact(remaining),
            Decoding::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A chunk-size line at the start of `buffer`: the size and the line's length, `None` while
/// it is incomplete. Strict: hex digits (at most 16), then extensions, then CRLF.
fn chunk_size_line(buffer: &[u8]) -> Result<Option<(u64, usize)>, &'static str> {
    let Some(end) = buffer.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        return if buffer.len() >= MAX_CHUNK_LINE {
            Err("chunk-size line too long")
        } else {
            Ok(None)
        };
    };
    if end == 0 || buffer[end - 1] != b'\r' {
        return Err("chunk-size line without CRLF");
    }
    let line = &buffer[..end - 1];
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err("chunk size is not hex");
    }
    if digits > 16 {
        return Err("chunk size too large");
    }
    let rest = &line[digits..];
    // Extensions (ignored), after optional whitespace; nothing else may follow the size.
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err("chunk size is not hex");
    }
    if rest.iter().any(|&b| b == b'\r' || b == 0) {
        return Err("invalid chunk extension");
    }
    let size = line[..digits].iter().fold(0u64, |size, &digit| {
        size << 4 | u64::from((digit as char).to_digit(16).unwrap_or(0))
    });
    Ok(Some((size, end + 1)))
}

/// Trailer fields and the final CRLF of a chunked body at the start of `buffer`: the fields
/// (`None` when there are none) and the bytes they take, `None` while incomplete.
#[allow(clippy::type_complexity)]
fn trailers(buffer: &[u8]) -> Result<Option<(Option<HeaderMap>, usize)>, &'static str> {
    if buffer.starts_with(b"\r\n") {
        return Ok(Some((None, 2)));
    }
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buffer, &mut parsed) {
        Ok(httparse::Status::Complete((length, fields))) if length <= MAX_HEAD_BYTES => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| "invalid trailer name")?;
                let value =
                    HeaderValue::from_bytes(field.value).map_err(|_| "invalid trailer value")?;
                map.append(name, value);
            }
            Ok(Some((Some(map), length)))
        }
        Ok(httparse::Status::Complete(_)) => Err("trailers too large"),
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => Err("trailers too large"),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err("invalid trailers"),
    }
}

/// The connection of an answer that switched protocols, and what was read past its head.
pub struct Upgraded {
    connection: Box<Connection>,
}

impl Upgraded {
    /// The stream and the bytes of the new protocol already read from it.
    pub fn into_parts(self) -> (UpstreamStream, Bytes) {
        let Connection { stream, read, .. } = *self.connection;
        (stream, read.freeze())
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("ended", &matches!(self.decoding, Decoding::Done))
            .field("reusable", &self.reusable)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(fields: &[(&str, &str)]) -> FramingFields {
        let mut framing = FramingFields::default();
        for (name, value) in fields {
            framing.add(
                &HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.as_bytes(),
            );
        }
        framing
    }

    fn decoding(fields: &[(&str, &str)]) -> Result<Decoding, Http1Error> {
        body_decoder(&Method::GET, StatusCode::OK, &framing(fields)).map(|decoder| decoder.kind)
    }

    #[test]
    fn content_length_fields_give_one_length_or_an_error() {
        assert!(matches!(
            decoding(&[("content-length", "5")]),
            Ok(Decoding::Length(5))
        ));
        assert!(matches!(
            decoding(&[("content-length", "5, 5")]),
            Ok(Decoding::Length(5))
        ));
        assert!(matches!(
            decoding(&[("content-length", "5"), ("Content-Length", "5")]),
            Ok(Decoding::Length(5))
        ));
        assert!(matches!(
            decoding(&[("content-length", "0")]),
            Ok(Decoding::Done)
        ));
        for bad in [
            &[("content-length", "5, 6")][..],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "+5")],
            &[("content-length", "")],
            &[("content-length", "5 5")],
            &[("content-length", "99999999999999999999")],
        ] {
            assert!(
                matches!(decoding(bad), Err(Http1Error::InvalidFraming(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(decoding(&[]), Ok(Decoding::Close)));
    }

    #[test]
    fn transfer_encoding_wins_and_only_chunked_last_is_chunked() {
        let chunked = framing(&[
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "3"),
        ]);
        let decoder = body_decoder(&Method::GET, StatusCode::OK, &chunked).unwrap();
        assert!(matches!(decoder.kind, Decoding::Chunked(Chunk::Size)));
        assert!(decoder.framed_twice);
        assert!(matches!(
            decoding(&[("transfer-encoding", "chunked, gzip")]),
            Ok(Decoding::Close)
        ));
        assert!(matches!(
            decoding(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "gzip")
            ]),
            Ok(Decoding::Close)
        ));
        // No body after HEAD, 204 and 304, whatever the fields say.
        for (method, status) in [
            (Method::HEAD, StatusCode::OK),
            (Method::GET, StatusCode::NO_CONTENT),
            (Method::GET, StatusCode::NOT_MODIFIED),
        ] {
            let decoder =
                body_decoder(&method, status, &framing(&[("content-length", "9")])).unwrap();
            assert!(matches!(decoder.kind, Decoding::Done));
        }
    }

    #[test]
    fn connection_tokens_decide_reuse() {
        assert!(framing(&[]).keeps_alive(Version::HTTP_11));
        assert!(!framing(&[("connection", "Upgrade, Close")]).keeps_alive(Version::HTTP_11));
        assert!(!framing(&[]).keeps_alive(Version::HTTP_10));
        assert!(framing(&[("connection", "keep-alive")]).keeps_alive(Version::HTTP_10));
    }

    #[test]
    fn chunk_size_lines_are_read_strictly() {
        assert_eq!(chunk_size_line(b"5\r\nhello"), Ok(Some((5, 3))));
        assert_eq!(
            chunk_size_line(b"1aF;name=\"v\"\r\n"),
            Ok(Some((0x1af, 14)))
        );
        assert_eq!(
            chunk_size_line(b"ffffffffffffffff\r\n"),
            Ok(Some((u64::MAX, 18)))
        );
        assert_eq!(chunk_size_line(b"5"), Ok(None));
        for bad in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"5\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"5 x\r\n",
            b"10000000000000000\r\n",
        ] {
            assert!(
                chunk_size_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"5;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
        assert!(chunk_size_line(&long).is_err());
    }

    #[test]
    fn a_chunked_body_decodes_with_its_trailers() {
        let mut read =
            BytesMut::from(&b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-sum: 1\r\n\r\nNEXT"[..]);
        let mut decoding = Decoding::Chunked(Chunk::Size);
        let mut data = Vec::new();
        let trailers = loop {
            match decoding.decode(&mut read).unwrap() {
                Decoded::Frame(frame) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => break frame.into_trailers().unwrap(),
                },
                Decoded::End | Decoded::More => panic!("ended without trailers"),
            }
        };
        assert_eq!(data, b"hello world");
        assert_eq!(trailers["x-sum"], "1");
        assert!(matches!(decoding.decode(&mut read).unwrap(), Decoded::End));
        assert_eq!(
            &read[..],
            b"NEXT",
            "the next answer's bytes are left as they came"
        );
    }

    #[test]
    fn a_short_body_is_an_error_at_the_close_and_a_close_delimited_one_ends_there() {
        let mut short = Decoding::Length(10);
        let mut read = BytesMut::from(&b"12345"[..]);
        assert!(matches!(
            short.decode(&mut read).unwrap(),
            Decoded::Frame(_)
        ));
        assert!(matches!(short.decode(&mut read).unwrap(), Decoded::More));
        assert!(matches!(short.at_close(), Err(Http1Error::IncompleteBody)));
        let mut close = Decoding::Close;
        assert!(close.at_close().is_ok());
        assert!(matches!(close.decode(&mut read).unwrap(), Decoded::End));
    }

    #[test]
    fn chunk_sizes_are_written_in_hex() {
        let mut buffer = [0u8; 16];
        assert_eq!(hex(0, &mut buffer), b"0");
        assert_eq!(hex(0x1AF, &mut buffer), b"1AF");
        assert_eq!(hex(u64::MAX, &mut buffer), b"FFFFFFFFFFFFFFFF");
    }
}
