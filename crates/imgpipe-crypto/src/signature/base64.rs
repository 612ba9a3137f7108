//! `img_signature` decoding exactly as cursive does it.
//!
//! cursive calls `oslo_serialization.base64.decode_as_bytes`, i.e. Python's
//! `base64.b64decode(s)` with `validate=False`, which is CPython's non-strict
//! `binascii.a2b_base64`. Its observable rules (checked differentially against CPython by
//! `tests/signature_cursive.rs`):
//! - a non-ASCII character anywhere is an error (Python raises `ValueError` before decoding);
//! - every byte outside the standard alphabet `A–Z a–z 0–9 + /` and `=` is skipped;
//! - `=` is ignored unless at least two data characters of the current quantum have been seen;
//!   once the quantum is complete by data + `=`, decoding **stops** and the rest is ignored;
//! - at the end, a partial quantum of one data character, or of two/three without enough
//!   padding, is an error; leftover bits of the last quantum are not checked.

/// Why a signature string did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base64Error {
    /// A character outside ASCII at this byte offset (Python: `ValueError`).
    NonAscii(usize),
    /// One data character more than a multiple of four (Python: `binascii.Error`).
    DanglingCharacter,
    /// Two or three trailing data characters without the padding to complete them.
    IncorrectPadding,
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decode like CPython's `base64.b64decode(s)` (non-strict). Output is at most 3/4 of the
/// input length, so the allocation is bounded by the caller's cap on the input.
pub(crate) fn decode_lenient(s: &str) -> Result<Vec<u8>, Base64Error> {
    if let Some(pos) = s.bytes().position(|b| !b.is_ascii()) {
        return Err(Base64Error::NonAscii(pos));
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let mut quad_pos = 0u8;
    let mut pads = 0u8;
    let mut left: u8 = 0;
    for c in s.bytes() {
        if c == b'=' {
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    return Ok(out);
                }
            }
            continue;
        }
        let Some(v) = value(c) else { continue };
        pads = 0;
        match quad_pos {
            0 => {
                left = v;
                quad_pos = 1;
            }
            1 => {
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
                quad_pos = 2;
            }
            2 => {
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
                quad_pos = 3;
            }
            _ => {
                out.push((left << 6) | v);
                left = 0;
                quad_pos = 0;
            }
        }
    }
    match quad_pos {
        0 => Ok(out),
        1 => Err(Base64Error::DanglingCharacter),
        _ => Err(Base64Error::IncorrectPadding),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(decode_lenient("QUJD").unwrap(), b"ABC");
        assert_eq!(decode_lenient("QU\nJ*D").unwrap(), b"ABC");
        assert_eq!(decode_lenient("QQ==").unwrap(), b"A");
        assert_eq!(decode_lenient("QQ==QUJD").unwrap(), b"A"); // stops at padding
        assert_eq!(decode_lenient("=Q=Q==").unwrap(), b"A"); // early '=' ignored
        assert_eq!(decode_lenient("QUI=").unwrap(), b"AB");
        assert_eq!(decode_lenient("").unwrap(), b"");
        assert_eq!(decode_lenient("!!!!").unwrap(), b"");
        assert_eq!(decode_lenient("abc"), Err(Base64Error::IncorrectPadding));
        assert_eq!(decode_lenient("QUJDQ"), Err(Base64Error::DanglingCharacter));
        assert_eq!(decode_lenient("QUJD\u{e9}"), Err(Base64Error::NonAscii(4)));
        assert_eq!(decode_lenient("QR==").unwrap(), b"A"); // leftover bits ignored
    }
}
