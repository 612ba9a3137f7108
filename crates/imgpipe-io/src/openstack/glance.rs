//! OpenStack Glance Images API v2 as an image source: the image record, then the data.
//!
//! [`GlanceClient::image`] fetches `GET {endpoint}/v2/images/{id}` and returns a
//! [`GlanceImage`]: the declared format, sizes, the hashes Glance computed on upload
//! (`os_hash_algo`/`os_hash_value`, legacy MD5 `checksum`) and the whole record (for the
//! `img_signature*` properties, which Glance returns as top-level string fields). The image must
//! be `active`. The data is then streamed from [`GlanceClient::data_url`] by an
//! [`HttpSource`] built by [`GlanceClient::source`], which adds the `X-Auth-Token` header and
//! brings retries, the stall timeout and `Range` resume (Glance's file store serves single
//! ranges with `206` and a `Content-Range`, which the source checks).
//!
//! Image ids must be canonical UUIDs (8-4-4-4-12 hex, as Glance's schema requires); this is
//! checked before any URL is built, so an id cannot alter the request path.
//!
//! Errors and their checks:
//!
//! | check | kind | meaning |
//! |---|---|---|
//! | `glance.image_id` | Spec | the id is not a UUID (no request is made) |
//! | `glance.not_found` | Network | Glance answered 404 |
//! | `glance.auth` | Network | Glance answered 401/403 |
//! | `glance.unavailable` | Network | any other status, network error, timeout, oversized answer |
//! | `glance.record` | InvalidImage | the record is not JSON, names another id, or has a malformed field |
//! | `glance.status` | InvalidImage | the image is not `active` (no data, or deactivated/killed/deleted) |
//! | `signature.properties` | BadSignature | some but not all four `img_signature*` properties are set |
//!
//! The token is sent only to the configured endpoint: the record request follows no
//! redirects, the data request follows them but sends the token only to the endpoint's own
//! origin (scheme, host, port), and the token never appears in an error message or `Debug`
//! output.
//!
//! Glance's download answer carries `Content-MD5` (the whole image's MD5 as 32 hex digits,
//! also on `206` answers): [`HttpSource::content_md5_hex`] exposes it after
//! [`HttpSource::connect`], for glanceclient's rule 3 (used only when the record has neither a
//! usable `os_hash_value` nor a `checksum`).

use std::time::Duration;

use crate::error_chain;
use imgpipe_core::{Error, ErrorKind, Result};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderValue};
use serde_json::{Map, Value};

use super::keystone::{Catalog, PasswordAuth, Token};
use super::rest::{base_url, printable, read_capped};
use crate::sources::{HttpOptions, HttpSource};

/// Largest image record accepted (Glance caps properties at 128 by default, 255 chars each).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Default limit for the whole record request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const CHECK_ID: &str = "glance.image_id";
const CHECK_NOT_FOUND: &str = "glance.not_found";
const CHECK_AUTH: &str = "glance.auth";
const CHECK_UNAVAILABLE: &str = "glance.unavailable";
const CHECK_RECORD: &str = "glance.record";
const CHECK_STATUS: &str = "glance.status";
const CHECK_SIG_PROPS: &str = "signature.properties";

/// The names of the four signature properties, in cursive's order.
pub const SIGNATURE_PROPERTIES: [&str; 4] = [
    "img_signature",
    "img_signature_hash_method",
    "img_signature_key_type",
    "img_signature_certificate_uuid",
];

/// A Glance image record (the fields a source needs, plus the whole record).
#[derive(Debug, Clone, PartialEq)]
pub struct GlanceImage {
    /// Image id (equal to the one requested).
    pub id: String,
    /// `active` (anything else is refused by [`GlanceClient::image`]).
    pub status: String,
    /// Declared `disk_format` (`raw`, `qcow2`, …).
    pub disk_format: Option<String>,
    /// Declared `container_format` (`bare`, `ovf`, …).
    pub container_format: Option<String>,
    /// Size of the stored bytes.
    pub size: Option<u64>,
    /// Virtual disk size Glance computed (may be absent).
    pub virtual_size: Option<u64>,
    /// Legacy MD5 of the stored bytes, lowercase hex (32 digits).
    pub checksum: Option<String>,
    /// Multihash algorithm (`sha512` by default), as Glance names it.
    pub os_hash_algo: Option<String>,
    /// Multihash value, lowercase hex.
    pub os_hash_value: Option<String>,
    /// The whole record, including `img_signature*` and other properties.
    pub properties: Map<String, Value>,
}

/// The four `img_signature*` properties of a signed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlanceSignature {
    /// `img_signature` (base64, as stored).
    pub signature: String,
    /// `img_signature_hash_method` (`SHA-256`, …).
    pub hash_method: String,
    /// `img_signature_key_type` (`RSA-PSS`, …).
    pub key_type: String,
    /// `img_signature_certificate_uuid` (a Barbican secret id).
    pub certificate_uuid: String,
}

impl GlanceImage {
    /// Parse and check a record answered for `requested_id`. Hash fields are lowercased and
    /// must be hex (`checksum`: 32 digits); sizes must be non-negative integers or null; the
    /// record's `id` must equal `requested_id`. Does not check the status.
    pub fn from_json(requested_id: &str, body: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| record_err(requested_id, format!("is not valid JSON: {e}")))?;
        let Value::Object(map) = v else {
            return Err(record_err(requested_id, "is not a JSON object".into()));
        };
        let id = opt_str(&map, "id", requested_id)?.unwrap_or_default();
        if id != requested_id {
            return Err(record_err(
                requested_id,
                format!("names image id {}", printable(&id)),
            ));
        }
        let status = opt_str(&map, "status", requested_id)?
            .ok_or_else(|| record_err(requested_id, "has no status".into()))?;
        let checksum = opt_hex(&map, "checksum", Some(32), requested_id)?;
        let os_hash_value = opt_hex(&map, "os_hash_value", None, requested_id)?;
        let os_hash_algo = opt_str(&map, "os_hash_algo", requested_id)?;
        if let Some(a) = &os_hash_algo
            && (a.is_empty()
                || a.len() > 64
                || !a
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(record_err(
                requested_id,
                format!("has os_hash_algo {}, not an algorithm name", printable(a)),
            ));
        }
        if os_hash_algo.is_some() != os_hash_value.is_some() {
            return Err(record_err(
                requested_id,
                "has only one of os_hash_algo and os_hash_value".into(),
            ));
        }
        Ok(GlanceImage {
            disk_format: opt_str(&map, "disk_format", requested_id)?,
            container_format: opt_str(&map, "container_format", requested_id)?,
            size: opt_u64(&map, "size", requested_id)?,
            virtual_size: opt_u64(&map, "virtual_size", requested_id)?,
            id,
            status,
            checksum,
            os_hash_algo,
            os_hash_value,
            properties: map,
        })
    }

    /// A string property of the record (`None` when absent, null or not a string).
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key).and_then(Value::as_str)
    }

    /// The signature properties: `Ok(None)` when none of the four is set, all four when all
    /// are set (non-empty strings), else a `signature.properties` error (as cursive refuses
    /// an image with an incomplete set).
    pub fn signature(&self) -> Result<Option<GlanceSignature>> {
        let mut vals: [Option<String>; 4] = Default::default();
        for (slot, key) in vals.iter_mut().zip(SIGNATURE_PROPERTIES) {
            *slot = match self.properties.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(_) => {
                    return Err(Error::check(
                        ErrorKind::BadSignature,
                        CHECK_SIG_PROPS,
                        format!("image {}: property {key} is empty or not a string", self.id),
                    ));
                }
            };
        }
        let missing: Vec<&str> = SIGNATURE_PROPERTIES
            .iter()
            .zip(&vals)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if missing.len() == 4 {
            return Ok(None);
        }
        match vals {
            [
                Some(signature),
                Some(hash_method),
                Some(key_type),
                Some(certificate_uuid),
            ] => Ok(Some(GlanceSignature {
                signature,
                hash_method,
                key_type,
                certificate_uuid,
            })),
            _ => Err(Error::check(
                ErrorKind::BadSignature,
                CHECK_SIG_PROPS,
                format!(
                    "image {} has some img_signature properties but lacks {}; all four or none \
                     are allowed",
                    self.id,
                    missing.join(", ")
                ),
            )),
        }
    }
}

/// Fuzzing: the image record reader (for the id the seed records carry), its signature
/// properties, and the image id check.
#[doc(hidden)]
pub fn fuzz_image_record(data: &[u8]) {
    if let Ok(img) = GlanceImage::from_json("6d1b1b2e-7c5a-4c4e-9d7a-2f0a3e5b9c11", data) {
        let _ = img.signature();
        let _ = img.property("img_signature");
    }
    let _ = validate_image_id(&String::from_utf8_lossy(data));
}

/// A client for Glance's Images API v2.
#[derive(Debug, Clone)]
pub struct GlanceClient {
    /// Endpoint without a trailing slash or `/v2`, e.g. `http://glance:9292` or
    /// `http://cloud/image`.
    base: reqwest::Url,
    token: Option<HeaderValue>,
    client: reqwest::Client,
    opts: HttpOptions,
    request_timeout: Duration,
}

impl GlanceClient {
    /// A client for the Glance at `endpoint` (`http://127.0.0.1:9292`; a trailing `/v2` is
    /// accepted), sending `token` as `X-Auth-Token` when given. Default [`HttpOptions`].
    ///
    /// Errors ([`ErrorKind::Spec`]): the endpoint is not an absolute `http`/`https` URL without
    /// query, fragment or credentials, or the token is not a valid header value.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Self> {
        Self::with_options(endpoint, token, HttpOptions::default())
    }

    /// Like [`GlanceClient::new`], with the retry behaviour (attempts, backoff, connect and
    /// stall timeouts) used for both the record request and the data source. `opts.headers`
    /// are sent on the data request (the token is added by the client).
    pub fn with_options(endpoint: &str, token: Option<String>, opts: HttpOptions) -> Result<Self> {
        let mut base = base_url(endpoint, "Glance endpoint")?;
        let path = base.path().trim_end_matches('/');
        let path = path.strip_suffix("/v2").unwrap_or(path).to_string();
        base.set_path(&path);
        let token = super::rest::token_header(token, "Glance")?;
        let request_timeout = DEFAULT_REQUEST_TIMEOUT.max(opts.stall_timeout);
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot build the HTTP client for Glance: {e}"),
                )
            })?;
        Ok(GlanceClient {
            base,
            token,
            client,
            opts,
            request_timeout,
        })
    }

    /// Authenticate with Keystone and find the image endpoint in the token's catalog
    /// (type `image`, interface `public`, any region), unless `endpoint` overrides it.
    /// Also returns the catalog (e.g. for the `key-manager` endpoint) and the token, for
    /// Barbican. Catalog misses are `keystone.catalog` ([`ErrorKind::Spec`]) errors.
    pub async fn from_keystone(
        auth: &PasswordAuth,
        endpoint: Option<&str>,
        opts: HttpOptions,
    ) -> Result<(Self, Catalog, Token)> {
        let (token, catalog) = auth.token().await?;
        let ep = match endpoint {
            Some(e) => e.to_string(),
            None => catalog
                .endpoint("image", "public", None)
                .ok_or_else(|| {
                    Error::check(
                        ErrorKind::Spec,
                        "keystone.catalog",
                        format!(
                            "the catalog of {} has no public endpoint of type \"image\"",
                            auth.auth_url
                        ),
                    )
                })?
                .to_string(),
        };
        let client = Self::with_options(&ep, Some(token.expose().to_string()), opts)?;
        Ok((client, catalog, token))
    }

    /// The endpoint in use (without `/v2`).
    pub fn endpoint(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `{endpoint}/v2/images/{id}`; call only with a validated id.
    fn image_url(&self, id: &str) -> String {
        format!("{}/v2/images/{id}", self.endpoint())
    }

    /// `{endpoint}/v2/images/{id}/file`: where the image data is.
    pub fn data_url(&self, id: &str) -> String {
        format!("{}/file", self.image_url(id))
    }

    /// Fetch and check the record of image `id` (`GET /v2/images/{id}`); it must be `active`.
    /// Connect errors, 5xx and 429 answers are retried as [`HttpOptions`] say.
    pub async fn image(&self, id: &str) -> Result<GlanceImage> {
        validate_image_id(id)?;
        let url = self.image_url(id);
        let body = self.get_record(&url).await?;
        let img = GlanceImage::from_json(id, &body)?;
        if img.status != "active" {
            let why = match img.status.as_str() {
                "queued" | "saving" | "uploading" | "importing" => "it has no data yet",
                "deactivated" => "an administrator deactivated it",
                "killed" => "its upload failed",
                "deleted" | "pending_delete" => "it is deleted",
                _ => "only active images can be read",
            };
            return Err(Error::check(
                ErrorKind::InvalidImage,
                CHECK_STATUS,
                format!(
                    "Glance image {id} has status {}; expected \"active\" ({why})",
                    printable(&img.status)
                ),
            ));
        }
        Ok(img)
    }

    /// An [`HttpSource`] streaming image `id`'s data with the token, the client's retry
    /// behaviour and `Range` resume. Nothing is sent until the first read.
    pub fn source(&self, id: &str) -> Result<HttpSource> {
        validate_image_id(id)?;
        let mut opts = self.opts.clone();
        opts.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("x-auth-token"));
        if let Some(t) = &self.token {
            let t = t.to_str().map_err(|_| {
                Error::new(ErrorKind::Internal, "token is not a visible-ASCII string")
            })?;
            opts.headers.push(("X-Auth-Token".into(), t.to_string()));
        }
        HttpSource::new(&self.data_url(id), opts)
    }

    async fn get_record(&self, url: &str) -> Result<Vec<u8>> {
        let attempts = self.opts.attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                let delay = self
                    .opts
                    .backoff
                    .saturating_mul(1u32 << (attempt - 1).min(16))
                    .min(Duration::from_secs(10));
                tokio::time::sleep(delay).await;
            }
            let mut req = self
                .client
                .get(url)
                .header(ACCEPT, HeaderValue::from_static("application/json"));
            if let Some(t) = &self.token {
                req = req.header("X-Auth-Token", t.clone());
            }
            let mut resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = if e.is_timeout() {
                        format!("timed out after {:?}", self.request_timeout)
                    } else {
                        error_chain(&e)
                    };
                    continue;
                }
            };
            let status = resp.status();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                last = format!("HTTP {status}");
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return Err(Error::check(
                    ErrorKind::Network,
                    CHECK_NOT_FOUND,
                    format!("Glance has no image at {url} (HTTP 404)"),
                ));
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(Error::check(
                    ErrorKind::Network,
                    CHECK_AUTH,
                    format!(
                        "Glance refused GET {url} with HTTP {status} (token {})",
                        if self.token.is_some() {
                            "sent but not accepted"
                        } else {
                            "not configured"
                        }
                    ),
                ));
            }
            if status != StatusCode::OK {
                return Err(unavailable(format!(
                    "Glance answered HTTP {status} to GET {url}; expected 200"
                )));
            }
            if let Some(len) = resp.content_length()
                && len > MAX_RECORD_BYTES as u64
            {
                return Err(unavailable(format!(
                    "the image record at {url} is {len} bytes; at most {MAX_RECORD_BYTES} are accepted"
                )));
            }
            return match read_capped(&mut resp, MAX_RECORD_BYTES).await {
                Ok(Some(b)) => Ok(b),
                Ok(None) => Err(unavailable(format!(
                    "the image record at {url} exceeds {MAX_RECORD_BYTES} bytes"
                ))),
                Err(e) => Err(unavailable(format!(
                    "reading the image record at {url}: {}",
                    error_chain(&e)
                ))),
            };
        }
        Err(unavailable(format!(
            "GET {url}: giving up after {attempts} attempt{}: {last}",
            if attempts == 1 { "" } else { "s" }
        )))
    }
}

/// Accept only the canonical textual UUID form (Glance's id schema), so the id cannot alter
/// the request path.
pub fn validate_image_id(id: &str) -> Result<()> {
    let b = id.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        return Ok(());
    }
    let shown: String = id.chars().take(64).collect();
    Err(Error::check(
        ErrorKind::Spec,
        CHECK_ID,
        format!(
            "Glance image id {} ({} bytes) is not a UUID; expected 8-4-4-4-12 hexadecimal digits",
            printable(&shown),
            id.len()
        ),
    ))
}

fn record_err(id: &str, what: String) -> Error {
    Error::check(
        ErrorKind::InvalidImage,
        CHECK_RECORD,
        format!("the Glance record of image {} {what}", printable(id)),
    )
}

fn unavailable(message: String) -> Error {
    Error::check(ErrorKind::Network, CHECK_UNAVAILABLE, message)
}

fn opt_str(map: &Map<String, Value>, key: &str, id: &str) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(record_err(
            id,
            format!("has {key} = {}, expected a string", short(v)),
        )),
    }
}

fn opt_u64(map: &Map<String, Value>, key: &str, id: &str) -> Result<Option<u64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            record_err(
                id,
                format!("has {key} = {}, expected a non-negative integer", short(v)),
            )
        }),
    }
}

fn opt_hex(
    map: &Map<String, Value>,
    key: &str,
    len: Option<usize>,
    id: &str,
) -> Result<Option<String>> {
    let Some(s) = opt_str(map, key, id)? else {
        return Ok(None);
    };
    let s = s.to_ascii_lowercase();
    let ok = !s.is_empty()
        && s.len() % 2 == 0
        && s.len() <= 256
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && len.is_none_or(|l| s.len() == l);
    if !ok {
        let want = len.map_or("an even number of hex digits".to_string(), |l| {
            format!("{l} hex digits")
        });
        return Err(record_err(
            id,
            format!("has {key} = {}, expected {want}", printable(&s)),
        ));
    }
    Ok(Some(s))
}

fn short(v: &Value) -> String {
    printable(&v.to_string()).chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ID: &str = "b1405874-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn record(extra: Value) -> Vec<u8> {
        let mut v = serde_json::json!({
            "id": ID, "status": "active", "disk_format": "qcow2", "container_format": "bare",
            "size": 3000000, "virtual_size": null,
            "checksum": "9F956BA4C135DF4DB401DEF602A69D6C",
            "os_hash_algo": "sha512", "os_hash_value": "17632cf2cb9d096a",
            "my_prop": "abc"
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn parses_record_and_lowercases_hashes() {
        let img = GlanceImage::from_json(ID, &record(serde_json::json!({}))).unwrap();
        assert_eq!(img.size, Some(3_000_000));
        assert_eq!(img.virtual_size, None);
        assert_eq!(img.disk_format.as_deref(), Some("qcow2"));
        assert_eq!(
            img.checksum.as_deref(),
            Some("9f956ba4c135df4db401def602a69d6c")
        );
        assert_eq!(img.property("my_prop"), Some("abc"));
        assert_eq!(img.signature().unwrap(), None);
    }

    #[test]
    fn malformed_fields_are_record_errors() {
        for bad in [
            serde_json::json!({"id": "00000000-0000-0000-0000-000000000000"}),
            serde_json::json!({"size": -1}),
            serde_json::json!({"size": 1.5}),
            serde_json::json!({"size": "12"}),
            serde_json::json!({"checksum": "abc"}),
            serde_json::json!({"os_hash_value": "zz"}),
            serde_json::json!({"os_hash_value": null}),
            serde_json::json!({"os_hash_algo": "sha512\n"}),
            serde_json::json!({"status": null}),
            serde_json::json!({"disk_format": 7}),
        ] {
            let e = GlanceImage::from_json(ID, &record(bad.clone())).unwrap_err();
            assert_eq!(e.check_name(), Some(CHECK_RECORD), "{bad}: {e}");
            assert_eq!(e.kind(), ErrorKind::InvalidImage);
        }
        let e = GlanceImage::from_json(ID, b"[1]").unwrap_err();
        assert_eq!(e.check_name(), Some(CHECK_RECORD));
    }

    #[test]
    fn signature_properties_all_or_none() {
        let all = serde_json::json!({
            "img_signature": "c2ln", "img_signature_hash_method": "SHA-256",
            "img_signature_key_type": "RSA-PSS",
            "img_signature_certificate_uuid": "11111111-2222-3333-4444-555555555555"});
        let img = GlanceImage::from_json(ID, &record(all.clone())).unwrap();
        let s = img.signature().unwrap().unwrap();
        assert_eq!(s.hash_method, "SHA-256");
        assert_eq!(s.certificate_uuid, "11111111-2222-3333-4444-555555555555");
        for drop in SIGNATURE_PROPERTIES {
            let mut part = all.clone();
            part[drop] = Value::Null;
            let img = GlanceImage::from_json(ID, &record(part)).unwrap();
            let e = img.signature().unwrap_err();
            assert_eq!(e.check_name(), Some(CHECK_SIG_PROPS));
            assert!(e.message().contains(drop), "{e}");
        }
        let mut empty = all;
        empty["img_signature"] = Value::String(String::new());
        let img = GlanceImage::from_json(ID, &record(empty)).unwrap();
        assert_eq!(
            img.signature().unwrap_err().check_name(),
            Some(CHECK_SIG_PROPS)
        );
    }

    #[test]
    fn image_ids_must_be_uuids() {
        validate_image_id(ID).unwrap();
        validate_image_id(&ID.to_ascii_uppercase()).unwrap();
        for bad in [
            "",
            "../../v2/images",
            "b1405874-1c2d-4e5f-8a9b-0c1d2e3f4a5b/../x",
            "b14058741c2d4e5f8a9b0c1d2e3f4a5b",
            "b1405874-1c2d-4e5f-8a9b-0c1d2e3f4a5?",
            "b1405874-1c2d-4e5f-8a9b-0c1d2e3f4a5%",
        ] {
            let e = validate_image_id(bad).unwrap_err();
            assert_eq!(e.check_name(), Some(CHECK_ID));
            assert_eq!(e.kind(), ErrorKind::Spec);
        }
    }

    #[test]
    fn endpoint_normalisation_and_urls() {
        for ep in [
            "http://g:9292",
            "http://g:9292/",
            "http://g:9292/v2",
            "http://g:9292/v2/",
        ] {
            let c = GlanceClient::new(ep, None).unwrap();
            assert_eq!(c.data_url(ID), format!("http://g:9292/v2/images/{ID}/file"));
        }
        let c = GlanceClient::new("https://cloud/image", None).unwrap();
        assert_eq!(c.endpoint(), "https://cloud/image");
        for bad in ["ftp://g", "http://u:p@g", "http://g/?x=1", "g:9292"] {
            assert_eq!(
                GlanceClient::new(bad, None).unwrap_err().kind(),
                ErrorKind::Spec
            );
        }
        assert!(GlanceClient::new("http://g", Some("a\nb".into())).is_err());
    }

    #[test]
    fn token_never_in_debug() {
        let c = GlanceClient::new("http://g", Some("gAAAAAtopsecret".into())).unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
        let e = c.source("not-a-uuid").err().unwrap();
        assert!(!e.to_string().contains("topsecret"));
    }
}
