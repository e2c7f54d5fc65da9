//! `proxy::sniff`: the observer follows HTTP/1.1 framing over whatever
//! bytes clients send, split however TCP delivered them.
//!
//! What the type promises: `Observed` passes reads through and reports to
//! `Verdicts` the 0-based ordinal of the first request whose head carries
//! both `Content-Length` and `Transfer-Encoding`; the observer follows
//! framing across reads ("byte by byte delivery gives the same answer" is
//! one of its unit tests), and stops observing on framing it does not
//! follow.
//!
//! Input: byte 0 seeds the chunking, the rest is the byte stream. The
//! stream is fed through `Observed` (a real `AsyncRead`, polled by hand)
//! whole, byte by byte, and in seeded chunks of 1 to 64 bytes.
//!
//! Properties: never panics; every read passes through unchanged; the
//! ambiguous ordinal is the same for all three deliveries.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use keygate::proxy::sniff::{Observed, Verdicts};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// A reader that returns one chunk per read, then end of stream.
struct Chunks {
    chunks: Vec<Vec<u8>>,
    next: usize,
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(chunk) = self.chunks.get(self.next) {
            buf.put_slice(chunk);
            self.next += 1;
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads the whole stream through the observer; returns what came through
/// and the ambiguous request's ordinal, if any.
fn observe(chunks: Vec<Vec<u8>>, requests_bound: usize) -> (Vec<u8>, Option<usize>) {
    let verdicts = Verdicts::new();
    let mut observed = Observed::new(Chunks { chunks, next: 0 }, verdicts.clone());
    let mut context = Context::from_waker(Waker::noop());
    let mut seen = Vec::new();
    // Larger than any chunk, so one poll is one chunk.
    let mut storage = vec![0u8; 1 << 16];
    loop {
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut observed).poll_read(&mut context, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => seen.extend_from_slice(buf.filled()),
            other => panic!("the reader never fails or waits: {other:?}"),
        }
    }
    // Each request needs at least one byte of head, so the ordinal is
    // below the stream's length.
    let ambiguous = (0..requests_bound).find(|_| verdicts.next_is_ambiguous());
    (seen, ambiguous)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let bound = stream.len() + 1;
    let (seen, whole) = observe(vec![stream.to_vec()], bound);
    assert_eq!(seen, stream, "reads pass through unchanged");

    let (_, bytewise) = observe(stream.chunks(1).map(<[u8]>::to_vec).collect(), bound);
    assert_eq!(bytewise, whole, "byte-by-byte delivery changed the verdict");

    // Chunk lengths from a xorshift generator seeded by the first byte.
    let mut state = u32::from(seed) | 0x100;
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 64 + 1) as usize;
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        chunks.push(chunk.to_vec());
        rest = tail;
    }
    let (_, chunked) = observe(chunks, bound);
    assert_eq!(chunked, whole, "delivery in chunks changed the verdict");
});
