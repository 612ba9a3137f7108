//! Mode `raw` through the crate's own API: the raw tee, the publish, the authenticated
//! sidecar, a hit's keyed-digest check and `verify`, with extents fed in every order and cut
//! a decoder could produce.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{block_on, cache_spec, file_spec, image_bytes};
use imgpipe::core::{Chunk, Finding, Observer, RunOutcome};
use imgpipe_cache::{Cache, Entry, FillOutcome, Sidecar};

fn key_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("cache.key");
    std::fs::write(&p, image_bytes(32, 1234)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn raw_cache(dir: &Path, key: &Path) -> Cache {
    let mut cs = cache_spec(dir);
    cs.raw = true;
    cs.key_file = Some(key.to_path_buf());
    Cache::open(&cs).unwrap()
}

/// What a successful run of the original image reports (the tee only adds the raw record).
fn outcome(bytes_read: u64, virtual_size: u64) -> RunOutcome {
    RunOutcome {
        result: Ok(None),
        bytes_read,
        findings: vec![
            Finding::Format {
                format: "qcow2".into(),
                virtual_size: Some(virtual_size),
            },
            Finding::Digest {
                algorithm: "sha512".into(),
                hex: "ab".repeat(64),
            },
            Finding::Passed {
                check: "digest.sha512".into(),
            },
        ],
        stages: vec![],
        source: "test".into(),
        sink: None,
        resumes: 0,
        elapsed: Duration::ZERO,
    }
}

/// The extents of `data` in pieces of `piece` bytes (512-aligned like decoder output), zero
/// pieces as zero extents or not at all (holes), in the given order.
fn extents(data: &[u8], piece: usize, order: &str) -> Vec<(u64, Option<Bytes>, u64)> {
    let mut v: Vec<(u64, Option<Bytes>, u64)> = data
        .chunks(piece)
        .enumerate()
        .filter_map(|(i, c)| {
            let off = (i * piece) as u64;
            if c.iter().all(|&b| b == 0) {
                // Every third zero piece is a hole the decoder never mentions.
                (i % 3 != 0).then_some((off, None, c.len() as u64))
            } else {
                Some((off, Some(Bytes::copy_from_slice(c)), c.len() as u64))
            }
        })
        .collect();
    match order {
        "forward" => {}
        "reverse" => v.reverse(),
        _ => {
            // Interleaved: odd pieces first, then even ones backwards (as a qcow2 whose
            // clusters were written by a guest in some other order).
            let (odd, mut even): (Vec<_>, Vec<_>) =
                v.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
            even.reverse();
            v = odd.into_iter().chain(even).map(|(_, e)| e).collect();
        }
    }
    v
}

/// Fill one raw entry from `extents`; returns the published sidecar.
fn fill(cache: &Cache, src: &Path, data_len: u64, ex: &[(u64, Option<Bytes>, u64)]) -> Sidecar {
    let spec = file_spec(src, None);
    let key = cache.key_for(&spec).unwrap();
    let Entry::Fill(mut fill) = block_on(cache.lookup_or_fill(&key)).unwrap() else {
        panic!("expected a fill")
    };
    assert!(fill.is_raw());
    let mut tee = fill.raw_tee().unwrap();
    for (o, d, l) in ex {
        tee.extent(*o, d.as_deref(), *l);
    }
    tee.finish(data_len);
    match block_on(fill.finish(&spec, &outcome(4321, data_len))).unwrap() {
        FillOutcome::Published(sc) => *sc,
        other => panic!("not published: {other:?}"),
    }
}

/// Stream `path` through a hit's raw check in `piece`-sized chunks.
fn stream_check(mut check: Box<dyn Observer>, path: &Path, piece: usize) -> imgpipe::Result<()> {
    let bytes = std::fs::read(path).unwrap();
    let mut off = 0u64;
    for c in bytes.chunks(piece) {
        check.update(&Chunk {
            offset: off,
            data: Bytes::copy_from_slice(c),
        })?;
        off += c.len() as u64;
    }
    check.finish(off).map(|_| ())
}

#[test]
fn raw_fill_digest_is_independent_of_extent_order_and_cut() {
    let t = tempfile::tempdir().unwrap();
    let key = key_file(t.path());
    // Not a multiple of 1 KiB (BLAKE3's chunk), with zero stretches.
    let data = image_bytes((3 << 20) + 512, 77);
    let src = t.path().join("img.qcow2");
    let mut digests = Vec::new();
    let mut i = 0;
    for piece in [512usize, 4096 + 512, 65536, 1 << 20, data.len()] {
        for order in ["forward", "reverse", "interleaved"] {
            let cache = raw_cache(&t.path().join(format!("c{i}")), &key);
            i += 1;
            let sc = fill(
                &cache,
                &src,
                data.len() as u64,
                &extents(&data, piece, order),
            );
            let rec = sc.raw.clone().unwrap();
            assert_eq!(rec.virtual_size, data.len() as u64);
            assert_eq!(rec.reread, None, "hashed in the pass ({piece} {order})");
            assert_eq!(sc.mode, "raw");
            assert_eq!(sc.size, 4321, "the original image's size");
            assert_eq!(sc.format.as_deref(), Some("qcow2"));
            let entry = cache.dir().join(format!("{}.data", sc.id));
            assert_eq!(
                std::fs::read(&entry).unwrap(),
                data,
                "entry bytes ({piece} {order})"
            );
            // The in-pass digest is the one a sequential re-hash computes.
            let v = block_on(cache.verify_entry(&sc.id, false)).unwrap();
            assert!(v.ok, "{piece} {order}: {:?}", v.problems);
            digests.push(rec.keyed_blake3);
        }
    }
    digests.dedup();
    assert_eq!(digests.len(), 1, "one digest whatever the order and cut");
}

#[test]
fn raw_hit_checks_the_disk_and_the_sidecar_mac() {
    let t = tempfile::tempdir().unwrap();
    let key = key_file(t.path());
    let data = image_bytes(1 << 20, 5);
    let src = t.path().join("img.qcow2");
    let cache = raw_cache(&t.path().join("c"), &key);
    let sc = fill(
        &cache,
        &src,
        data.len() as u64,
        &extents(&data, 65536, "reverse"),
    );
    let spec = file_spec(&src, None);
    let ckey = cache.key_for(&spec).unwrap();
    let paths = |ext: &str| cache.dir().join(format!("{}.{ext}", sc.id));

    // A hit streams the disk through the keyed digest, any chunking.
    for piece in [1usize, 7, 512, 4096, 65536, data.len()] {
        let Entry::Hit(hit) = block_on(cache.lookup_or_fill(&ckey)).unwrap() else {
            panic!("expected a hit")
        };
        assert_eq!(hit.sidecar(), &sc);
        let check = hit.raw_check().unwrap();
        stream_check(check, hit.data_path(), piece).unwrap();
    }

    // One flipped byte: the hit's check fails with cache.raw_digest; verify removes it.
    let mut b = std::fs::read(paths("data")).unwrap();
    b[4097] ^= 0x10;
    std::fs::write(paths("data"), &b).unwrap();
    let Entry::Hit(hit) = block_on(cache.lookup_or_fill(&ckey)).unwrap() else {
        panic!("expected a hit")
    };
    let e = stream_check(hit.raw_check().unwrap(), hit.data_path(), 65536).unwrap_err();
    assert_eq!(e.check_name(), Some("cache.raw_digest"));
    drop(hit);
    // Without the key, verify cannot tell and keeps the entry even with remove_bad.
    let keyless = Cache::open_dir(cache.dir()).unwrap();
    let v = block_on(keyless.verify_entry(&sc.id, true)).unwrap();
    assert!(!v.ok && !v.removed, "{v:?}");
    assert!(v.problems[0].starts_with("cache.key:"), "{v:?}");
    let v = block_on(cache.verify_entry(&sc.id, true)).unwrap();
    assert!(!v.ok && v.removed, "{v:?}");
    assert!(v.problems.iter().any(|p| p.starts_with("cache.raw_digest")));
    assert!(!paths("json").exists());

    // Refill; then tamper with the data AND rewrite the sidecar's digest to match it
    // (unkeyed, as an attacker without the key would): the MAC rejects the entry.
    let sc = fill(
        &cache,
        &src,
        data.len() as u64,
        &extents(&data, 65536, "forward"),
    );
    let mut b = std::fs::read(paths("data")).unwrap();
    b[10] ^= 1;
    std::fs::write(paths("data"), &b).unwrap();
    let mut forged = sc.clone();
    forged.raw.as_mut().unwrap().keyed_blake3 = blake3::hash(&b).to_hex().to_string();
    std::fs::write(paths("json"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let e = match block_on(cache.lookup_or_fill(&ckey)) {
        Err(e) => e,
        Ok(_) => panic!("a forged sidecar was accepted"),
    };
    assert_eq!(e.check_name(), Some("cache.mac"), "{e}");
    assert!(!paths("json").exists() && !paths("data").exists());

    // Refilled from another cut of the same disk: the same keyed digest.
    let sc2 = fill(
        &cache,
        &src,
        data.len() as u64,
        &extents(&data, 4096, "forward"),
    );
    assert_eq!(sc2.raw, sc.raw, "same disk, same keyed digest");
}

#[test]
fn raw_tee_refuses_overlapping_extents_and_overruns() {
    let t = tempfile::tempdir().unwrap();
    let key = key_file(t.path());
    let src = t.path().join("img.qcow2");
    for (case, ex, len) in [
        (
            "overlap",
            vec![(0u64, None::<Bytes>, 8192u64), (4096, None, 8192)],
            16384u64,
        ),
        ("overrun", vec![(0, None, 8192)], 4096),
    ] {
        let cache = raw_cache(&t.path().join(case), &key);
        let spec = file_spec(&src, None);
        let ckey = cache.key_for(&spec).unwrap();
        let Entry::Fill(mut fill) = block_on(cache.lookup_or_fill(&ckey)).unwrap() else {
            panic!()
        };
        let mut tee = fill.raw_tee().unwrap();
        for (o, d, l) in &ex {
            tee.extent(*o, d.as_deref(), *l);
        }
        tee.finish(len);
        match block_on(fill.finish(&spec, &outcome(1, len))).unwrap() {
            FillOutcome::Abandoned { reason } => assert!(!reason.is_empty()),
            FillOutcome::Published(_) => panic!("{case}: published"),
        }
        assert!(std::fs::read_dir(cache.dir()).unwrap().all(|e| {
            let n = e.unwrap().file_name();
            let n = n.to_string_lossy();
            !n.ends_with(".data") && !n.ends_with(".part")
        }));
    }
}

#[test]
fn key_file_rules() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("cache");
    std::fs::create_dir(&dir).unwrap();
    let open = |key: &Path| {
        let mut cs = cache_spec(&dir);
        cs.raw = true;
        cs.key_file = Some(key.to_path_buf());
        Cache::open(&cs)
    };
    // Inside the cache directory, directly or through a symlink from outside: refused.
    let inside = key_file(&dir);
    let e = open(&inside).unwrap_err();
    assert_eq!(e.check_name(), Some("cache.key_file"), "{e}");
    let link = t.path().join("link.key");
    std::os::unix::fs::symlink(&inside, &link).unwrap();
    let e = open(&link).unwrap_err();
    assert_eq!(e.check_name(), Some("cache.key_file"), "{e}");
    // Group-readable: refused.
    let outside = key_file(t.path());
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = open(&outside).unwrap_err();
    assert_eq!(e.check_name(), Some("cache.key_file"), "{e}");
    // Absent: created once (32 bytes, 0600) even by concurrent first runs, all of which
    // then use that one key (an entry one of them fills is authenticated for the others).
    let new = t.path().join("keys/new.key");
    let caches: Vec<Cache> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8).map(|_| s.spawn(|| open(&new).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let meta = std::fs::metadata(&new).unwrap();
    assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o600));
    let leftovers: Vec<_> = std::fs::read_dir(t.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let data = image_bytes(200_000, 9);
    let src = t.path().join("img.qcow2");
    let sc = fill(
        &caches[3],
        &src,
        data.len() as u64,
        &extents(&data, 4096, "forward"),
    );
    for c in &caches {
        let v = block_on(c.verify_entry(&sc.id, false)).unwrap();
        assert!(v.ok, "{v:?}");
    }
}

/// Past the in-pass tree's bounds (here 64 Ki + 1 partly covered 1 KiB chunks, a
/// pathologically fragmented decoder output) the fill hashes its entry once after the run,
/// records why in the sidecar (`raw.reread`), and the digest is the same keyed BLAKE3 an
/// in-order fill of the same disk computes (and `verify` re-computes).
#[test]
fn raw_fill_falls_back_to_one_reread_past_the_tree_bounds() {
    let t = tempfile::tempdir().unwrap();
    let key = key_file(t.path());
    let src = t.path().join("img.qcow2");
    let chunks = (1usize << 16) + 1;
    let len = (chunks * 1024) as u64;
    // Only the first 512 bytes of every 1 KiB chunk are written (the rest is a hole), last
    // chunk first, so no chunk is ever completed.
    let bytes = image_bytes(chunks * 512, 91);
    let mut disk = vec![0u8; chunks * 1024];
    let mut scattered: Vec<(u64, Option<Bytes>, u64)> = Vec::with_capacity(chunks);
    for (i, piece) in bytes.chunks(512).enumerate().rev() {
        disk[i * 1024..i * 1024 + 512].copy_from_slice(piece);
        scattered.push(((i * 1024) as u64, Some(Bytes::copy_from_slice(piece)), 512));
    }
    let cache = raw_cache(&t.path().join("scattered"), &key);
    let sc = fill(&cache, &src, len, &scattered);
    let rec = sc.raw.clone().unwrap();
    assert!(
        rec.reread.as_deref().is_some_and(|w| w.contains("1 KiB")),
        "{rec:?}"
    );
    let entry = cache.dir().join(format!("{}.data", sc.id));
    assert!(std::fs::read(&entry).unwrap() == disk, "entry bytes");
    let v = block_on(cache.verify_entry(&sc.id, false)).unwrap();
    assert!(v.ok, "{:?}", v.problems);
    // The same disk filled in order is hashed in the pass, to the same digest.
    let in_order = raw_cache(&t.path().join("in-order"), &key);
    let sc2 = fill(&in_order, &src, len, &extents(&disk, 1 << 20, "forward"));
    let rec2 = sc2.raw.unwrap();
    assert_eq!(rec2.reread, None);
    assert_eq!(rec2.keyed_blake3, rec.keyed_blake3);
}
