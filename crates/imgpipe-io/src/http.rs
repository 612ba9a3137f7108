//! HTTP(S) source with retries, a stall timeout, length checking and resume.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use imgpipe_core::{Error, ErrorKind, Result, Source};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, HeaderMap, HeaderName, HeaderValue, LOCATION, RANGE};

use crate::CHUNK_SIZE;

/// Redirects followed per request before giving up.
pub const MAX_REDIRECTS: usize = 10;

/// How an [`HttpSource`] behaves on trouble.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Extra request headers (e.g. `X-Auth-Token`). They are sent only to the URL's own origin
    /// (scheme, host and port): a redirect to another origin is followed without them, as
    /// curl does with credentials, so a token never reaches a host it was not meant for.
    pub headers: Vec<(String, String)>,
    /// Attempts per request: connect errors, 5xx answers and dropped connections are retried.
    pub attempts: u32,
    /// No byte for this long counts as a dropped connection.
    pub stall_timeout: Duration,
    /// First retry delay; doubles per retry, capped at 10 s.
    pub backoff: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            headers: vec![],
            attempts: 5,
            stall_timeout: Duration::from_secs(60),
            backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(20),
        }
    }
}

/// An HTTP(S) image source. After a dropped connection it continues with `Range: bytes=N-`
/// (checking the `206` answer's `Content-Range`), or, when the server does not do ranges,
/// re-downloads and skips the bytes already delivered; the stream it yields is unchanged, so
/// hashers, inspector and decoder keep their state.
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
    /// Bytes of the image received so far (where a resumed request starts).
    received: u64,
    /// Bytes of the current response to drop (restart without range support).
    skip: u64,
    /// Total length, once known.
    total: Option<u64>,
    /// The first response's `Content-MD5` header (trimmed), if any.
    content_md5: Option<String>,
    resumes: u32,
    /// Consecutive failures without progress.
    failures: u32,
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
    /// Retrying cannot help (bad redirect).
    Fatal(Error),
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

/// The URL without user info or query (tokens sometimes live there), for messages and reports.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            if u.query().is_some() {
                u.set_query(Some("…"));
            }
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

fn net(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Network, msg)
}

impl HttpSource {
    /// Prepare a source; nothing is sent until the first read (or [`HttpSource::connect`]).
    pub fn new(url: &str, opts: HttpOptions) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            // Redirects are followed by hand, so headers can be dropped across origins.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| net(format!("cannot build the HTTP client: {e}")))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &opts.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| Error::new(ErrorKind::Spec, format!("invalid header name {k:?}")))?;
            let val = HeaderValue::from_str(v).map_err(|_| {
                Error::new(ErrorKind::Spec, format!("invalid value for header {k:?}"))
            })?;
            headers.insert(name, val);
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::new(ErrorKind::Spec, format!("invalid URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::new(
                ErrorKind::Spec,
                format!(
                    "invalid URL {}: scheme {:?}; only http and https are allowed",
                    redact(url),
                    parsed.scheme()
                ),
            ));
        }
        Ok(HttpSource {
            client,
            url: parsed,
            shown: redact(url),
            opts,
            headers,
            resp: None,
            received: 0,
            skip: 0,
            total: None,
            content_md5: None,
            resumes: 0,
            failures: 0,
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
    /// response (resume, restart) must carry the same value or no `Content-MD5` at all.
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
            }
            let resp = match tokio::time::timeout(self.opts.stall_timeout, req.send()).await {
                Err(_) => {
                    return Err(SendError::Retry(format!(
                        "no answer from {} within {:?}",
                        redact(url.as_str()),
                        self.opts.stall_timeout
                    )));
                }
                Ok(Err(e)) => {
                    return Err(SendError::Retry(format!(
                        "request to {} failed: {}",
                        redact(url.as_str()),
                        crate::error_chain(&e)
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
                    SendError::Fatal(net(format!(
                        "{}: {} answered {status} with an unusable Location header",
                        self.shown,
                        redact(url.as_str())
                    )))
                })?;
            url = next;
        }
        Err(SendError::Fatal(net(format!(
            "{}: more than {MAX_REDIRECTS} redirects",
            self.shown
        ))))
    }

    /// Remember the first `Content-MD5`; a later response with another value means the image
    /// changed under us.
    fn note_content_md5(&mut self, resp: &reqwest::Response) -> Result<()> {
        let Some(v) = resp.headers().get("content-md5") else {
            return Ok(());
        };
        let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
        match &self.content_md5 {
            None => self.content_md5 = Some(v),
            Some(first) if *first != v => {
                return Err(net(format!(
                    "{}: the image changed while downloading (Content-MD5 {first:?} then {v:?})",
                    self.shown
                )));
            }
            Some(_) => {}
        }
        Ok(())
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
        let mut last = String::new();
        for attempt in 0..self.opts.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
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
            if ranged && status == StatusCode::PARTIAL_CONTENT {
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let start = cr
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok());
                if start != Some(from) {
                    return Err(net(format!(
                        "{}: asked for bytes {from}- but the answer's Content-Range is {cr:?}",
                        self.shown
                    )));
                }
                let total = cr.rsplit('/').next().and_then(|s| s.parse::<u64>().ok());
                if let (Some(t), Some(known)) = (total, self.total)
                    && t != known
                {
                    return Err(net(format!(
                        "{}: the image changed size while downloading ({known} then {t} bytes)",
                        self.shown
                    )));
                }
                self.note_content_md5(&resp)?;
                self.skip = 0;
                self.resp = Some(resp);
                return Ok(());
            }
            if ranged && (status == StatusCode::OK || status.is_client_error()) {
                // No range support (some stores answer 400/416): restart and skip what we have.
                self.no_ranges = true;
                if status != StatusCode::OK {
                    last = format!("server refused the range request with {status}");
                    continue;
                }
            }
            if status == StatusCode::NO_CONTENT {
                return Err(net(format!(
                    "{}: server answered 204 No Content (the image has no data)",
                    self.shown
                )));
            }
            if !status.is_success() {
                return Err(net(format!("{}: server answered {status}", self.shown)));
            }
            if let Some(len) = resp.content_length() {
                match self.total {
                    Some(t) if t != len => {
                        return Err(net(format!(
                            "{}: the image changed size while downloading ({t} then {len} bytes)",
                            self.shown
                        )));
                    }
                    _ => self.total = Some(len),
                }
            }
            self.note_content_md5(&resp)?;
            self.skip = from;
            self.resp = Some(resp);
            return Ok(());
        }
        Err(net(format!(
            "{}: giving up after {} attempt{}: {last}",
            self.shown,
            self.opts.attempts,
            if self.opts.attempts == 1 { "" } else { "s" }
        )))
    }

    /// The next piece of the body, handling stalls and early ends (resuming from `received`);
    /// `None` at the true end.
    async fn next_piece(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.resp.is_none() {
                if self.failures > 0 {
                    tokio::time::sleep(self.backoff(self.failures - 1)).await;
                }
                self.request(self.received).await?;
            }
            let Some(resp) = self.resp.as_mut() else {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "no response after a successful request",
                ));
            };
            let problem = match tokio::time::timeout(self.opts.stall_timeout, resp.chunk()).await {
                Ok(Ok(Some(mut b))) => {
                    self.failures = 0;
                    if self.skip > 0 {
                        let drop = self.skip.min(b.len() as u64);
                        self.skip -= drop;
                        b = b.slice(drop as usize..);
                        if b.is_empty() {
                            continue;
                        }
                    }
                    self.received += b.len() as u64;
                    return Ok(Some(b));
                }
                Ok(Ok(None)) => match self.total {
                    Some(t) if self.received != t => {
                        format!("connection closed after {} of {t} bytes", self.received)
                    }
                    _ => return Ok(None),
                },
                Ok(Err(e)) => format!(
                    "transfer failed after {} bytes: {}",
                    self.received,
                    crate::error_chain(&e)
                ),
                Err(_) => format!("no data for {:?} (stalled)", self.opts.stall_timeout),
            };
            self.resp = None;
            self.failures += 1;
            if self.failures >= self.opts.attempts.max(1) {
                return Err(net(format!(
                    "{}: {problem}; giving up after {} attempt{}",
                    self.shown,
                    self.failures,
                    if self.failures == 1 { "" } else { "s" }
                )));
            }
            self.resumes += 1;
        }
    }
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
}
