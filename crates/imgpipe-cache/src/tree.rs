//! Keyed BLAKE3 of a disk whose extents arrive in any order, in one pass, without reading
//! anything back.
//!
//! BLAKE3 is a binary tree over 1 KiB chunks: every chunk is compressed with its index (the
//! chunk counter), and the tree over `C` chunks splits at the largest power of two below `C`.
//! Consequently every run of `2^k` whole chunks that starts at a multiple of `2^k` chunks and
//! is not the whole input is a node of that tree, whatever the final length. [`TreeHasher`]
//! hashes each arriving extent as such aligned power-of-two subtrees (chaining values, via
//! `blake3::hazmat`), merges sibling subtrees as soon as both are present, keeps the bytes of
//! chunks not yet whole (extents that start or end inside a 1 KiB chunk), and at the end —
//! when the disk's length is known — walks the tree from the root, hashing the never-written
//! ranges as zeros. The result is bit-for-bit the ordinary keyed BLAKE3 of the whole disk, so a
//! hit (and `imgpipe cache verify`) checks an entry with a plain streaming keyed hasher.
//!
//! Chunk 0 is always kept as bytes (never turned into a subtree): the only subtree that could
//! be the whole input — which must be finalized as the root, not as a chaining value — starts
//! at offset 0, so no stored subtree ever is. An input of at most one chunk is hashed from
//! those bytes directly.
//!
//! Memory: in-order extents keep one subtree per level (O(log size)); out-of-order extents
//! keep one per maximal aligned run not yet merged, bounded by [`MAX_NODES`] and
//! [`MAX_PARTIAL_CHUNKS`] (the caller falls back when they are exceeded).
//! Overlapping extents (against the decoder contract) are refused, not silently hashed twice.

use std::collections::BTreeMap;

use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};

/// BLAKE3's chunk length.
const CHUNK: u64 = blake3::CHUNK_LEN as u64;
/// Subtrees kept at once before giving up (about 100 bytes each).
pub(crate) const MAX_NODES: usize = 1 << 21;
/// Incomplete chunks kept at once before giving up (about 1 KiB each).
pub(crate) const MAX_PARTIAL_CHUNKS: usize = 1 << 16;

/// Bytes of zeros hashed at once.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Why the tree hasher cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TreeError {
    /// Two extents cover the same bytes.
    Overlap(u64),
    /// Too fragmented to hash within the memory bounds.
    TooFragmented,
    /// An extent ends beyond the disk's length.
    BeyondEnd { end: u64, len: u64 },
}

impl std::fmt::Display for TreeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TreeError::Overlap(o) => write!(f, "two extents cover byte {o}"),
            TreeError::TooFragmented => write!(
                f,
                "more than {MAX_NODES} separate runs or {MAX_PARTIAL_CHUNKS} incomplete 1 KiB \
                 chunks outstanding"
            ),
            TreeError::BeyondEnd { end, len } => {
                write!(f, "an extent ends at {end}, beyond the disk's {len} bytes")
            }
        }
    }
}

/// A chunk not yet whole: its bytes (zeros where nothing arrived) and how many arrived.
struct Partial {
    buf: Box<[u8; CHUNK as usize]>,
    covered: u64,
}

/// The order-independent keyed BLAKE3 (see the module documentation).
pub(crate) struct TreeHasher {
    key: [u8; 32],
    /// Offset → (length, chaining value): disjoint aligned power-of-two runs of whole chunks,
    /// never at offset 0.
    nodes: BTreeMap<u64, (u64, ChainingValue)>,
    /// Chunk index → incomplete chunk (chunk 0 always stays here).
    partial: BTreeMap<u64, Partial>,
    /// One past the last byte any extent covered.
    end: u64,
}

impl TreeHasher {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        TreeHasher {
            key,
            nodes: BTreeMap::new(),
            partial: BTreeMap::new(),
            end: 0,
        }
    }

    fn subtree(&self, offset: u64, data: Option<&[u8]>, len: u64) -> ChainingValue {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.set_input_offset(offset);
        match data {
            Some(d) => {
                h.update(d);
            }
            None => {
                let mut left = len;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64);
                    h.update(&ZEROS[..n as usize]);
                    left -= n;
                }
            }
        }
        h.finalize_non_root()
    }

    /// Add `len` bytes at `offset`: `data` (of that length) or zeros.
    pub(crate) fn add(
        &mut self,
        offset: u64,
        data: Option<&[u8]>,
        len: u64,
    ) -> Result<(), TreeError> {
        let end = offset
            .checked_add(len)
            .ok_or(TreeError::BeyondEnd { end: u64::MAX, len })?;
        let mut o = offset;
        while o < end {
            let slice =
                |a: u64, b: u64| data.map(|d| &d[(a - offset) as usize..(b - offset) as usize]);
            let (chunk, within) = (o / CHUNK, o % CHUNK);
            if within != 0 || end - o < CHUNK || chunk == 0 {
                let n = (CHUNK - within).min(end - o);
                self.add_partial(chunk, within, slice(o, o + n), n)?;
                o += n;
                continue;
            }
            // Whole chunks from a chunk boundary other than 0: the largest aligned power of two.
            let whole = (end - o) / CHUNK * CHUNK;
            let align = 1u64 << o.trailing_zeros();
            let mut size = 1u64 << (63 - whole.leading_zeros());
            size = size.min(align);
            let cv = self.subtree(o, slice(o, o + size), size);
            self.insert_node(o, size, cv)?;
            o += size;
        }
        self.end = self.end.max(end);
        Ok(())
    }

    fn covered_by_node(&self, a: u64, b: u64) -> Option<u64> {
        if let Some((&o, &(l, _))) = self.nodes.range(..=a).next_back()
            && o + l > a
        {
            return Some(a);
        }
        self.nodes.range(a..b).next().map(|(&o, _)| o)
    }

    fn add_partial(
        &mut self,
        chunk: u64,
        within: u64,
        data: Option<&[u8]>,
        n: u64,
    ) -> Result<(), TreeError> {
        let start = chunk * CHUNK;
        if let Some(at) = self.covered_by_node(start, start + CHUNK) {
            return Err(TreeError::Overlap(at));
        }
        if !self.partial.contains_key(&chunk) && self.partial.len() >= MAX_PARTIAL_CHUNKS {
            return Err(TreeError::TooFragmented);
        }
        let p = self.partial.entry(chunk).or_insert_with(|| Partial {
            buf: Box::new([0; CHUNK as usize]),
            covered: 0,
        });
        if let Some(d) = data {
            p.buf[within as usize..(within + n) as usize].copy_from_slice(d);
        }
        p.covered += n;
        if p.covered > CHUNK {
            return Err(TreeError::Overlap(start + within));
        }
        if p.covered == CHUNK && chunk != 0 {
            let Some(p) = self.partial.remove(&chunk) else {
                return Ok(());
            };
            let cv = self.subtree(start, Some(&p.buf[..]), CHUNK);
            self.insert_node(start, CHUNK, cv)?;
        }
        Ok(())
    }

    fn insert_node(
        &mut self,
        mut o: u64,
        mut len: u64,
        mut cv: ChainingValue,
    ) -> Result<(), TreeError> {
        if let Some(at) = self.covered_by_node(o, o + len) {
            return Err(TreeError::Overlap(at));
        }
        if let Some((&c, _)) = self.partial.range(o / CHUNK..(o + len) / CHUNK).next() {
            return Err(TreeError::Overlap(c * CHUNK));
        }
        // Merge with the sibling while it is present (never at offset 0: see the module docs).
        loop {
            let sib = o ^ len;
            match self.nodes.get(&sib) {
                Some(&(l, scv)) if l == len && sib != 0 => {
                    self.nodes.remove(&sib);
                    let (left, right) = if sib < o { (scv, cv) } else { (cv, scv) };
                    cv = hazmat::merge_subtrees_non_root(&left, &right, Mode::KeyedHash(&self.key));
                    o = o.min(sib);
                    len *= 2;
                }
                _ => break,
            }
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(TreeError::TooFragmented);
        }
        self.nodes.insert(o, (len, cv));
        Ok(())
    }

    fn has_content(&self, a: u64, b: u64) -> bool {
        self.nodes.range(a..b).next().is_some()
            || self
                .partial
                .range(a / CHUNK..b.div_ceil(CHUNK))
                .next()
                .is_some()
    }

    /// The chaining value of the tree node `[o, o+len)` (never the root).
    fn node_cv(&self, o: u64, len: u64) -> ChainingValue {
        if let Some(&(l, cv)) = self.nodes.get(&o)
            && l == len
        {
            return cv;
        }
        if !self.has_content(o, o + len) {
            return self.subtree(o, None, len);
        }
        if len <= CHUNK {
            let bytes = self
                .partial
                .get(&(o / CHUNK))
                .map(|p| &p.buf[..len as usize]);
            return self.subtree(o, bytes, len);
        }
        let left = hazmat::left_subtree_len(len);
        let l = self.node_cv(o, left);
        let r = self.node_cv(o + left, len - left);
        hazmat::merge_subtrees_non_root(&l, &r, Mode::KeyedHash(&self.key))
    }

    /// The keyed BLAKE3 of the whole disk of `len` bytes (never-written bytes are zeros).
    pub(crate) fn finish(self, len: u64) -> Result<blake3::Hash, TreeError> {
        if self.end > len {
            return Err(TreeError::BeyondEnd { end: self.end, len });
        }
        if len <= CHUNK {
            let mut h = blake3::Hasher::new_keyed(&self.key);
            if let Some(p) = self.partial.get(&0) {
                h.update(&p.buf[..len as usize]);
            } else {
                h.update(&ZEROS[..len as usize]);
            }
            return Ok(h.finalize());
        }
        let left = hazmat::left_subtree_len(len);
        let l = self.node_cv(0, left);
        let r = self.node_cv(left, len - left);
        Ok(hazmat::merge_subtrees_root(
            &l,
            &r,
            Mode::KeyedHash(&self.key),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn disk(len: usize, rng: &mut Rng) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for (i, b) in v.iter_mut().enumerate() {
            // Some all-zero stretches, as disks have.
            if (i / 3000) % 4 != 3 {
                *b = rng.next() as u8;
            }
        }
        v
    }

    /// Cut [0, len) into extents at random (sometimes 512-aligned, sometimes odd), some of them
    /// zero extents over zero data, some bytes left unwritten (holes), in random order.
    fn extents(data: &[u8], rng: &mut Rng, align: u64) -> Vec<(u64, Option<Vec<u8>>, u64)> {
        let len = data.len() as u64;
        let mut cuts = vec![0, len];
        for _ in 0..rng.below(40) {
            let c = rng.below(len + 1) / align * align;
            cuts.push(c);
        }
        cuts.sort();
        cuts.dedup();
        let mut out = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let piece = &data[a as usize..b as usize];
            let zero = piece.iter().all(|&x| x == 0);
            match (zero, rng.below(3)) {
                (true, 0) => {} // a hole: never written
                (true, _) => out.push((a, None, b - a)),
                _ => out.push((a, Some(piece.to_vec()), b - a)),
            }
        }
        // Shuffle.
        for i in (1..out.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            out.swap(i, j);
        }
        out
    }

    #[test]
    fn equals_keyed_blake3_for_any_order_and_cut() {
        let key = [7u8; 32];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut lens: Vec<usize> = vec![0, 1, 511, 1023, 1024, 1025, 2048, 3072, 4095, 65536];
        lens.extend([65536 + 512, 1 << 20, (1 << 20) + 1000, 3 * 1024 * 1024 + 7]);
        for _ in 0..40 {
            lens.push(rng.below(300_000) as usize);
        }
        for (i, &len) in lens.iter().enumerate() {
            let data = disk(len, &mut rng);
            let want = blake3::keyed_hash(&key, &data);
            for align in [1u64, 512, 4096, 65536] {
                let mut t = TreeHasher::new(key);
                for (o, d, l) in extents(&data, &mut rng, align) {
                    t.add(o, d.as_deref(), l).unwrap();
                }
                assert_eq!(
                    t.finish(len as u64).unwrap(),
                    want,
                    "case {i} len {len} align {align}"
                );
            }
        }
    }

    #[test]
    fn in_order_keeps_few_nodes_and_reverse_order_works() {
        let key = [1u8; 32];
        let mut rng = Rng(42);
        let data = disk(4 << 20, &mut rng);
        let mut t = TreeHasher::new(key);
        for (i, c) in data.chunks(65536).enumerate() {
            t.add((i * 65536) as u64, Some(c), c.len() as u64).unwrap();
            assert!(t.nodes.len() <= 24, "{}", t.nodes.len());
        }
        assert_eq!(
            t.finish(data.len() as u64).unwrap(),
            blake3::keyed_hash(&key, &data)
        );
        let mut t = TreeHasher::new(key);
        for (i, c) in data.chunks(65536).enumerate().rev() {
            t.add((i * 65536) as u64, Some(c), c.len() as u64).unwrap();
        }
        assert_eq!(
            t.finish(data.len() as u64).unwrap(),
            blake3::keyed_hash(&key, &data)
        );
    }

    #[test]
    fn overlaps_and_overruns_are_refused() {
        let key = [3u8; 32];
        let mut t = TreeHasher::new(key);
        t.add(4096, None, 8192).unwrap();
        assert!(matches!(
            t.add(8192, None, 1024),
            Err(TreeError::Overlap(_))
        ));
        let mut t = TreeHasher::new(key);
        t.add(100, None, 200).unwrap();
        t.add(0, None, 1024).unwrap_err();
        let mut t = TreeHasher::new(key);
        t.add(0, None, 5000).unwrap();
        assert!(matches!(t.finish(4096), Err(TreeError::BeyondEnd { .. })));
    }
}
