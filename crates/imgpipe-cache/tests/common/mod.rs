//! Shared test helpers: the cache wiring exactly as the facade does it (lookup → Hit/Fill → same observers → publish/abandon), real HTTP server,
//! pseudo-random images.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use imgpipe::assembly::{DiskOptions, ImageToDisk, InspectObserver};
use imgpipe::core::{DiskStage, DriverOptions, Observer, Pipeline, RunOutcome, Sink, Source};
use imgpipe::spec::{CacheSpec, ConvertFormat, SinkSpec, SinkTarget, SourceSpec};
use imgpipe::{Progress, Spec};
use imgpipe_cache::{Cache, Entry, FillOutcome, HitOutcome};
use imgpipe_format::decode::DecodeOptions;
use imgpipe_io::{FileSink, FileZeroes};

/// Which way a cached run went.
#[derive(Debug)]
pub enum Way {
    Hit(HitOutcome),
    Fill(FillOutcome),
    Uncached,
}

/// A finished run: the outcome (or the error before streaming) and the cache's part.
pub struct Ran {
    pub result: Result<RunOutcome, imgpipe::Error>,
    pub way: Way,
}

impl Ran {
    pub fn ok(&self) -> bool {
        matches!(&self.result, Ok(o) if o.result.is_ok())
    }
    pub fn kind(&self) -> Option<imgpipe::ErrorKind> {
        match &self.result {
            Ok(o) => o.result.as_ref().err().map(|e| e.kind()),
            Err(e) => Some(e.kind()),
        }
    }
    pub fn outcome(&self) -> &RunOutcome {
        self.result.as_ref().unwrap()
    }
    pub fn is_hit(&self) -> bool {
        matches!(self.way, Way::Hit(_))
    }
    pub fn published(&self) -> bool {
        matches!(self.way, Way::Fill(FillOutcome::Published(_)))
    }
}

/// What the facade's assembly (`imgpipe::assembly`) does, with the source and extra observers given (the hook the wiring adds).
pub async fn assemble(
    spec: &Spec,
    source: Box<dyn Source>,
    extra: Vec<Box<dyn Observer>>,
) -> Result<Pipeline, imgpipe::Error> {
    let (mut observers, _warnings) = imgpipe::assembly::verification(spec).await?;
    observers.extend(extra);
    let len = source.len_hint();
    let disk = match &spec.sink {
        Some(SinkSpec {
            target: SinkTarget::File(p),
            ..
        }) => {
            let sink: Box<dyn Sink> = Box::new(FileSink::new(p, FileZeroes::Skip)?);
            let mut decode = DecodeOptions::default();
            decode.stream_len = len;
            let stage = ImageToDisk::new(DiskOptions {
                inspector: Some(imgpipe::assembly::inspector(spec, len)),
                preserve: spec.convert == ConvertFormat::Preserve,
                declared: spec.inspect.disk_format,
                decode,
                encrypt: None,
                raw_tee: None,
                size_hint: None,
            });
            Some((Box::new(stage) as Box<dyn DiskStage>, sink))
        }
        Some(_) => panic!("tests use file sinks"),
        None => {
            observers.push(Box::new(InspectObserver::new(
                imgpipe::assembly::inspector(spec, len),
                true,
            )));
            None
        }
    };
    Ok(Pipeline {
        source,
        observers,
        disk,
        options: DriverOptions::default(),
    })
}

/// One run through the cache, as the facade will do it.
pub async fn run_cached(cache: Option<&Cache>, spec: &Spec) -> Ran {
    let entry = match cache {
        Some(c) => c.lookup(spec).await.unwrap(),
        None => None,
    };
    match entry {
        Some(Entry::Hit(hit)) => {
            let s = hit.spec(spec);
            let (source, done) = hit.open().unwrap();
            let result = match assemble(&s, source, vec![]).await {
                Ok(p) => Ok(p.run(Arc::new(Progress::default())).await),
                Err(e) => Err(e),
            };
            let way = match &result {
                Ok(o) => Way::Hit(done.finish(o).await.unwrap()),
                Err(_) => Way::Hit(HitOutcome::Kept),
            };
            Ran { result, way }
        }
        Some(Entry::Fill(mut fill)) => {
            let s = fill.spec(spec);
            let tee = fill.tee().unwrap();
            let built = match imgpipe::assembly::open_source(&s).await {
                Ok(src) => assemble(&s, src, vec![tee]).await,
                Err(e) => Err(e),
            };
            match built {
                Ok(p) => {
                    let o = p.run(Arc::new(Progress::default())).await;
                    let f = fill.finish(spec, &o).await.unwrap();
                    Ran {
                        result: Ok(o),
                        way: Way::Fill(f),
                    }
                }
                Err(e) => {
                    fill.abandon().unwrap();
                    Ran {
                        result: Err(e),
                        way: Way::Fill(FillOutcome::Abandoned {
                            reason: "before streaming".into(),
                        }),
                    }
                }
            }
        }
        None => {
            let src = imgpipe::assembly::open_source(spec).await;
            let result = match src {
                Ok(src) => match assemble(spec, src, vec![]).await {
                    Ok(p) => Ok(p.run(Arc::new(Progress::default())).await),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            Ran {
                result,
                way: Way::Uncached,
            }
        }
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub fn cache_spec(dir: &Path) -> CacheSpec {
    CacheSpec {
        dir: dir.to_path_buf(),
        raw: false,
        key_file: None,
        max_size: None,
        max_age: None,
    }
}

/// Pseudo-random bytes with zero runs (a raw disk), deterministic per seed.
pub fn image_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_mut(8).enumerate() {
        if (i / 4096) % 5 == 2 {
            continue;
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    v
}

/// The digest of `data` by coreutils `<algo>sum` (md5, sha1, sha224 … sha512): the outside
/// reference, not imgpipe's own hasher.
pub fn coreutils_sum(algo: &str, data: &[u8]) -> String {
    use std::io::Write;
    let tool = format!("{algo}sum");
    let mut c = std::process::Command::new(&tool)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{tool} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `sha256sum` of `b`.
pub fn sha256_hex(b: &[u8]) -> String {
    coreutils_sum("sha256", b)
}

pub fn file_spec(src: &Path, out: Option<&Path>) -> Spec {
    let mut s = Spec::new(SourceSpec::File(src.to_path_buf()));
    s.sink = out.map(|o| SinkSpec {
        target: SinkTarget::File(o.to_path_buf()),
        zeroes: None,
    });
    s
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/test-http-server.py` serving `dir`, logging requests to `log`.
pub struct Server {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Server {
    pub fn start(dir: &Path, log: &Path) -> Server {
        let mut child = Command::new("python3")
            .arg(root().join("scripts/test-http-server.py"))
            .arg("--dir")
            .arg(dir)
            .arg("--log")
            .arg(log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        Server {
            child,
            port,
            log: log.to_path_buf(),
        }
    }
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
    /// Requests logged for `name`.
    pub fn requests(&self, name: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("/{name} ")))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
