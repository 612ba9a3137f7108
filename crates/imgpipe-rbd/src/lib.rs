//! The Ceph RBD sink of imgpipe.
//!
//! [`RbdSink`] writes the disk into a **new** RBD image created under a temporary name
//! (`<image>.imgpipe-tmp-<random>`, image format 2, sized from [`DiskInfo::size`]), keeps several
//! `rbd_aio_writev`s in flight, and on [`Sink::finish`] flushes, closes and renames the image to
//! its final name — refusing to overwrite an image that already exists. [`Sink::abort`] removes
//! the temporary image. Zero runs are skipped (a new RBD image reads zeros where nothing was
//! written) unless the extents are ciphertext or [`RbdZeroes::Write`] is asked for.
//!
//! No byte is copied on the client before the kernel's socket copy: contiguous extents are
//! gathered as an iovec array over their own buffers (one write per RADOS object at most), and
//! the sink turns on librbd's zero-copy writes (`rbd_disable_zero_copy_writes = false`,
//! `rbd_cache = false`, after the config file, before `$CEPH_ARGS`), keeping each buffer alive
//! until its write completed.
//!
//! librbd/librados are linked only with the cargo feature `librbd` (Debian: `librbd-dev`,
//! `librados-dev`). Without it the crate still builds and exports the same API, but
//! [`RbdSink::new`] and [`RbdSink::connect`] return [`ErrorKind::Unsupported`]
//! ("built without librbd").
//!
//! [`DiskInfo::size`]: imgpipe_core::DiskInfo::size
//! [`Sink::finish`]: imgpipe_core::Sink::finish
//! [`Sink::abort`]: imgpipe_core::Sink::abort
//! [`ErrorKind::Unsupported`]: imgpipe_core::ErrorKind::Unsupported
#![deny(unsafe_code)]

use std::path::PathBuf;

use imgpipe_core::{Error, ErrorKind, Result};

#[cfg(feature = "librbd")]
#[allow(unsafe_code)]
mod ffi;
#[cfg(feature = "librbd")]
mod sink;
#[cfg(feature = "librbd")]
pub use sink::RbdSink;

#[cfg(not(feature = "librbd"))]
mod stub;
#[cfg(not(feature = "librbd"))]
pub use stub::RbdSink;

/// Whether this build links librbd (the `librbd` cargo feature); `false` means [`RbdSink`]'s
/// constructors return `Unsupported`.
pub const LIBRBD: bool = cfg!(feature = "librbd");

/// Default number of writes kept in flight.
pub const DEFAULT_QUEUE_DEPTH: usize = 12;

/// Environment override of [`RbdOptions::queue_depth`] (writes kept in flight, 1..=64), read by
/// `RbdSink::new`; for measurements.
pub const WRITES_IN_FLIGHT_ENV: &str = "IMGPIPE_RBD_WRITES_IN_FLIGHT";

/// How the sink treats zero runs ([`imgpipe_core::DiskExtent::Zero`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RbdZeroes {
    /// Skip them: the image is created by this run, and RBD reads unwritten ranges as zeros.
    /// Overridden to [`RbdZeroes::Write`] when [`imgpipe_core::DiskInfo::encrypted`] is set.
    #[default]
    Skip,
    /// Write zeros explicitly (fully allocated image).
    Write,
}

/// Where and how to write. Built from the spec's `SinkTarget::Rbd { pool, image, conf, id }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdOptions {
    /// Pool name.
    pub pool: String,
    /// Final image name. Must not exist when the run publishes.
    pub image: String,
    /// ceph.conf path; `None` = librados' default search (`$CEPH_CONF`, `/etc/ceph/ceph.conf`,
    /// `~/.ceph/config`, `./ceph.conf`).
    pub conf: Option<PathBuf>,
    /// Client id without the `client.` prefix (a `client.` prefix is accepted and stripped);
    /// `None` = `admin`. The keyring comes from the config (`keyring = …`).
    pub id: Option<String>,
    /// Zero-run handling.
    pub zeroes: RbdZeroes,
    /// Writes kept in flight (clamped to 1..=64).
    pub queue_depth: usize,
}

impl RbdOptions {
    /// Options for `pool/image` with the defaults: default config search, client `admin`, zero
    /// runs skipped, [`DEFAULT_QUEUE_DEPTH`] writes in flight.
    pub fn new(pool: impl Into<String>, image: impl Into<String>) -> Self {
        RbdOptions {
            pool: pool.into(),
            image: image.into(),
            conf: None,
            id: None,
            zeroes: RbdZeroes::Skip,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }

    /// `pool/image`, as reported and as `rbd` commands spell it.
    pub fn target(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }

    /// Check the names before any cluster I/O: non-empty, no NUL, and the image name free of
    /// `/` and `@` (the `rbd` CLI's pool and snapshot separators), at most 200 bytes so the
    /// temporary name stays within RADOS object-name limits.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: &str, why: &str| {
            Err(Error::check(
                ErrorKind::Spec,
                "rbd.name",
                format!("RBD {what} {v:?} is not usable: {why}"),
            ))
        };
        if self.pool.is_empty() {
            return bad("pool", &self.pool, "empty");
        }
        if self.pool.contains('\0') {
            return bad("pool", &self.pool, "contains a NUL byte");
        }
        if self.image.is_empty() {
            return bad("image name", &self.image, "empty");
        }
        if let Some(c) = self.image.chars().find(|c| matches!(c, '/' | '@' | '\0')) {
            return bad("image name", &self.image, &format!("contains {c:?}"));
        }
        if self.image.len() > 200 {
            return bad(
                "image name",
                &self.image,
                &format!("{} bytes long, at most 200 allowed", self.image.len()),
            );
        }
        if let Some(id) = &self.id
            && (id.is_empty() || id.contains('\0'))
        {
            return bad("client id", id, "empty or contains a NUL byte");
        }
        Ok(())
    }
}
