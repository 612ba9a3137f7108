//! The imgpipe engine core: the data that moves between stages, the stage traits, the
//! single-pass driver, and the one error type.
//!
//! A run reads every image byte once. Each chunk fans out, without copying, to the observers
//! (inspector, hashers, signature digest) and to the disk stage (inspector gate → decoder →
//! encryptor), whose positional writes go to a transactional sink. The sink publishes only when
//! every verdict passed; otherwise it is aborted and nothing is left behind.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use bytes::Bytes;
//! use imgpipe_core::{Chunk, Finding, Observer, Pipeline, Progress, Result, Source};
//!
//! struct Mem(Vec<Bytes>);
//! #[async_trait]
//! impl Source for Mem {
//!     fn describe(&self) -> String { "memory".into() }
//!     fn len_hint(&self) -> Option<u64> { None }
//!     async fn read(&mut self) -> Result<Option<Bytes>> { Ok(self.0.pop()) }
//! }
//! struct Count(u64);
//! impl Observer for Count {
//!     fn name(&self) -> String { "count".into() }
//!     fn update(&mut self, c: &Chunk) -> Result<()> { self.0 += c.data.len() as u64; Ok(()) }
//!     fn finish(self: Box<Self>, total: u64) -> Result<Vec<Finding>> {
//!         assert_eq!(self.0, total);
//!         Ok(vec![Finding::Passed { check: "count".into() }])
//!     }
//! }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let p = Pipeline {
//!     source: Box::new(Mem(vec![Bytes::from_static(b"world"), Bytes::from_static(b"hello ")])),
//!     observers: vec![Box::new(Count(0))],
//!     disk: None,
//!     options: Default::default(),
//! };
//! let out = p.run(Arc::new(Progress::default())).await;
//! assert!(out.result.is_ok());
//! assert_eq!(out.bytes_read, 11);
//! # });
//! ```

mod driver;
mod error;
mod stage;

pub use driver::{DriverOptions, Phase, Pipeline, Progress, ProgressEvent, RunOutcome, StageStats};
pub use error::{Error, ErrorKind, Result};
pub use stage::{
    Chunk, DiskExtent, DiskInfo, DiskStage, Finding, Observer, Sink, SinkOp, SinkReport, Source,
};
