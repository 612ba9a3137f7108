//! Shared helpers for the decoder tests: generate images with qemu-img / qemu-io at test time,
//! decode them through `imgpipe_format::decode` in chunks, and compare with `qemu-img convert
//! -f <fmt> -O raw` of the same file.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use imgpipe_format::Format;
use imgpipe_format::decode::{
    ALIGN, DecodeError, DecodeOptions, Decoder, Extent, SpillStore, decoder_for, decoder_with_spill,
};

/// Whether external oracles are required (CI) or may be skipped.
pub fn require_oracles() -> bool {
    std::env::var("IMGPIPE_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

/// `true` when qemu-img and qemu-io run; otherwise panics under IMGPIPE_REQUIRE_ORACLES=1, or
/// prints a skip line and returns `false`.
pub fn have_qemu(test: &str) -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        assert!(
            !require_oracles(),
            "qemu-img/qemu-io missing and IMGPIPE_REQUIRE_ORACLES=1"
        );
        eprintln!("SKIP {test}: qemu-img/qemu-io not installed");
    }
    ok
}

/// Run a command, panicking with its stderr on failure.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `qemu-img <args>`.
pub fn qemu_img(args: &[&str]) {
    run(Command::new("qemu-img").args(args));
}

/// `qemu-io -f <fmt> <file> -c <cmd>...`.
pub fn qemu_io(fmt: &str, file: &Path, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg(fmt);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(file);
    run(&mut c);
}

/// A deterministic pseudo-random generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A raw disk of `size` bytes: pseudo-random data with holes of varying sizes (whole zero
/// 64 KiB regions, zero 4 KiB blocks, lone data sectors in zero areas, a data tail).
pub fn raw_source(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut v = vec![0u8; size];
    let mut off = 0usize;
    while off < size {
        let kind = rng.below(6);
        let len = match kind {
            0 | 1 => 65536,
            2 => 4096 * (1 + rng.below(8) as usize),
            3 => 512,
            4 => 131072,
            _ => 3 * 512,
        }
        .min(size - off);
        if kind != 4 && kind != 2 {
            rng.fill(&mut v[off..off + len]);
        }
        off += len;
    }
    // Always some data at the very end.
    let t = size.saturating_sub(512);
    rng.fill(&mut v[t..]);
    v
}

/// Write `raw_source(size, seed)` to `dir/name` and return the path.
pub fn write_source(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, raw_source(size, seed)).unwrap();
    p
}

/// sha256 hex.
pub fn sha256(data: &[u8]) -> String {
    hex::encode(openssl::sha::sha256(data))
}

/// What `qemu-img convert -f <fmt> -O raw` makes of `img`.
pub fn qemu_raw(img: &Path, fmt: &str) -> Vec<u8> {
    let out = img.with_extension("oracle.raw");
    qemu_img(&[
        "convert",
        "-f",
        fmt,
        "-O",
        "raw",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).ok();
    v
}

/// The result of decoding a whole stream.
pub struct Decoded {
    pub disk: Vec<u8>,
    pub virtual_size: u64,
    pub zero_bytes: u64,
    pub extents: usize,
}

/// Check the extent contract while rebuilding the disk.
pub fn rebuild(extents: &[Extent], size: u64) -> Decoded {
    let n = usize::try_from(size).unwrap();
    let mut disk = vec![0xA5u8; n];
    let mut covered = vec![0u8; n.div_ceil(8)];
    let mut zero_bytes = 0;
    for e in extents {
        let off = e.offset();
        let len = e.len();
        let end = off.checked_add(len).unwrap();
        assert!(end <= size, "extent {off}+{len} past virtual size {size}");
        for i in off..end {
            let (b, m) = ((i / 8) as usize, 1u8 << (i % 8));
            assert!(covered[b] & m == 0, "byte {i} covered twice");
            covered[b] |= m;
        }
        match e {
            Extent::Data { data, .. } => {
                assert_eq!(off % ALIGN, 0, "data extent starts unaligned at {off}");
                assert!(
                    end % ALIGN == 0 || end == size,
                    "data extent ends unaligned at {end}"
                );
                disk[off as usize..end as usize].copy_from_slice(data);
            }
            Extent::Zero { .. } => {
                zero_bytes += len;
                disk[off as usize..end as usize].fill(0);
            }
        }
    }
    for i in 0..size {
        let (b, m) = ((i / 8) as usize, 1u8 << (i % 8));
        assert!(covered[b] & m != 0, "byte {i} of {size} not covered");
    }
    Decoded {
        disk,
        virtual_size: size,
        zero_bytes,
        extents: extents.len(),
    }
}

/// Feed `bytes` to `dec` in chunks of `chunk` and collect every extent.
pub fn run_decoder(
    mut dec: Box<dyn Decoder>,
    bytes: &[u8],
    chunk: usize,
) -> Result<(Vec<Extent>, Option<u64>), DecodeError> {
    let mut out = Vec::new();
    let whole = Bytes::copy_from_slice(bytes);
    let mut off = 0;
    while off < whole.len() {
        let n = chunk.min(whole.len() - off);
        dec.feed(&whole.slice(off..off + n), &mut out)?;
        off += n;
    }
    dec.finish(&mut out)?;
    Ok((out, dec.virtual_size()))
}

/// Decode `bytes` as `format` with default options and the given chunk size.
pub fn decode(format: Format, bytes: &[u8], chunk: usize) -> Result<Decoded, DecodeError> {
    decode_with(format, bytes, chunk, &DecodeOptions::default(), None)
}

/// Decode with explicit options and optionally a spill store.
pub fn decode_with(
    format: Format,
    bytes: &[u8],
    chunk: usize,
    opts: &DecodeOptions,
    spill: Option<Box<dyn SpillStore>>,
) -> Result<Decoded, DecodeError> {
    let dec = match spill {
        Some(s) => decoder_with_spill(format, opts, s)?,
        None => decoder_for(format, opts)?,
    };
    let (ext, vs) = run_decoder(dec, bytes, chunk)?;
    let vs = vs.expect("virtual size known after finish");
    Ok(rebuild(&ext, vs))
}

/// Decode `img` at every chunk size and assert each result's sha256 equals qemu-img's.
/// Returns the decoded result of the whole-buffer feed.
pub fn assert_matches_qemu(img: &Path, qemu_fmt: &str, format: Format, chunks: &[usize]) {
    let bytes = std::fs::read(img).unwrap();
    let want = qemu_raw(img, qemu_fmt);
    let want_sha = sha256(&want);
    for &chunk in chunks {
        let chunk = if chunk == 0 {
            bytes.len().max(1)
        } else {
            chunk
        };
        let got = decode(format, &bytes, chunk)
            .unwrap_or_else(|e| panic!("{}: decode at chunk {chunk} failed: {e}", img.display()));
        assert_eq!(
            got.virtual_size,
            want.len() as u64,
            "{}: virtual size at chunk {chunk}",
            img.display()
        );
        assert_eq!(
            sha256(&got.disk),
            want_sha,
            "{}: sha256 of decoded disk differs from qemu-img's at chunk {chunk}",
            img.display()
        );
    }
}

/// Chunk sizes used for every image: 7, 4096, 65536 and whole (0); 1 is added for small
/// images by the callers.
pub const CHUNKS: &[usize] = &[7, 4096, 65536, 0];
