//! HTTP(S) source with retries, a stall timeout, length checking and resume.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use imgpipe_core::{Error, ErrorKind, Result, Source};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, HeaderMap, HeaderName, HeaderValue, RANGE};

use crate::CHUNK_SIZE;

/// How an [`HttpSource`] behaves on trouble.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Extra request headers (e.g. `X-Auth-Token`).
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
pub struct HttpSource {
    client: reqwest::Client,
    url: String,
    shown: String,
    opts: HttpOptions,
    headers: HeaderMap,
    resp: Option<reqwest::Response>,
    /// Bytes delivered to the pipeline so far.
    delivered: u64,
    /// Bytes of the current response to drop (restart without range support).
    skip: u64,
    /// Total length, once known.
    total: Option<u64>,
    resumes: u32,
    /// Consecutive failures without progress.
    failures: u32,
    /// Whether the server refused a range once.
    no_ranges: bool,
    buf: BytesMut,
    done: bool,
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
            .redirect(reqwest::redirect::Policy::limited(10))
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
        reqwest::Url::parse(url)
            .map_err(|e| Error::new(ErrorKind::Spec, format!("invalid URL {url:?}: {e}")))?;
        Ok(HttpSource {
            client,
            url: url.to_string(),
            shown: redact(url),
            opts,
            headers,
            resp: None,
            delivered: 0,
            skip: 0,
            total: None,
            resumes: 0,
            failures: 0,
            no_ranges: false,
            buf: BytesMut::new(),
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
            let mut req = self.client.get(&self.url).headers(self.headers.clone());
            let ranged = from > 0 && !self.no_ranges;
            if ranged {
                req = req.header(RANGE, format!("bytes={from}-"));
            }
            let resp = match tokio::time::timeout(self.opts.stall_timeout, req.send()).await {
                Err(_) => {
                    last = format!("no answer within {:?}", self.opts.stall_timeout);
                    continue;
                }
                Ok(Err(e)) => {
                    last = format!("request failed: {e}");
                    continue;
                }
                Ok(Ok(r)) => r,
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

    /// The next piece of the body, handling stalls and early ends; `None` at the true end.
    async fn next_piece(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.resp.is_none() {
                if self.failures > 0 {
                    tokio::time::sleep(self.backoff(self.failures - 1)).await;
                }
                self.request(self.delivered).await?;
            }
            let Some(resp) = self.resp.as_mut() else {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "no response after a successful request",
                ));
            };
            let problem = match tokio::time::timeout(self.opts.stall_timeout, resp.chunk()).await {
                Ok(Ok(Some(b))) => {
                    self.failures = 0;
                    if self.skip > 0 {
                        let drop = self.skip.min(b.len() as u64);
                        self.skip -= drop;
                        let rest = b.slice(drop as usize..);
                        if rest.is_empty() {
                            continue;
                        }
                        return Ok(Some(rest));
                    }
                    return Ok(Some(b));
                }
                Ok(Ok(None)) => match self.total {
                    Some(t) if self.delivered + self.buf.len() as u64 != t => format!(
                        "connection closed after {} of {t} bytes",
                        self.delivered + self.buf.len() as u64
                    ),
                    _ => return Ok(None),
                },
                Ok(Err(e)) => format!(
                    "transfer failed after {} bytes: {e}",
                    self.delivered + self.buf.len() as u64
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
            // Flush what we hold first, so `delivered` is where the next request starts.
            if !self.buf.is_empty() {
                return Ok(Some(self.take_buf()));
            }
        }
    }

    fn take_buf(&mut self) -> Bytes {
        let b = self.buf.split().freeze();
        self.delivered += b.len() as u64;
        b
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
        // Coalesce the network's small pieces into large chunks (one copy, ~0.1 ns/B).
        while self.buf.len() < CHUNK_SIZE {
            match self.next_piece().await? {
                Some(b) => {
                    if self.resp.is_none() {
                        // next_piece flushed the buffer ahead of a resume (already counted).
                        return Ok(Some(b));
                    }
                    if self.buf.is_empty() && b.len() >= CHUNK_SIZE {
                        self.delivered += b.len() as u64;
                        return Ok(Some(b));
                    }
                    self.buf.extend_from_slice(&b);
                }
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.take_buf()))
    }

    fn resumes(&self) -> u32 {
        self.resumes
    }
}
