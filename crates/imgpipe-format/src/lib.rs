//! Disk-image formats for imgpipe: a streaming, incremental **inspector** that decides what an
//! image is and whether it is safe before any byte reaches a disk, and streaming **decoders**
//! that turn container formats (qcow2, VMDK, VHD, VHDX, VDI) into raw disk extents.
//!
//! Everything here is pure and synchronous: no I/O, no threads, no `unsafe`. Bytes are pushed in
//! arbitrary chunks; results never depend on how the stream was chunked. Every header field is
//! treated as hostile: checked arithmetic, capped allocations, and nothing an image names (backing
//! files, external data files, extents) is ever opened.
#![forbid(unsafe_code)]

pub mod decode;
mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
mod vhd_size;

pub use format::Format;
