//! Sources: where the image bytes come from. Each implements [`imgpipe_core::Source`] and
//! delivers the image as [`imgpipe_core::Chunk`]s of about [`CHUNK_SIZE`](crate::CHUNK_SIZE).
//!
//! - [`ReaderSource`]: a local file or standard input, read by a dedicated thread in large
//!   chunks so reading overlaps with hashing.
//! - [`HttpSource`]: HTTP(S) with custom headers, redirects, retries with backoff, a stall
//!   timeout, `Content-Length` checking and resume with `Range` after a dropped connection.
//!   Glance's data download is one ([`crate::openstack::glance::GlanceClient::source`]).

mod http;
mod reader;

pub use http::{HttpOptions, HttpSource, RESERVED_HEADERS, is_reserved_header, redact_url};
pub use reader::ReaderSource;
