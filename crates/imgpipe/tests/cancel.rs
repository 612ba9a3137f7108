//! `imgpipe::run` is cancel-safe: dropping its future mid-stream (what `tokio::time::timeout`
//! or a lost `select!` branch does) aborts every stage and the sink, and publishes nothing. The
//! image comes through a FIFO the test holds open, so the run is really mid-stream when its
//! future is dropped. Real sinks: a file with a cache fill, and a loop block device.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use imgpipe::spec::{CacheSpec, SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{Progress, Spec, Status};

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes()[..c.len()]);
    }
    v
}

/// A FIFO fed by a thread: `first` bytes at once, then nothing until `release` is set.
struct Feeder {
    path: PathBuf,
    release: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    fn start(dir: &Path, first: Vec<u8>) -> Feeder {
        let path = dir.join("image.src");
        assert!(
            Command::new("mkfifo")
                .arg(&path)
                .status()
                .unwrap()
                .success()
        );
        let release = Arc::new(AtomicBool::new(false));
        let (p, r) = (path.clone(), release.clone());
        let thread = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            let _ = f.write_all(&first);
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Feeder {
            path,
            release,
            thread: Some(thread),
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll `run` until `read` bytes went through, then drop it (as a timeout would).
async fn drop_mid_stream(spec: &Spec, read: u64) -> Arc<Progress> {
    let progress = Arc::new(Progress::default());
    let fut = imgpipe::run(spec, progress.clone());
    let p = progress.clone();
    tokio::select! {
        r = fut => panic!("the run ended before it was dropped: {:?}", r.reason),
        _ = async move {
            while p.bytes_read() < read {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } => {}
    }
    progress
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_future_aborts_the_file_sink_and_the_cache_fill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let cache = d.join("cache");
    std::fs::create_dir(&out).unwrap();
    let feeder = Feeder::start(d, image(8 << 20, 1)[..6 << 20].to_vec());
    let mut spec = Spec::new(SourceSpec::File(feeder.path.clone()));
    spec.inspect.disk_format = Some(imgpipe::format::Format::Raw);
    spec.sink = Some(SinkSpec {
        target: SinkTarget::File(out.join("disk.raw")),
        zeroes: None,
    });
    let data = image(8 << 20, 1);
    let whole = d.join("whole.raw");
    std::fs::write(&whole, &data).unwrap();
    let sum = Command::new("sha512sum").arg(&whole).output().unwrap();
    let sha512 = String::from_utf8(sum.stdout).unwrap()[..128].to_string();
    spec.verify
        .digests
        .push((imgpipe::hash::Algorithm::Sha512, sha512));
    spec.cache = Some(CacheSpec {
        dir: cache.clone(),
        raw: false,
        key_file: None,
        max_size: None,
        max_age: None,
    });
    let progress = drop_mid_stream(&spec, 4 << 20).await;
    // The background task saw the cancel, aborted the sink and abandoned the fill.
    assert!(progress.is_cancelled());
    eventually("the cache fill is abandoned", || {
        std::fs::read_dir(&cache).map_or(true, |r| {
            r.filter_map(|e| e.ok())
                .all(|e| !e.file_name().to_string_lossy().ends_with(".part"))
        })
    })
    .await;
    drop(feeder);
    assert!(entries(&out).is_empty(), "published: {:?}", entries(&out));

    // The entry is free: the same request, now with the whole image at the same path, fills
    // it and publishes the disk.
    let src = d.join("image.src");
    std::fs::remove_file(&src).unwrap();
    std::fs::rename(&whole, &src).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        imgpipe::run(&spec, Arc::new(Progress::default())),
    )
    .await
    .expect("the cache entry was left locked");
    assert_eq!(r.status, Status::Ok, "{:?}", r.reason);
    assert_eq!(std::fs::read(out.join("disk.raw")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_future_wipes_the_block_device_head() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backing = d.join("dev.img");
    std::fs::write(&backing, vec![0xA5u8; 16 << 20]).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&backing)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
        other => {
            assert!(
                std::env::var("IMGPIPE_REQUIRE_ORACLES").is_err(),
                "loop devices are required: {other:?}"
            );
            eprintln!("skipping: no loop device ({other:?})");
            return;
        }
    };
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let _detach = Detach(dev.clone());
    let feeder = Feeder::start(d, image(12 << 20, 2));
    let mut spec = Spec::new(SourceSpec::File(feeder.path.clone()));
    spec.inspect.disk_format = Some(imgpipe::format::Format::Raw);
    spec.sink = Some(SinkSpec {
        target: SinkTarget::Device(dev.clone()),
        zeroes: None,
    });
    drop_mid_stream(&spec, 8 << 20).await;
    // Only the abort zeroes the held-back first MiB (a dropped sink would leave the old bytes).
    eventually("the first MiB is wiped", || {
        let mut head = vec![0u8; 1 << 20];
        let f = std::fs::File::open(&dev).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
        head.iter().all(|&b| b == 0)
    })
    .await;
    drop(feeder);
}
