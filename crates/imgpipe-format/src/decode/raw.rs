//! Raw passthrough with zero detection and sector re-blocking.

use bytes::{Bytes, BytesMut};

use super::{ALIGN, DecodeError, Decoder, Extent};

/// Granularity of zero detection (a run shorter than this is written as data).
const ZERO_BLOCK: usize = 4096;

/// Raw images map stream offset = disk offset. Chunks are re-blocked so `Data` extents are
/// [`ALIGN`]-aligned, and all-zero 4 KiB blocks become `Zero` extents when asked.
#[derive(Debug)]
pub struct RawDecoder {
    detect_zeroes: bool,
    /// Stream offset of the first byte of `carry`.
    pos: u64,
    /// Bytes held back because they do not end on an alignment boundary.
    carry: BytesMut,
}

impl RawDecoder {
    /// A raw decoder.
    pub fn new(detect_zeroes: bool) -> Self {
        RawDecoder {
            detect_zeroes,
            pos: 0,
            carry: BytesMut::new(),
        }
    }

    fn emit(&self, offset: u64, data: Bytes, out: &mut Vec<Extent>) {
        if !self.detect_zeroes {
            out.push(Extent::Data { offset, data });
            return;
        }
        split_zeroes(offset, data, out);
    }
}

/// Push `data` at `offset` as extents, turning aligned all-zero blocks into `Zero` extents.
pub(crate) fn split_zeroes(offset: u64, data: Bytes, out: &mut Vec<Extent>) {
    let mut run_start = 0usize; // start of the pending run in `data`
    let mut run_zero: Option<bool> = None;
    let mut i = 0usize;
    // Blocks aligned to ZERO_BLOCK in disk offsets, so the pattern is independent of chunking.
    let misalign = (offset % ZERO_BLOCK as u64) as usize;
    let first = if misalign == 0 {
        0
    } else {
        ZERO_BLOCK - misalign
    };
    let push = |start: usize, end: usize, zero: bool, out: &mut Vec<Extent>| {
        if end > start {
            let off = offset + start as u64;
            if zero {
                out.push(Extent::Zero {
                    offset: off,
                    len: (end - start) as u64,
                });
            } else {
                out.push(Extent::Data {
                    offset: off,
                    data: data.slice(start..end),
                });
            }
        }
    };
    while i < data.len() {
        let end = if i == 0 && first > 0 {
            first.min(data.len())
        } else {
            (i + ZERO_BLOCK).min(data.len())
        };
        let block = &data[i..end];
        // A block counts as zero only when it is a whole aligned block.
        let zero = block.len() == ZERO_BLOCK && is_zero(block);
        match run_zero {
            Some(z) if z == zero => {}
            Some(z) => {
                push(run_start, i, z, out);
                run_start = i;
                run_zero = Some(zero);
            }
            None => run_zero = Some(zero),
        }
        i = end;
    }
    if let Some(z) = run_zero {
        push(run_start, data.len(), z, out);
    }
}

/// Whether every byte is zero (the OR-fold over 64-byte lanes vectorises).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let chunks = buf.chunks_exact(64);
    let rem = chunks.remainder();
    chunks
        .into_iter()
        .all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
        && rem.iter().all(|b| *b == 0)
}

impl Decoder for RawDecoder {
    fn feed(&mut self, chunk: &Bytes, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let start = self.pos;
        let total = self.carry.len() + chunk.len();
        let end = start + total as u64;
        // Re-block to whole zero-detection blocks so the result does not depend on chunking.
        let block = if self.detect_zeroes {
            ZERO_BLOCK as u64
        } else {
            ALIGN
        };
        let aligned_end = end - end % block;
        let keep = (end - aligned_end) as usize;
        if self.carry.is_empty() {
            // Zero-copy: emit the aligned part of the chunk as a slice.
            let emit_len = chunk.len() - keep;
            if emit_len > 0 {
                self.emit(start, chunk.slice(..emit_len), out);
            }
            self.carry.extend_from_slice(&chunk[emit_len..]);
            self.pos = start + emit_len as u64;
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(chunk);
            let emit_len = buf.len() - keep;
            let tail = buf.split_off(emit_len);
            if emit_len > 0 {
                self.emit(start, buf.freeze(), out);
            }
            self.carry = tail;
            self.pos = start + emit_len as u64;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Extent>) -> Result<(), DecodeError> {
        if !self.carry.is_empty() {
            let buf = std::mem::take(&mut self.carry).freeze();
            let n = buf.len() as u64;
            self.emit(self.pos, buf, out);
            self.pos += n;
        }
        Ok(())
    }

    fn virtual_size(&self) -> Option<u64> {
        // Known only at the end of the stream.
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = vec![0u8; 3 * 65536 + 1000];
        for (i, b) in v.iter_mut().enumerate() {
            // data, then a zero region, then data, then a zero tail
            if !(20_000..150_000).contains(&i) && i < 190_000 {
                *b = (i % 251) as u8 | 1;
            }
        }
        v
    }

    fn rebuild(extents: &[Extent], size: usize) -> Vec<u8> {
        let mut disk = vec![0xAAu8; size];
        let mut covered = vec![false; size];
        for e in extents {
            let off = e.offset() as usize;
            let len = e.len() as usize;
            for c in &covered[off..off + len] {
                assert!(!c, "byte covered twice");
            }
            covered[off..off + len].fill(true);
            match e {
                Extent::Data { data, .. } => {
                    assert!(off.is_multiple_of(ALIGN as usize), "unaligned start {off}");
                    assert!((off + len).is_multiple_of(ALIGN as usize) || off + len == size);
                    disk[off..off + len].copy_from_slice(data);
                }
                Extent::Zero { .. } => disk[off..off + len].fill(0),
            }
        }
        assert!(covered.iter().all(|c| *c), "not every byte covered");
        disk
    }

    #[test]
    fn any_chunking_reproduces_the_input() {
        let src = sample();
        for detect in [false, true] {
            for size in [1usize, 7, 512, 4096, 65536, src.len()] {
                let mut d = RawDecoder::new(detect);
                let mut out = Vec::new();
                for c in src.chunks(size) {
                    d.feed(&Bytes::copy_from_slice(c), &mut out).unwrap();
                }
                d.finish(&mut out).unwrap();
                assert_eq!(
                    rebuild(&out, src.len()),
                    src,
                    "chunk {size} detect {detect}"
                );
                let zeros: u64 = out
                    .iter()
                    .filter(|e| matches!(e, Extent::Zero { .. }))
                    .map(Extent::len)
                    .sum();
                if detect {
                    // 20_000..150_000 holds 31 whole aligned 4 KiB blocks; the tail holds none
                    // whole except those from 190_000 up to the last full block.
                    assert!(
                        zeros >= 31 * 4096,
                        "only {zeros} zero bytes found at chunk {size}"
                    );
                } else {
                    assert_eq!(zeros, 0);
                }
            }
        }
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        let mut b = [0u8; 4096];
        b[4095] = 1;
        assert!(!is_zero(&b));
        b[4095] = 0;
        b[0] = 1;
        assert!(!is_zero(&b));
    }
}
