//! Keystone v3 password authentication and service-catalog lookup, for finding and calling
//! Glance (and Barbican) the way OpenStack clients do.
//!
//! [`password_token`] sends `POST {auth_url}/auth/tokens` with a project-scoped password
//! request and returns the `X-Subject-Token` answer header as a [`Token`] plus the token's
//! [`Catalog`]. The token is redacted in `Debug` output and never appears in errors.
//!
//! Failures are [`ErrorKind::Network`] errors with these checks:
//!
//! | check | meaning |
//! |---|---|
//! | `keystone.auth` | Keystone refused the credentials (401/403) |
//! | `keystone.unavailable` | any other status, a network error, a timeout, an oversized or malformed answer |
//!
//! [`Catalog::endpoint`] returns `None` when a service is missing; callers turn that into an
//! error naming what they looked for
//! ([`GlanceClient::from_keystone`](super::glance::GlanceClient::from_keystone) uses the check
//! `keystone.catalog`).

use std::fmt;
use std::time::Duration;

use imgpipe_core::{Error, ErrorKind, Result};
use reqwest::StatusCode;

use super::rest::{base_url, read_capped};

/// Largest token document accepted (catalogs of big clouds are tens of KiB).
pub const MAX_TOKEN_DOCUMENT_BYTES: usize = 4 << 20;
/// Limit for each whole request to Keystone.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const CHECK_AUTH: &str = "keystone.auth";
const CHECK_UNAVAILABLE: &str = "keystone.unavailable";

/// A Keystone token. `Debug` prints `Token(<redacted>)`; use [`Token::expose`] to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wrap a token string.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// The token itself, for an `X-Auth-Token` header. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token string, consuming the wrapper.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// One endpoint of a catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// Region id (`region_id`, else the legacy `region`), if any.
    pub region: Option<String>,
    /// The endpoint URL.
    pub url: String,
}

/// One service of a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service type, e.g. `image`, `key-manager`, `identity`.
    pub service_type: String,
    /// Service name, e.g. `glance`.
    pub name: Option<String>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// The service catalog of a Keystone v3 token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    /// Every service listed.
    pub services: Vec<Service>,
}

impl Catalog {
    /// Parse the `catalog` array of a v3 token document (`{"token": {"catalog": [...]}}`
    /// or the array itself). Entries without a type or URL are skipped.
    pub fn from_json(v: &serde_json::Value) -> Self {
        let arr = v
            .get("token")
            .and_then(|t| t.get("catalog"))
            .or_else(|| v.get("catalog"))
            .unwrap_or(v);
        let mut services = Vec::new();
        for s in arr.as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(service_type) = s.get("type").and_then(|t| t.as_str()) else {
                continue;
            };
            let endpoints = s
                .get("endpoints")
                .and_then(|e| e.as_array())
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|e| {
                    Some(Endpoint {
                        interface: e.get("interface")?.as_str()?.to_string(),
                        region: e
                            .get("region_id")
                            .and_then(|r| r.as_str())
                            .or_else(|| e.get("region").and_then(|r| r.as_str()))
                            .map(str::to_string),
                        url: e.get("url")?.as_str()?.to_string(),
                    })
                })
                .collect();
            services.push(Service {
                service_type: service_type.to_string(),
                name: s.get("name").and_then(|n| n.as_str()).map(str::to_string),
                endpoints,
            });
        }
        Catalog { services }
    }

    /// The URL of the first endpoint of a service of type `service_type` with interface
    /// `interface` (and region `region` when given), as keystoneauth's endpoint filter picks it.
    pub fn endpoint(
        &self,
        service_type: &str,
        interface: &str,
        region: Option<&str>,
    ) -> Option<&str> {
        self.services
            .iter()
            .filter(|s| s.service_type == service_type)
            .flat_map(|s| s.endpoints.iter())
            .find(|e| {
                e.interface == interface && region.is_none_or(|r| e.region.as_deref() == Some(r))
            })
            .map(|e| e.url.as_str())
    }
}

/// Password credentials for a project-scoped Keystone v3 token.
#[derive(Clone)]
pub struct PasswordAuth {
    /// The identity endpoint, e.g. `http://keystone:5000/v3` (a missing `/v3` is added).
    pub auth_url: String,
    /// User name.
    pub username: String,
    /// Password (redacted in `Debug`).
    pub password: String,
    /// Project name to scope the token to.
    pub project_name: String,
    /// Domain of the user (usually `Default`).
    pub user_domain_name: String,
    /// Domain of the project (usually `Default`).
    pub project_domain_name: String,
}

impl fmt::Debug for PasswordAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordAuth")
            .field("auth_url", &self.auth_url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("project_name", &self.project_name)
            .field("user_domain_name", &self.user_domain_name)
            .field("project_domain_name", &self.project_domain_name)
            .finish()
    }
}

/// Authenticate with a password and return a project-scoped token and its catalog.
/// Equivalent to [`PasswordAuth::token`] with the six fields.
pub async fn password_token(
    auth_url: &str,
    username: &str,
    password: &str,
    project_name: &str,
    user_domain_name: &str,
    project_domain_name: &str,
) -> Result<(Token, Catalog)> {
    PasswordAuth {
        auth_url: auth_url.into(),
        username: username.into(),
        password: password.into(),
        project_name: project_name.into(),
        user_domain_name: user_domain_name.into(),
        project_domain_name: project_domain_name.into(),
    }
    .token()
    .await
}

impl PasswordAuth {
    /// `POST {auth_url}/auth/tokens` (201 expected); the token is the `X-Subject-Token`
    /// header. Redirects are not followed (the password must not travel elsewhere).
    pub async fn token(&self) -> Result<(Token, Catalog)> {
        let url = tokens_url(&self.auth_url)?;
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.username,
                "domain": {"name": self.user_domain_name},
                "password": self.password,
            }}},
            "scope": {"project": {
                "name": self.project_name,
                "domain": {"name": self.project_domain_name},
            }},
        }});
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(DEFAULT_REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| unavailable(format!("cannot build the HTTP client: {e}")))?;
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("token request: {e}")))?;
        let mut resp = client
            .post(url.clone())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable(format!("POST {url} failed: {}", chain(&e))))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::check(
                ErrorKind::Network,
                CHECK_AUTH,
                format!(
                    "Keystone at {url} refused the password of user {:?} for project {:?} \
                     (HTTP {status})",
                    self.username, self.project_name
                ),
            ));
        }
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(unavailable(format!(
                "Keystone answered HTTP {status} to POST {url}; expected 201"
            )));
        }
        let token = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .map(Token::new)
            .ok_or_else(|| {
                unavailable(format!(
                    "Keystone's answer from {url} has no usable X-Subject-Token header"
                ))
            })?;
        let doc = read_capped(&mut resp, MAX_TOKEN_DOCUMENT_BYTES)
            .await
            .map_err(|e| unavailable(format!("reading the token from {url}: {}", chain(&e))))?
            .ok_or_else(|| {
                unavailable(format!(
                    "the token document from {url} exceeds {MAX_TOKEN_DOCUMENT_BYTES} bytes"
                ))
            })?;
        let catalog = parse_token_document(&doc)
            .map_err(|e| unavailable(format!("the token document from {url} is not JSON: {e}")))?;
        Ok((token, catalog))
    }
}

/// The service catalog of a token document (the body of `POST /v3/auth/tokens`). Pure.
fn parse_token_document(doc: &[u8]) -> std::result::Result<Catalog, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(doc)?;
    Ok(Catalog::from_json(&v))
}

/// Fuzzing: the token document reader and the endpoint lookups on its catalog.
#[doc(hidden)]
pub fn fuzz_token_document(data: &[u8]) {
    if let Ok(c) = parse_token_document(data) {
        for (ty, iface, region) in [
            ("image", "public", None),
            ("key-manager", "internal", Some("RegionOne")),
        ] {
            let _ = c.endpoint(ty, iface, region);
        }
    }
    let _ = tokens_url(&String::from_utf8_lossy(data));
}

fn tokens_url(auth_url: &str) -> Result<reqwest::Url> {
    let mut url = base_url(auth_url, "Keystone auth_url")?;
    let mut path = url.path().trim_end_matches('/').to_string();
    if !path.ends_with("/v3") {
        path.push_str("/v3");
    }
    path.push_str("/auth/tokens");
    url.set_path(&path);
    Ok(url)
}

fn unavailable(message: String) -> Error {
    Error::check(ErrorKind::Network, CHECK_UNAVAILABLE, message)
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error_chain(e)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn catalog_lookup_filters_type_interface_region() {
        let doc = serde_json::json!({"token": {"catalog": [
            {"type": "identity", "name": "keystone", "endpoints": [
                {"interface": "public", "region_id": "R1", "url": "http://ks/v3"}]},
            {"type": "image", "name": "glance", "endpoints": [
                {"interface": "internal", "region_id": "R1", "url": "http://int:9292"},
                {"interface": "public", "region_id": "R2", "url": "http://pub2:9292"},
                {"interface": "public", "region": "R1", "url": "http://pub1:9292"}]},
            {"name": "typeless", "endpoints": []}
        ]}});
        let c = Catalog::from_json(&doc);
        assert_eq!(c.services.len(), 2);
        assert_eq!(
            c.endpoint("image", "public", None),
            Some("http://pub2:9292")
        );
        assert_eq!(
            c.endpoint("image", "public", Some("R1")),
            Some("http://pub1:9292")
        );
        assert_eq!(
            c.endpoint("image", "internal", None),
            Some("http://int:9292")
        );
        assert_eq!(c.endpoint("image", "admin", None), None);
        assert_eq!(c.endpoint("key-manager", "public", None), None);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let t = Token::new("gAAAAAsecret");
        assert!(!format!("{t:?}").contains("secret"));
        let p = PasswordAuth {
            auth_url: "http://k/v3".into(),
            username: "u".into(),
            password: "hunter2".into(),
            project_name: "p".into(),
            user_domain_name: "Default".into(),
            project_domain_name: "Default".into(),
        };
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn tokens_url_adds_v3_once() {
        assert_eq!(
            tokens_url("http://k:5000/v3").unwrap().as_str(),
            "http://k:5000/v3/auth/tokens"
        );
        assert_eq!(
            tokens_url("http://k:5000/identity/").unwrap().as_str(),
            "http://k:5000/identity/v3/auth/tokens"
        );
        assert!(tokens_url("ftp://k").is_err());
        assert!(tokens_url("http://u:p@k/v3").is_err());
    }
}
