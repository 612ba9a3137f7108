//! Sinks: where the disk goes. Each implements [`imgpipe_core::Sink`]: positional writes of
//! [`imgpipe_core::DiskExtent`]s, then a consuming `finish` (publish) or `abort` (leave nothing
//! usable behind).
//!
//! - [`FileSink`]: writes a temporary file of its own beside the target (unnamed `O_TMPFILE`,
//!   or a unique `O_EXCL` name), syncs, renames it over the target and syncs the directory; on
//!   abort the temporary file is removed and the target is untouched.
//! - [`block::BlockSink`]: an existing block device, written with `O_DIRECT` and a first MiB
//!   held back until everything else is durable (zeroed on abort).
//! - [`lvm::LvmSink`]: a logical volume created (or taken) with the LVM tools, then written
//!   through [`block::BlockSink`].
//! - [`SequentialWriter`] and [`PositionalWriter`]: `O_DIRECT` writers of a second copy of a
//!   stream (the cache's entries); [`FileSink`] stages its writes in the same aligned window.

pub mod block;
mod direct;
mod file_sink;
pub mod lvm;

pub use direct::{PositionalWriter, SequentialWriter};
pub use file_sink::{FileSink, FileZeroes};
