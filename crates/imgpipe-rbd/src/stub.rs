//! The sink as built without the `librbd` feature: same API, every constructor fails.

use std::convert::Infallible;

use async_trait::async_trait;
use imgpipe_core::{DiskExtent, DiskInfo, Error, ErrorKind, Result, Sink, SinkReport};

use crate::RbdOptions;

/// The RBD sink. This build has no librbd: it cannot be constructed.
pub struct RbdSink {
    never: Infallible,
}

fn unsupported(opts: &RbdOptions) -> Error {
    Error::check(
        ErrorKind::Unsupported,
        "rbd.librbd",
        format!(
            "cannot write to RBD image {}: imgpipe was built without librbd (rebuild with the \
             cargo feature `rbd`, which needs librbd-dev and librados-dev)",
            opts.target()
        ),
    )
}

impl RbdSink {
    /// Always fails with `Unsupported`: built without librbd.
    pub fn new(opts: RbdOptions) -> Result<Self> {
        opts.validate()?;
        Err(unsupported(&opts))
    }

    /// Always fails with `Unsupported`: built without librbd.
    pub async fn connect(opts: RbdOptions) -> Result<Self> {
        Self::new(opts)
    }

    /// The temporary image name (unreachable: no value of this type exists).
    pub fn temp_image(&self) -> &str {
        match self.never {}
    }
}

#[async_trait]
impl Sink for RbdSink {
    fn describe(&self) -> String {
        match self.never {}
    }
    async fn begin(&mut self, _info: &DiskInfo) -> Result<()> {
        match self.never {}
    }
    async fn write(&mut self, _extent: DiskExtent) -> Result<()> {
        match self.never {}
    }
    async fn finish(self: Box<Self>) -> Result<SinkReport> {
        match self.never {}
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        match self.never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructor_says_built_without_librbd() {
        // Infallible in the Ok type: the pattern is irrefutable, the stub cannot be built.
        let Err(e) = RbdSink::new(RbdOptions::new("rbd", "disk"));
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("built without librbd"), "{e}");
    }
}
