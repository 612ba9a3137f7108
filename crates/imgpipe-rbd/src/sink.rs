//! The librbd-backed sink (feature `librbd`). No unsafe code here: it uses the handles of
//! [`crate::ffi`].

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use imgpipe_core::{DiskExtent, DiskInfo, Error, ErrorKind, Result, Sink, SinkReport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ffi::{AioWrite, CallError, Cluster, Image, Pool};
use crate::{RbdOptions, RbdZeroes};

/// Contiguous data extents are gathered into one write of up to this many bytes, and a write
/// never crosses a multiple of the image's stripe unit (the object size, 4 MiB by default), so
/// each write touches one RADOS object, as `rbd import` does. Gathering copies nothing: the
/// extents' buffers go to librbd as an iovec array.
const COALESCE: usize = 4 << 20;
/// Zero runs that must be written go out in pieces of this size.
const ZERO_CHUNK: usize = 4 << 20;
/// Set before the config file is read (which may override it): fail a connect to a dead
/// cluster after 60 s instead of librados' 300 s.
const CONNECT_DEFAULTS: &[(&str, &str)] = &[("client_mount_timeout", "60")];

/// Set after the config file is read (`$CEPH_ARGS` still overrides them), because they only
/// cost CPU for a sink that writes each byte of a new image once from buffers it never
/// changes. Together they make librbd send the sink's buffers as they are (zero-copy) instead
/// of copying every byte first (measured: the copy was ~0.13 s of CPU per GiB on the sink's
/// thread, on a machine where client and OSD share 2 cores):
/// - `rbd_disable_zero_copy_writes = false`: librbd copies by default so that a client
///   changing a buffer while it is in flight (a guest's page under QEMU) cannot cause a
///   checksum mismatch. The sink's buffers are immutable `Bytes`, owned until the write
///   completed, so the copy protects nothing here.
/// - `rbd_cache = false`: with the cache on (librbd's default, and common in `[client]`
///   sections for VMs), librbd copies every write whatever the zero-copy setting. The cache
///   brings nothing to a one-pass sequential writer: the sink keeps its own writes in flight,
///   reads nothing back, and flushes before publishing.
const CONNECT_OVERRIDES: &[(&str, &str)] = &[
    ("rbd_disable_zero_copy_writes", "false"),
    ("rbd_cache", "false"),
];

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
    let cluster = Cluster::connect(conf.as_deref(), id, CONNECT_DEFAULTS, CONNECT_OVERRIDES)
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
    gather: Gather,
    zero_buf: Option<Bytes>,
    report: SinkReport,
}

impl RbdSink {
    /// A sink for `opts` (names checked, nothing contacted yet).
    ///
    /// The [`crate::WRITES_IN_FLIGHT_ENV`] environment variable, when set, replaces
    /// `opts.queue_depth`.
    pub fn new(mut opts: RbdOptions) -> Result<Self> {
        opts.validate()?;
        if let Ok(v) = std::env::var(crate::WRITES_IN_FLIGHT_ENV) {
            opts.queue_depth = v.trim().parse::<usize>().map_err(|_| {
                Error::check(
                    ErrorKind::Spec,
                    "rbd.writes_in_flight",
                    format!(
                        "{}={v:?} is not a number (1..=64)",
                        crate::WRITES_IN_FLIGHT_ENV
                    ),
                )
            })?;
        }
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
            gather: Gather::new(COALESCE as u64),
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
        if let Some(p) = self.gather.take() {
            self.writer()?.submit(p.offset, p.segments).await?;
        }
        Ok(())
    }

    async fn write_data(&mut self, offset: u64, data: Bytes) -> Result<()> {
        let mut ready = Vec::new();
        self.gather.push(offset, data, &mut ready);
        for p in ready {
            self.writer()?.submit(p.offset, p.segments).await?;
        }
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
            self.writer()?.submit(pos, vec![zeros.slice(..n)]).await?;
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
        let (pool, image, unit) = blocking(move || {
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
                let unit = img.stripe_unit()?;
                Ok((img, got, unit))
            });
            match opened {
                Ok((img, got, unit)) if got == size => Ok((pool, img, unit)),
                other => {
                    let e = match other {
                        Err(e) => call_error(ErrorKind::Io, "rbd.open", "opening the new image", e),
                        Ok((_, got, _)) => Error::check(
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
        self.gather = Gather::new(unit);
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
        self.gather.take();
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

/// Contiguous data to be submitted as one write: `segments` (slices of the extents' buffers,
/// never copies) concatenated, starting at `offset`.
#[derive(Debug)]
struct Pending {
    offset: u64,
    len: u64,
    segments: Vec<Bytes>,
}

impl Pending {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Turns data extents into writes, without I/O and without copying: contiguous extents are
/// gathered, and every write ends where it reaches a multiple of `unit` (the image's stripe
/// unit, at most [`COALESCE`]) or where the next extent is not contiguous. So each write
/// touches one RADOS object, and where the writes start and end depends only on which bytes
/// are data, not on how the extents were cut.
struct Gather {
    unit: u64,
    pending: Option<Pending>,
}

impl Gather {
    fn new(unit: u64) -> Gather {
        Gather {
            unit: unit.clamp(1, COALESCE as u64),
            pending: None,
        }
    }

    /// Add `data` at `offset`; writes that became complete are appended to `ready`, in order.
    fn push(&mut self, mut offset: u64, mut data: Bytes, ready: &mut Vec<Pending>) {
        while !data.is_empty() {
            if self.pending.as_ref().is_some_and(|p| p.end() != offset) {
                ready.extend(self.pending.take());
            }
            let p = self.pending.get_or_insert_with(|| Pending {
                offset,
                len: 0,
                segments: Vec::new(),
            });
            // Room up to the next boundary: > 0, as a write that reached one left `pending`.
            let room = self.unit - offset % self.unit;
            let take = room.min(data.len() as u64) as usize;
            let piece = if take == data.len() {
                std::mem::take(&mut data)
            } else {
                data.split_to(take)
            };
            p.segments.push(piece);
            p.len += take as u64;
            offset += take as u64;
            if offset.is_multiple_of(self.unit) {
                ready.extend(self.pending.take());
            }
        }
    }

    /// The incomplete write, if any.
    fn take(&mut self) -> Option<Pending> {
        self.pending.take()
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

    async fn submit(&mut self, offset: u64, segments: Vec<Bytes>) -> Result<()> {
        let end = offset + segments.iter().map(|b| b.len() as u64).sum::<u64>();
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
        let op = AioWrite::submit(&self.image, offset, segments)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UNIT: u64 = 65536;

    /// Data runs (offset, len) of a small disk: aligned and unaligned starts, runs shorter than,
    /// equal to and spanning several units, and two runs that touch (must be one write).
    const RUNS: &[(u64, u64)] = &[
        (0, 3 * UNIT + 100),
        (4 * UNIT + 512, 700),
        (5 * UNIT - 10, 20),
        (6 * UNIT, UNIT),
        (7 * UNIT, 1000),
        (9 * UNIT + 1, 2 * UNIT),
    ];

    fn source(len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i * 31 + i / 251) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    /// The writes the contract asks for: the maximal contiguous data ranges, cut at multiples
    /// of `unit`.
    fn expected(unit: u64) -> Vec<(u64, u64)> {
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(o, l) in RUNS {
            match merged.last_mut() {
                Some((mo, ml)) if *mo + *ml == o => *ml += l,
                _ => merged.push((o, l)),
            }
        }
        let mut out = Vec::new();
        for (mut o, l) in merged {
            let end = o + l;
            while o < end {
                let next = ((o / unit + 1) * unit).min(end);
                out.push((o, next - o));
                o = next;
            }
        }
        out
    }

    #[test]
    fn writes_depend_on_the_data_not_on_how_the_extents_were_cut() {
        let disk = source(12 * UNIT as usize);
        let want = expected(UNIT);
        for piece in [1usize, 7, 512, 4096, 65536, usize::MAX] {
            let mut g = Gather::new(UNIT);
            let mut ready = Vec::new();
            for &(o, l) in RUNS {
                let run = disk.slice(o as usize..(o + l) as usize);
                let mut at = 0usize;
                while at < run.len() {
                    let n = piece.min(run.len() - at);
                    g.push(o + at as u64, run.slice(at..at + n), &mut ready);
                    at += n;
                }
            }
            ready.extend(g.take());
            let got: Vec<(u64, u64)> = ready.iter().map(|p| (p.offset, p.len)).collect();
            assert_eq!(got, want, "pieces of {piece} bytes");
            for p in &ready {
                let mut pos = p.offset as usize;
                for seg in &p.segments {
                    assert!(!seg.is_empty());
                    // No copy: each segment is the disk buffer itself at the write's offset.
                    assert_eq!(
                        seg.as_ptr(),
                        disk[pos..].as_ptr(),
                        "pieces of {piece}: segment at {pos} is not the source's memory"
                    );
                    pos += seg.len();
                }
                assert_eq!(pos as u64, p.end());
            }
        }
    }

    #[test]
    fn unit_is_clamped_to_the_gather_limit() {
        // A 32 MiB object size still gives writes of at most COALESCE bytes, on its multiples;
        // a nonsensical unit of 0 is treated as 1 instead of dividing by zero.
        let disk = source(3 * COALESCE);
        let mut g = Gather::new(32 << 20);
        let mut ready = Vec::new();
        g.push(100, disk.slice(100..), &mut ready);
        ready.extend(g.take());
        let got: Vec<(u64, u64)> = ready.iter().map(|p| (p.offset, p.len)).collect();
        let c = COALESCE as u64;
        assert_eq!(got, vec![(100, c - 100), (c, c), (2 * c, c)]);

        let mut g = Gather::new(0);
        let mut ready = Vec::new();
        g.push(5, disk.slice(..3), &mut ready);
        assert_eq!(ready.len(), 3);
        assert!(g.take().is_none());
    }
}
