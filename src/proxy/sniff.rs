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
/// Longest head the observer follows, in bytes; a longer one turns it off
/// (hyper's own limits then decide). Applied to the head's length however
/// the head was split across reads, so the verdict never depends on the
/// delivery.
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
    ChunkSize(ChunkLine),
    /// In a chunked body: skipping chunk data plus its CRLF.
    ChunkData(u64),
    /// After the last chunk: trailer lines until an empty one.
    Trailers(TrailerLine),
    /// Not observing any more.
    Off,
}

/// A chunk-size line read so far (`1a;ext=x\r\n`), parsed as it arrives
/// rather than buffered: hyper accepts any number of leading zeros and up
/// to 16 KiB of extensions, so a length cap here would let a client switch
/// the observer off with a long line that hyper still follows (issue 18:
/// the `http1_framing` fuzz target found the verdict depending on how such
/// a line was split across reads).
#[derive(Debug, Default)]
struct ChunkLine {
    /// The size so far (hex digits read).
    size: u64,
    /// Whether a hex digit was read.
    digits: bool,
    /// Whether whitespace followed the digits (no more digits allowed).
    after_digits: bool,
    /// Inside the extensions (after `;`): skipped to the end of the line.
    extension: bool,
}

/// Where a trailer line stands: an empty line (`\n` or `\r\n`) ends the
/// trailers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum TrailerLine {
    /// At the start of a line.
    #[default]
    Start,
    /// A `\r` at the start of a line.
    Cr,
    /// The line has content.
    Content,
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
                            self.state = self.decide_head(end, framing);
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
                    self.state = self.decide_head(end, framing);
                }
                State::Body(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    if let Some(next) = chunk_size_line(line, &mut bytes) {
                        self.state = next;
                    }
                }
                State::ChunkData(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    if *left == 0 {
                        self.state = State::ChunkSize(ChunkLine::default());
                    }
                }
                State::Trailers(line) => {
                    if trailer_lines(line, &mut bytes) {
                        self.state = State::Head(Vec::new());
                    }
                }
            }
        }
    }

    /// The state after a complete head `len` bytes long: off past
    /// [`MAX_HEAD`], whether the head came in one read or several.
    fn decide_head(&mut self, len: usize, framing: Framing) -> State {
        if len > MAX_HEAD {
            return State::Off;
        }
        self.decide(framing)
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
            (true, true, _, _) => State::ChunkSize(ChunkLine::default()),
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

/// Reads `bytes` into a chunk-size line up to and including its `\n`;
/// returns the state after the line once it is complete: the chunk's data
/// (plus its CRLF), the trailers after the last chunk, or off for a line
/// that is not a hex size (hyper refuses those too). Whitespace around the
/// size and a CR before the LF are tolerated.
fn chunk_size_line(line: &mut ChunkLine, bytes: &mut &[u8]) -> Option<State> {
    while let Some((&b, rest)) = bytes.split_first() {
        if line.extension {
            // Skip the extensions to the end of the line in one search.
            match memchr::memchr(b'\n', bytes) {
                Some(at) => *bytes = &bytes[at..],
                None => {
                    *bytes = &[];
                    return None;
                }
            }
            line.extension = false;
            continue;
        }
        *bytes = rest;
        match b {
            b'\n' => {
                return Some(match (line.digits, line.size) {
                    (false, _) => State::Off,
                    (true, 0) => State::Trailers(TrailerLine::Start),
                    (true, n) => State::ChunkData(n.saturating_add(2)),
                });
            }
            b';' => line.extension = true,
            b' ' | b'\t' | b'\r' => line.after_digits = line.digits,
            _ => {
                let digit = char::from(b).to_digit(16).map(u64::from);
                let size = digit
                    .filter(|_| !line.after_digits)
                    .and_then(|d| line.size.checked_mul(16)?.checked_add(d));
                match size {
                    Some(size) => {
                        line.size = size;
                        line.digits = true;
                    }
                    // Not a digit, a digit after whitespace, or over u64:
                    // hyper refuses the body, so stop following it.
                    None => return Some(State::Off),
                }
            }
        }
    }
    None
}

/// Reads trailer lines from `bytes`; true (with `bytes` just past it) once
/// the empty line that ends them is read.
fn trailer_lines(line: &mut TrailerLine, bytes: &mut &[u8]) -> bool {
    while let Some((&b, rest)) = bytes.split_first() {
        *bytes = rest;
        *line = match (*line, b) {
            (TrailerLine::Start | TrailerLine::Cr, b'\n') => return true,
            (TrailerLine::Content, b'\n') => TrailerLine::Start,
            (TrailerLine::Start, b'\r') => TrailerLine::Cr,
            _ => TrailerLine::Content,
        };
    }
    false
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

    /// Issue 18 (found by the `http1_framing` fuzz target): a chunk-size
    /// line longer than the old 1 KiB buffer cap (hyper takes any number of
    /// leading zeros and 16 KiB of extensions) switched the observer off
    /// when it arrived over several reads, so a smuggling pair after it
    /// went unflagged; in one read it was flagged.
    #[test]
    fn long_chunk_size_lines_are_followed_however_they_arrive() {
        let smuggle =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".as_slice();
        for line in [
            format!("{}5", "0".repeat(1100)),
            format!("5;{}", "x".repeat(5000)),
            format!("5 ;{}", "e=1;".repeat(1000)),
        ] {
            let mut stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            stream.extend_from_slice(line.as_bytes());
            stream.extend_from_slice(b"\r\nhello\r\n0\r\nTrailer: x\r\n\r\n");
            stream.extend_from_slice(smuggle);
            assert_eq!(ambiguous_index(&[&stream]), Some(1), "one read");
            for size in [1, 7, 512] {
                let chunks: Vec<&[u8]> = stream.chunks(size).collect();
                assert_eq!(ambiguous_index(&chunks), Some(1), "{size} bytes at a time");
            }
        }
    }

    #[test]
    fn chunk_size_lines_and_trailers_table() {
        // (chunk-size line and what follows it up to the next request,
        // whether the observer still follows the connection after it)
        let smuggle =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".as_slice();
        let cases: &[(&[u8], bool)] = &[
            (b"3\r\nabc\r\n0\r\n\r\n", true),
            (b"A\r\n0123456789\r\n0\r\n\r\n", true),
            (b"a \t;x=1\r\n0123456789\r\n0\r\n\r\n", true),
            (b" 3\r\nabc\r\n0\n\n", true),
            (b"3\r\nabc\r\n0\r\nA: 1\r\nB: 2\n\r\n", true),
            (b"3\r\nabc\r\n0\r\n\r\r\n\r\n", true),
            (b"\r\n", false),
            (b";x\r\n", false),
            (b"3 4\r\n", false),
            (b"+3\r\n", false),
            (b"g\r\n", false),
            (b"10000000000000000\r\n", false),
        ];
        for &(body, follows) in cases {
            let mut stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            stream.extend_from_slice(body);
            stream.extend_from_slice(smuggle);
            let (want, name) = (follows.then_some(1), String::from_utf8_lossy(body));
            assert_eq!(ambiguous_index(&[&stream]), want, "{name:?}");
            let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(ambiguous_index(&bytewise), want, "{name:?} byte by byte");
        }
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
