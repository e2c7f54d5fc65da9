//! A read-side observer of each proxy connection that spots requests whose
//! head carries both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper resolves that pair on its own (chunked wins, `Content-Length` is
//! dropped, the connection closes after the response; RFC 9112 §6.3), so by
//! the time a request reaches the pipeline nothing shows it was ambiguous.
//! Such a request is a request-smuggling attempt, and keygate refuses it
//! with 400 rather than guess. The observer follows HTTP/1.1 framing on the
//! bytes hyper reads (heads, `Content-Length` bodies, chunked bodies) and
//! records the ordinal of the first ambiguous request on the connection; the
//! pipeline counts requests and refuses that one. When the framing is
//! anything it does not follow (a parse it cannot make sense of, an upgrade),
//! it stops observing: hyper's own parser then decides.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No ambiguous request seen (yet).
const NONE: usize = usize::MAX;
/// Longest head the observer buffers; beyond it hyper refuses the request.
const MAX_HEAD: usize = 256 * 1024;

/// Shared between the observer and the connection's service: which request
/// (0-based) was ambiguous, and how many requests the service has started.
#[derive(Debug)]
pub struct Verdicts {
    ambiguous: AtomicUsize,
    started: AtomicUsize,
}

impl Verdicts {
    /// A fresh connection's verdicts.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            ambiguous: AtomicUsize::new(NONE),
            started: AtomicUsize::new(0),
        })
    }

    /// Called once per request the service starts, in order; true when this
    /// request's head carried both `Content-Length` and `Transfer-Encoding`.
    pub fn next_is_ambiguous(&self) -> bool {
        let index = self.started.fetch_add(1, Ordering::Relaxed);
        self.ambiguous.load(Ordering::Acquire) == index
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping a `Content-Length` body.
    Body(u64),
    /// In a chunked body: reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// In a chunked body: skipping chunk data plus its CRLF.
    ChunkData(u64),
    /// After the last chunk: trailer lines until an empty one.
    Trailers(Vec<u8>),
    /// Not observing any more.
    Off,
}

/// Follows request framing over the bytes read from a connection.
#[derive(Debug)]
struct Observer {
    state: State,
    requests: usize,
    verdicts: Arc<Verdicts>,
}

impl Observer {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    // Tolerate the blank lines RFC 9112 §2.2 lets clients
                    // send before a request line.
                    if buf.is_empty() {
                        let skip = bytes.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    if buf.is_empty() {
                        // The common case: the whole head arrived in this
                        // read. Decide on the bytes read, without copying,
                        // in one pass over its lines.
                        if let Some((end, framing)) = scan(bytes) {
                            bytes = &bytes[end..];
                            self.state = self.decide(framing);
                            continue;
                        }
                    }
                    // The head's end may straddle reads: look again from
                    // the last two bytes already held.
                    let start = buf.len().saturating_sub(2);
                    buf.extend_from_slice(bytes);
                    let Some(end) = find_end(&buf[start..]).map(|i| start + i) else {
                        if buf.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let consumed_from_new = end - (buf.len() - bytes.len());
                    let head = std::mem::take(buf);
                    bytes = &bytes[consumed_from_new..];
                    let framing = scan(&head[..end]).map_or(Framing::Unknown, |(_, framing)| framing);
                    self.state = self.decide(framing);
                }
                State::Body(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match take_line(line, &mut bytes) {
                    None => {
                        if line.len() > 1024 {
                            self.state = State::Off;
                        }
                    }
                    Some(text) => {
                        let size = text.split(|&b| b == b';').next().unwrap_or(&[]);
                        let size = std::str::from_utf8(size)
                            .ok()
                            .map(str::trim)
                            .and_then(|s| u64::from_str_radix(s, 16).ok());
                        self.state = match size {
                            Some(0) => State::Trailers(Vec::new()),
                            Some(n) => State::ChunkData(n.saturating_add(2)),
                            None => State::Off,
                        };
                    }
                },
                State::ChunkData(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(line) => match take_line(line, &mut bytes) {
                    None => {
                        if line.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                    }
                    Some(text) if text.is_empty() => self.state = State::Head(Vec::new()),
                    Some(_) => self.state = State::Trailers(Vec::new()),
                },
            }
        }
    }

    /// The state after a complete head of this framing; records the
    /// request as ambiguous when it is.
    fn decide(&mut self, framing: Framing) -> State {
        let Framing::Known {
            content_length,
            transfer_encoding,
            chunked,
            upgrade,
        } = framing
        else {
            return State::Off;
        };
        let index = self.requests;
        self.requests += 1;
        if transfer_encoding && content_length.is_some() {
            // hyper closes the connection after this request, so nothing
            // after it needs observing.
            let _ =
                self.verdicts
                    .ambiguous
                    .compare_exchange(NONE, index, Ordering::AcqRel, Ordering::Relaxed);
            return State::Off;
        }
        match (transfer_encoding, chunked, content_length, upgrade) {
            (_, _, _, true) | (true, false, _, _) => State::Off,
            (true, true, _, _) => State::ChunkSize(Vec::new()),
            (false, _, Some(n), _) if n > 0 => State::Body(n),
            _ => State::Head(Vec::new()),
        }
    }
}

/// What a request head says about its body's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HTTP/2 prior knowledge, or a `Content-Length` that is not a number:
    /// not followed any further (hyper decides).
    Unknown,
    /// The framing headers seen.
    Known {
        content_length: Option<u64>,
        transfer_encoding: bool,
        chunked: bool,
        upgrade: bool,
    },
}

/// Scans `bytes` (starting at a request line) for the end of the head, an
/// empty line, noting the framing headers on the way: one vectorised pass
/// over the line ends. Returns the offset just past the head and its
/// framing, or `None` when the head does not end within `bytes`. Lines may
/// end in CRLF or a bare LF, as hyper's parser accepts both.
fn scan(bytes: &[u8]) -> Option<(usize, Framing)> {
    if bytes.starts_with(b"PRI * HTTP/2.0") {
        // HTTP/2 prior knowledge: framing is binary and unambiguous.
        return Some((bytes.len(), Framing::Unknown));
    }
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut upgrade = false;
    let mut bad_length = false;
    let mut start = 0;
    for at in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..at];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let first_line = start == 0;
        start = at + 1;
        if first_line {
            continue;
        }
        if line.is_empty() {
            let framing = if bad_length {
                Framing::Unknown
            } else {
                Framing::Known {
                    content_length,
                    transfer_encoding,
                    chunked,
                    upgrade,
                }
            };
            return Some((start, framing));
        }
        // Only three names matter here: skip every other line on its first
        // byte, before looking for its colon.
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T' | b'u' | b'U')) {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            bad_length |= content_length.is_none();
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            chunked = value.len() >= 7 && value[value.len() - 7..].eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    None
}

/// The offset just past the first empty line (`\n\n` or `\n\r\n`) in
/// `haystack`: scans for `\n` (vectorised) and checks behind it.
fn find_end(haystack: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', haystack)
        .find(|&at| (at >= 1 && haystack[at - 1] == b'\n') || (at >= 2 && &haystack[at - 2..at] == b"\n\r"))
        .map(|at| at + 1)
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Appends to `line` up to and including the next `\n`; returns the line
/// without its CRLF once complete.
fn take_line(line: &mut Vec<u8>, bytes: &mut &[u8]) -> Option<Vec<u8>> {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&bytes[..=i]);
            *bytes = &bytes[i + 1..];
            let mut done = std::mem::take(line);
            done.pop();
            if done.last() == Some(&b'\r') {
                done.pop();
            }
            Some(done)
        }
        None => {
            line.extend_from_slice(bytes);
            *bytes = &[];
            None
        }
    }
}

/// Marks a request (in its extensions) whose head carried both
/// `Content-Length` and `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// A connection's IO with the observer on its read side.
#[derive(Debug)]
pub struct Observed<T> {
    inner: T,
    observer: Observer,
}

impl<T> Observed<T> {
    /// Wraps `inner`, reporting to `verdicts`.
    pub fn new(inner: T, verdicts: Arc<Verdicts>) -> Self {
        Self {
            inner,
            observer: Observer {
                state: State::Head(Vec::new()),
                requests: 0,
                verdicts,
            },
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Observed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let this = &mut *self;
            this.observer.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Observed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ambiguous_index(chunks: &[&[u8]]) -> Option<usize> {
        let verdicts = Verdicts::new();
        let mut observer = Observer {
            state: State::Head(Vec::new()),
            requests: 0,
            verdicts: verdicts.clone(),
        };
        for chunk in chunks {
            observer.feed(chunk);
        }
        let index = verdicts.ambiguous.load(Ordering::Relaxed);
        (index != NONE).then_some(index)
    }

    #[test]
    fn flags_the_ambiguous_request_and_only_it() {
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".as_slice();
        let with_body = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".as_slice();
        let chunked =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n"
                .as_slice();
        let smuggle =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".as_slice();
        assert_eq!(ambiguous_index(&[plain, with_body, chunked]), None);
        assert_eq!(ambiguous_index(&[smuggle]), Some(0));
        assert_eq!(ambiguous_index(&[plain, with_body, chunked, smuggle]), Some(3));
        // A body that merely contains such text is not a head.
        let inner = b"POST / HTTP/1.1\r\nContent-Length: 61\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n..".as_slice();
        assert_eq!(
            inner.len() - inner.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4,
            61
        );
        assert_eq!(ambiguous_index(&[inner, plain]), None);
    }

    #[test]
    fn byte_by_byte_delivery_gives_the_same_answer() {
        let stream = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(ambiguous_index(&chunks), Some(2));
    }

    #[test]
    fn bare_lf_heads_are_followed_like_crlf_ones() {
        // hyper's parser accepts lines ending in a bare LF, so the observer
        // must too, or a smuggling pair written that way would pass.
        let smuggle =
            b"POST / HTTP/1.1\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n".as_slice();
        assert_eq!(ambiguous_index(&[smuggle]), Some(0));
        let mixed = b"GET / HTTP/1.1\nHost: x\r\n\nPOST / HTTP/1.1\r\ncontent-length: 1\ntransfer-encoding: chunked\n\r\n".as_slice();
        assert_eq!(ambiguous_index(&[mixed]), Some(1));
        let chunks: Vec<&[u8]> = mixed.chunks(1).collect();
        assert_eq!(ambiguous_index(&chunks), Some(1), "byte by byte");
        let chunks: Vec<&[u8]> = mixed.chunks(7).collect();
        assert_eq!(ambiguous_index(&chunks), Some(1), "seven bytes at a time");
        // A body with bare LFs in it is still only a body.
        let body = b"POST / HTTP/1.1\nContent-Length: 48\n\nPOST / HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: x\n\n".as_slice();
        assert_eq!(ambiguous_index(&[body]), None);
    }

    #[test]
    fn scan_reports_where_the_head_ends_and_its_framing() {
        let (end, framing) = scan(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\r\nbody").unwrap();
        assert_eq!(end, 48);
        assert_eq!(
            framing,
            Framing::Known {
                content_length: Some(12),
                transfer_encoding: false,
                chunked: false,
                upgrade: false
            }
        );
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: x\r\n"), None, "no empty line yet");
        assert_eq!(
            scan(b"POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n").map(|(_, f)| f),
            Some(Framing::Unknown)
        );
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(find_end(b"GET / HTTP/1.1\nHost: x\n\nrest"), Some(24));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn verdicts_count_requests_in_order() {
        let verdicts = Verdicts::new();
        verdicts.ambiguous.store(1, Ordering::Relaxed);
        assert!(!verdicts.next_is_ambiguous());
        assert!(verdicts.next_is_ambiguous());
        assert!(!verdicts.next_is_ambiguous());
    }
}
