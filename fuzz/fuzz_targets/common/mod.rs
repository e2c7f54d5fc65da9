//! Input handling shared by the targets that either present fuzz bytes to
//! a parser or generate a value from them and then edit it.
// Each target is its own crate and uses only some of these.
#![allow(dead_code)]

use std::borrow::Cow;

/// What input byte 0 picks.
pub enum Mode<'a> {
    /// Even: the rest, read as (lossy) UTF-8, is presented as it came.
    Presented(Cow<'a, str>),
    /// Odd: the target builds a value from `rest`; `flags` is byte 0, whose
    /// other bits the target may use.
    Generated { flags: u8, rest: &'a [u8] },
}

/// The mode of an input; `None` for the empty input.
pub fn mode(data: &[u8]) -> Option<Mode<'_>> {
    let (&flags, rest) = data.split_first()?;
    Some(if flags & 1 == 0 {
        Mode::Presented(String::from_utf8_lossy(rest))
    } else {
        Mode::Generated { flags, rest }
    })
}

/// Takes up to `n` bytes off the front of `data`.
pub fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

/// Takes one byte (0 once `data` is used up).
pub fn take_u8(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

/// Takes a length byte (modulo `max_len`), then that many bytes as text.
pub fn take_str(data: &mut &[u8], max_len: u8) -> String {
    let len = usize::from(take_u8(data) % max_len);
    String::from_utf8_lossy(take(data, len)).into_owned()
}
