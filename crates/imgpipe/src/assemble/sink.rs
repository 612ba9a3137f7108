//! The sink role: one `match` on the spec's target.

use imgpipe_core::{Error, ErrorKind, Result, Sink};
use imgpipe_io::block::{BlockSink, BlockZeroes};
use imgpipe_io::lvm::{LvTarget, Lvm, LvmSink};
use imgpipe_io::{FileSink, FileZeroes};
use imgpipe_rbd::{RbdOptions, RbdSink, RbdZeroes};
use imgpipe_spec::{SinkTarget, Spec, ZeroPolicy};

/// Zero policy of block targets: a device or thick LV holds old data, so an unset policy means
/// write-zeroes (unlike new files and RBD images, which read zeros where unwritten).
fn block_zeroes(z: Option<ZeroPolicy>) -> BlockZeroes {
    match z {
        None | Some(ZeroPolicy::Write) => BlockZeroes::WriteZeroes,
        Some(ZeroPolicy::Skip) => BlockZeroes::Skip,
        Some(ZeroPolicy::Discard) => BlockZeroes::Discard,
    }
}

pub(super) async fn open(spec: &Spec, warnings: &mut Vec<String>) -> Result<Option<Box<dyn Sink>>> {
    let Some(sink) = &spec.sink else {
        return Ok(None);
    };
    Ok(Some(match &sink.target {
        SinkTarget::File(p) => {
            let z = match sink.zeroes {
                Some(ZeroPolicy::Write) => FileZeroes::Write,
                _ => FileZeroes::Skip,
            };
            Box::new(FileSink::new(p, z)?)
        }
        SinkTarget::Device(p) => {
            let s = BlockSink::open(p, block_zeroes(sink.zeroes))?;
            warnings.extend(s.warnings());
            Box::new(s)
        }
        SinkTarget::Lvm { vg, name, size } => {
            let target = LvTarget::New {
                vg: vg.clone(),
                name: name.clone(),
                size: *size,
            };
            let z = block_zeroes(sink.zeroes);
            let s = tokio::task::spawn_blocking(move || LvmSink::open(Lvm::system(), target, z))
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Internal, format!("LVM worker failed: {e}"))
                })??;
            Box::new(s)
        }
        SinkTarget::Rbd {
            pool,
            image,
            conf,
            id,
        } => {
            let mut o = RbdOptions::new(pool.clone(), image.clone());
            o.conf = conf.clone();
            o.id = id.clone();
            // A new RBD image reads zeros where unwritten: skip and discard both leave them
            // unwritten (ciphertext is always written by the sink).
            o.zeroes = match sink.zeroes {
                Some(ZeroPolicy::Write) => RbdZeroes::Write,
                Some(ZeroPolicy::Skip | ZeroPolicy::Discard) | None => RbdZeroes::Skip,
            };
            Box::new(RbdSink::connect(o).await?)
        }
    }))
}
