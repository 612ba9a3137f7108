//! imgpipe turns a cloud VM image into an instance disk in one verified pass.
//!
//! This crate is the library a compute driver embeds: describe the run as a [`Spec`] (parsed
//! from TOML/JSON, or built in Rust), then [`run`] it. Inspection, hashing, signature checks,
//! decoding and encryption all happen in the same pass over the bytes, and the sink publishes
//! only when every check passed.
//!
//! ```no_run
//! use std::sync::Arc;
//! use imgpipe::{run, Progress, Spec};
//! use imgpipe::spec::{SinkSpec, SinkTarget, SourceSpec};
//! use imgpipe::hash::Algorithm;
//!
//! # async fn demo() {
//! let mut spec = Spec::new(SourceSpec::File("image.raw".into()));
//! // The SHA-512 Glance recorded for the image (`os_hash_value`); here, that of an empty file.
//! spec.verify.digests.push((Algorithm::Sha512, "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e".into()));
//! spec.sink = Some(SinkSpec { target: SinkTarget::File("disk.raw".into()), zeroes: None });
//! let report = run(&spec, Arc::new(Progress::default())).await;
//! println!("{}", serde_json::to_string(&report).unwrap());
//! # }
//! ```

mod assemble;
mod disk;
mod inspect;
mod observers;
mod report;
mod run;
mod verdict;

/// Pieces of the assembly, for the project's own tests and benches; not a stable API.
///
/// A driver uses [`run`] (or [`inspect`]); these let a test or a bench put a pipeline together
/// from the same parts [`run`] uses.
#[doc(hidden)]
pub mod assembly {
    pub use crate::assemble::{build, inspector, open_source, verification};
    pub use crate::disk::{DiskOptions, Encryptor, ImageToDisk};
    pub use crate::observers::InspectObserver;
}

pub use imgpipe_cache as cache;
pub use imgpipe_core as core;
pub use imgpipe_core::{Error, ErrorKind, Phase, Progress, ProgressEvent, Result};
pub use imgpipe_crypto::hash;
pub use imgpipe_format as format;
pub use imgpipe_io::redact_url;
pub use imgpipe_spec as spec;
pub use imgpipe_spec::Spec;
pub use inspect::{inspect, verdict_json};
pub use report::{RunReport, StageReport, Status};
pub use run::run;
