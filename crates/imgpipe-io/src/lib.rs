//! Sources, sinks and OpenStack clients for imgpipe: the only crate that touches files, devices
//! and the network. Three groups, one module each:
//!
//! - [`sources`]: where the image bytes come from. [`ReaderSource`] reads a local file or
//!   standard input on a dedicated thread in large chunks, so reading overlaps with hashing;
//!   [`HttpSource`] reads HTTP(S) with custom headers, redirects, retries with backoff, a stall
//!   timeout, `Content-Length` checking and resume with `Range` after a dropped connection.
//! - [`sinks`]: where the disk goes. [`FileSink`] writes a temporary file of its own beside the
//!   target (unnamed `O_TMPFILE`, or a unique `O_EXCL` name), syncs, renames it over the target
//!   and syncs the directory; on abort the temporary file is removed and the target is
//!   untouched. [`block`] writes an existing block device, [`lvm`] a logical volume;
//!   [`SequentialWriter`] and [`PositionalWriter`] write the cache's `O_DIRECT` copies.
//! - [`openstack`]: clients for [`keystone`] (token and service catalog), [`glance`] (image
//!   record, and an [`HttpSource`] for its data) and [`barbican`] (signing certificates).
//!
//! The items other crates use are re-exported here, so `imgpipe_io::FileSink` and
//! `imgpipe_io::glance::GlanceClient` name the same items as `imgpipe_io::sinks::FileSink` and
//! `imgpipe_io::openstack::glance::GlanceClient`.

pub mod openstack;
pub mod sinks;
pub mod sources;

pub use openstack::{barbican, glance, keystone};
pub use sinks::{FileSink, FileZeroes, PositionalWriter, SequentialWriter, block, lvm};
pub use sources::{
    HttpOptions, HttpSource, RESERVED_HEADERS, ReaderSource, is_reserved_header, redact_url,
};

#[doc(hidden)]
pub mod fuzzing {
    //! Fuzzing entry points, not API: the targets in `fuzz/` are one-line calls into these.
    pub use crate::openstack::barbican::fuzz_secret_metadata;
    pub use crate::openstack::glance::fuzz_image_record;
    pub use crate::openstack::keystone::fuzz_token_document;
}

/// Default chunk size of sources: large enough that per-chunk overhead is noise, small enough
/// that a few chunks in flight per stage keep memory low.
pub const CHUNK_SIZE: usize = 1 << 20;

/// `e` and its causes joined with `: ` (reqwest's own message alone is terse).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
