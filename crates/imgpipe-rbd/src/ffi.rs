//! The only unsafe code of the crate: a hand-written binding to the stable librados/librbd C API
//! (`rados/librados.h`, `rbd/librbd.h`) and the owning handle types built on it.
//!
//! Ownership: [`Cluster`] (a connected `rados_t`) ← [`Pool`] (`rados_ioctx_t`, holds an `Arc` of
//! its cluster) ← [`Image`] (`rbd_image_t`, holds an `Arc` of its pool) ← [`AioWrite`] (an
//! in-flight write: its completion, the buffer librbd reads from, and an `Arc` of its image).
//! Each handle is released in `Drop`, so it is closed on every path, and a parent handle can
//! never be released before a child that uses it. An [`AioWrite`] waits for its operation to
//! complete before it releases the completion and the buffer, so librbd never sees freed memory.
//!
//! All calls here may block (network round trips to the monitors and OSDs); callers run them
//! off the async runtime, except [`AioWrite::submit`], which only queues the write.

use std::ffi::{CString, c_char, c_int, c_void};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

type RadosT = *mut c_void;
type IoctxT = *mut c_void;
type ImageT = *mut c_void;
type CompletionT = *mut c_void;
type ImageOptionsT = *mut c_void;
type CallbackT = Option<unsafe extern "C" fn(CompletionT, *mut c_void)>;

/// `RBD_IMAGE_OPTION_FORMAT` in librbd.h's image option enum.
const RBD_IMAGE_OPTION_FORMAT: c_int = 0;

// Signatures copied from the C headers of Ceph 16.2 (librbd 1.16, librados 3.0); all of them
// exist unchanged since Ceph 12.
unsafe extern "C" {
    fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    fn rados_conf_parse_env(cluster: RadosT, var: *const c_char) -> c_int;
    fn rados_connect(cluster: RadosT) -> c_int;
    fn rados_shutdown(cluster: RadosT);
    fn rados_ioctx_create(cluster: RadosT, pool: *const c_char, ioctx: *mut IoctxT) -> c_int;
    fn rados_ioctx_destroy(io: IoctxT);

    fn rbd_image_options_create(opts: *mut ImageOptionsT);
    fn rbd_image_options_destroy(opts: ImageOptionsT);
    fn rbd_image_options_set_uint64(opts: ImageOptionsT, optname: c_int, optval: u64) -> c_int;
    fn rbd_create4(io: IoctxT, name: *const c_char, size: u64, opts: ImageOptionsT) -> c_int;
    fn rbd_open(io: IoctxT, name: *const c_char, image: *mut ImageT, snap: *const c_char) -> c_int;
    fn rbd_open_read_only(
        io: IoctxT,
        name: *const c_char,
        image: *mut ImageT,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_close(image: ImageT) -> c_int;
    fn rbd_remove(io: IoctxT, name: *const c_char) -> c_int;
    fn rbd_rename(io: IoctxT, src: *const c_char, dst: *const c_char) -> c_int;
    fn rbd_get_size(image: ImageT, size: *mut u64) -> c_int;
    fn rbd_flush(image: ImageT) -> c_int;
    fn rbd_aio_create_completion(cb_arg: *mut c_void, cb: CallbackT, c: *mut CompletionT) -> c_int;
    fn rbd_aio_writev(
        image: ImageT,
        iov: *const libc::iovec,
        iovcnt: c_int,
        off: u64,
        c: CompletionT,
    ) -> c_int;
    fn rbd_get_stripe_unit(image: ImageT, stripe_unit: *mut u64) -> c_int;
    fn rbd_aio_wait_for_complete(c: CompletionT) -> c_int;
    fn rbd_aio_get_return_value(c: CompletionT) -> isize;
    fn rbd_aio_release(c: CompletionT);
}

/// A failed librados/librbd call: what was called and the (positive) errno it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError {
    /// The C function (and its main argument) that failed.
    pub call: String,
    /// Positive errno.
    pub errno: i32,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: {} (errno {})",
            self.call,
            std::io::Error::from_raw_os_error(self.errno),
            self.errno
        )
    }
}

type CallResult<T> = std::result::Result<T, CallError>;

/// Map a C return code (`>= 0` ok, `-errno` failure) to a result.
fn rc(ret: i64, call: impl FnOnce() -> String) -> CallResult<i64> {
    if ret >= 0 {
        Ok(ret)
    } else {
        Err(CallError {
            call: call(),
            errno: i32::try_from(ret.unsigned_abs()).unwrap_or(i32::MAX),
        })
    }
}

/// A C string for librados/librbd; names with an interior NUL cannot be expressed.
fn cstr(what: &str, s: &str) -> CallResult<CString> {
    CString::new(s).map_err(|_| CallError {
        call: format!("{what} {s:?} contains a NUL byte;"),
        errno: libc::EINVAL,
    })
}

/// A connected cluster handle (`rados_t`).
pub(crate) struct Cluster {
    raw: RadosT,
}

// SAFETY: librados cluster handles are documented as thread-safe (any thread may create ioctxs
// or shut it down); the handle is only shut down in Drop, when no Pool refers to it any more.
unsafe impl Send for Cluster {}
// SAFETY: as above; no &self method mutates Rust-side state.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Create a handle for client `id` (without the `client.` prefix; `None` = librados'
    /// default, `admin`), read `conf` (`None` = the default search: `$CEPH_CONF`,
    /// `/etc/ceph/ceph.conf`, `~/.ceph/config`, `./ceph.conf`), apply `$CEPH_ARGS`, connect.
    ///
    /// `defaults` are set before the config file is read, so the file overrides them;
    /// `overrides` are set after it, so they win over the file but not over `$CEPH_ARGS`.
    pub fn connect(
        conf: Option<&str>,
        id: Option<&str>,
        defaults: &[(&str, &str)],
        overrides: &[(&str, &str)],
    ) -> CallResult<Arc<Cluster>> {
        let id = id.map(|i| cstr("client id", i)).transpose()?;
        let conf = conf.map(|c| cstr("ceph.conf path", c)).transpose()?;
        let mut raw: RadosT = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `id` is NULL or a NUL-terminated string that
        // outlives the call (librados copies it).
        let ret = unsafe {
            rados_create(
                &mut raw,
                id.as_ref().map_or(std::ptr::null(), |i| i.as_ptr()),
            )
        };
        rc(ret.into(), || "rados_create".into())?;
        // From here on the handle is owned: Drop shuts it down on every error path below
        // (rados_shutdown is valid on a created but unconnected handle).
        let cluster = Cluster { raw };
        cluster.set_all(defaults)?;
        // SAFETY: live, unconnected handle; `conf` is NULL (default search) or a valid path
        // string for the duration of the call.
        let ret = unsafe {
            rados_conf_read_file(
                cluster.raw,
                conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        };
        rc(ret.into(), || match &conf {
            Some(c) => format!("rados_conf_read_file({})", c.to_string_lossy()),
            None => "rados_conf_read_file(default search: $CEPH_CONF, /etc/ceph/ceph.conf)".into(),
        })?;
        cluster.set_all(overrides)?;
        // SAFETY: live, unconnected handle; NULL selects the CEPH_ARGS variable.
        let ret = unsafe { rados_conf_parse_env(cluster.raw, std::ptr::null()) };
        rc(ret.into(), || "rados_conf_parse_env(CEPH_ARGS)".into())?;
        // SAFETY: live, configured handle; blocks until connected or client_mount_timeout.
        let ret = unsafe { rados_connect(cluster.raw) };
        rc(ret.into(), || "rados_connect".into())?;
        Ok(Arc::new(cluster))
    }

    /// `rados_conf_set` each option (before connecting).
    fn set_all(&self, options: &[(&str, &str)]) -> CallResult<()> {
        for (k, v) in options {
            let (ck, cv) = (cstr("option", k)?, cstr("option value", v)?);
            // SAFETY: the handle is live and not yet connected; both strings are valid for the
            // call and copied by librados.
            let ret = unsafe { rados_conf_set(self.raw, ck.as_ptr(), cv.as_ptr()) };
            rc(ret.into(), || format!("rados_conf_set({k}={v})"))?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: `raw` came from a successful rados_create and is shut down exactly once;
        // every Pool holds an Arc of this Cluster, so no ioctx outlives it.
        unsafe { rados_shutdown(self.raw) }
    }
}

/// An I/O context on one pool (`rados_ioctx_t`).
pub(crate) struct Pool {
    raw: IoctxT,
    name: String,
    _cluster: Arc<Cluster>,
}

// SAFETY: librados I/O contexts may be used from any thread; this crate never changes the
// context's settings (namespace, snap) after creation, which are the non-thread-safe parts.
unsafe impl Send for Pool {}
// SAFETY: as above; concurrent librbd calls on one ioctx are synchronised inside librados.
unsafe impl Sync for Pool {}

impl Pool {
    /// Open pool `name` of `cluster`.
    pub fn open(cluster: &Arc<Cluster>, name: &str) -> CallResult<Arc<Pool>> {
        let cname = cstr("pool name", name)?;
        let mut raw: IoctxT = std::ptr::null_mut();
        // SAFETY: the cluster handle is connected and kept alive by the Arc; `raw` is a valid
        // out-pointer; the name string is valid for the call.
        let ret = unsafe { rados_ioctx_create(cluster.raw, cname.as_ptr(), &mut raw) };
        rc(ret.into(), || format!("rados_ioctx_create(pool {name})"))?;
        Ok(Arc::new(Pool {
            raw,
            name: name.to_owned(),
            _cluster: cluster.clone(),
        }))
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Create image `name` in image format 2 (the pool's/config's default features, object
    /// size and stripe, like `rbd import --image-format 2`).
    pub fn create_image(&self, name: &str, size: u64) -> CallResult<()> {
        let cname = cstr("image name", name)?;
        let mut opts: ImageOptionsT = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the options object is destroyed below on every path.
        unsafe { rbd_image_options_create(&mut opts) };
        // SAFETY: `opts` was just created; the option id and type match librbd.h.
        let set = unsafe { rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FORMAT, 2) };
        let ret = if set < 0 {
            set
        } else {
            // SAFETY: live ioctx (self), valid name string and options for the call.
            unsafe { rbd_create4(self.raw, cname.as_ptr(), size, opts) }
        };
        // SAFETY: `opts` came from rbd_image_options_create and is destroyed exactly once.
        unsafe { rbd_image_options_destroy(opts) };
        rc(ret.into(), || {
            format!("rbd_create4({}/{name}, size {size}, format 2)", self.name)
        })?;
        Ok(())
    }

    /// Whether image `name` exists (opened read-only and closed again).
    pub fn image_exists(&self, name: &str) -> CallResult<bool> {
        let cname = cstr("image name", name)?;
        let mut img: ImageT = std::ptr::null_mut();
        // SAFETY: live ioctx, valid name string, valid out-pointer, NULL = no snapshot.
        let ret =
            unsafe { rbd_open_read_only(self.raw, cname.as_ptr(), &mut img, std::ptr::null()) };
        if ret == -libc::ENOENT {
            return Ok(false);
        }
        rc(ret.into(), || {
            format!("rbd_open_read_only({}/{name})", self.name)
        })?;
        // SAFETY: `img` was opened successfully just above and is closed exactly once.
        unsafe { rbd_close(img) };
        Ok(true)
    }

    /// Rename image `from` to `to`; fails with EEXIST if `to` exists (never overwrites).
    pub fn rename_image(&self, from: &str, to: &str) -> CallResult<()> {
        let (cf, ct) = (cstr("image name", from)?, cstr("image name", to)?);
        // SAFETY: live ioctx; both strings valid for the call.
        let ret = unsafe { rbd_rename(self.raw, cf.as_ptr(), ct.as_ptr()) };
        rc(ret.into(), || {
            format!("rbd_rename({p}/{from} -> {p}/{to})", p = self.name)
        })?;
        Ok(())
    }

    /// Remove image `name` (it must not be open).
    pub fn remove_image(&self, name: &str) -> CallResult<()> {
        let cname = cstr("image name", name)?;
        // SAFETY: live ioctx; valid name string for the call.
        let ret = unsafe { rbd_remove(self.raw, cname.as_ptr()) };
        rc(ret.into(), || format!("rbd_remove({}/{name})", self.name))?;
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: `raw` came from a successful rados_ioctx_create and is destroyed exactly once;
        // every Image holds an Arc of this Pool, so no image using it is still open.
        unsafe { rados_ioctx_destroy(self.raw) }
    }
}

/// An open image (`rbd_image_t`).
pub(crate) struct Image {
    raw: ImageT,
    name: String,
    pool: Arc<Pool>,
}

// SAFETY: librbd image handles are thread-safe for I/O (librbd serialises internally; QEMU
// submits from several threads); the handle is closed only by `close`/Drop, which take it by
// value or run when no other reference exists.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Image {
    /// Open image `name` read-write.
    pub fn open(pool: &Arc<Pool>, name: &str) -> CallResult<Image> {
        let cname = cstr("image name", name)?;
        let mut raw: ImageT = std::ptr::null_mut();
        // SAFETY: live ioctx kept alive by the Arc; valid name and out-pointer; no snapshot.
        let ret = unsafe { rbd_open(pool.raw, cname.as_ptr(), &mut raw, std::ptr::null()) };
        rc(ret.into(), || format!("rbd_open({}/{name})", pool.name))?;
        Ok(Image {
            raw,
            name: name.to_owned(),
            pool: pool.clone(),
        })
    }

    /// The image's size in bytes.
    pub fn size(&self) -> CallResult<u64> {
        let mut size = 0u64;
        // SAFETY: open image handle; valid out-pointer.
        let ret = unsafe { rbd_get_size(self.raw, &mut size) };
        rc(ret.into(), || format!("rbd_get_size({})", self.describe()))?;
        Ok(size)
    }

    /// The stripe unit in bytes: the object size for images without fancy striping (the
    /// default). Writes that do not cross a multiple of it touch one RADOS object each.
    pub fn stripe_unit(&self) -> CallResult<u64> {
        let mut unit = 0u64;
        // SAFETY: open image handle; valid out-pointer.
        let ret = unsafe { rbd_get_stripe_unit(self.raw, &mut unit) };
        rc(ret.into(), || {
            format!("rbd_get_stripe_unit({})", self.describe())
        })?;
        Ok(unit)
    }

    /// Wait until every write completed so far is persistent.
    pub fn flush(&self) -> CallResult<()> {
        // SAFETY: open image handle.
        let ret = unsafe { rbd_flush(self.raw) };
        rc(ret.into(), || format!("rbd_flush({})", self.describe()))?;
        Ok(())
    }

    /// Close the handle and report the result (Drop closes too, ignoring it).
    pub fn close(mut self) -> CallResult<()> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        // SAFETY: `raw` is the open handle, taken out of `self` so Drop will not close it again.
        let ret = unsafe { rbd_close(raw) };
        rc(ret.into(), || format!("rbd_close({})", self.describe()))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.pool.name, self.name)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: open handle, closed exactly once (close() nulls it). Every AioWrite holds an
            // Arc of the Image and waits for its completion, so no write is in flight here.
            unsafe { rbd_close(self.raw) };
        }
    }
}

/// One in-flight `rbd_aio_writev`. Owns the buffers librbd reads from and the completion;
/// both are released only after the operation completed ([`AioWrite::wait`] or Drop).
///
/// The buffers are handed to librbd as an iovec array, so no copy is made here. Whether librbd
/// copies them is its `rbd_disable_zero_copy_writes` setting (and a writeback cache, which
/// forces a copy): with zero-copy writes, librbd references the caller's memory until the
/// OSDs have answered, and delays the completion until its last reference is gone — which is
/// why the buffers stay owned here until the completion has fired.
pub(crate) struct AioWrite {
    completion: CompletionT,
    waited: bool,
    offset: u64,
    len: usize,
    _data: Vec<Bytes>,
    image: Arc<Image>,
}

// SAFETY: a librbd completion may be waited on and released from any thread; the buffers are
// immutable `Bytes`; the image is Send + Sync.
unsafe impl Send for AioWrite {}

impl AioWrite {
    /// Queue one write of the concatenation of `segments` at `offset`. Does not wait for the
    /// network. Empty segments are dropped; `segments` must hold at least one byte.
    pub fn submit(image: &Arc<Image>, offset: u64, segments: Vec<Bytes>) -> CallResult<AioWrite> {
        let segments: Vec<Bytes> = segments.into_iter().filter(|b| !b.is_empty()).collect();
        let len: usize = segments.iter().map(Bytes::len).sum();
        let what = || {
            format!(
                "rbd_aio_writev({}, offset {offset}, {len} bytes)",
                image.describe()
            )
        };
        let count = c_int::try_from(segments.len()).map_err(|_| CallError {
            call: format!("{}: {} segments", what(), segments.len()),
            errno: libc::EINVAL,
        })?;
        if count == 0 {
            return Err(CallError {
                call: format!("{}: nothing to write", what()),
                errno: libc::EINVAL,
            });
        }
        // librbd reads the array during the call only (it builds its own buffer list from it);
        // the memory the entries point to must live until completion, and does: `segments`
        // moves into the AioWrite below, and moving a Vec<Bytes> does not move the bytes.
        let iov: Vec<libc::iovec> = segments
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut c: CompletionT = std::ptr::null_mut();
        // SAFETY: valid out-pointer; no callback (we wait with rbd_aio_wait_for_complete).
        let ret = unsafe { rbd_aio_create_completion(std::ptr::null_mut(), None, &mut c) };
        rc(ret.into(), || "rbd_aio_create_completion".into())?;
        // SAFETY: open image kept alive by the Arc (stored in the AioWrite below); `iov` holds
        // `count` entries, each pointing at `iov_len` readable bytes of a `Bytes` that the
        // AioWrite keeps alive, unmodified (Bytes is immutable), until the completion has fired;
        // librbd never writes through iov_base (the *mut is only the C type); `c` is a fresh
        // completion.
        let ret = unsafe { rbd_aio_writev(image.raw, iov.as_ptr(), count, offset, c) };
        let op = AioWrite {
            completion: c,
            waited: false,
            offset,
            len,
            _data: segments,
            image: image.clone(),
        };
        if ret < 0 {
            // librbd queues the write and reports errors through the completion; it returns an
            // error here only for argument checks made before queueing (e.g. an iovec length
            // overflow). We cannot be sure nothing was queued, so leak the completion and the
            // buffers rather than free memory librbd might still use.
            std::mem::forget(op);
            return Err(CallError {
                call: what(),
                errno: ret.saturating_neg(),
            });
        }
        Ok(op)
    }

    /// Block until the write completed; its result.
    pub fn wait(mut self) -> CallResult<()> {
        // SAFETY: the completion is live (released only in Drop) and was passed to
        // rbd_aio_writev.
        unsafe { rbd_aio_wait_for_complete(self.completion) };
        self.waited = true;
        // SAFETY: the operation has completed, so its return value is set.
        let ret = unsafe { rbd_aio_get_return_value(self.completion) };
        let (offset, len) = (self.offset, self.len);
        rc(ret as i64, || {
            format!(
                "rbd_aio_writev({}, offset {offset}, {len} bytes)",
                self.image.describe()
            )
        })?;
        Ok(())
    }
}

impl Drop for AioWrite {
    fn drop(&mut self) {
        if !self.waited {
            // SAFETY: live completion of a submitted write: wait so the buffer outlives the op.
            unsafe { rbd_aio_wait_for_complete(self.completion) };
        }
        // SAFETY: the operation completed (and, with zero-copy writes, librbd has dropped its
        // last reference to the buffers before completing); the completion is released exactly
        // once, after which `_data` (the buffers) may be freed.
        unsafe { rbd_aio_release(self.completion) };
    }
}
