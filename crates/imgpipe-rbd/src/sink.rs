//! The librbd-backed sink (feature `librbd`). No unsafe code here: it uses the handles of
//! [`crate::ffi`].

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use imgpipe_core::{DiskExtent, DiskInfo, Error, ErrorKind, Result, Sink, SinkReport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ffi::{AioWrite, CallError, Cluster, Image, Pool};
use crate::{RbdOptions, RbdZeroes};

/// Small data extents (qcow2 clusters, …) are gathered into writes of up to this many bytes.
const COALESCE: usize = 4 << 20;
/// Data extents at least this long are submitted as they are (no copy). Shorter ones are
/// gathered: 1 GiB in 1 MiB extents took 3.78 s gathered into 4 MiB writes vs 4.08 s as 1 MiB
/// aio writes (same queue depth, bluestore on this 2-core machine).
const DIRECT: usize = 4 << 20;
/// Zero runs that must be written go out in pieces of this size.
const ZERO_CHUNK: usize = 4 << 20;
/// Set before the config file is read (which may override them): fail a connect to a dead
/// cluster after 60 s instead of librados' 300 s.
const CONNECT_DEFAULTS: &[(&str, &str)] = &[("client_mount_timeout", "60")];

fn call_error(kind: ErrorKind, check: &str, context: &str, e: CallError) -> Error {
    let errno = e.errno;
    Error::check(kind, check, format!("{context}: {e}"))
        .with_source(std::io::Error::from_raw_os_error(errno))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::new(
            ErrorKind::Internal,
            format!("RBD worker thread failed: {e}"),
        )),
    }
}

/// A fresh random suffix for the temporary image name (64 bits from the std per-process random
/// hash keys, mixed with the time and pid).
fn random_suffix() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Connect and open the pool (blocking).
fn connect_pool(opts: &RbdOptions) -> Result<Arc<Pool>> {
    let conf = opts.conf.as_ref().map(|p| p.to_string_lossy().into_owned());
    let id = opts
        .id
        .as_deref()
        .map(|i| i.strip_prefix("client.").unwrap_or(i));
    let who = format!(
        "connecting to Ceph as client.{} (config {})",
        id.unwrap_or("admin"),
        conf.as_deref().unwrap_or("default search")
    );
    let cluster = Cluster::connect(conf.as_deref(), id, CONNECT_DEFAULTS)
        .map_err(|e| call_error(ErrorKind::Network, "rbd.connect", &who, e))?;
    Pool::open(&cluster, &opts.pool).map_err(|e| {
        let kind = if e.errno == libc::ENOENT {
            ErrorKind::Spec
        } else {
            ErrorKind::Network
        };
        call_error(
            kind,
            "rbd.pool",
            &format!("opening pool {:?}", opts.pool),
            e,
        )
    })
}

/// Fail if the final image exists (blocking).
fn refuse_existing(pool: &Pool, image: &str) -> Result<()> {
    let exists = pool.image_exists(image).map_err(|e| {
        call_error(
            ErrorKind::Network,
            "rbd.target_exists",
            &format!("checking whether {}/{image} exists", pool.name()),
            e,
        )
    })?;
    if exists {
        return Err(target_exists(pool.name(), image, "before writing"));
    }
    Ok(())
}

fn target_exists(pool: &str, image: &str, when: &str) -> Error {
    Error::check(
        ErrorKind::Spec,
        "rbd.target_exists",
        format!(
            "RBD image {pool}/{image} already exists ({when}); imgpipe never overwrites an \
             image: remove it or choose another name"
        ),
    )
}

/// Writes RBD images through librbd: a new image under a temporary name, published by rename.
///
/// Lifecycle (the [`Sink`] contract): [`RbdSink::new`] checks names only; `begin` connects (if
/// [`RbdSink::connect`] did not), refuses when the final image exists, and creates the
/// temporary image (format 2) of exactly `DiskInfo::size` bytes — an unknown size is an
/// `Unsupported` error, since RBD images have a fixed size. `write` keeps up to
/// `queue_depth` aio writes in flight (completions are reaped on a dedicated thread, never on
/// the async runtime); writes that overlap one still in flight wait for it first. `finish`
/// waits for every write, flushes, closes and renames; the rename fails rather than replace an
/// image created meanwhile, and on any failure the temporary image is removed. `abort` waits
/// for in-flight writes and removes the temporary image. Dropping the sink without either
/// closes every handle but leaves the temporary image (visible by its `.imgpipe-tmp-` name).
pub struct RbdSink {
    opts: RbdOptions,
    temp: String,
    pool: Option<Arc<Pool>>,
    writer: Option<Writer>,
    size: u64,
    zeroes: RbdZeroes,
    pending: Option<(u64, BytesMut)>,
    zero_buf: Option<Bytes>,
    report: SinkReport,
}

impl RbdSink {
    /// A sink for `opts` (names checked, nothing contacted yet).
    pub fn new(opts: RbdOptions) -> Result<Self> {
        opts.validate()?;
        let temp = format!("{}.imgpipe-tmp-{}", opts.image, random_suffix());
        let zeroes = opts.zeroes;
        Ok(RbdSink {
            report: SinkReport {
                target: opts.target(),
                zero_policy: zero_policy(zeroes).into(),
                ..Default::default()
            },
            opts,
            temp,
            pool: None,
            writer: None,
            size: 0,
            zeroes,
            pending: None,
            zero_buf: None,
        })
    }

    /// Like [`RbdSink::new`], and also connect now and fail early when the pool is missing or
    /// the final image already exists (so a run fails before streaming, not at `begin`).
    pub async fn connect(opts: RbdOptions) -> Result<Self> {
        let mut sink = Self::new(opts)?;
        let opts = sink.opts.clone();
        let pool = blocking(move || {
            let pool = connect_pool(&opts)?;
            refuse_existing(&pool, &opts.image)?;
            Ok(pool)
        })
        .await?;
        sink.pool = Some(pool);
        Ok(sink)
    }

    /// The temporary image name (`<image>.imgpipe-tmp-<16 hex digits>`) in the same pool.
    pub fn temp_image(&self) -> &str {
        &self.temp
    }

    fn writer(&mut self) -> Result<&mut Writer> {
        self.writer.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "RBD sink: write or finish before begin (the engine must call begin first)",
            )
        })
    }

    async fn flush_pending(&mut self) -> Result<()> {
        if let Some((offset, buf)) = self.pending.take() {
            self.writer()?.submit(offset, buf.freeze()).await?;
        }
        Ok(())
    }

    async fn write_data(&mut self, offset: u64, data: Bytes) -> Result<()> {
        if data.len() >= DIRECT {
            self.flush_pending().await?;
            return self.writer()?.submit(offset, data).await;
        }
        if let Some((start, buf)) = &mut self.pending
            && *start + buf.len() as u64 == offset
            && buf.len() + data.len() <= COALESCE
        {
            buf.extend_from_slice(&data);
            if buf.len() == COALESCE {
                self.flush_pending().await?;
            }
            return Ok(());
        }
        self.flush_pending().await?;
        let mut buf = BytesMut::with_capacity(COALESCE);
        buf.extend_from_slice(&data);
        self.pending = Some((offset, buf));
        Ok(())
    }

    async fn write_zeros(&mut self, offset: u64, len: u64) -> Result<()> {
        self.flush_pending().await?;
        let zeros = self
            .zero_buf
            .get_or_insert_with(|| Bytes::from(vec![0u8; ZERO_CHUNK]))
            .clone();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(ZERO_CHUNK as u64) as usize;
            self.writer()?.submit(pos, zeros.slice(..n)).await?;
            pos += n as u64;
        }
        Ok(())
    }
}

fn zero_policy(z: RbdZeroes) -> &'static str {
    match z {
        RbdZeroes::Skip => "skip",
        RbdZeroes::Write => "write",
    }
}

#[async_trait]
impl Sink for RbdSink {
    fn describe(&self) -> String {
        format!("rbd:{}", self.opts.target())
    }

    async fn begin(&mut self, info: &DiskInfo) -> Result<()> {
        if self.writer.is_some() {
            return Err(Error::new(
                ErrorKind::Internal,
                "RBD sink: begin called twice",
            ));
        }
        let size = info.size.ok_or_else(|| {
            Error::check(
                ErrorKind::Unsupported,
                "rbd.size",
                format!(
                    "cannot create RBD image {}: the disk size is not known before writing \
                     (RBD images are created with a fixed size); give the source's virtual \
                     size (e.g. a format whose header states it)",
                    self.opts.target()
                ),
            )
        })?;
        if info.encrypted {
            // Ciphertext of zeros is not zeros: never leave a zero run unwritten.
            self.zeroes = RbdZeroes::Write;
        }
        self.report.zero_policy = zero_policy(self.zeroes).into();
        let (opts, temp, pool) = (self.opts.clone(), self.temp.clone(), self.pool.clone());
        let (pool, image) = blocking(move || {
            let pool = match pool {
                Some(p) => p,
                None => connect_pool(&opts)?,
            };
            refuse_existing(&pool, &opts.image)?;
            pool.create_image(&temp, size).map_err(|e| {
                let kind = if e.errno == libc::EEXIST {
                    ErrorKind::Internal
                } else {
                    ErrorKind::Io
                };
                call_error(kind, "rbd.create", "creating the temporary image", e)
            })?;
            let opened = Image::open(&pool, &temp).and_then(|img| {
                let got = img.size()?;
                Ok((img, got))
            });
            match opened {
                Ok((img, got)) if got == size => Ok((pool, img)),
                other => {
                    let e = match other {
                        Err(e) => call_error(ErrorKind::Io, "rbd.open", "opening the new image", e),
                        Ok((_, got)) => Error::check(
                            ErrorKind::Internal,
                            "rbd.size",
                            format!(
                                "created {}/{temp} with size {size} but it reports {got}",
                                pool.name()
                            ),
                        ),
                    };
                    // The image handle (if any) is closed by now; do not leave the image behind.
                    let _ = pool.remove_image(&temp);
                    Err(e)
                }
            }
        })
        .await?;
        self.size = size;
        self.pool = Some(pool);
        self.writer = Some(Writer::new(Arc::new(image), self.opts.queue_depth)?);
        Ok(())
    }

    async fn write(&mut self, extent: DiskExtent) -> Result<()> {
        self.writer()?;
        let (offset, len) = (extent.offset(), extent.len());
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::check(
                ErrorKind::SizeMismatch,
                "rbd.extent_end",
                format!(
                    "extent at byte {offset} of {len} bytes ends past the RBD image size {}",
                    self.size
                ),
            )
            .with_offset(offset));
        }
        match extent {
            DiskExtent::Data { offset, data } => {
                if data.is_empty() {
                    return Ok(());
                }
                self.report.bytes_written += len;
                self.write_data(offset, data).await
            }
            DiskExtent::Zero { offset, len } => match self.zeroes {
                RbdZeroes::Skip => {
                    self.report.zero_bytes_skipped += len;
                    Ok(())
                }
                RbdZeroes::Write => {
                    self.report.zero_bytes_written += len;
                    self.write_zeros(offset, len).await
                }
            },
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<SinkReport> {
        self.writer()?;
        let flushed = match self.flush_pending().await {
            Ok(()) => self.writer()?.drain().await,
            Err(e) => {
                let _ = self.writer()?.drain().await;
                Err(e)
            }
        };
        let (Some(writer), Some(pool)) = (self.writer.take(), self.pool.clone()) else {
            return Err(Error::new(ErrorKind::Internal, "RBD sink state lost"));
        };
        let (temp, image) = (self.temp.clone(), self.opts.image.clone());
        blocking(move || {
            let (pool_ref, temp_ref, image_ref) = (&pool, &temp, &image);
            let published = (move || {
                let (pool, temp, image) = (pool_ref, temp_ref, image_ref);
                flushed?;
                let img = writer.close()?;
                let what = format!("flushing {}/{temp}", pool.name());
                img.flush()
                    .map_err(|e| call_error(ErrorKind::Io, "rbd.flush", &what, e))?;
                img.close()
                    .map_err(|e| call_error(ErrorKind::Io, "rbd.close", &what, e))?;
                pool.rename_image(temp, image).map_err(|e| {
                    if e.errno == libc::EEXIST {
                        target_exists(pool.name(), image, "created while this run was writing")
                    } else {
                        call_error(
                            ErrorKind::Io,
                            "rbd.rename",
                            "publishing the written image",
                            e,
                        )
                    }
                })
            })();
            // Every handle of the temporary image is closed at this point.
            match published {
                Ok(()) => Ok(()),
                Err(e) => Err(remove_after_failure(&pool, &temp, e)),
            }
        })
        .await?;
        self.report.size = self.size;
        Ok(self.report.clone())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.pending = None;
        let Some(mut writer) = self.writer.take() else {
            return Ok(()); // begin never succeeded: nothing was created
        };
        let Some(pool) = self.pool.clone() else {
            return Err(Error::new(ErrorKind::Internal, "RBD sink state lost"));
        };
        // Wait for in-flight writes; their errors no longer matter.
        let _ = writer.drain().await;
        let temp = self.temp.clone();
        blocking(move || {
            if let Ok(img) = writer.close() {
                let _ = img.close();
            }
            pool.remove_image(&temp).map_err(|e| {
                call_error(
                    ErrorKind::Io,
                    "rbd.abort",
                    &format!(
                        "removing the temporary image {p}/{temp} (remove it with `rbd rm {p}/{temp}`)",
                        p = pool.name()
                    ),
                    e,
                )
            })
        })
        .await
    }
}

/// After a failed publish: remove the temporary image and say so in the error.
fn remove_after_failure(pool: &Pool, temp: &str, e: Error) -> Error {
    match pool.remove_image(temp) {
        Ok(()) => e.with_note(format!(
            "the temporary image {}/{temp} was removed",
            pool.name()
        )),
        Err(r) => e.with_note(format!(
            "removing the temporary image {p}/{temp} failed too ({r}); remove it with `rbd rm {p}/{temp}`",
            p = pool.name()
        )),
    }
}

/// Appends context to an error's message.
trait WithNote {
    fn with_note(self, note: String) -> Self;
}

impl WithNote for Error {
    fn with_note(self, note: String) -> Self {
        let mut out = Error::new(self.kind(), format!("{}; {note}", self.message()));
        if let Some(c) = self.check_name() {
            out = out.with_check(c.to_owned());
        }
        if let Some(o) = self.offset() {
            out = out.with_offset(o);
        }
        out
    }
}

/// One write in flight, handed to the completion thread with its queue slot.
struct Job {
    op: AioWrite,
    _slot: OwnedSemaphorePermit,
}

/// Keeps up to `depth` aio writes in flight. A dedicated thread waits for their completions in
/// submission order (blocking in `rbd_aio_wait_for_complete`), records the first failure and
/// frees the queue slot; the async side only ever awaits a semaphore.
struct Writer {
    image: Arc<Image>,
    depth: u32,
    slots: Arc<Semaphore>,
    jobs: Option<mpsc::Sender<Job>>,
    reaper: Option<JoinHandle<()>>,
    failure: Arc<Mutex<Option<CallError>>>,
    completed: Arc<AtomicU64>,
    submitted: u64,
    /// (sequence number, start, end) of writes that may still be in flight.
    ranges: VecDeque<(u64, u64, u64)>,
}

impl Writer {
    fn new(image: Arc<Image>, depth: usize) -> Result<Writer> {
        let depth = depth.clamp(1, 64) as u32;
        let (tx, rx) = mpsc::channel::<Job>();
        let failure = Arc::new(Mutex::new(None));
        let completed = Arc::new(AtomicU64::new(0));
        let (f, c) = (failure.clone(), completed.clone());
        let reaper = std::thread::Builder::new()
            .name("imgpipe-rbd-aio".into())
            .spawn(move || {
                for job in rx {
                    if let Err(e) = job.op.wait() {
                        let mut first = f.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert(e);
                    }
                    // Count before the slot is freed: drain() relies on it.
                    c.fetch_add(1, Ordering::Release);
                }
            })
            .map_err(|e| Error::io("starting the RBD completion thread", e))?;
        Ok(Writer {
            image,
            depth,
            slots: Arc::new(Semaphore::new(depth as usize)),
            jobs: Some(tx),
            reaper: Some(reaper),
            failure,
            completed,
            submitted: 0,
            ranges: VecDeque::new(),
        })
    }

    fn check(&self) -> Result<()> {
        let first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*first {
            None => Ok(()),
            Some(e) => Err(call_error(
                ErrorKind::Io,
                "rbd.write",
                "writing the RBD image",
                e.clone(),
            )),
        }
    }

    async fn submit(&mut self, offset: u64, data: Bytes) -> Result<()> {
        let end = offset + data.len() as u64;
        let done = self.completed.load(Ordering::Acquire);
        while self.ranges.front().is_some_and(|&(seq, _, _)| seq < done) {
            self.ranges.pop_front();
        }
        // librbd does not order concurrent writes to the same bytes: let the older one finish.
        if self.ranges.iter().any(|&(_, s, e)| s < end && offset < e) {
            self.drain().await?;
            self.ranges.clear();
        }
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Internal, "RBD write queue closed"))?;
        self.check()?;
        let op = AioWrite::submit(&self.image, offset, data)
            .map_err(|e| call_error(ErrorKind::Io, "rbd.write", "queueing a write", e))?;
        let seq = self.submitted;
        self.submitted += 1;
        self.ranges.push_back((seq, offset, end));
        let Some(jobs) = &self.jobs else {
            return Err(Error::new(ErrorKind::Internal, "RBD writer closed"));
        };
        // If the thread is gone, the returned Job is dropped here, which waits for the write.
        jobs.send(Job { op, _slot: slot })
            .map_err(|_| Error::new(ErrorKind::Internal, "RBD completion thread exited"))
    }

    /// Wait until no write is in flight; the first write error, if any.
    async fn drain(&mut self) -> Result<()> {
        let all = self
            .slots
            .acquire_many(self.depth)
            .await
            .map_err(|_| Error::new(ErrorKind::Internal, "RBD write queue closed"))?;
        drop(all);
        self.ranges.clear();
        self.check()
    }

    /// Stop the completion thread (blocking; instant after `drain`) and take the image back.
    fn close(self) -> Result<Image> {
        self.check()?;
        let Writer {
            image,
            jobs,
            reaper,
            ..
        } = self;
        drop(jobs);
        if let Some(t) = reaper
            && t.join().is_err()
        {
            return Err(Error::new(
                ErrorKind::Internal,
                "RBD completion thread panicked",
            ));
        }
        Arc::try_unwrap(image).map_err(|_| {
            Error::new(
                ErrorKind::Internal,
                "RBD image still referenced after all writes",
            )
        })
    }
}
