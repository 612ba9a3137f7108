//! Sources and sinks for imgpipe: the only crate that touches files, devices and the network.
//!
//! - [`ReaderSource`]: a local file or standard input, read by a dedicated thread in large
//!   chunks so reading overlaps with hashing.
//! - [`HttpSource`]: HTTP(S) with custom headers, redirects, retries with backoff, a stall
//!   timeout, `Content-Length` checking and resume with `Range` after a dropped connection.
//! - [`FileSink`]: writes a temporary file of its own beside the target (unnamed `O_TMPFILE`,
//!   or a unique `O_EXCL` name), syncs, renames it over the target and
//!   syncs the directory; on abort the temporary file is removed and the target is untouched.

pub mod barbican;
#[doc(hidden)]
pub mod fuzzing {
    //! Fuzzing entry points, not API: the targets in `fuzz/` are one-line calls into these.
    pub use crate::barbican::fuzz_secret_metadata;
    pub use crate::glance::fuzz_image_record;
    pub use crate::keystone::fuzz_token_document;
}
pub mod block;
mod direct;
mod file_sink;
pub mod glance;
mod http;
pub mod keystone;
pub mod lvm;
mod reader;

pub use direct::{PositionalWriter, SequentialWriter};
pub use file_sink::{FileSink, FileZeroes};
pub use http::{HttpOptions, HttpSource, RESERVED_HEADERS, is_reserved_header, redact_url};
pub use reader::ReaderSource;

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
