//! `policy::path::normalize`, differentially: keygate routes on the
//! normalised path (its routing view) and forwards the normalised path, so
//! whatever an upstream makes of the forwarded path must be the resource
//! keygate routed on.
//!
//! Two permissive resolvers stand in for upstreams:
//! - Tomcat/Jetty/Spring-like: percent-decode everything once, treat `\`
//!   as `/`, strip `;params` from every segment, fold slashes, resolve `.`
//!   and `..`;
//! - IIS-like: percent-decode, fold compatibility look-alikes of `.`, `/`
//!   and `\` (best-fit mapping), treat `\` as `/`, resolve `.` and `..`,
//!   strip trailing dots and spaces from segments, fold case.
//!
//! Properties, for every input `normalize` accepts:
//! - idempotence: the output is accepted again and normalises to itself;
//! - shape: the output starts with `/`, has no empty, `.` or `..` segment
//!   (but a trailing `/`), no `\`, and only ASCII without controls;
//! - Tomcat-like(output) == the routing view's segments, decoded: the
//!   upstream serves exactly the resource keygate routed on;
//! - Tomcat-like(input) == Tomcat-like(output) for inputs without `;`:
//!   normalising never changes which resource a permissive server would
//!   serve;
//! - IIS-like(output) == the routing view's segments, decoded and
//!   case-folded (keygate keeps case on purpose and documents it), for
//!   paths without segment parameters: an IIS-like server does not strip
//!   `;params`, while the routing view does (see the fuzzing report of
//!   issue 18).
#![no_main]

use keygate::policy::normalize;
use libfuzzer_sys::fuzz_target;

/// Segments as bytes; a resolved path is a list of them.
type Segments = Vec<Vec<u8>>;

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Decodes every well-formed `%XX` once; anything else stays as it is.
fn percent_decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%'
            && let (Some(h), Some(l)) = (
                text.get(i + 1).copied().and_then(hex),
                text.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// Resolves dot segments over already-split segments, dropping empty ones.
fn resolve<'a>(segments: impl Iterator<Item = &'a [u8]>) -> Segments {
    let mut out: Segments = Vec::new();
    for segment in segments {
        match segment {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s.to_vec()),
        }
    }
    out
}

/// The Tomcat/Jetty/Spring-like reading of a request path.
fn tomcat_like(path: &str) -> Segments {
    let decoded = percent_decode(path.as_bytes());
    resolve(decoded.split(|&b| b == b'/' || b == b'\\').map(|segment| {
        let end = segment.iter().position(|&b| b == b';').unwrap_or(segment.len());
        &segment[..end]
    }))
}

/// Characters that NFKC or Windows best-fit mapping turn into dots,
/// slashes or backslashes.
fn fold_lookalikes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{FF0E}' | '\u{FE52}' | '\u{2024}' => out.push('.'),
            '\u{2025}' => out.push_str(".."),
            '\u{2026}' => out.push_str("..."),
            '\u{FF0F}' | '\u{2044}' | '\u{2215}' | '\u{29F8}' => out.push('/'),
            '\u{FF3C}' | '\u{FE68}' | '\u{2216}' | '\u{29F5}' | '\u{29F9}' => out.push('\\'),
            c => out.push(c),
        }
    }
    out
}

/// The IIS-like reading of a request path (case-folded).
fn iis_like(path: &str) -> Segments {
    let decoded = percent_decode(path.as_bytes());
    let folded = fold_lookalikes(&String::from_utf8_lossy(&decoded)).to_lowercase();
    let mut out: Segments = Vec::new();
    for segment in folded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => {
                let stripped = s.trim_end_matches(['.', ' ']);
                if !stripped.is_empty() {
                    out.push(stripped.as_bytes().to_vec());
                }
            }
        }
    }
    out
}

/// How keygate's routes see a path: its `/`-separated segments (routes
/// match the encoded form; decoding here only makes it comparable with
/// what the upstream decodes to).
fn routed(view: &str) -> Segments {
    view.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s.as_bytes()))
        .collect()
}

fn lowercase(segments: &Segments) -> Segments {
    segments
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_lowercase().into_bytes())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize(input) else {
        return;
    };
    let out = normal.as_str();

    let again = normalize(out).unwrap_or_else(|e| panic!("{input:?} -> {out:?} is refused again: {e}"));
    assert_eq!(again, normal, "{input:?}: normalising twice changed {out:?}");

    assert!(out.starts_with('/'), "{input:?} -> {out:?}");
    // ASCII (non-ASCII stays escaped), no control character, no `\`. A raw
    // space passes (HTTP/1 request targets cannot carry one anyway).
    assert!(
        out.bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_control() && b != b'\\'),
        "{input:?} -> {out:?}"
    );
    let inner = out[1..].strip_suffix('/').unwrap_or(&out[1..]);
    if !inner.is_empty() {
        for segment in inner.split('/') {
            assert!(
                !matches!(segment, "" | "." | ".."),
                "{input:?} -> {out:?} keeps the segment {segment:?}"
            );
        }
    }

    let view = normal.routing_view();
    let keygate = routed(&view);
    let upstream = tomcat_like(out);
    assert_eq!(
        upstream, keygate,
        "{input:?} -> {out:?}: a Tomcat-like upstream serves another path than keygate routed on ({view:?})"
    );
    // Only without parameters: a segment that is nothing but parameters
    // (`/a/b/;x/../c`) is `b`'s sibling to keygate, which pops it, and empty
    // to Tomcat, which pops `b` instead. Harmless, as the upstream receives
    // keygate's output (`/a/b/c`), never the raw path (see the report).
    if !percent_decode(input.as_bytes()).contains(&b';') {
        assert_eq!(
            tomcat_like(input),
            upstream,
            "{input:?} -> {out:?}: normalising changed the resource a Tomcat-like server serves"
        );
    }

    let decoded = percent_decode(out.as_bytes());
    if !decoded.contains(&b';') {
        assert_eq!(
            iis_like(out),
            lowercase(&keygate),
            "{input:?} -> {out:?}: an IIS-like upstream serves another path than keygate routed on"
        );
    }
});
