//! The disk-stage role: inspector gate → decoder → optional encryptor, in front of the sink
//! (and, on a raw cache fill, the tee of the decoded disk into the entry).

use std::path::Path;

use imgpipe_core::{DiskStage, Error, ErrorKind, Result};
use imgpipe_crypto::luks::{self, LuksParams, LuksVersion, Pbkdf};
use imgpipe_crypto::xts::{self, Xts};
use imgpipe_format::decode::DecodeOptions;
use imgpipe_spec::{ConvertFormat, EncryptFormat, EncryptSpec, Spec};

use super::Stream;
use super::verify::{inspector, read_file};
use crate::disk::{DiskOptions, Encryptor, ImageToDisk};

/// The disk stage in front of the sink. A raw disk from the cache streams a disk, not an image:
/// nothing to inspect or decode.
pub(super) fn stage(
    spec: &Spec,
    stream_len: Option<u64>,
    stream: Stream,
    encrypt: Option<Encryptor>,
    raw_tee: Option<imgpipe_cache::RawTee>,
) -> Box<dyn DiskStage> {
    let mut decode = DecodeOptions::default();
    decode.stream_len = stream_len;
    if let Some(m) = spec.inspect.max_virtual_size {
        decode.max_virtual_size = m;
    }
    let image = stream == Stream::Image;
    Box::new(ImageToDisk::new(DiskOptions {
        inspector: (!spec.inspect.skip && image).then(|| inspector(spec, stream_len)),
        preserve: spec.convert == ConvertFormat::Preserve && image,
        declared: match stream {
            Stream::Image => spec.inspect.disk_format,
            Stream::RawDisk { .. } => Some(imgpipe_format::Format::Raw),
        },
        decode,
        encrypt,
        raw_tee,
        size_hint: match stream {
            Stream::Image => None,
            Stream::RawDisk { virtual_size } => virtual_size,
        },
    }))
}

fn hex_key(text: &str, path: &Path) -> Result<Vec<u8>> {
    let t = text.trim();
    if !t.len().is_multiple_of(2) || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::new(
            ErrorKind::Spec,
            format!("{} does not hold a hex key", path.display()),
        ));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&t[i..i + 2], 16)
                .map_err(|_| Error::new(ErrorKind::Spec, "bad hex digit"))
        })
        .collect()
}

fn xts_error(e: xts::XtsError) -> Error {
    Error::new(ErrorKind::Spec, format!("encryption key: {e}"))
}

/// Build the encryptor: derive or read the key, and for LUKS create the header now (its key
/// slot PBKDF runs before streaming, not inside the throughput figures).
pub(super) fn encryptor(e: &EncryptSpec) -> Result<Encryptor> {
    let key_bytes = (e.key_size / 8) as usize;
    match e.format {
        EncryptFormat::Plain => {
            let key = match (&e.key_file, &e.key_hex_file) {
                (Some(p), _) => xts::plain::key_from_keyfile(&read_file(p, "key file")?, key_bytes)
                    .map_err(|err| Error::new(ErrorKind::Spec, format!("{}: {err}", p.display())))?
                    .to_vec(),
                (None, Some(p)) => {
                    let text = String::from_utf8(read_file(p, "hex key file")?).map_err(|_| {
                        Error::new(ErrorKind::Spec, format!("{} is not text", p.display()))
                    })?;
                    let k = hex_key(&text, p)?;
                    if k.len() != key_bytes {
                        return Err(Error::new(
                            ErrorKind::Spec,
                            format!(
                                "{} holds a {}-bit key, key_size is {}",
                                p.display(),
                                k.len() * 8,
                                e.key_size
                            ),
                        ));
                    }
                    k
                }
                (None, None) => {
                    return Err(Error::new(ErrorKind::Spec, "plain encryption needs a key"));
                }
            };
            let x = Xts::new(&key, e.sector_size as usize).map_err(xts_error)?;
            Ok(Encryptor::plain(x))
        }
        EncryptFormat::Luks1 | EncryptFormat::Luks2 => {
            let Some(pf) = &e.passphrase_file else {
                return Err(Error::new(ErrorKind::Spec, "LUKS needs passphrase_file"));
            };
            // The whole file is the passphrase, as `cryptsetup --key-file` and qemu's
            // `secret,file=` read it.
            let pass = read_file(pf, "passphrase file")?;
            let version = if e.format == EncryptFormat::Luks1 {
                LuksVersion::V1
            } else {
                LuksVersion::V2
            };
            let mut params = LuksParams::new(version);
            params.key_bits = e.key_size;
            params.sector_size = e.sector_size;
            let argon = e.pbkdf.as_deref() == Some("argon2id")
                || (version == LuksVersion::V2 && e.pbkdf.is_none());
            if let Some(it) = e.pbkdf_iterations {
                params.pbkdf = if argon {
                    Pbkdf::Argon2id {
                        time: it.max(4),
                        memory_kib: 65536,
                        parallelism: 1,
                    }
                } else {
                    Pbkdf::Pbkdf2 {
                        iterations: it.max(1000),
                    }
                };
            } else if !argon {
                params.pbkdf = Pbkdf::Pbkdf2IterTime { millis: 2000 };
            }
            let vol = luks::create(&params, &pass).map_err(|err| {
                Error::new(ErrorKind::Spec, format!("creating the LUKS header: {err}"))
            })?;
            let x = vol.xts().map_err(xts_error)?;
            let label = if version == LuksVersion::V1 {
                "luks1"
            } else {
                "luks2"
            };
            Ok(Encryptor::luks(
                x,
                vol.payload_offset,
                vol.header.clone(),
                label,
            ))
        }
    }
}
