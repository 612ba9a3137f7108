//! Pipeline spec files for imgpipe.
//!
//! A spec describes one run, stage by stage: `[source]`, `[inspect]`, `[verify]`, `[convert]`,
//! `[encrypt]`, `[sink]`, `[cache]`. It is written in TOML (primary) or JSON with the same
//! schema. Parsing validates everything at once: unknown keys, wrong types, bad values and
//! conflicting choices are all reported together, each with its key path and line.
//!
//! ```
//! let spec = imgpipe_spec::Spec::from_toml(r#"
//!     [source]
//!     path = "image.qcow2"
//!     [verify]
//!     sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
//!     [sink]
//!     path = "disk.raw"
//! "#, std::path::Path::new("/srv")).unwrap();
//! assert_eq!(spec.verify.digests.len(), 1);
//! ```
//!
//! The types are plain data with public fields, so a driver can also build a [`Spec`] in Rust
//! without any file; [`Spec::validate`] then checks it by the same rules the parser applies
//! (the parser builds the `Spec` and runs that same validation on it).

mod read;
mod tree;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imgpipe_crypto::hash::Algorithm;
use imgpipe_format::Format;

use read::{Problems, Table};
pub use read::{parse_duration, parse_size};

/// One problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`verify.sha512`, `sink`), empty for the document.
    pub path: String,
    /// 1-based line in the spec text; 0 when there is none (a spec built in code, or a file
    /// that could not be read), and then it is not printed.
    pub line: usize,
    /// What is wrong, the value seen and what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line != 0 {
            write!(f, "line {}: ", self.line)?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// Where the spec came from (a path, or `-`).
    pub origin: String,
    /// The problems, in document order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid spec {}: {n} problem{}",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Where the image bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// A local file.
    File(PathBuf),
    /// Standard input.
    Stdin,
    /// An HTTP(S) URL.
    Http {
        /// The URL.
        url: String,
        /// Extra request headers (e.g. `X-Auth-Token`).
        headers: Vec<(String, String)>,
    },
    /// A Glance image.
    Glance(GlanceSpec),
}

impl SourceSpec {
    /// The source a command-line argument names: `-` is stdin, an `http://` or `https://` URL
    /// is fetched, anything else is a file path (what `imgpipe inspect/hash/convert` and the
    /// Python `inspect` take).
    pub fn from_input(input: &str) -> SourceSpec {
        if input == "-" {
            SourceSpec::Stdin
        } else if input.starts_with("http://") || input.starts_with("https://") {
            SourceSpec::Http {
                url: input.to_string(),
                headers: vec![],
            }
        } else {
            SourceSpec::File(PathBuf::from(input))
        }
    }
}

/// A Glance Images API v2 source.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GlanceSpec {
    /// Image endpoint (`http://127.0.0.1:9292`); from the Keystone catalog when absent.
    pub endpoint: Option<String>,
    /// Image id.
    pub image_id: String,
    /// Environment variable holding a token.
    pub token_env: Option<String>,
    /// Keystone v3 password authentication.
    pub keystone: Option<KeystoneSpec>,
}

/// Keystone v3 password authentication settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeystoneSpec {
    /// `auth_url`, e.g. `http://127.0.0.1:5000/v3`.
    pub auth_url: String,
    /// User name.
    pub username: String,
    /// Environment variable holding the password.
    pub password_env: String,
    /// Project name.
    pub project_name: String,
    /// User domain name (default `Default`).
    pub user_domain_name: String,
    /// Project domain name (default `Default`).
    pub project_domain_name: String,
}

/// Retry behaviour of network sources.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySpec {
    /// Attempts per request (connect errors, 5xx, dropped connections), at least 1.
    pub attempts: u32,
    /// A transfer that delivers no byte for this long is treated as dropped (not zero).
    pub stall_timeout: Duration,
    /// First backoff delay; doubles each retry up to 10 s.
    pub backoff: Duration,
    /// Overall limit on the whole download, retries included (`None`: none; not zero).
    pub deadline: Option<Duration>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 5,
            stall_timeout: Duration::from_secs(60),
            backoff: Duration::from_millis(200),
            deadline: None,
        }
    }
}

/// Format inspection and policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InspectSpec {
    /// Declared format (Glance `disk_format`); the detected format must match.
    pub disk_format: Option<Format>,
    /// Formats allowed at all (default: raw, qcow2, vmdk, vhd, vhdx, vdi, iso).
    pub allowed_formats: Option<Vec<Format>>,
    /// Largest acceptable virtual size in bytes (default 64 TiB).
    pub max_virtual_size: Option<u64>,
    /// Skip inspection entirely (library use only, e.g. `imgpipe hash`; not a spec key).
    pub skip: bool,
}

/// Signature verification settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SignatureSpec {
    /// `img_signature` (base64).
    pub signature: String,
    /// `img_signature_hash_method` (`SHA-256`, …).
    pub hash_method: String,
    /// `img_signature_key_type` (`RSA-PSS`, …).
    pub key_type: String,
    /// Signing certificate file (PEM or DER).
    pub certificate: Option<PathBuf>,
    /// `img_signature_certificate_uuid`, fetched from Barbican.
    pub certificate_uuid: Option<String>,
    /// Barbican endpoint and token.
    pub barbican: Option<BarbicanSpec>,
    /// Trusted certificates (files or directories); `Some` enables chain validation, and an
    /// empty list (or empty directories) then trusts nothing, as cursive does.
    pub trusted_certificates: Option<Vec<PathBuf>>,
}

/// Where to fetch certificates from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BarbicanSpec {
    /// Barbican endpoint, e.g. `http://127.0.0.1:9311`.
    pub endpoint: String,
    /// Environment variable holding the token (default `OS_AUTH_TOKEN`).
    pub token_env: Option<String>,
}

/// Verification of the image bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VerifySpec {
    /// Expected digests by algorithm (all must match).
    pub digests: Vec<(Algorithm, String)>,
    /// Exact expected byte count.
    pub size: Option<u64>,
    /// Glance `os_hash_algo`.
    pub os_hash_algo: Option<String>,
    /// Glance `os_hash_value`.
    pub os_hash_value: Option<String>,
    /// Glance `checksum` (MD5 hex).
    pub checksum: Option<String>,
    /// Use `checksum` when `os_hash_algo` is unknown.
    pub allow_md5_fallback: bool,
    /// Reject images with no expected digest at all (default true for Glance sources).
    pub require_hash: Option<bool>,
    /// Digests to compute and report without checking.
    pub report: Vec<Algorithm>,
    /// Signature verification.
    pub signature: Option<SignatureSpec>,
}

/// What the disk receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvertFormat {
    /// Decode to a raw disk (default when the sink is a disk).
    #[default]
    Raw,
    /// Copy the image bytes unchanged.
    Preserve,
}

/// Encryption output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptFormat {
    /// Headerless dm-crypt plain mode.
    Plain,
    /// LUKS1.
    Luks1,
    /// LUKS2.
    Luks2,
}

/// In-stream encryption.
#[derive(Debug, Clone, PartialEq)]
pub struct EncryptSpec {
    /// Output format.
    pub format: EncryptFormat,
    /// Cipher spec (only `aes-xts-plain64`).
    pub cipher: String,
    /// Key size in bits (256 or 512).
    pub key_size: u32,
    /// Passphrase file (LUKS).
    pub passphrase_file: Option<PathBuf>,
    /// Raw key file (plain).
    pub key_file: Option<PathBuf>,
    /// Key as hex (plain), as Nova/Cinder derive it from the key manager.
    pub key_hex_file: Option<PathBuf>,
    /// Sector size (512 or 4096).
    pub sector_size: u32,
    /// PBKDF2 iterations for LUKS key slots (default: cryptsetup-like time-based when absent).
    pub pbkdf_iterations: Option<u32>,
    /// PBKDF kind for LUKS2 (`argon2id` or `pbkdf2`).
    pub pbkdf: Option<String>,
}

/// How zero runs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroPolicy {
    /// Skip them (target known to read zeros).
    Skip,
    /// Write them (zeros, or write-zeroes where supported).
    Write,
    /// Discard/punch them.
    Discard,
}

/// Where the disk goes.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkTarget {
    /// A file, published atomically by rename.
    File(PathBuf),
    /// A block device or existing LV.
    Device(PathBuf),
    /// A new LVM logical volume.
    Lvm {
        /// Volume group.
        vg: String,
        /// LV name.
        name: String,
        /// Size (default: the virtual size).
        size: Option<u64>,
    },
    /// A Ceph RBD image.
    Rbd {
        /// Pool.
        pool: String,
        /// Image name.
        image: String,
        /// ceph.conf path.
        conf: Option<PathBuf>,
        /// Client id.
        id: Option<String>,
    },
}

/// The sink section.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    /// The target.
    pub target: SinkTarget,
    /// Override of the automatic zero policy.
    pub zeroes: Option<ZeroPolicy>,
}

/// Where the key of `mode = "raw"` cache entries lives when the spec names none (host-local,
/// created on first use).
pub const DEFAULT_CACHE_KEY_FILE: &str = "/var/lib/imgpipe/cache.key";

/// The verified image cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSpec {
    /// Cache directory.
    pub dir: PathBuf,
    /// Store the original bytes or the decoded raw disk.
    pub raw: bool,
    /// Key authenticating raw entries (`mode = "raw"`): a file of at least 32 random bytes
    /// outside the cache directory. `None`: [`DEFAULT_CACHE_KEY_FILE`].
    pub key_file: Option<PathBuf>,
    /// Total size bound.
    pub max_size: Option<u64>,
    /// Evict entries unused for longer than this.
    pub max_age: Option<Duration>,
}

/// A complete, validated pipeline spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Where the bytes come from.
    pub source: SourceSpec,
    /// Network retry behaviour.
    pub retry: RetrySpec,
    /// Inspection policy.
    pub inspect: InspectSpec,
    /// Digest, size and signature checks.
    pub verify: VerifySpec,
    /// Decode to raw, or preserve the image bytes.
    pub convert: ConvertFormat,
    /// Optional encryption.
    pub encrypt: Option<EncryptSpec>,
    /// Where the disk goes (none: verify-only).
    pub sink: Option<SinkSpec>,
    /// Optional cache.
    pub cache: Option<CacheSpec>,
}

impl Spec {
    /// A spec for `source` with every other section at its default.
    pub fn new(source: SourceSpec) -> Self {
        Spec {
            source,
            retry: RetrySpec::default(),
            inspect: InspectSpec::default(),
            verify: VerifySpec::default(),
            convert: ConvertFormat::Raw,
            encrypt: None,
            sink: None,
            cache: None,
        }
    }

    /// Check a spec by the rules the parser applies to a spec file, and report every problem
    /// at once, with the same key paths and messages (and line 0: a spec built in code has
    /// no lines). A parsed spec always passes; this is for a `Spec` built or changed in code,
    /// and [`imgpipe::run`](../imgpipe/fn.run.html) calls it before it opens anything.
    ///
    /// What is checked is what can be wrong in a typed value: digests (hex, of the
    /// algorithm's length), `max_virtual_size` and the retry timeouts (more than zero),
    /// `attempts` (1..=1000), NUL bytes in any string or path, the URL scheme (http/https),
    /// request headers (HTTP tokens, not reserved, no control characters in values), required
    /// strings left empty (Glance `image_id`, Keystone credentials, signature properties
    /// unless a Glance record supplies them, LVM and RBD names, the cache directory), exactly
    /// one of `certificate` or `certificate_uuid` (the latter with a Barbican endpoint), the
    /// encryption options, and `[encrypt]` without a sink or with `convert = preserve`.
    /// Nothing is read from disk or network: whether a file exists is found out by the run.
    ///
    /// ```
    /// use std::time::Duration;
    /// use imgpipe_crypto::hash::Algorithm;
    /// use imgpipe_spec::{SinkSpec, SinkTarget, SourceSpec, Spec};
    ///
    /// let mut spec = Spec::new(SourceSpec::File("/srv/image.raw".into()));
    /// spec.sink = Some(SinkSpec { target: SinkTarget::File("/srv/disk.raw".into()), zeroes: None });
    /// assert!(spec.validate().is_ok());
    ///
    /// spec.verify.digests.push((Algorithm::Sha512, "ab".into()));
    /// spec.retry.stall_timeout = Duration::ZERO;
    /// let e = spec.validate().unwrap_err();
    /// let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
    /// assert_eq!(paths, ["source.retry.stall_timeout", "verify.sha512"]);
    /// assert_eq!(
    ///     e.problems[1].to_string(),
    ///     "verify.sha512: expected 128 hex digits, found \"ab\" (2 characters)"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), SpecError> {
        let problems: Vec<Problem> = validate::check(self, &validate::Holes::default())
            .into_iter()
            .map(|f| Problem {
                path: f.path,
                line: 0,
                message: f.message,
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SpecError {
                origin: "<spec>".into(),
                problems,
            })
        }
    }

    /// Parse a TOML spec; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Spec, SpecError> {
        Self::parse(tree::from_toml(text), base)
    }

    /// Parse a JSON spec; relative paths are resolved against `base`.
    pub fn from_json(text: &str, base: &Path) -> Result<Spec, SpecError> {
        Self::parse(tree::from_json(text), base)
    }

    /// Parse TOML or JSON (JSON when the first non-blank character is `{`).
    pub fn from_text(text: &str, base: &Path) -> Result<Spec, SpecError> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text, base)
        } else {
            Self::from_toml(text, base)
        }
    }

    /// Read and parse a spec file (`-` reads standard input); relative paths are resolved
    /// against the file's directory (the current directory for stdin).
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let origin = path.display().to_string();
        let fail = |message: String| SpecError {
            origin: origin.clone(),
            problems: vec![Problem {
                path: String::new(),
                line: 0,
                message,
            }],
        };
        let (text, base) = if path == Path::new("-") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| fail(format!("cannot read standard input: {e}")))?;
            (s, std::env::current_dir().unwrap_or_default())
        } else {
            let s = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let base = if dir.as_os_str().is_empty() {
                std::env::current_dir().unwrap_or_default()
            } else {
                dir
            };
            (s, base)
        };
        let r = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(&text, &base)
        } else {
            Self::from_text(&text, &base)
        };
        r.map_err(|mut e| {
            e.origin = origin;
            e
        })
    }

    fn parse(
        tree: Result<tree::Node, Vec<tree::SyntaxError>>,
        base: &Path,
    ) -> Result<Spec, SpecError> {
        let err = |problems| SpecError {
            origin: "<spec>".into(),
            problems,
        };
        let root = tree.map_err(|errs| {
            err(errs
                .into_iter()
                .map(|e| Problem {
                    path: String::new(),
                    line: e.line,
                    message: format!("syntax error: {}", e.message),
                })
                .collect())
        })?;
        let mut p = Problems::default();
        let mut holes = validate::Holes::default();
        let spec = Reader {
            base,
            p: &mut p,
            holes: &mut holes,
        }
        .spec(&root);
        // The reader reported what the text got wrong (syntax, types, unknown keys, choices
        // a `Spec` cannot express); the values are checked by the validation every `Spec`
        // gets, each problem placed at the line of its key.
        if let Some(s) = &spec {
            for f in validate::check(s, &holes) {
                let line = p.line_of(&f.at);
                p.add(&f.path, line, f.message);
            }
        }
        if p.list.is_empty() {
            spec.ok_or_else(|| err(vec![]))
        } else {
            p.list.sort_by_key(|x| x.line);
            Err(err(p.list))
        }
    }
}

/// Request headers a spec may not set (compared without case): imgpipe sets them itself
/// (`Host` from the URL, `Range` and `If-Range` for resumes), they frame the message
/// (`Content-Length`, `Transfer-Encoding`, `Expect`), they are hop-by-hop (`Connection`,
/// `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`, `TE`, `Trailer`, `Upgrade`), they
/// would make the server send other bytes than the image's (`Accept-Encoding`), or they make
/// the request conditional in ways the resume rules do not expect (`If-Match`,
/// `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`). The HTTP source refuses the
/// same list (`imgpipe_io::RESERVED_HEADERS`) for callers that build options in Rust.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "expect",
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "accept-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

struct Reader<'a> {
    base: &'a Path,
    p: &'a mut Problems,
    /// Values that could not be read and stand in as placeholders.
    holes: &'a mut validate::Holes,
}

const TOP: &[&str] = &[
    "source", "inspect", "verify", "convert", "encrypt", "sink", "cache",
];

impl Reader<'_> {
    fn path(&self, s: &str) -> PathBuf {
        let p = Path::new(s);
        // A path with a NUL byte is refused by the validation; left as written, its message
        // counts the characters the spec holds.
        if p.is_absolute() || s.contains('\0') {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn spec(&mut self, root: &tree::Node) -> Option<Spec> {
        let mut t = Table::root(root, self.p)?;
        let (source, retry) = match t.table("source", self.p) {
            Some(s) => self.source(s),
            None => {
                if !t.has("source") {
                    self.p.add(
                        "source",
                        1,
                        "missing [source]: give path, url or [source.glance]",
                    );
                }
                (None, RetrySpec::default())
            }
        };
        let inspect = t
            .table("inspect", self.p)
            .map(|s| self.inspect(s))
            .unwrap_or_default();
        let verify = t
            .table("verify", self.p)
            .map(|s| self.verify(s))
            .unwrap_or_default();
        let convert = t
            .table("convert", self.p)
            .and_then(|s| self.convert(s))
            .unwrap_or_default();
        let encrypt = t.table("encrypt", self.p).and_then(|s| self.encrypt(s));
        let sink = t.table("sink", self.p).and_then(|s| self.sink(s));
        let cache = t.table("cache", self.p).and_then(|s| self.cache(s));
        t.finish(self.p, TOP);
        Some(Spec {
            // A missing or ambiguous source was reported; stdin stands in so that the rest of
            // the spec is still checked (it has nothing to check of its own).
            source: source.unwrap_or(SourceSpec::Stdin),
            retry,
            inspect,
            verify,
            convert,
            encrypt,
            sink,
            cache,
        })
    }

    fn source(&mut self, mut t: Table<'_>) -> (Option<SourceSpec>, RetrySpec) {
        let p = &mut *self.p;
        let path = t.string("path", p);
        let url = t.string("url", p);
        let headers = t.string_map("headers", p);
        let glance = t.table("glance", p);
        let retry = t
            .table("retry", p)
            .map(|r| self.retry(r))
            .unwrap_or_default();
        let p = &mut *self.p;
        let count = [path.is_some(), url.is_some(), glance.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if count != 1 {
            p.add(
                "source",
                t.line,
                format!("exactly one of path, url or [source.glance] is needed, found {count}"),
            );
        }
        if headers.is_some() && url.is_none() {
            p.add(
                &t.path("headers"),
                t.line_of("headers"),
                "headers are only used with url",
            );
        }
        let src = if let Some(g) = glance {
            self.glance(g).map(SourceSpec::Glance)
        } else if let Some(u) = url {
            Some(SourceSpec::Http {
                url: u,
                headers: headers.unwrap_or_default(),
            })
        } else {
            path.map(|s| {
                if s == "-" {
                    SourceSpec::Stdin
                } else {
                    SourceSpec::File(self.path(&s))
                }
            })
        };
        t.finish(self.p, &["path", "url", "headers", "glance", "retry"]);
        (src, retry)
    }

    fn retry(&mut self, mut t: Table<'_>) -> RetrySpec {
        let p = &mut *self.p;
        let mut r = RetrySpec::default();
        if let Some(a) = t.uint32("attempts", p) {
            r.attempts = a;
        }
        if let Some(d) = t.duration("stall_timeout", p) {
            r.stall_timeout = d;
        }
        if let Some(d) = t.duration("backoff", p) {
            r.backoff = d;
        }
        if let Some(d) = t.duration("deadline", p) {
            r.deadline = Some(d);
        }
        t.finish(p, &["attempts", "stall_timeout", "backoff", "deadline"]);
        r
    }

    fn glance(&mut self, mut t: Table<'_>) -> Option<GlanceSpec> {
        let p = &mut *self.p;
        let endpoint = t.string("endpoint", p);
        let image_id = t.string("image_id", p);
        let token_env = t.string("token_env", p);
        let keystone = t.table("keystone", p).map(|mut k| {
            let mut s = KeystoneSpec {
                user_domain_name: "Default".into(),
                project_domain_name: "Default".into(),
                ..Default::default()
            };
            for (key, slot) in [
                ("auth_url", &mut s.auth_url),
                ("username", &mut s.username),
                ("password_env", &mut s.password_env),
                ("project_name", &mut s.project_name),
            ] {
                // Missing stays empty: the validation reports it.
                if let Some(v) = k.string(key, p) {
                    *slot = v;
                }
            }
            if let Some(v) = k.string("user_domain_name", p) {
                s.user_domain_name = v;
            }
            if let Some(v) = k.string("project_domain_name", p) {
                s.project_domain_name = v;
            }
            k.finish(
                p,
                &[
                    "auth_url",
                    "username",
                    "password_env",
                    "project_name",
                    "user_domain_name",
                    "project_domain_name",
                ],
            );
            s
        });
        t.finish(p, &["endpoint", "image_id", "token_env", "keystone"]);
        Some(GlanceSpec {
            endpoint,
            image_id: image_id.unwrap_or_default(),
            token_env,
            keystone,
        })
    }

    fn format(&mut self, path: &str, line: usize, s: &str) -> Option<Format> {
        match s.parse::<Format>() {
            Ok(f) => Some(f),
            Err(e) => {
                self.p.add(path, line, e.to_string());
                None
            }
        }
    }

    fn inspect(&mut self, mut t: Table<'_>) -> InspectSpec {
        let mut s = InspectSpec::default();
        if let Some(f) = t.keyword("disk_format", self.p) {
            s.disk_format = self.format(&t.path("disk_format"), t.line_of("disk_format"), &f);
        }
        if let Some(list) = t.keywords("allowed_formats", self.p) {
            let (path, line) = (t.path("allowed_formats"), t.line_of("allowed_formats"));
            s.allowed_formats = Some(
                list.iter()
                    .filter_map(|f| self.format(&path, line, f))
                    .collect(),
            );
        }
        s.max_virtual_size = t.size("max_virtual_size", self.p);
        t.finish(
            self.p,
            &["disk_format", "allowed_formats", "max_virtual_size"],
        );
        s
    }

    /// A hex string, stored trimmed and in lowercase (the validation checks its digits).
    fn hex_field(&mut self, t: &mut Table<'_>, key: &str) -> Option<String> {
        let v = t.string(key, self.p)?;
        Some(v.trim().to_ascii_lowercase())
    }

    fn verify(&mut self, mut t: Table<'_>) -> VerifySpec {
        let mut v = VerifySpec::default();
        for algo in Algorithm::ALL {
            if let Some(h) = self.hex_field(&mut t, algo.name()) {
                v.digests.push((algo, h));
            }
        }
        v.size = t.size("size", self.p);
        v.os_hash_algo = t.string("os_hash_algo", self.p);
        v.os_hash_value = self.hex_field(&mut t, "os_hash_value");
        v.checksum = self.hex_field(&mut t, "checksum");
        v.allow_md5_fallback = t.boolean("allow_md5_fallback", self.p).unwrap_or(false);
        v.require_hash = t.boolean("require_hash", self.p);
        if let Some(list) = t.keywords("report", self.p) {
            for a in list {
                match a.parse::<Algorithm>() {
                    Ok(x) => v.report.push(x),
                    Err(e) => self
                        .p
                        .add(&t.path("report"), t.line_of("report"), e.to_string()),
                }
            }
        }
        v.signature = t.table("signature", self.p).and_then(|s| self.signature(s));
        let mut allowed: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        allowed.extend([
            "size",
            "os_hash_algo",
            "os_hash_value",
            "checksum",
            "allow_md5_fallback",
            "require_hash",
            "report",
            "signature",
        ]);
        t.finish(self.p, &allowed);
        v
    }

    fn signature(&mut self, mut t: Table<'_>) -> Option<SignatureSpec> {
        let p = &mut *self.p;
        let mut s = SignatureSpec::default();
        // A missing property stays empty: the validation reports it, unless a Glance record
        // supplies the properties.
        for (key, slot) in [
            ("signature", &mut s.signature),
            ("hash_method", &mut s.hash_method),
            ("key_type", &mut s.key_type),
        ] {
            if let Some(v) = t.string(key, p) {
                *slot = v;
            }
        }
        let cert = t.string("certificate", p);
        s.certificate_uuid = t.string("certificate_uuid", p);
        s.barbican = t.table("barbican", p).map(|mut b| {
            let endpoint = b.string("endpoint", p).unwrap_or_default();
            let token_env = b.string("token_env", p);
            b.finish(p, &["endpoint", "token_env"]);
            BarbicanSpec {
                endpoint,
                token_env,
            }
        });
        let trusted = t.strings("trusted_certificates", p);
        t.finish(
            p,
            &[
                "signature",
                "hash_method",
                "key_type",
                "certificate",
                "certificate_uuid",
                "barbican",
                "trusted_certificates",
            ],
        );
        s.certificate = cert.map(|c| self.path(&c));
        s.trusted_certificates = trusted.map(|l| l.iter().map(|c| self.path(c)).collect());
        Some(s)
    }

    fn convert(&mut self, mut t: Table<'_>) -> Option<ConvertFormat> {
        let f = t.keyword("format", self.p);
        let r = match f.as_deref() {
            None | Some("raw") => Some(ConvertFormat::Raw),
            Some("preserve") => Some(ConvertFormat::Preserve),
            Some(other) => {
                self.p.add(
                    &t.path("format"),
                    t.line_of("format"),
                    format!("expected \"raw\" or \"preserve\", found {other:?}"),
                );
                None
            }
        };
        t.finish(self.p, &["format"]);
        r
    }

    fn encrypt(&mut self, mut t: Table<'_>) -> Option<EncryptSpec> {
        let p = &mut *self.p;
        let format = match t.keyword("format", p).as_deref() {
            Some("plain") => Some(EncryptFormat::Plain),
            Some("luks1") => Some(EncryptFormat::Luks1),
            Some("luks2") => Some(EncryptFormat::Luks2),
            Some(other) => {
                p.add(
                    &t.path("format"),
                    t.line_of("format"),
                    format!("expected plain, luks1 or luks2, found {other:?}"),
                );
                None
            }
            None => {
                p.add(
                    &t.path("format"),
                    t.line,
                    "missing format (plain, luks1 or luks2)",
                );
                None
            }
        };
        let cipher = t
            .string("cipher", p)
            .unwrap_or_else(|| "aes-xts-plain64".into());
        let key_size = t.uint32("key_size", p).unwrap_or(512);
        let sector_size = t.uint32("sector_size", p).unwrap_or(512);
        let passphrase_file = t.string("passphrase_file", p);
        let key_file = t.string("key_file", p);
        let key_hex_file = t.string("key_hex_file", p);
        let pbkdf_iterations = t.uint("pbkdf_iterations", p);
        let pbkdf = t.string("pbkdf", p);
        t.finish(
            p,
            &[
                "format",
                "cipher",
                "key_size",
                "passphrase_file",
                "key_file",
                "key_hex_file",
                "sector_size",
                "pbkdf_iterations",
                "pbkdf",
            ],
        );
        // Without a known format the other options are still checked, and the checks that
        // depend on the format are skipped.
        self.holes.encrypt_format = format.is_none();
        Some(EncryptSpec {
            format: format.unwrap_or(EncryptFormat::Luks2),
            cipher,
            key_size,
            passphrase_file: passphrase_file.map(|f| self.path(&f)),
            key_file: key_file.map(|f| self.path(&f)),
            key_hex_file: key_hex_file.map(|f| self.path(&f)),
            sector_size,
            pbkdf_iterations: pbkdf_iterations.map(|i| i.min(u32::MAX as u64) as u32),
            pbkdf,
        })
    }

    fn sink(&mut self, mut t: Table<'_>) -> Option<SinkSpec> {
        let p = &mut *self.p;
        let path = t.string("path", p);
        let device = t.string("device", p);
        // Missing names stay empty: the validation reports them.
        let lvm = t.table("lvm", p).map(|mut l| {
            let vg = l.string("vg", p).unwrap_or_default();
            let name = l.string("name", p).unwrap_or_default();
            let size = l.size("size", p);
            l.finish(p, &["vg", "name", "size"]);
            SinkTarget::Lvm { vg, name, size }
        });
        let rbd = t.table("rbd", p).map(|mut r| {
            let pool = r.string("pool", p).unwrap_or_default();
            let image = r.string("image", p).unwrap_or_default();
            let conf = r.string("conf", p);
            let id = r.string("id", p);
            r.finish(p, &["pool", "image", "conf", "id"]);
            (pool, image, conf, id)
        });
        let zeroes = match t.keyword("zeroes", p).as_deref() {
            None => None,
            Some("skip") => Some(ZeroPolicy::Skip),
            Some("write") => Some(ZeroPolicy::Write),
            Some("discard") => Some(ZeroPolicy::Discard),
            Some(other) => {
                p.add(
                    &t.path("zeroes"),
                    t.line_of("zeroes"),
                    format!("expected skip, write or discard, found {other:?}"),
                );
                None
            }
        };
        let n = [path.is_some(), device.is_some(), t.has("lvm"), t.has("rbd")]
            .iter()
            .filter(|x| **x)
            .count();
        if n != 1 {
            p.add(
                "sink",
                t.line,
                format!("exactly one of path, device, lvm or rbd is needed, found {n}"),
            );
        }
        t.finish(p, &["path", "device", "lvm", "rbd", "zeroes"]);
        let target = if let Some(x) = path {
            SinkTarget::File(self.path(&x))
        } else if let Some(x) = device {
            SinkTarget::Device(self.path(&x))
        } else if let Some(l) = lvm {
            l
        } else {
            let (pool, image, conf, id) = rbd?;
            SinkTarget::Rbd {
                pool,
                image,
                conf: conf.map(|c| self.path(&c)),
                id,
            }
        };
        Some(SinkSpec { target, zeroes })
    }

    fn cache(&mut self, mut t: Table<'_>) -> Option<CacheSpec> {
        let p = &mut *self.p;
        let dir = t.string("dir", p);
        let raw = match t.keyword("mode", p).as_deref() {
            None | Some("original") => false,
            Some("raw") => true,
            Some(other) => {
                p.add(
                    &t.path("mode"),
                    t.line_of("mode"),
                    format!("expected original or raw, found {other:?}"),
                );
                false
            }
        };
        let key_file = t.string("key_file", p);
        let max_size = t.size("max_size", p);
        let max_age = t.duration("max_age", p);
        t.finish(p, &["dir", "mode", "key_file", "max_size", "max_age"]);
        Some(CacheSpec {
            // A missing dir stays empty (not the base directory): the validation reports it.
            dir: dir.map(|d| self.path(&d)).unwrap_or_default(),
            raw,
            key_file: key_file.map(|k| self.path(&k)),
            max_size,
            max_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> &'static Path {
        Path::new("/base")
    }

    #[test]
    fn the_public_contract_parses() {
        let s = Spec::from_toml(
            r#"
[source]
path = "image.qcow2"
[inspect]
disk_format = "qcow2"
allowed_formats = ["raw", "qcow2"]
[verify]
sha512 = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
size = 1234567
[convert]
format = "raw"
[encrypt]
format = "luks1"
passphrase_file = "pass.txt"
[sink]
path = "disk.raw"
"#,
            base(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.source, SourceSpec::File("/base/image.qcow2".into()));
        assert_eq!(s.inspect.disk_format, Some(Format::Qcow2));
        assert_eq!(s.verify.digests[0].0, Algorithm::Sha512);
        assert_eq!(s.verify.size, Some(1_234_567));
        assert_eq!(
            s.encrypt.as_ref().map(|e| e.format),
            Some(EncryptFormat::Luks1)
        );
        assert_eq!(s.encrypt.as_ref().map(|e| e.key_size), Some(512));
        assert_eq!(
            s.sink.map(|k| k.target),
            Some(SinkTarget::File("/base/disk.raw".into()))
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_path_and_line() {
        let e = Spec::from_toml(
            "[source]\npath = \"a\"\nurl = \"ftp://x\"\n[verify]\nsha256 = \"abc\"\nsize = -1\nbogus = 1\n[sinkk]\npath = \"x\"\n",
            base(),
        )
        .unwrap_err();
        let msgs: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
        let all = msgs.join("\n");
        assert!(
            all.contains("line 1: source: exactly one of path, url"),
            "{all}"
        );
        assert!(
            all.contains("line 3: source.url: url must start with http"),
            "{all}"
        );
        assert!(
            all.contains("line 5: verify.sha256: expected 64 hex digits"),
            "{all}"
        );
        assert!(all.contains("line 6: verify.size"), "{all}");
        assert!(all.contains("line 7: verify.bogus: unknown key"), "{all}");
        assert!(all.contains("line 8: sinkk: unknown key"), "{all}");
        assert_eq!(e.problems.len(), 6, "{all}");
    }

    #[test]
    fn json_has_the_same_schema() {
        let s = Spec::from_json(
            r#"{"source": {"url": "http://127.0.0.1:1/x", "headers": {"X-Auth-Token": "t"}},
                "verify": {"md5": "d41d8cd98f00b204e9800998ecf8427e"},
                "sink": {"path": "/out/disk.raw", "zeroes": "write"}}"#,
            base(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.source,
            SourceSpec::Http {
                url: "http://127.0.0.1:1/x".into(),
                headers: vec![("X-Auth-Token".into(), "t".into())]
            }
        );
        assert_eq!(s.sink.and_then(|k| k.zeroes), Some(ZeroPolicy::Write));
        let e = Spec::from_json(
            "{\"source\": {\"path\": \"a\"},\n \"verify\": {\"sha1\": 5}}",
            base(),
        )
        .unwrap_err();
        assert_eq!(e.problems[0].line, 2);
        assert_eq!(e.problems[0].path, "verify.sha1");
    }

    #[test]
    fn conflicting_sections() {
        let e = Spec::from_toml(
            "[source]\npath=\"a\"\n[encrypt]\nformat=\"plain\"\n",
            base(),
        )
        .unwrap_err();
        let all = e.to_string();
        assert!(all.contains("needs a [sink]"), "{all}");
        assert!(
            all.contains("exactly one of key_file or key_hex_file"),
            "{all}"
        );
    }
    #[test]
    fn retry_timeouts_must_be_positive_and_deadline_parses() {
        let e = Spec::from_toml(
            "[source]\nurl = \"http://h/x\"\n[source.retry]\nstall_timeout = \"0ms\"\ndeadline = \"0s\"\n",
            base(),
        )
        .unwrap_err();
        let all = e.to_string();
        assert!(
            all.contains(
                "line 4: source.retry.stall_timeout: stall_timeout must be more than zero"
            ),
            "{all}"
        );
        assert!(
            all.contains("line 5: source.retry.deadline: deadline must be more than zero"),
            "{all}"
        );
        assert_eq!(e.problems.len(), 2, "{all}");
        let s = Spec::from_toml(
            "[source]\nurl = \"http://h/x\"\n[source.retry]\nstall_timeout = \"300ms\"\ndeadline = \"2m\"\n",
            base(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.retry.stall_timeout, Duration::from_millis(300));
        assert_eq!(s.retry.deadline, Some(Duration::from_secs(120)));
        assert_eq!(RetrySpec::default().deadline, None);
    }

    #[test]
    fn a_nul_byte_in_any_path_is_a_problem() {
        let e = Spec::from_toml(
            "[source]\npath = \"img\\u0000.raw\"\n[verify.signature]\nsignature = \"s\"\nhash_method = \"SHA-256\"\nkey_type = \"RSA-PSS\"\ncertificate = \"c.pem\"\ntrusted_certificates = [\"ok.pem\", \"ca\\u0000\"]\n[sink]\npath = \"disk\\u0000.raw\"\n[cache]\ndir = \"/var/cache/\\u0000x\"\n",
            base(),
        )
        .unwrap_err();
        let all = e.to_string();
        for (line, key) in [
            (2, "source.path"),
            (8, "verify.signature.trusted_certificates[1]"),
            (10, "sink.path"),
            (12, "cache.dir"),
        ] {
            assert!(
                all.contains(&format!("line {line}: {key}: contains a NUL byte")),
                "{key}: {all}"
            );
        }
        assert_eq!(
            e.problems.len(),
            4,
            "one problem per NUL, nothing else: {all}"
        );
        let e = Spec::from_json(
            r#"{"source": {"path": "a"}, "sink": {"device": "/dev/loop0\u0000"}}"#,
            base(),
        )
        .unwrap_err();
        assert_eq!(e.problems[0].path, "sink.device", "{e}");
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused_without_showing_values() {
        let e = Spec::from_toml(
            "[source]\nurl = \"http://h/x\"\n[source.headers]\nhOsT = \"evil.example\"\nX-Auth-Token = \"ok\"\nContent-Length = \"1\"\nTransfer-Encoding = \"chunked\"\nRange = \"bytes=5-\"\nIF-RANGE = \"x\"\nConnection = \"close\"\n\"Bad Name\" = \"v\"\nX-Token = \"s3cret\\r\\nInjected: 1\"\n",
            base(),
        )
        .unwrap_err();
        let all = e.to_string();
        for name in [
            "hOsT",
            "Content-Length",
            "Transfer-Encoding",
            "Range",
            "IF-RANGE",
            "Connection",
        ] {
            assert!(
                all.contains(&format!("header {name:?} may not be set")),
                "{name}: {all}"
            );
        }
        assert!(all.contains("\"Bad Name\" is not an HTTP token"), "{all}");
        assert!(
            all.contains("header \"X-Token\" contains a control"),
            "{all}"
        );
        assert!(!all.contains("s3cret"), "a header value was shown: {all}");
        assert!(
            !all.contains("evil.example"),
            "a header value was shown: {all}"
        );
        assert_eq!(e.problems.len(), 8, "{all}");
        assert!(
            RESERVED_HEADERS
                .iter()
                .all(|h| *h == h.to_ascii_lowercase())
        );
    }

    #[test]
    fn a_bad_url_is_not_echoed() {
        let e = Spec::from_toml(
            "[source]\nurl = \"ftp://u:s3cret-pw@h/x?sig=s3cret-sig\"\n",
            base(),
        )
        .unwrap_err();
        let all = e.to_string();
        assert!(all.contains("found \"ftp\""), "{all}");
        assert!(!all.contains("s3cret"), "{all}");
    }
}
