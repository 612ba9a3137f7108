//! The semantic checks on a typed [`Spec`]: one set of rules for a spec built in code
//! ([`Spec::validate`]) and a parsed one (the reader runs them on the `Spec` it built and gives
//! each problem the line of its key).
//!
//! Each finding names the key path it is about and the key whose line a parsed spec reports
//! it at (the key itself, or the table that misses it), so both routes print the same
//! problems with the same paths and messages.

use std::path::Path;

use crate::{
    ConvertFormat, EncryptFormat, EncryptSpec, RESERVED_HEADERS, SignatureSpec, SinkTarget,
    SourceSpec, Spec,
};

/// Which line of a parsed spec a finding belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum At {
    /// The line of this key (`a.b` in `[a]\nb = …`).
    Key(String),
    /// The line where this value (or table) starts.
    Value(String),
}

/// One semantic problem: the key path shown, where it is reported, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub path: String,
    pub at: At,
    pub message: String,
}

/// Values the reader could not read and replaced by a placeholder, so that the checks which
/// depend on them stay quiet (the reader already reported why). A spec built in code has none.
#[derive(Debug, Default)]
pub(crate) struct Holes {
    /// `encrypt.format` was missing or not a known format.
    pub encrypt_format: bool,
}

/// Every semantic problem of `spec`, in document order.
pub(crate) fn check(spec: &Spec, holes: &Holes) -> Vec<Finding> {
    let mut c = Checker::default();
    c.source(&spec.source);
    c.retry(spec);
    if spec.inspect.max_virtual_size == Some(0) {
        c.key(
            "inspect.max_virtual_size",
            "max_virtual_size must be more than zero (leave it out for the default cap), found 0",
        );
    }
    c.verify(spec);
    if let Some(e) = &spec.encrypt {
        c.encrypt(e, holes);
        if !holes.encrypt_format {
            if spec.sink.is_none() {
                c.key("encrypt", "[encrypt] needs a [sink] to write to");
            }
            if spec.convert == ConvertFormat::Preserve {
                c.add(
                    "convert.format",
                    At::Key("convert".into()),
                    "format = \"preserve\" cannot be combined with [encrypt] (encryption works on the decoded raw disk)",
                );
            }
        }
    }
    if let Some(s) = &spec.sink {
        c.sink(&s.target);
    }
    if let Some(k) = &spec.cache {
        if k.dir.as_os_str().is_empty() {
            c.missing("cache.dir", "cache", "missing dir");
        } else {
            c.path("cache.dir", &k.dir);
        }
        if let Some(f) = &k.key_file {
            c.path("cache.key_file", f);
        }
    }
    c.out
}

/// No spec string may contain a NUL byte: a path with one cannot be opened, and C APIs would
/// drop the part after it.
pub(crate) fn nul(path: &str, s: &str) -> Option<Finding> {
    let at = s.find('\0')?;
    Some(Finding {
        path: path.to_string(),
        at: At::Value(path.to_string()),
        message: format!(
            "contains a NUL byte at character {}, which no spec string may contain",
            s[..at].chars().count()
        ),
    })
}

#[derive(Default)]
struct Checker {
    out: Vec<Finding>,
}

impl Checker {
    fn add(&mut self, path: &str, at: At, message: impl Into<String>) {
        self.out.push(Finding {
            path: path.to_string(),
            at,
            message: message.into(),
        });
    }

    /// A problem with the value of `path`, reported at its key.
    fn key(&mut self, path: &str, message: impl Into<String>) {
        self.add(path, At::Key(path.to_string()), message);
    }

    /// A problem about `path` that is reported at the start of `table` (a required key that
    /// is missing, or a choice between keys of the table).
    fn missing(&mut self, path: &str, table: &str, message: impl Into<String>) {
        self.add(path, At::Value(table.to_string()), message);
    }

    fn text(&mut self, path: &str, s: &str) {
        self.out.extend(nul(path, s));
    }

    fn path(&mut self, key: &str, p: &Path) {
        self.text(key, &p.to_string_lossy());
    }

    fn opt_text(&mut self, key: &str, s: &Option<String>) {
        if let Some(s) = s {
            self.text(key, s);
        }
    }

    fn source(&mut self, source: &SourceSpec) {
        match source {
            SourceSpec::File(p) => self.path("source.path", p),
            SourceSpec::Stdin => {}
            SourceSpec::Http { url, headers } => {
                self.text("source.url", url);
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.key(
                        "source.url",
                        format!(
                            "url must start with http:// or https://, found {:?} (the rest of \
                             the url is not shown)",
                            url.split_once(':').map_or("", |(scheme, _)| scheme)
                        ),
                    );
                }
                self.headers(headers);
            }
            SourceSpec::Glance(g) => {
                let t = "source.glance";
                self.opt_text("source.glance.endpoint", &g.endpoint);
                self.text("source.glance.image_id", &g.image_id);
                self.opt_text("source.glance.token_env", &g.token_env);
                if let Some(k) = &g.keystone {
                    let kt = "source.glance.keystone";
                    for (key, v) in [
                        ("auth_url", &k.auth_url),
                        ("username", &k.username),
                        ("password_env", &k.password_env),
                        ("project_name", &k.project_name),
                    ] {
                        let path = format!("{kt}.{key}");
                        if v.is_empty() {
                            self.missing(&path, kt, format!("missing {key}"));
                        } else {
                            self.text(&path, v);
                        }
                    }
                    self.text(
                        "source.glance.keystone.user_domain_name",
                        &k.user_domain_name,
                    );
                    self.text(
                        "source.glance.keystone.project_domain_name",
                        &k.project_domain_name,
                    );
                }
                if g.image_id.is_empty() {
                    self.missing("source.glance.image_id", t, "missing image_id");
                }
                if g.endpoint.is_none() && g.keystone.is_none() {
                    self.missing(
                        "source.glance.endpoint",
                        t,
                        "give endpoint, or keystone to look it up in the catalog",
                    );
                }
            }
        }
    }

    /// `source.headers`: names are HTTP tokens and not reserved; values are visible ASCII,
    /// spaces and tabs (no CR, LF or NUL: they would split the request). Values are never shown.
    fn headers(&mut self, headers: &[(String, String)]) {
        let at = || At::Key("source.headers".into());
        for (name, value) in headers {
            if name.contains('\0') {
                self.add(
                    &format!("source.headers.{}", name.replace('\0', "\\0")),
                    At::Key(format!("source.headers.{name}")),
                    "the key contains a NUL byte, which no spec string may contain",
                );
                continue;
            }
            self.text(&format!("source.headers.{name}"), value);
        }
        for (name, value) in headers.iter().filter(|(n, _)| !n.contains('\0')) {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.add(
                    "source.headers",
                    at(),
                    format!(
                        "header name {name:?} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
                    ),
                );
            } else if RESERVED_HEADERS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
            {
                self.add(
                    "source.headers",
                    at(),
                    format!(
                        "header {name:?} may not be set: imgpipe sets or forbids it (reserved: {})",
                        RESERVED_HEADERS.join(", ")
                    ),
                );
            }
            if !value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                self.add(
                    "source.headers",
                    at(),
                    format!(
                        "the value of header {name:?} contains a control or non-ASCII character \
                         (allowed: visible ASCII, spaces and tabs; the value is not shown)"
                    ),
                );
            }
        }
    }

    fn retry(&mut self, spec: &Spec) {
        let r = &spec.retry;
        if r.attempts == 0 || r.attempts > 1000 {
            self.key(
                "source.retry.attempts",
                format!("attempts must be 1..=1000, found {}", r.attempts),
            );
        }
        if r.stall_timeout.is_zero() {
            self.key(
                "source.retry.stall_timeout",
                "stall_timeout must be more than zero (every request would time out at once), found 0",
            );
        }
        if r.deadline.is_some_and(|d| d.is_zero()) {
            self.key(
                "source.retry.deadline",
                "deadline must be more than zero (leave it out for no overall limit), found 0",
            );
        }
    }

    /// Hex digits (any case, surrounding blanks ignored, as the hashers compare them), of
    /// `len` digits when given.
    fn hex(&mut self, key: &str, value: &str, len: Option<usize>) {
        self.text(key, value);
        let v = value.trim().to_ascii_lowercase();
        let ok = !v.is_empty()
            && v.bytes().all(|b| b.is_ascii_hexdigit())
            && len.is_none_or(|l| v.len() == l);
        if !ok {
            let want = len.map_or("hex digits".to_string(), |l| format!("{l} hex digits"));
            self.key(
                key,
                format!("expected {want}, found {v:?} ({} characters)", v.len()),
            );
        }
    }

    fn verify(&mut self, spec: &Spec) {
        let v = &spec.verify;
        for (algo, hex) in &v.digests {
            self.hex(
                &format!("verify.{}", algo.name()),
                hex,
                Some(algo.output_len() * 2),
            );
        }
        self.opt_text("verify.os_hash_algo", &v.os_hash_algo);
        if let Some(h) = &v.os_hash_value {
            self.hex("verify.os_hash_value", h, None);
        }
        if let Some(h) = &v.checksum {
            self.hex("verify.checksum", h, Some(32));
        }
        if v.os_hash_value.is_some() != v.os_hash_algo.is_some() {
            self.missing(
                "verify.os_hash_algo",
                "verify",
                "os_hash_algo and os_hash_value go together",
            );
        }
        if let Some(s) = &v.signature {
            self.signature(s, matches!(spec.source, SourceSpec::Glance(_)));
        }
    }

    fn signature(&mut self, s: &SignatureSpec, glance: bool) {
        let t = "verify.signature";
        let props = [
            ("signature", &s.signature),
            ("hash_method", &s.hash_method),
            ("key_type", &s.key_type),
        ];
        let given = props.iter().filter(|(_, v)| !v.is_empty()).count();
        // With a Glance source the three properties (and the certificate id) come from the
        // image record unless they are given here.
        let from_record = glance && given == 0;
        for (key, v) in props {
            let path = format!("{t}.{key}");
            self.text(&path, v);
            if v.is_empty() && !from_record {
                self.missing(&path, t, format!("missing {key}"));
            }
        }
        if let Some(c) = &s.certificate {
            self.path("verify.signature.certificate", c);
        }
        self.opt_text("verify.signature.certificate_uuid", &s.certificate_uuid);
        if let Some(b) = &s.barbican {
            if b.endpoint.is_empty() {
                self.missing(
                    "verify.signature.barbican.endpoint",
                    "verify.signature.barbican",
                    "missing endpoint",
                );
            } else {
                self.text("verify.signature.barbican.endpoint", &b.endpoint);
            }
            self.opt_text("verify.signature.barbican.token_env", &b.token_env);
        }
        for (i, c) in s.trusted_certificates.iter().flatten().enumerate() {
            self.path(&format!("{t}.trusted_certificates[{i}]"), c);
        }
        let (cert, uuid) = (s.certificate.is_some(), s.certificate_uuid.is_some());
        if (cert && uuid) || (!cert && !uuid && !from_record) {
            self.missing(
                "verify.signature.certificate",
                t,
                "give exactly one of certificate or certificate_uuid",
            );
        }
        if uuid && s.barbican.as_ref().is_none_or(|b| b.endpoint.is_empty()) {
            self.missing(
                "verify.signature.barbican",
                t,
                "certificate_uuid needs [verify.signature.barbican] endpoint",
            );
        }
    }

    fn encrypt(&mut self, e: &EncryptSpec, holes: &Holes) {
        self.text("encrypt.cipher", &e.cipher);
        if e.cipher != "aes-xts-plain64" {
            self.key(
                "encrypt.cipher",
                format!("only aes-xts-plain64 is supported, found {:?}", e.cipher),
            );
        }
        if e.key_size != 256 && e.key_size != 512 {
            self.key(
                "encrypt.key_size",
                format!("key_size must be 256 or 512 (bits), found {}", e.key_size),
            );
        }
        if e.sector_size != 512 && e.sector_size != 4096 {
            self.key(
                "encrypt.sector_size",
                format!("sector_size must be 512 or 4096, found {}", e.sector_size),
            );
        }
        for (key, f) in [
            ("encrypt.passphrase_file", &e.passphrase_file),
            ("encrypt.key_file", &e.key_file),
            ("encrypt.key_hex_file", &e.key_hex_file),
        ] {
            if let Some(f) = f {
                self.path(key, f);
            }
        }
        if let Some(k) = &e.pbkdf {
            self.text("encrypt.pbkdf", k);
            if k != "pbkdf2" && k != "argon2id" {
                self.key(
                    "encrypt.pbkdf",
                    format!("pbkdf must be pbkdf2 or argon2id, found {k:?}"),
                );
            }
        }
        if holes.encrypt_format {
            return;
        }
        match e.format {
            EncryptFormat::Plain => {
                if e.key_file.is_some() == e.key_hex_file.is_some() {
                    self.missing(
                        "encrypt.key_file",
                        "encrypt",
                        "plain encryption needs exactly one of key_file or key_hex_file",
                    );
                }
                if e.passphrase_file.is_some() {
                    self.key(
                        "encrypt.passphrase_file",
                        "plain mode has no passphrase; use key_file",
                    );
                }
            }
            EncryptFormat::Luks1 | EncryptFormat::Luks2 => {
                if e.passphrase_file.is_none() {
                    self.missing(
                        "encrypt.passphrase_file",
                        "encrypt",
                        "LUKS needs passphrase_file",
                    );
                }
            }
        }
    }

    fn sink(&mut self, target: &SinkTarget) {
        match target {
            SinkTarget::File(p) => self.path("sink.path", p),
            SinkTarget::Device(p) => self.path("sink.device", p),
            SinkTarget::Lvm { vg, name, .. } => {
                self.text("sink.lvm.vg", vg);
                self.text("sink.lvm.name", name);
                if vg.is_empty() || name.is_empty() {
                    self.missing("sink.lvm.vg", "sink.lvm", "lvm needs vg and name");
                }
            }
            SinkTarget::Rbd {
                pool,
                image,
                conf,
                id,
            } => {
                self.text("sink.rbd.pool", pool);
                self.text("sink.rbd.image", image);
                if let Some(c) = conf {
                    self.path("sink.rbd.conf", c);
                }
                self.opt_text("sink.rbd.id", id);
                if pool.is_empty() || image.is_empty() {
                    self.missing("sink.rbd.pool", "sink.rbd", "rbd needs pool and image");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use imgpipe_crypto::hash::Algorithm;

    use crate::{
        BarbicanSpec, CacheSpec, ConvertFormat, EncryptFormat, EncryptSpec, GlanceSpec,
        KeystoneSpec, SignatureSpec, SinkSpec, SinkTarget, SourceSpec, Spec, SpecError,
    };

    const SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn file_spec() -> Spec {
        let mut s = Spec::new(SourceSpec::File("/img/image.qcow2".into()));
        s.sink = Some(SinkSpec {
            target: SinkTarget::File("/out/disk.raw".into()),
            zeroes: None,
        });
        s
    }

    fn luks() -> EncryptSpec {
        EncryptSpec {
            format: EncryptFormat::Luks2,
            cipher: "aes-xts-plain64".into(),
            key_size: 512,
            passphrase_file: Some("/k/pass".into()),
            key_file: None,
            key_hex_file: None,
            sector_size: 512,
            pbkdf_iterations: None,
            pbkdf: None,
        }
    }

    fn signature() -> SignatureSpec {
        SignatureSpec {
            signature: "c2ln".into(),
            hash_method: "SHA-256".into(),
            key_type: "RSA-PSS".into(),
            certificate: Some("/k/cert.pem".into()),
            ..Default::default()
        }
    }

    fn keystone() -> KeystoneSpec {
        KeystoneSpec {
            auth_url: "http://127.0.0.1:5000/v3".into(),
            username: "nova".into(),
            password_env: "OS_PASSWORD".into(),
            project_name: "service".into(),
            user_domain_name: "Default".into(),
            project_domain_name: "Default".into(),
        }
    }

    fn problems(spec: &Spec) -> Vec<(String, String)> {
        match spec.validate() {
            Ok(()) => vec![],
            Err(e) => {
                for p in &e.problems {
                    assert_eq!(p.line, 0, "a spec built in code has no lines: {p:?}");
                    assert!(!p.to_string().contains("line 0"), "{p}");
                }
                e.problems
                    .into_iter()
                    .map(|p| (p.path, p.message))
                    .collect()
            }
        }
    }

    #[test]
    fn a_valid_spec_built_in_code_passes_in_every_shape() {
        let mut specs = vec![file_spec(), Spec::new(SourceSpec::Stdin)];
        let mut s = file_spec();
        s.verify.digests = vec![
            (Algorithm::Sha256, SHA256.to_uppercase()),
            (Algorithm::Md5, format!(" {} ", "0".repeat(32))),
        ];
        s.verify.signature = Some(signature());
        s.encrypt = Some(luks());
        s.inspect.max_virtual_size = Some(1);
        s.retry.deadline = Some(Duration::from_secs(1));
        s.cache = Some(CacheSpec {
            dir: "/var/cache/imgpipe".into(),
            raw: true,
            key_file: None,
            max_size: None,
            max_age: None,
        });
        specs.push(s);
        let mut s = Spec::new(SourceSpec::Http {
            url: "https://h/x".into(),
            headers: vec![("X-Auth-Token".into(), "t\tok".into())],
        });
        s.sink = Some(SinkSpec {
            target: SinkTarget::Rbd {
                pool: "vms".into(),
                image: "disk".into(),
                conf: None,
                id: None,
            },
            zeroes: None,
        });
        specs.push(s);
        // Glance: the signature properties and certificate id may all come from the record.
        let mut s = Spec::new(SourceSpec::Glance(GlanceSpec {
            image_id: "6e1b5bc6".into(),
            keystone: Some(keystone()),
            ..Default::default()
        }));
        s.verify.signature = Some(SignatureSpec::default());
        s.sink = Some(SinkSpec {
            target: SinkTarget::Lvm {
                vg: "vg0".into(),
                name: "disk".into(),
                size: None,
            },
            zeroes: None,
        });
        specs.push(s);
        for s in specs {
            assert_eq!(problems(&s), vec![], "{s:?}");
        }
    }

    /// Each kind of bad value, alone on a valid spec, gives exactly its problem; all of them
    /// together give every one, in document order.
    #[test]
    fn each_bad_value_built_in_code_is_its_own_problem() {
        type Edit = Box<dyn Fn(&mut Spec)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (
                Box::new(|s| s.retry.attempts = 0),
                "source.retry.attempts",
                "attempts must be 1..=1000, found 0",
            ),
            (
                Box::new(|s| s.retry.stall_timeout = Duration::ZERO),
                "source.retry.stall_timeout",
                "stall_timeout must be more than zero",
            ),
            (
                Box::new(|s| s.retry.deadline = Some(Duration::ZERO)),
                "source.retry.deadline",
                "deadline must be more than zero",
            ),
            (
                Box::new(|s| s.inspect.max_virtual_size = Some(0)),
                "inspect.max_virtual_size",
                "max_virtual_size must be more than zero",
            ),
            (
                Box::new(|s| s.verify.digests.push((Algorithm::Sha512, "ab".into()))),
                "verify.sha512",
                "expected 128 hex digits, found \"ab\" (2 characters)",
            ),
            (
                Box::new(|s| s.verify.digests.push((Algorithm::Md5, "z".repeat(32)))),
                "verify.md5",
                "expected 32 hex digits, found",
            ),
            (
                Box::new(|s| s.verify.checksum = Some("abc".into())),
                "verify.checksum",
                "expected 32 hex digits, found \"abc\"",
            ),
            (
                Box::new(|s| s.verify.os_hash_algo = Some("sha512".into())),
                "verify.os_hash_algo",
                "os_hash_algo and os_hash_value go together",
            ),
            (
                Box::new(|s| {
                    s.verify.signature = Some(SignatureSpec {
                        key_type: String::new(),
                        ..signature()
                    })
                }),
                "verify.signature.key_type",
                "missing key_type",
            ),
            (
                Box::new(|s| {
                    s.verify.signature = Some(SignatureSpec {
                        certificate_uuid: Some("u".into()),
                        barbican: Some(BarbicanSpec {
                            endpoint: "http://b:9311".into(),
                            token_env: None,
                        }),
                        ..signature()
                    })
                }),
                "verify.signature.certificate",
                "give exactly one of certificate or certificate_uuid",
            ),
            (
                Box::new(|s| {
                    s.verify.signature = Some(SignatureSpec {
                        certificate: None,
                        certificate_uuid: Some("u".into()),
                        ..signature()
                    })
                }),
                "verify.signature.barbican",
                "certificate_uuid needs [verify.signature.barbican] endpoint",
            ),
            (
                Box::new(|s| {
                    s.verify.signature = Some(SignatureSpec {
                        trusted_certificates: Some(vec!["/ok".into(), "/c\0a".into()]),
                        ..signature()
                    })
                }),
                "verify.signature.trusted_certificates[1]",
                "contains a NUL byte at character 2",
            ),
            (
                Box::new(|s| {
                    s.encrypt = Some(EncryptSpec {
                        cipher: "aes-cbc-essiv".into(),
                        ..luks()
                    })
                }),
                "encrypt.cipher",
                "only aes-xts-plain64 is supported, found \"aes-cbc-essiv\"",
            ),
            (
                Box::new(|s| {
                    s.encrypt = Some(EncryptSpec {
                        key_size: 128,
                        ..luks()
                    })
                }),
                "encrypt.key_size",
                "key_size must be 256 or 512 (bits), found 128",
            ),
            (
                Box::new(|s| {
                    s.encrypt = Some(EncryptSpec {
                        sector_size: 1024,
                        ..luks()
                    })
                }),
                "encrypt.sector_size",
                "sector_size must be 512 or 4096, found 1024",
            ),
            (
                Box::new(|s| {
                    s.encrypt = Some(EncryptSpec {
                        pbkdf: Some("scrypt".into()),
                        ..luks()
                    })
                }),
                "encrypt.pbkdf",
                "pbkdf must be pbkdf2 or argon2id, found \"scrypt\"",
            ),
            (
                Box::new(|s| {
                    s.encrypt = Some(EncryptSpec {
                        passphrase_file: None,
                        ..luks()
                    })
                }),
                "encrypt.passphrase_file",
                "LUKS needs passphrase_file",
            ),
            (
                Box::new(|s| {
                    s.encrypt = Some(EncryptSpec {
                        format: EncryptFormat::Plain,
                        passphrase_file: None,
                        ..luks()
                    })
                }),
                "encrypt.key_file",
                "plain encryption needs exactly one of key_file or key_hex_file",
            ),
            (
                Box::new(|s| {
                    s.encrypt = Some(luks());
                    s.convert = ConvertFormat::Preserve;
                }),
                "convert.format",
                "format = \"preserve\" cannot be combined with [encrypt]",
            ),
            (
                Box::new(|s| {
                    s.encrypt = Some(luks());
                    s.sink = None;
                }),
                "encrypt",
                "[encrypt] needs a [sink] to write to",
            ),
            (
                Box::new(|s| {
                    s.sink = Some(SinkSpec {
                        target: SinkTarget::Device("/dev/loop0\0".into()),
                        zeroes: None,
                    })
                }),
                "sink.device",
                "contains a NUL byte at character 10",
            ),
            (
                Box::new(|s| {
                    s.sink = Some(SinkSpec {
                        target: SinkTarget::Lvm {
                            vg: "vg0".into(),
                            name: String::new(),
                            size: None,
                        },
                        zeroes: None,
                    })
                }),
                "sink.lvm.vg",
                "lvm needs vg and name",
            ),
            (
                Box::new(|s| {
                    s.sink = Some(SinkSpec {
                        target: SinkTarget::Rbd {
                            pool: String::new(),
                            image: "disk".into(),
                            conf: None,
                            id: None,
                        },
                        zeroes: None,
                    })
                }),
                "sink.rbd.pool",
                "rbd needs pool and image",
            ),
            (
                Box::new(|s| {
                    s.cache = Some(CacheSpec {
                        dir: PathBuf::new(),
                        raw: false,
                        key_file: None,
                        max_size: None,
                        max_age: None,
                    })
                }),
                "cache.dir",
                "missing dir",
            ),
        ];
        let mut all = file_spec();
        for (edit, path, message) in &cases {
            let mut s = file_spec();
            edit(&mut s);
            let got = problems(&s);
            assert_eq!(got.len(), 1, "{path}: {got:?}");
            assert_eq!(got[0].0, *path, "{got:?}");
            assert!(got[0].1.starts_with(message), "{path}: {got:?}");
            edit(&mut all);
        }
        // Together (the later signature, encrypt and sink edits replace the earlier ones).
        let got = problems(&all);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"source.retry.attempts"), "{paths:?}");
        assert!(paths.contains(&"verify.sha512"), "{paths:?}");
        assert!(paths.contains(&"cache.dir"), "{paths:?}");
        assert!(got.len() >= 10, "{got:?}");
    }

    #[test]
    fn sources_built_in_code_are_checked() {
        let cases: Vec<(SourceSpec, Vec<(&str, &str)>)> = vec![
            (
                SourceSpec::File("/img/a\0.raw".into()),
                vec![(
                    "source.path",
                    "contains a NUL byte at character 6, which no spec string may contain",
                )],
            ),
            (
                SourceSpec::Http {
                    url: "ftp://u:s3cret@h/x".into(),
                    headers: vec![],
                },
                vec![(
                    "source.url",
                    "url must start with http:// or https://, found \"ftp\" (the rest of the url is not shown)",
                )],
            ),
            (
                SourceSpec::Http {
                    url: "http://h/x".into(),
                    headers: vec![
                        ("hOsT".into(), "evil.example".into()),
                        ("Bad Name".into(), "v".into()),
                        ("X-Token".into(), "s3cret\r\nInjected: 1".into()),
                        ("X-\0".into(), "v".into()),
                        ("X-Nul".into(), "a\0".into()),
                    ],
                },
                vec![
                    (
                        "source.headers.X-\\0",
                        "the key contains a NUL byte, which no spec string may contain",
                    ),
                    (
                        "source.headers.X-Nul",
                        "contains a NUL byte at character 1, which no spec string may contain",
                    ),
                    ("source.headers", "header \"hOsT\" may not be set"),
                    (
                        "source.headers",
                        "header name \"Bad Name\" is not an HTTP token",
                    ),
                    (
                        "source.headers",
                        "the value of header \"X-Token\" contains a control",
                    ),
                    (
                        "source.headers",
                        "the value of header \"X-Nul\" contains a control",
                    ),
                ],
            ),
            (
                SourceSpec::Glance(GlanceSpec::default()),
                vec![
                    ("source.glance.image_id", "missing image_id"),
                    (
                        "source.glance.endpoint",
                        "give endpoint, or keystone to look it up in the catalog",
                    ),
                ],
            ),
            (
                SourceSpec::Glance(GlanceSpec {
                    image_id: "i".into(),
                    keystone: Some(KeystoneSpec {
                        username: String::new(),
                        password_env: String::new(),
                        ..keystone()
                    }),
                    ..Default::default()
                }),
                vec![
                    ("source.glance.keystone.username", "missing username"),
                    (
                        "source.glance.keystone.password_env",
                        "missing password_env",
                    ),
                ],
            ),
        ];
        for (source, want) in cases {
            let got = problems(&Spec::new(source.clone()));
            assert_eq!(got.len(), want.len(), "{source:?}: {got:?}");
            for ((gp, gm), (wp, wm)) in got.iter().zip(&want) {
                assert_eq!(gp, wp, "{got:?}");
                assert!(gm.starts_with(wm), "{gm} / {wm}");
                assert!(
                    !gm.contains("s3cret") && !gm.contains("evil.example"),
                    "{gm}"
                );
            }
        }
        // Signature properties are required unless a Glance record supplies all of them.
        let mut s = Spec::new(SourceSpec::Stdin);
        s.verify.signature = Some(SignatureSpec::default());
        let got = problems(&s);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "verify.signature.signature",
                "verify.signature.hash_method",
                "verify.signature.key_type",
                "verify.signature.certificate"
            ]
        );
    }

    fn sorted(e: SpecError) -> Vec<(String, String)> {
        let mut v: Vec<_> = e
            .problems
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect();
        v.sort();
        v
    }

    /// One validation: a spec file and the same spec built in code get the same problems
    /// (paths and messages); the parsed ones carry the line of their key.
    #[test]
    fn a_parsed_spec_and_the_same_spec_built_in_code_give_the_same_problems() {
        let base = std::path::Path::new("/base");
        let text = "[source]\nurl = \"ftp://h/x\"\n[source.headers]\nRange = \"bytes=1-\"\nX-Ok = \"a\\u0000b\"\n[source.retry]\nattempts = 0\nstall_timeout = \"0s\"\n[inspect]\nmax_virtual_size = 0\n[verify]\nsha512 = \"AB\"\nos_hash_value = \"xyz\"\n[verify.signature]\nsignature = \"s\"\ncertificate_uuid = \"u\"\n[encrypt]\nformat = \"plain\"\ncipher = \"twofish\"\nkey_size = 128\npassphrase_file = \"pass\"\n[cache]\nmode = \"raw\"\n";
        let parsed = Spec::from_toml(text, base).unwrap_err();
        let lines: Vec<(usize, &str)> = parsed
            .problems
            .iter()
            .map(|p| (p.line, p.path.as_str()))
            .collect();
        for want in [
            (2, "source.url"),
            (3, "source.headers"),
            (5, "source.headers.X-Ok"),
            (7, "source.retry.attempts"),
            (8, "source.retry.stall_timeout"),
            (10, "inspect.max_virtual_size"),
            (12, "verify.sha512"),
            (13, "verify.os_hash_value"),
            (11, "verify.os_hash_algo"),
            (14, "verify.signature.hash_method"),
            (14, "verify.signature.barbican"),
            (17, "encrypt.key_file"),
            (19, "encrypt.cipher"),
            (20, "encrypt.key_size"),
            (21, "encrypt.passphrase_file"),
            (17, "encrypt"),
            (22, "cache.dir"),
        ] {
            assert!(lines.contains(&want), "{want:?} not in {lines:?}");
        }
        let mut s = Spec::new(SourceSpec::Http {
            url: "ftp://h/x".into(),
            headers: vec![
                ("Range".into(), "bytes=1-".into()),
                ("X-Ok".into(), "a\0b".into()),
            ],
        });
        s.retry.attempts = 0;
        s.retry.stall_timeout = Duration::ZERO;
        s.inspect.max_virtual_size = Some(0);
        s.verify.digests.push((Algorithm::Sha512, "AB".into()));
        s.verify.os_hash_value = Some("xyz".into());
        s.verify.signature = Some(SignatureSpec {
            signature: "s".into(),
            certificate_uuid: Some("u".into()),
            ..Default::default()
        });
        s.encrypt = Some(EncryptSpec {
            format: EncryptFormat::Plain,
            cipher: "twofish".into(),
            key_size: 128,
            passphrase_file: Some("/base/pass".into()),
            key_file: None,
            key_hex_file: None,
            sector_size: 512,
            pbkdf_iterations: None,
            pbkdf: None,
        });
        s.cache = Some(CacheSpec {
            dir: PathBuf::new(),
            raw: true,
            key_file: None,
            max_size: None,
            max_age: None,
        });
        let built = s.validate().unwrap_err();
        assert_eq!(parsed.problems.len(), 19, "{parsed}");
        assert_eq!(sorted(parsed), sorted(built));
    }
}
