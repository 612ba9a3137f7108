//! The bridge from image bytes to disk operations: inspector gate → decoder → (encryptor).

use bytes::Bytes;
use imgpipe_core::{
    Chunk, DiskExtent, DiskInfo, DiskStage, Error, ErrorKind, Finding, Result, SinkOp,
};
use imgpipe_format::Format;
use imgpipe_format::decode::{self, DecodeError, DecodeOptions, Decoder, Extent};

/// Turns image bytes into disk writes.
pub struct ImageToDisk {
    decoder: Box<dyn Decoder>,
    format: Format,
    begun: bool,
    extents: Vec<Extent>,
    written_to: u64,
}

impl ImageToDisk {
    /// Decode `format` to raw (or pass the bytes through for `preserve`).
    pub fn new(format: Format, preserve: bool, stream_len: Option<u64>) -> Result<Self> {
        let mut opts = DecodeOptions::default();
        opts.stream_len = stream_len;
        let decoder = if preserve {
            Box::new(decode::RawDecoder::new(true)) as Box<dyn Decoder>
        } else {
            decode::decoder_for(format, &opts).map_err(map_decode)?
        };
        Ok(ImageToDisk {
            decoder,
            format,
            begun: false,
            extents: Vec::new(),
            written_to: 0,
        })
    }

    fn emit(&mut self, out: &mut Vec<SinkOp>) {
        if !self.begun {
            self.begun = true;
            out.push(SinkOp::Begin(DiskInfo {
                size: self.decoder.virtual_size(),
                encrypted: false,
            }));
        }
        for e in self.extents.drain(..) {
            let op = match e {
                Extent::Data { offset, data } => DiskExtent::Data { offset, data },
                Extent::Zero { offset, len } => DiskExtent::Zero { offset, len },
            };
            self.written_to = self.written_to.max(op.end());
            out.push(SinkOp::Write(op));
        }
    }
}

/// Map a decoder error onto the engine's error kinds.
pub(crate) fn map_decode(e: DecodeError) -> Error {
    let kind = match &e {
        DecodeError::Malformed { .. } => ErrorKind::InvalidImage,
        DecodeError::Unsupported { .. } => ErrorKind::Unsupported,
        DecodeError::Limit { .. } => ErrorKind::LimitExceeded,
        DecodeError::Spill(_) => ErrorKind::Io,
        _ => ErrorKind::InvalidImage,
    };
    Error::new(kind, e.to_string()).with_check("decode")
}

impl DiskStage for ImageToDisk {
    fn name(&self) -> String {
        format!("decode:{}", self.format)
    }

    fn feed(&mut self, chunk: &Chunk, out: &mut Vec<SinkOp>) -> Result<()> {
        let data: &Bytes = &chunk.data;
        self.decoder
            .feed(data, &mut self.extents)
            .map_err(map_decode)?;
        self.emit(out);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<SinkOp>) -> Result<Vec<Finding>> {
        self.decoder.finish(&mut self.extents).map_err(map_decode)?;
        self.emit(out);
        Ok(vec![Finding::Format {
            format: self.format.name().into(),
            virtual_size: self.decoder.virtual_size().or(Some(self.written_to)),
        }])
    }
}
