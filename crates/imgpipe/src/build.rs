//! Spec → runnable pipeline: one `match` per stage role.

use std::sync::Arc;

use imgpipe_core::{
    DriverOptions, Error, ErrorKind, Observer, Pipeline, Progress, Result, Sink, Source,
};
use imgpipe_crypto::hash::Algorithm;
use imgpipe_format::Format;
use imgpipe_io::{FileSink, FileZeroes, HttpOptions, HttpSource, ReaderSource};
use imgpipe_spec::{ConvertFormat, SinkTarget, SourceSpec, Spec, ZeroPolicy};

use crate::disk::ImageToDisk;
use crate::observers::{HashObserver, SizeObserver};
use crate::report::RunReport;

fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("{what} is not implemented yet in this build of imgpipe"),
    )
}

/// Open the source named by the spec.
pub async fn open_source(spec: &Spec) -> Result<Box<dyn Source>> {
    Ok(match &spec.source {
        SourceSpec::File(p) => Box::new(ReaderSource::open(p)?),
        SourceSpec::Stdin => Box::new(ReaderSource::stdin()?),
        SourceSpec::Http { url, headers } => {
            let mut s = HttpSource::new(
                url,
                HttpOptions {
                    headers: headers.clone(),
                    attempts: spec.retry.attempts,
                    stall_timeout: spec.retry.stall_timeout,
                    backoff: spec.retry.backoff,
                    ..Default::default()
                },
            )?;
            s.connect().await?;
            Box::new(s)
        }
        SourceSpec::Glance(_) => return Err(unsupported("the Glance source")),
    })
}

/// The hash observers a spec asks for (expected digests plus report-only ones).
pub fn hash_observers(spec: &Spec) -> Result<Vec<Box<dyn Observer>>> {
    let v = &spec.verify;
    let mut wanted: Vec<(Algorithm, Option<(String, &'static str)>)> = Vec::new();
    let mut add = |algo: Algorithm, exp: Option<(String, &'static str)>| {
        if let Some(slot) = wanted.iter_mut().find(|(a, _)| *a == algo) {
            if slot.1.is_none() {
                slot.1 = exp;
            }
        } else {
            wanted.push((algo, exp));
        }
    };
    for (algo, hex) in &v.digests {
        add(*algo, Some((hex.clone(), "the spec")));
    }
    if let (Some(algo), Some(value)) = (&v.os_hash_algo, &v.os_hash_value) {
        match algo.parse::<Algorithm>() {
            Ok(a) => add(a, Some((value.clone(), "os_hash_value"))),
            Err(_) if v.allow_md5_fallback && v.checksum.is_some() => {}
            Err(e) => {
                return Err(Error::check(
                    ErrorKind::DigestMismatch,
                    "digest.os_hash_algo",
                    format!("{e}; set allow_md5_fallback to use the MD5 checksum instead"),
                ));
            }
        }
    }
    if let Some(c) = &v.checksum {
        let have_os_hash = v.os_hash_value.is_some()
            && v.os_hash_algo
                .as_deref()
                .is_some_and(|a| a.parse::<Algorithm>().is_ok());
        if !have_os_hash {
            add(Algorithm::Md5, Some((c.clone(), "checksum")));
        }
    }
    for a in &v.report {
        add(*a, None);
    }
    if wanted.iter().all(|(_, e)| e.is_none()) && v.require_hash == Some(true) {
        return Err(Error::check(
            ErrorKind::DigestMismatch,
            "digest.required",
            "require_hash is set but no expected digest was given",
        ));
    }
    if wanted.is_empty() {
        // Nothing to check: still record a digest of what was written.
        wanted.push((Algorithm::Sha256, None));
    }
    Ok(wanted
        .into_iter()
        .map(|(a, e)| Box::new(HashObserver::new(a, e)) as Box<dyn Observer>)
        .collect())
}

fn open_sink(spec: &Spec) -> Result<Option<Box<dyn Sink>>> {
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
        SinkTarget::Device(_) => return Err(unsupported("the block-device sink")),
        SinkTarget::Lvm { .. } => return Err(unsupported("the LVM sink")),
        SinkTarget::Rbd { .. } => return Err(unsupported("the RBD sink")),
    }))
}

/// Assemble the pipeline a spec describes.
pub async fn build(spec: &Spec) -> Result<Pipeline> {
    if spec.encrypt.is_some() {
        return Err(unsupported("[encrypt]"));
    }
    if spec.cache.is_some() {
        return Err(unsupported("[cache]"));
    }
    if spec.verify.signature.is_some() {
        return Err(unsupported("[verify.signature]"));
    }
    let mut observers = hash_observers(spec)?;
    if let Some(size) = spec.verify.size {
        observers.push(Box::new(SizeObserver::new(size)));
    }
    let source = open_source(spec).await?;
    let sink = open_sink(spec)?;
    let disk = match sink {
        Some(sink) => {
            let format = spec.inspect.disk_format.unwrap_or(Format::Raw);
            let preserve = spec.convert == ConvertFormat::Preserve;
            let stage = ImageToDisk::new(format, preserve, source.len_hint())?;
            Some((Box::new(stage) as Box<dyn imgpipe_core::DiskStage>, sink))
        }
        None => None,
    };
    Ok(Pipeline {
        source,
        observers,
        disk,
        options: DriverOptions::default(),
    })
}

/// Build and run a spec; the report says what happened (failures included).
pub async fn run(spec: &Spec, progress: Arc<Progress>) -> RunReport {
    let started = std::time::Instant::now();
    match build(spec).await {
        Ok(p) => RunReport::from_outcome(&p.run(progress).await),
        Err(e) => {
            let source = match &spec.source {
                SourceSpec::File(p) => p.display().to_string(),
                SourceSpec::Stdin => "-".into(),
                SourceSpec::Http { url, .. } => url.clone(),
                SourceSpec::Glance(g) => format!("glance:{}", g.image_id),
            };
            let outcome = imgpipe_core::RunOutcome {
                result: Err(e),
                bytes_read: 0,
                findings: vec![],
                stages: vec![],
                source,
                sink: None,
                resumes: 0,
                elapsed: started.elapsed(),
            };
            RunReport::from_outcome(&outcome)
        }
    }
}
