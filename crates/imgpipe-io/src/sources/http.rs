//! HTTP(S) source with a run-wide retry budget, a stall timeout, an optional overall deadline,
//! length checking and conditional resume.
//!
//! # Retry budget
//!
//! With `attempts = N` ([`HttpOptions::attempts`]) one run may spend at most:
//!
//! | what | bound | give-up check |
//! |---|---|---|
//! | tries of one request (connect error, no answer within the stall timeout, 5xx, 429) | `N` | `http.attempts` |
//! | dropped connections (early close, reset, stall mid-body) in a row without a **new** byte | `N` | `http.attempts` |
//! | reconnections (resumes and restarts) over the whole run | `4 × N` | `http.reconnects` |
//! | bytes downloaded again and discarded by restarts (server without `Range`) | `N ×` the image size | `http.reread` |
//! | wall time from the first request (optional) | [`HttpOptions::deadline`] | `http.deadline` |
//!
//! Only bytes beyond what was already delivered count as progress: bytes re-read to skip the
//! part a restart repeats never reset the count of failures.
//!
//! # Conditional resume
//!
//! The first response's validator is remembered: a strong `ETag` (not `W/`), else
//! `Last-Modified`, else `Content-MD5` (the whole image's MD5, as Glance sends it). A resume
//! sends `Range` and, for an ETag or a date, `If-Range`. Every later answer (`206` to a
//! resume, `200` restarting the download) must carry the same validator, or the run fails
//! with "the image changed while downloading" (`http.changed`). When the first response has
//! no validator, a dropped connection after the first byte is a failure (`http.validator`),
//! unless [`HttpOptions::resume_without_validator`] says that the caller checks the whole
//! stream against an expected digest (a stitched image then fails that check). A `206`
//! answer to a request without `Range` is never taken for the image (`http.partial`).
//!
//! # Secrets
//!
//! URLs are shown only through [`redact_url`] (no user info, no query, no fragment);
//! [`reqwest::Error`]s are rendered without their URL; header values are never printed.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use imgpipe_core::{Error, ErrorKind, Result, Source};
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_RANGE, ETAG, HeaderMap, HeaderName, HeaderValue, IF_RANGE, LAST_MODIFIED, LOCATION,
    RANGE,
};

use crate::CHUNK_SIZE;

/// Redirects followed per request before giving up.
pub const MAX_REDIRECTS: usize = 10;

/// Reconnections (resumes and restarts) allowed per run, per unit of
/// [`HttpOptions::attempts`].
pub const RECONNECTS_PER_ATTEMPT: u32 = 4;

/// Request headers [`HttpOptions::headers`] may not set (compared without case): the source
/// sets them itself (`Host` from the URL, `Range` and `If-Range` for resumes), they frame the
/// message (`Content-Length`, `Transfer-Encoding`, `Expect`), they are hop-by-hop
/// (`Connection`, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`, `TE`, `Trailer`,
/// `Upgrade`), they would make the server answer with other bytes than the image's
/// (`Accept-Encoding`) or they make the request conditional in ways the resume rules do not
/// expect (`If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`).
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

/// How an [`HttpSource`] behaves on trouble.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Extra request headers (e.g. `X-Auth-Token`). They are sent only to the URL's own origin
    /// (scheme, host and port): a redirect to another origin is followed without them, as
    /// curl does with credentials, so a token never reaches a host it was not meant for.
    /// Names in [`RESERVED_HEADERS`] are refused; values are never printed.
    pub headers: Vec<(String, String)>,
    /// Tries per request (connect errors, 5xx answers) and dropped connections in a row
    /// without new bytes; also sizes the run-wide budget (see the module documentation).
    pub attempts: u32,
    /// No byte for this long counts as a dropped connection (must not be zero).
    pub stall_timeout: Duration,
    /// First retry delay; doubles per retry, capped at 10 s.
    pub backoff: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Give up when the whole download (from the first request, retries and backoff
    /// included) takes longer than this. `None`: no overall limit (a server trickling bytes
    /// just faster than `stall_timeout` then keeps the run going as long as it likes).
    pub deadline: Option<Duration>,
    /// Resume or restart after a dropped connection even when the first response carries no
    /// validator (strong `ETag`, `Last-Modified` or `Content-MD5`). Set it only when the
    /// whole stream is checked against an expected digest afterwards: without a validator a
    /// resumed download may splice two versions of the image. Default `false`.
    pub resume_without_validator: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            headers: vec![],
            attempts: 5,
            stall_timeout: Duration::from_secs(60),
            backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(20),
            deadline: None,
            resume_without_validator: false,
        }
    }
}

/// An HTTP(S) image source. After a dropped connection it continues with `Range: bytes=N-`
/// (and `If-Range`; the `206` answer's `Content-Range` and validator are checked), or, when
/// the server does not do ranges, re-downloads and skips the bytes already delivered; the
/// stream it yields is unchanged, so hashers, inspector and decoder keep their state. What a
/// run may spend on that, and when it refuses to resume, is in the module documentation.
///
/// Redirects (301/302/303/307/308, at most [`MAX_REDIRECTS`] per request) are followed by the
/// source itself so that [`HttpOptions::headers`] go only to the original origin. Every
/// request (first, resumed or restarted) starts again from the configured URL.
///
/// Chunks handed to the pipeline are [`CHUNK_SIZE`] bytes (the last one shorter, and a
/// shorter one after a resume): network pieces are copied once into a fresh chunk buffer,
/// never reallocated, and a piece that fills a chunk is split without copying its rest.
pub struct HttpSource {
    client: reqwest::Client,
    url: reqwest::Url,
    shown: String,
    opts: HttpOptions,
    headers: HeaderMap,
    resp: Option<reqwest::Response>,
    /// Bytes of the image delivered so far (where a resumed request starts).
    received: u64,
    /// Bytes of the current response to drop (restart without range support).
    skip: u64,
    /// Total length, once known.
    total: Option<u64>,
    /// The first response's `Content-MD5` header (trimmed), if any.
    content_md5: Option<String>,
    /// The first response's validator.
    validator: Option<Validator>,
    /// Whether a first usable response was seen (validator, length, `Content-MD5` recorded).
    first_seen: bool,
    /// Reconnections (resumes and restarts) so far.
    resumes: u32,
    /// Dropped connections in a row without a new byte.
    failures: u32,
    /// Bytes downloaded again by restarts and discarded.
    discarded: u64,
    /// When the first request was sent (the deadline counts from here).
    started: Option<Instant>,
    /// Whether the server refused a range once.
    no_ranges: bool,
    /// The chunk being assembled (capacity [`CHUNK_SIZE`]).
    buf: BytesMut,
    /// The rest of a network piece that did not fit into the previous chunk.
    pending: Option<Bytes>,
    done: bool,
}

/// Why one attempt at a request did not produce a usable response.
enum SendError {
    /// Worth another attempt (connect error, timeout).
    Retry(String),
    /// Retrying cannot help (bad redirect, deadline).
    Fatal(Error),
}

/// What shows that two responses serve the same version of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Validator {
    /// A strong entity tag.
    ETag(String),
    /// A `Last-Modified` date (used when there is no strong ETag).
    LastModified(String),
    /// The whole image's MD5 (Glance sends it on every answer, `206` included).
    ContentMd5(String),
}

/// A response header as trimmed text (lossy: only compared and shown, never parsed).
fn header_text(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A server-chosen value for a message: quoted, at most 80 characters.
fn quoted(s: &str) -> String {
    if s.chars().count() <= 80 {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(80).collect();
        format!("{head:?}…")
    }
}

impl Validator {
    /// The validator of a first response: a strong ETag, else `Last-Modified`, else
    /// `Content-MD5`.
    fn of(h: &HeaderMap) -> Option<Validator> {
        if let Some(e) = header_text(h, ETAG.as_str()).filter(|e| !e.starts_with("W/")) {
            return Some(Validator::ETag(e));
        }
        if let Some(d) = header_text(h, LAST_MODIFIED.as_str()) {
            return Some(Validator::LastModified(d));
        }
        header_text(h, "content-md5").map(Validator::ContentMd5)
    }

    fn header(&self) -> &'static str {
        match self {
            Validator::ETag(_) => "etag",
            Validator::LastModified(_) => "last-modified",
            Validator::ContentMd5(_) => "content-md5",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Validator::ETag(_) => "ETag",
            Validator::LastModified(_) => "Last-Modified",
            Validator::ContentMd5(_) => "Content-MD5",
        }
    }

    fn value(&self) -> &str {
        match self {
            Validator::ETag(v) | Validator::LastModified(v) | Validator::ContentMd5(v) => v,
        }
    }

    /// The `If-Range` value (a server cannot compare a `Content-MD5`).
    fn if_range(&self) -> Option<&str> {
        match self {
            Validator::ETag(v) | Validator::LastModified(v) => Some(v),
            Validator::ContentMd5(_) => None,
        }
    }
}

/// Same scheme, host and port (default ports made explicit).
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Decode a `Content-MD5` value: 32 hex digits (what Glance sends) or the 24-character padded
/// base64 of RFC 1864.
pub(crate) fn parse_content_md5(v: &str) -> Option<[u8; 16]> {
    let v = v.trim();
    let mut out = [0u8; 16];
    if v.len() == 32 {
        for (i, pair) in v.as_bytes().chunks_exact(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            *out.get_mut(i)? = u8::from_str_radix(s, 16).ok()?;
        }
        return Some(out);
    }
    let body = v.strip_suffix("==")?;
    if body.len() != 22 {
        return None;
    }
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    // 22 symbols = 132 bits: the 128 bits of the digest, then 4 zero bits.
    let (head, tail) = body.as_bytes().split_at(21);
    let mut acc: u128 = 0;
    for &c in head {
        acc = (acc << 6) | u128::from(val(c)?);
    }
    let last = tail.first().copied().map(val)??;
    if last & 0x0f != 0 {
        return None;
    }
    let digest = (acc << 2) | u128::from(last >> 4);
    out.copy_from_slice(&digest.to_be_bytes());
    Some(out)
}

/// A URL as imgpipe shows it in every message and report: without user info, without the
/// fragment, and with a query replaced by the literal text `?[redacted]` (tokens and
/// pre-signed signatures live in both). Works on text that does not parse as a URL too, so a
/// malformed URL is never echoed whole.
///
/// ```
/// use imgpipe_io::redact_url;
/// assert_eq!(
///     redact_url("https://u:pw@host:8443/img.qcow2?sig=abc#x"),
///     "https://host:8443/img.qcow2?[redacted]"
/// );
/// assert_eq!(redact_url("http://host/a"), "http://host/a");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, after) = tail.split_at(path_end);
    let mut out = format!("{scheme}{host}{path}");
    if after.starts_with('?') {
        out.push_str("?[redacted]");
    }
    out
}

/// Whether `name` is one of [`RESERVED_HEADERS`] (any case).
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name.trim()))
}

/// `e` and its causes, without the URL reqwest puts into its message.
fn reqwest_error(e: reqwest::Error) -> String {
    crate::error_chain(&e.without_url())
}

fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

impl HttpSource {
    /// Prepare a source; nothing is sent until the first read (or [`HttpSource::connect`]).
    ///
    /// Errors ([`ErrorKind::Spec`]): the URL does not parse or is not `http`/`https`, a header
    /// name is invalid or reserved ([`RESERVED_HEADERS`]), a header value is not a valid
    /// header value, `attempts` or `stall_timeout` or `deadline` is zero.
    pub fn new(url: &str, opts: HttpOptions) -> Result<Self> {
        let spec = |m: String| Error::new(ErrorKind::Spec, m);
        let shown = redact_url(url);
        if opts.stall_timeout.is_zero() {
            return Err(spec(format!(
                "{shown}: stall_timeout is zero; every request would time out at once"
            )));
        }
        if opts.deadline.is_some_and(|d| d.is_zero()) {
            return Err(spec(format!(
                "{shown}: deadline is zero; no request could be made"
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            // Redirects are followed by hand, so headers can be dropped across origins.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                net(format!(
                    "cannot build the HTTP client: {}",
                    reqwest_error(e)
                ))
            })?;
        let mut headers = HeaderMap::new();
        for (k, v) in &opts.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| spec(format!("invalid header name {}", quoted(k))))?;
            if is_reserved_header(k) {
                return Err(spec(format!(
                    "header {} may not be set: imgpipe sets or forbids it (reserved: {})",
                    quoted(k),
                    RESERVED_HEADERS.join(", ")
                )));
            }
            let mut val = HeaderValue::from_str(v).map_err(|_| {
                spec(format!(
                    "invalid value for header {} (visible ASCII, spaces and tabs only; the \
                     value is not shown)",
                    quoted(k)
                ))
            })?;
            val.set_sensitive(true);
            headers.insert(name, val);
        }
        let parsed =
            reqwest::Url::parse(url).map_err(|e| spec(format!("invalid URL {shown}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(spec(format!(
                "invalid URL {shown}: scheme {:?}; only http and https are allowed",
                parsed.scheme()
            )));
        }
        Ok(HttpSource {
            client,
            url: parsed,
            shown,
            opts,
            headers,
            resp: None,
            received: 0,
            skip: 0,
            total: None,
            content_md5: None,
            validator: None,
            first_seen: false,
            resumes: 0,
            failures: 0,
            discarded: 0,
            started: None,
            no_ranges: false,
            buf: BytesMut::new(),
            pending: None,
            done: false,
        })
    }

    /// Send the first request now (to learn the length before the pipeline starts).
    pub async fn connect(&mut self) -> Result<()> {
        if self.resp.is_none() {
            self.request(0).await?;
        }
        Ok(())
    }

    /// The decoded `Content-MD5` header of the download (available after
    /// [`HttpSource::connect`] or the first read). `None` when the response had none or it is
    /// neither 32 hex digits (Glance) nor RFC 1864 base64; see [`HttpSource::content_md5_hex`].
    /// Glance sends the MD5 of the **whole** image, also on `206` answers; every later
    /// response (resume, restart) must carry the same value or no `Content-MD5` at all
    /// (and must carry it when it is the validator).
    pub fn content_md5(&self) -> Option<[u8; 16]> {
        self.content_md5.as_deref().and_then(parse_content_md5)
    }

    /// The `Content-MD5` header in the form `imgpipe_crypto::multihash::ImageRecord::content_md5`
    /// takes: lowercase hex when it decodes (hex or base64), else the header as received (so
    /// the digest selection rejects it as malformed when it is the digest that counts, instead
    /// of silently treating the image as having no `Content-MD5`). `None` when absent.
    pub fn content_md5_hex(&self) -> Option<String> {
        let raw = self.content_md5.as_deref()?;
        Some(match parse_content_md5(raw) {
            Some(d) => d.iter().map(|b| format!("{b:02x}")).collect(),
            None => raw.to_string(),
        })
    }

    /// A network failure naming the give-up check.
    fn fail(&self, check: &str, msg: impl std::fmt::Display) -> Error {
        Error::check(ErrorKind::Network, check, format!("{}: {msg}", self.shown))
    }

    /// "N of T bytes" (or "N bytes" when the length is unknown).
    fn progress_text(&self) -> String {
        match self.total {
            Some(t) => format!("{} of {t} bytes", self.received),
            None => plural(self.received, "byte", "bytes"),
        }
    }

    /// Time left before the deadline (`None`: no deadline).
    fn remaining(&self) -> Option<Duration> {
        let d = self.opts.deadline?;
        let elapsed = self.started.map_or(Duration::ZERO, |s| s.elapsed());
        Some(d.saturating_sub(elapsed))
    }

    fn deadline_passed(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// How long one wait (answer, next piece of the body) may take.
    fn wait_limit(&self) -> Duration {
        match self.remaining() {
            Some(r) => r.min(self.opts.stall_timeout),
            None => self.opts.stall_timeout,
        }
    }

    /// `when`: "passed while reading the body", "would pass before …".
    fn deadline_error(&self, when: &str) -> Error {
        let d = self.opts.deadline.unwrap_or_default();
        self.fail(
            "http.deadline",
            format!(
                "the overall deadline of {d:?} {when}, after {} and {}",
                self.progress_text(),
                plural(self.resumes, "reconnection", "reconnections")
            ),
        )
    }

    /// Sleep before a retry, unless the deadline would pass first.
    async fn pause(&self, delay: Duration, before: &str) -> Result<()> {
        if self.remaining().is_some_and(|r| r <= delay) {
            return Err(self.deadline_error(&format!(
                "would pass before {before} (after a backoff of {delay:?})"
            )));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Most reconnections one run may make.
    fn reconnect_budget(&self) -> u32 {
        self.opts
            .attempts
            .max(1)
            .saturating_mul(RECONNECTS_PER_ATTEMPT)
    }

    /// Most bytes restarts may download again and discard.
    fn reread_budget(&self) -> u64 {
        u64::from(self.opts.attempts.max(1))
            .saturating_mul(self.total.unwrap_or(0).max(self.received))
    }

    /// Send one GET for bytes `from..` to the configured URL and follow redirects by hand.
    /// The spec's headers go only to the configured origin.
    async fn send(
        &self,
        from: u64,
        ranged: bool,
    ) -> std::result::Result<reqwest::Response, SendError> {
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client.get(url.clone());
            if same_origin(&url, &self.url) {
                req = req.headers(self.headers.clone());
            }
            if ranged {
                req = req.header(RANGE, format!("bytes={from}-"));
                if let Some(v) = self.validator.as_ref().and_then(Validator::if_range) {
                    req = req.header(IF_RANGE, v);
                }
            }
            let limit = self.wait_limit();
            let resp = match tokio::time::timeout(limit, req.send()).await {
                Err(_) if self.deadline_passed() => {
                    return Err(SendError::Fatal(
                        self.deadline_error("passed while waiting for an answer"),
                    ));
                }
                Err(_) => {
                    return Err(SendError::Retry(format!(
                        "no answer from {} within {limit:?}",
                        redact_url(url.as_str())
                    )));
                }
                Ok(Err(e)) => {
                    return Err(SendError::Retry(format!(
                        "request to {} failed: {}",
                        redact_url(url.as_str()),
                        reqwest_error(e)
                    )));
                }
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let Some(loc) = resp.headers().get(LOCATION).filter(|_| redirect) else {
                return Ok(resp);
            };
            let next = loc
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    SendError::Fatal(self.fail(
                        "http.redirect",
                        format!(
                            "{} answered {status} with an unusable Location header",
                            redact_url(url.as_str())
                        ),
                    ))
                })?;
            url = next;
        }
        Err(SendError::Fatal(self.fail(
            "http.redirect",
            format!("more than {MAX_REDIRECTS} redirects"),
        )))
    }

    /// Remember the first `Content-MD5`; a later response with another value means the image
    /// changed under us.
    fn note_content_md5(&mut self, resp: &reqwest::Response) -> Result<()> {
        let Some(v) = header_text(resp.headers(), "content-md5") else {
            return Ok(());
        };
        match &self.content_md5 {
            None => self.content_md5 = Some(v),
            Some(first) if *first != v => {
                return Err(self.fail(
                    "http.changed",
                    format!(
                        "the image changed while downloading (Content-MD5 {} then {})",
                        quoted(first),
                        quoted(&v)
                    ),
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// A later answer (`what`: "resumed" or "restarted") must serve the image the first one
    /// did: the same validator, or no validator only when nothing was delivered yet or the
    /// caller checks a digest ([`HttpOptions::resume_without_validator`]).
    fn same_image(&self, resp: &reqwest::Response, from: u64, what: &str) -> Result<()> {
        let lenient = from == 0 || self.opts.resume_without_validator;
        let Some(v) = &self.validator else {
            if lenient {
                return Ok(());
            }
            return Err(self.fail(
                "http.validator",
                format!(
                    "not using the {what} answer: the first answer had no strong ETag, \
                     Last-Modified or Content-MD5 to show that it is the same image, and no \
                     expected digest allows it"
                ),
            ));
        };
        match header_text(resp.headers(), v.header()) {
            Some(seen) if seen == v.value() => Ok(()),
            Some(seen) => Err(self.fail(
                "http.changed",
                format!(
                    "the image changed while downloading: the first answer had {} {}, the {what} \
                     answer (from byte {from}) has {}",
                    v.name(),
                    quoted(v.value()),
                    quoted(&seen)
                ),
            )),
            None if lenient => Ok(()),
            None => Err(self.fail(
                "http.changed",
                format!(
                    "the {what} answer (from byte {from}) carries no {}; the first had {}, so \
                     it cannot be shown to be the same image",
                    v.name(),
                    quoted(v.value())
                ),
            )),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.opts
            .backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(10))
    }

    /// Issue a GET starting at `from`, retrying connect errors and 5xx.
    async fn request(&mut self, from: u64) -> Result<()> {
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
        let tries = self.opts.attempts.max(1);
        let mut last = String::new();
        for attempt in 0..tries {
            if attempt > 0 {
                self.pause(self.backoff(attempt - 1), "the next try of the request")
                    .await?;
            }
            if self.deadline_passed() {
                return Err(self.deadline_error("passed before a request could be sent"));
            }
            let ranged = from > 0 && !self.no_ranges;
            let resp = match self.send(from, ranged).await {
                Ok(r) => r,
                Err(SendError::Retry(why)) => {
                    last = why;
                    continue;
                }
                Err(SendError::Fatal(e)) => return Err(e),
            };
            let status = resp.status();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                last = format!("server answered {status}");
                continue;
            }
            if status == StatusCode::PARTIAL_CONTENT {
                let cr = header_text(resp.headers(), CONTENT_RANGE.as_str()).unwrap_or_default();
                if !ranged {
                    return Err(self.fail(
                        "http.partial",
                        format!(
                            "answered 206 Partial Content (Content-Range {}) to a request for \
                             the whole image (from byte {from}, without Range); a part is never \
                             taken for the image",
                            quoted(&cr)
                        ),
                    ));
                }
                let start = cr
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok());
                if start != Some(from) {
                    return Err(self.fail(
                        "http.content_range",
                        format!(
                            "asked for bytes {from}- but the answer's Content-Range is {}",
                            quoted(&cr)
                        ),
                    ));
                }
                let total = cr.rsplit('/').next().and_then(|s| s.parse::<u64>().ok());
                if let (Some(t), Some(known)) = (total, self.total)
                    && t != known
                {
                    return Err(self.fail(
                        "http.changed",
                        format!(
                            "the image changed size while downloading ({known} then {t} bytes)"
                        ),
                    ));
                }
                self.same_image(&resp, from, "resumed")?;
                self.note_content_md5(&resp)?;
                self.skip = 0;
                self.resp = Some(resp);
                return Ok(());
            }
            if ranged && (status == StatusCode::OK || status.is_client_error()) {
                // No range support (some stores answer 400/416), or the image changed (a 200
                // to If-Range): restart and skip what we have, if it is the same image.
                self.no_ranges = true;
                if status != StatusCode::OK {
                    last = format!("server refused the range request with {status}");
                    continue;
                }
            }
            if status == StatusCode::NO_CONTENT {
                return Err(self.fail(
                    "http.status",
                    "server answered 204 No Content (the image has no data)",
                ));
            }
            if !status.is_success() {
                return Err(self.fail("http.status", format!("server answered {status}")));
            }
            if let Some(len) = resp.content_length() {
                match self.total {
                    Some(t) if t != len => {
                        return Err(self.fail(
                            "http.changed",
                            format!(
                                "the image changed size while downloading ({t} then {len} bytes)"
                            ),
                        ));
                    }
                    _ => self.total = Some(len),
                }
            }
            if self.first_seen {
                self.same_image(&resp, from, "restarted")?;
            } else {
                self.validator = Validator::of(resp.headers());
                self.first_seen = true;
            }
            self.note_content_md5(&resp)?;
            self.skip = from;
            self.resp = Some(resp);
            return Ok(());
        }
        Err(self.fail(
            "http.attempts",
            format!(
                "giving up after {} for bytes {from}- (attempts = {tries}): {last}",
                plural(tries, "try", "tries")
            ),
        ))
    }

    /// The next piece of the body, handling stalls and early ends (resuming from `received`);
    /// `None` at the true end.
    async fn next_piece(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.resp.is_none() {
                if self.failures > 0 {
                    self.pause(self.backoff(self.failures - 1), "the next resume")
                        .await?;
                }
                self.request(self.received).await?;
            }
            let limit = self.wait_limit();
            let Some(resp) = self.resp.as_mut() else {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "no response after a successful request",
                ));
            };
            let problem = match tokio::time::timeout(limit, resp.chunk()).await {
                Ok(Ok(Some(mut b))) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(b.len() as u64);
                        self.skip -= drop;
                        self.discarded = self.discarded.saturating_add(drop);
                        if self.discarded > self.reread_budget() {
                            return Err(self.fail(
                                "http.reread",
                                format!(
                                    "restarts downloaded {} bytes again to skip data already \
                                     delivered, over the budget of {} (attempts = {} × {} \
                                     bytes), after {} and {}",
                                    self.discarded,
                                    self.reread_budget(),
                                    self.opts.attempts.max(1),
                                    self.total.unwrap_or(0).max(self.received),
                                    self.progress_text(),
                                    plural(self.resumes, "reconnection", "reconnections")
                                ),
                            ));
                        }
                        b = b.slice(drop as usize..);
                        if b.is_empty() {
                            if self.deadline_passed() {
                                return Err(
                                    self.deadline_error("passed while re-reading a restarted body")
                                );
                            }
                            continue;
                        }
                    }
                    // Only bytes beyond what was delivered are progress.
                    self.failures = 0;
                    self.received += b.len() as u64;
                    return Ok(Some(b));
                }
                Ok(Ok(None)) if self.skip > 0 => {
                    return Err(self.fail(
                        "http.changed",
                        format!(
                            "the restarted download ended {} bytes before the {} already \
                             delivered: the image changed while downloading",
                            self.skip, self.received
                        ),
                    ));
                }
                Ok(Ok(None)) => match self.total {
                    Some(t) if self.received != t => {
                        format!("connection closed after {}", self.progress_text())
                    }
                    _ => return Ok(None),
                },
                Ok(Err(e)) => format!(
                    "transfer failed after {}: {}",
                    self.progress_text(),
                    reqwest_error(e)
                ),
                Err(_) if self.deadline_passed() => {
                    return Err(self.deadline_error("passed while reading the body"));
                }
                Err(_) => format!(
                    "no data for {limit:?} (stalled) after {}",
                    self.progress_text()
                ),
            };
            self.resp = None;
            self.failures += 1;
            let tries = self.opts.attempts.max(1);
            if self.received > 0 && self.validator.is_none() && !self.opts.resume_without_validator
            {
                return Err(self.fail(
                    "http.validator",
                    format!(
                        "{problem}; not resuming: the server sent no strong ETag, \
                         Last-Modified or Content-MD5 to show that a resumed download continues \
                         the same image, and no expected digest allows it"
                    ),
                ));
            }
            if self.failures >= tries {
                return Err(self.fail(
                    "http.attempts",
                    format!(
                        "{problem}; giving up after {} in a row without new data (attempts = \
                         {tries}), {} in all",
                        plural(self.failures, "dropped connection", "dropped connections"),
                        plural(self.resumes, "reconnection", "reconnections")
                    ),
                ));
            }
            if self.resumes >= self.reconnect_budget() {
                return Err(self.fail(
                    "http.reconnects",
                    format!(
                        "{problem}; giving up after {} in this run (at most {} = \
                         {RECONNECTS_PER_ATTEMPT} × attempts)",
                        plural(self.resumes, "reconnection", "reconnections"),
                        self.reconnect_budget()
                    ),
                ));
            }
            self.resumes += 1;
        }
    }
}

fn net(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Network, msg)
}

#[async_trait]
impl Source for HttpSource {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn len_hint(&self) -> Option<u64> {
        self.total
    }

    async fn read(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        // Coalesce the network's pieces (8–400 KiB from hyper) into CHUNK_SIZE chunks: one copy
        // (~0.1 ns/B) into a buffer allocated at its final size.
        loop {
            let piece = match self.pending.take() {
                Some(p) => p,
                None => match self.next_piece().await? {
                    Some(p) => p,
                    None => {
                        self.done = true;
                        break;
                    }
                },
            };
            if self.buf.is_empty() && piece.len() >= CHUNK_SIZE {
                // Already large: hand it on as is.
                return Ok(Some(piece));
            }
            if self.buf.is_empty() && self.buf.capacity() < CHUNK_SIZE {
                self.buf = BytesMut::with_capacity(CHUNK_SIZE);
            }
            let room = CHUNK_SIZE - self.buf.len();
            if piece.len() < room {
                self.buf.extend_from_slice(&piece);
                continue;
            }
            self.buf.extend_from_slice(&piece[..room]);
            if piece.len() > room {
                self.pending = Some(piece.slice(room..));
            }
            return Ok(Some(self.buf.split().freeze()));
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }

    fn resumes(&self) -> u32 {
        self.resumes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn content_md5_forms() {
        // MD5("") in Glance's hex form, upper-case hex, and RFC 1864 base64.
        let d = [
            0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8,
            0x42, 0x7e,
        ];
        assert_eq!(
            parse_content_md5("d41d8cd98f00b204e9800998ecf8427e"),
            Some(d)
        );
        assert_eq!(
            parse_content_md5(" D41D8CD98F00B204E9800998ECF8427E "),
            Some(d)
        );
        assert_eq!(parse_content_md5("1B2M2Y8AsgTpgAmY7PhCfg=="), Some(d));
        for bad in [
            "",
            "d41d8cd98f00b204e9800998ecf8427",
            "d41d8cd98f00b204e9800998ecf8427g",
            "+d41d8cd98f00b204e9800998ecf842",
            "1B2M2Y8AsgTpgAmY7PhCfg=",
            "1B2M2Y8AsgTpgAmY7PhCfh==", // non-zero trailing bits
            "1B2M2Y8AsgTpgAmY7PhC-g==",
            "1B2M2Y8AsgTpgAmY7PhCfg==1B2M2Y8AsgTpgAmY7PhCfg==",
        ] {
            assert_eq!(parse_content_md5(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn origins() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(same_origin(&u("http://a:80/x"), &u("http://A/y?z")));
        assert!(same_origin(&u("https://a/x"), &u("https://a:443/")));
        assert!(!same_origin(&u("http://a/x"), &u("https://a/x")));
        assert!(!same_origin(&u("http://a:1/x"), &u("http://a:2/x")));
        assert!(!same_origin(&u("http://a/x"), &u("http://b/x")));
        assert!(!same_origin(
            &u("http://a.example/x"),
            &u("http://a.example.evil/x")
        ));
    }
    #[test]
    fn urls_are_shown_without_secrets() {
        for (url, shown) in [
            ("http://u:s3cret@host/a/b.raw", "http://host/a/b.raw"),
            (
                "https://host:8443/x?sig=s3cret&e=1",
                "https://host:8443/x?[redacted]",
            ),
            ("http://u:pw@host:1/p?q#frag", "http://host:1/p?[redacted]"),
            ("http://host/p#frag", "http://host/p"),
            ("http://u@h?x=1", "http://h?[redacted]"),
            ("http://a@b@host/x", "http://host/x"),
            ("u:s3cret@host/p?x", "host/p?[redacted]"),
            ("http://host", "http://host"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn validators_prefer_a_strong_etag() {
        let mut h = HeaderMap::new();
        h.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Mon, 07 Dec 2026 09:00:00 GMT"),
        );
        h.insert(
            "content-md5",
            HeaderValue::from_static("d41d8cd98f00b204e9800998ecf8427e"),
        );
        h.insert(ETAG, HeaderValue::from_static("W/\"weak\""));
        assert_eq!(
            Validator::of(&h),
            Some(Validator::LastModified(
                "Mon, 07 Dec 2026 09:00:00 GMT".into()
            ))
        );
        h.insert(ETAG, HeaderValue::from_static("\"v1\""));
        let v = Validator::of(&h).unwrap();
        assert_eq!(v, Validator::ETag("\"v1\"".into()));
        assert_eq!(v.if_range(), Some("\"v1\""));
        h.remove(ETAG);
        h.remove(LAST_MODIFIED);
        let v = Validator::of(&h).unwrap();
        assert_eq!(v.if_range(), None, "a Content-MD5 cannot go into If-Range");
        assert_eq!(Validator::of(&HeaderMap::new()), None);
    }

    #[test]
    fn reserved_headers_and_zero_timeouts_are_refused() {
        for name in [
            "Host",
            "HOST",
            "content-length",
            "Transfer-Encoding",
            "Range",
            "If-Range",
            "Connection",
        ] {
            let o = HttpOptions {
                headers: vec![(name.into(), "s3cret-value".into())],
                ..Default::default()
            };
            let e = HttpSource::new("http://127.0.0.1:1/x", o).err().unwrap();
            assert_eq!(e.kind(), ErrorKind::Spec, "{name}");
            assert!(!e.to_string().contains("s3cret-value"), "{e}");
        }
        let o = HttpOptions {
            headers: vec![("X-Auth-Token".into(), "bad\nvalue s3cret".into())],
            ..Default::default()
        };
        let e = HttpSource::new("http://127.0.0.1:1/x", o).err().unwrap();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let o = HttpOptions {
            stall_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(HttpSource::new("http://127.0.0.1:1/x", o).is_err());
        let o = HttpOptions {
            deadline: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(HttpSource::new("http://127.0.0.1:1/x", o).is_err());
        let e = HttpSource::new(
            "http://u:s3cret@host:99999/x?sig=s3cret",
            HttpOptions::default(),
        )
        .err()
        .unwrap();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
