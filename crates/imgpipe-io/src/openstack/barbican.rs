//! Fetching an image-signing certificate from OpenStack Barbican, as cursive/castellan do for
//! `img_signature_certificate_uuid`.
//!
//! Two requests, both with `X-Auth-Token` when a token is set:
//!
//! 1. `GET {endpoint}/v1/secrets/{uuid}`: the secret's metadata. Its `secret_type` must be
//!    `certificate`; `content_types.default` names the payload's content type.
//! 2. `GET {endpoint}/v1/secrets/{uuid}/payload` with `Accept:` that content type: the raw
//!    certificate, PEM (what castellan requires) or DER.
//!
//! Failures are [`ErrorKind::Certificate`] errors (a rejection of the image: its signature
//! cannot be checked) with these checks:
//!
//! | check | meaning |
//! |---|---|
//! | `certificate.uuid` | the id is not a UUID (no request is made) |
//! | `certificate.not_found` | Barbican answered 404 |
//! | `certificate.unavailable` | any other status, a network error, a timeout, a malformed or oversized answer |
//! | `certificate.secret_type` | the secret exists but is not a certificate |
//! | `certificate.parse`, `certificate.empty`, `certificate.too_large` | from [`load_certificates`] |
//!
//! Redirects are not followed (the token must not travel to another host), and every response
//! body is read with a size cap.

use std::time::Duration;

use crate::error_chain;
use imgpipe_core::{Error, ErrorKind, Result};
use imgpipe_crypto::signature::{MAX_CERTIFICATE_BYTES, load_certificates};
use openssl::x509::X509;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderValue};

use super::rest::read_capped;

/// Default limit for establishing a TCP/TLS connection to Barbican.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit for each whole request (connect, send, receive the full body).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest secret-metadata document accepted (Barbican's are a few hundred bytes).
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Longest `content_types.default` accepted as an `Accept` header value.
const MAX_CONTENT_TYPE_LEN: usize = 255;

const CHECK_UUID: &str = "certificate.uuid";
const CHECK_NOT_FOUND: &str = "certificate.not_found";
const CHECK_UNAVAILABLE: &str = "certificate.unavailable";
const CHECK_SECRET_TYPE: &str = "certificate.secret_type";

/// A client for Barbican's secrets API, used to fetch signing certificates by UUID.
#[derive(Debug, Clone)]
pub struct BarbicanClient {
    /// `{endpoint}/v1/secrets/`, always ending in a slash.
    secrets_url: reqwest::Url,
    token: Option<HeaderValue>,
    client: reqwest::Client,
    request_timeout: Duration,
}

impl BarbicanClient {
    /// A client for the Barbican at `endpoint` (e.g. `https://keymgr.example:9311`), sending
    /// `token` as `X-Auth-Token` when given. An endpoint that already ends in `/v1` is used as
    /// is. Uses [`DEFAULT_CONNECT_TIMEOUT`] and [`DEFAULT_REQUEST_TIMEOUT`].
    ///
    /// Errors ([`ErrorKind::Spec`]): the endpoint is not an absolute `http`/`https` URL without
    /// query, fragment or credentials, or the token is not a valid header value.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Self> {
        Self::with_timeouts(
            endpoint,
            token,
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_REQUEST_TIMEOUT,
        )
    }

    /// Like [`BarbicanClient::new`] with explicit timeouts: `connect` bounds establishing a
    /// connection, `request` bounds each whole request including its body.
    pub fn with_timeouts(
        endpoint: &str,
        token: Option<String>,
        connect: Duration,
        request: Duration,
    ) -> Result<Self> {
        let secrets_url = secrets_url(endpoint)?;
        let token = super::rest::token_header(token, "Barbican")?;
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(request)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot build the HTTP client for Barbican: {e}"),
                )
                .with_source(e)
            })?;
        Ok(BarbicanClient {
            secrets_url,
            token,
            client,
            request_timeout: request,
        })
    }

    /// Fetch the certificate stored in Barbican as secret `uuid` (the image's
    /// `img_signature_certificate_uuid`).
    ///
    /// Returns every certificate in the payload (normally one; the first is the signing
    /// certificate). The `uuid` must be in canonical 8-4-4-4-12 hexadecimal form; it is checked
    /// before any URL is built. See the [module documentation](self) for the error checks.
    pub async fn fetch_certificate(&self, uuid: &str) -> Result<Vec<X509>> {
        validate_uuid(uuid)?;
        let meta_url = self.url_for(uuid, false)?;
        let meta_body = self
            .get(&meta_url, None, MAX_METADATA_BYTES, "secret metadata")
            .await?;
        let accept = secret_accept_header(uuid, meta_url.as_str(), &meta_body)?;

        let payload_url = self.url_for(uuid, true)?;
        let payload = self
            .get(
                &payload_url,
                Some(accept),
                MAX_CERTIFICATE_BYTES,
                "secret payload",
            )
            .await?;
        load_certificates(&payload).map_err(|e| {
            let message = format!("Barbican secret {uuid}: {}", e.message);
            Error::check(ErrorKind::Certificate, e.check, message).with_source(e)
        })
    }

    fn url_for(&self, uuid: &str, payload: bool) -> Result<reqwest::Url> {
        let rel = if payload {
            format!("{uuid}/payload")
        } else {
            uuid.to_string()
        };
        self.secrets_url.join(&rel).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot build a Barbican URL for secret {uuid}: {e}"),
            )
        })
    }

    /// GET `url`, returning the body of a 200 answer read up to `cap` bytes.
    async fn get(
        &self,
        url: &reqwest::Url,
        accept: Option<HeaderValue>,
        cap: usize,
        what: &str,
    ) -> Result<Vec<u8>> {
        let mut req = self.client.get(url.clone());
        if let Some(token) = &self.token {
            req = req.header("X-Auth-Token", token.clone());
        }
        if let Some(accept) = accept {
            req = req.header(ACCEPT, accept);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| self.network_error(what, url, e))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(Error::check(
                ErrorKind::Certificate,
                CHECK_NOT_FOUND,
                format!("Barbican has no secret at {url} (HTTP 404)"),
            ));
        }
        if status != StatusCode::OK {
            // A short excerpt of the error document helps tell 401 from 403 causes apart.
            let excerpt = match read_capped(&mut resp, 4096).await {
                Ok(Some(body)) => describe_error_body(&body),
                _ => String::new(),
            };
            return Err(unavailable(format!(
                "Barbican answered HTTP {status} to GET {url} ({what}); expected 200{excerpt}"
            )));
        }
        if let Some(len) = resp.content_length()
            && len > cap as u64
        {
            return Err(unavailable(format!(
                "{what} from {url} is {len} bytes; at most {cap} are accepted"
            )));
        }
        match read_capped(&mut resp, cap).await {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(unavailable(format!(
                "{what} from {url} exceeds {cap} bytes"
            ))),
            Err(e) => Err(self.network_error(what, url, e)),
        }
    }

    fn network_error(&self, what: &str, url: &reqwest::Url, e: reqwest::Error) -> Error {
        let cause = if e.is_timeout() {
            format!(
                "timed out (limit {} s per request)",
                self.request_timeout.as_secs_f64()
            )
        } else if e.is_connect() {
            format!("cannot connect: {}", error_chain(&e))
        } else {
            error_chain(&e)
        };
        unavailable(format!(
            "Barbican unreachable fetching {what} from {url}: {cause}"
        ))
        .with_source(e)
    }
}

fn unavailable(message: String) -> Error {
    Error::check(ErrorKind::Certificate, CHECK_UNAVAILABLE, message)
}

/// `{endpoint}/v1/secrets/` from a user-supplied endpoint.
fn secrets_url(endpoint: &str) -> Result<reqwest::Url> {
    let mut url = super::rest::base_url(endpoint, "Barbican endpoint")?;
    let mut path = url.path().trim_end_matches('/').to_string();
    if !path.ends_with("/v1") {
        path.push_str("/v1");
    }
    path.push_str("/secrets/");
    url.set_path(&path);
    Ok(url)
}

/// Accept only the canonical textual UUID form, so the id cannot alter the request path.
fn validate_uuid(uuid: &str) -> Result<()> {
    let b = uuid.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        let shown: String = uuid.chars().take(64).collect();
        Err(Error::check(
            ErrorKind::Certificate,
            CHECK_UUID,
            format!(
                "certificate id {} ({} bytes) is not a UUID; expected 8-4-4-4-12 hexadecimal digits",
                printable(&shown),
                uuid.len()
            ),
        ))
    }
}

/// Read a secret's metadata document (fetched from `meta_url`): the secret must be a
/// certificate, and its default content type becomes the payload request's `Accept` header.
/// Pure (no I/O), so it is fuzzed.
fn secret_accept_header(uuid: &str, meta_url: &str, body: &[u8]) -> Result<HeaderValue> {
    let meta: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        unavailable(format!(
            "secret metadata from {meta_url} is not valid JSON: {e}"
        ))
    })?;
    let secret_type = meta.get("secret_type").and_then(|v| v.as_str());
    if secret_type != Some("certificate") {
        let seen = match meta.get("secret_type") {
            None => "no secret_type field".to_string(),
            Some(v) => format!("secret_type {}", printable(&v.to_string())),
        };
        return Err(Error::check(
            ErrorKind::Certificate,
            CHECK_SECRET_TYPE,
            format!("Barbican secret {uuid} has {seen}; only \"certificate\" is accepted"),
        ));
    }
    let content_type = meta
        .get("content_types")
        .and_then(|c| c.get("default"))
        .and_then(|d| d.as_str())
        .ok_or_else(|| {
            unavailable(format!(
                "Barbican secret {uuid} has no content_types.default: it holds no payload"
            ))
        })?;
    let accept = content_type_header(content_type).ok_or_else(|| {
        unavailable(format!(
            "Barbican secret {uuid} has an unusable content_types.default {}",
            printable(content_type)
        ))
    })?;

    Ok(accept)
}

/// Fuzzing: the pure readers of Barbican answers (secret metadata, error documents, the
/// certificate id check) on `data`.
#[doc(hidden)]
pub fn fuzz_secret_metadata(data: &[u8]) {
    let _ = secret_accept_header("00000000-0000-0000-0000-000000000000", "fuzz://", data);
    let _ = describe_error_body(data);
    let _ = validate_uuid(&String::from_utf8_lossy(data));
}

/// The `Accept` header for a content type named by the server, if it is a plausible media type.
fn content_type_header(ct: &str) -> Option<HeaderValue> {
    if ct.is_empty()
        || ct.len() > MAX_CONTENT_TYPE_LEN
        || !ct.contains('/')
        || !ct.bytes().all(|c| c.is_ascii_graphic() || c == b' ')
    {
        return None;
    }
    HeaderValue::from_str(ct).ok()
}

/// `: <description>` from a Barbican/OpenStack JSON error document, or a short text excerpt.
fn describe_error_body(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v
            .get("description")
            .or_else(|| v.get("title"))
            .and_then(|d| d.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text: String = printable(text.trim()).chars().take(200).collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// `s` with control characters escaped, safe to put in a one-line message.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoint_gets_v1_secrets_once() {
        for (ep, want) in [
            ("http://h:9311", "http://h:9311/v1/secrets/"),
            ("http://h:9311/", "http://h:9311/v1/secrets/"),
            ("http://h:9311/v1", "http://h:9311/v1/secrets/"),
            (
                "https://h/key-manager/",
                "https://h/key-manager/v1/secrets/",
            ),
            (
                "https://h/key-manager/v1/",
                "https://h/key-manager/v1/secrets/",
            ),
        ] {
            assert_eq!(secrets_url(ep).unwrap().as_str(), want, "{ep}");
        }
    }

    #[test]
    fn bad_endpoints_are_spec_errors() {
        for ep in [
            "",
            "h:9311",
            "ftp://h/",
            "file:///etc",
            "http://h/?x=1",
            "http://h/#f",
            "http://u:p@h/",
        ] {
            let e = BarbicanClient::new(ep, None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Spec, "{ep}: {e}");
        }
    }

    #[test]
    fn token_with_newline_is_rejected() {
        let e = BarbicanClient::new("http://h/", Some("a\r\nX-Evil: 1".into())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Spec);
        assert!(
            !e.message().contains("Evil"),
            "token must not be echoed: {e}"
        );
    }

    #[test]
    fn uuid_syntax() {
        validate_uuid("3547e2cd-1f7a-4c51-9b0a-0123456789AB").unwrap();
        for bad in [
            "",
            "3547e2cd1f7a4c519b0a0123456789ab",
            "3547e2cd-1f7a-4c51-9b0a-0123456789a",
            "3547e2cd-1f7a-4c51-9b0a-0123456789abc",
            "3547e2cd-1f7a-4c51-9b0a_0123456789ab",
            "../../../v1/secrets?x=1234567890abcdef",
            "3547e2cd-1f7a-4c51-9b0a-0123456789a/",
            "3547e2cd-1f7a-4c51-9b0a-01234567%2e%2e",
            "3547e2cd-1f7a-4c51-9b0a-0123456789aé",
        ] {
            let e = validate_uuid(bad).unwrap_err();
            assert_eq!(e.check_name(), Some(CHECK_UUID), "{bad:?}");
        }
    }

    #[test]
    fn accept_header_from_content_type() {
        assert!(content_type_header("application/octet-stream").is_some());
        assert!(content_type_header("text/plain; charset=utf-8").is_some());
        assert!(content_type_header("").is_none());
        assert!(content_type_header("text").is_none());
        assert!(content_type_header("text/plain\r\nX: y").is_none());
        assert!(content_type_header(&format!("a/{}", "b".repeat(300))).is_none());
    }

    #[test]
    fn error_body_excerpt() {
        assert_eq!(
            describe_error_body(br#"{"code": 403, "title": "Forbidden", "description": "No."}"#),
            ": No."
        );
        assert_eq!(describe_error_body(b"plain\ntext"), ": plain\\ntext");
        assert_eq!(describe_error_body(b""), "");
    }
}
