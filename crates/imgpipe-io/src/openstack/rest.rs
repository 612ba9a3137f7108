//! What every OpenStack API client here shares, so that each client depends on this module
//! and not on another client: the check of a configured endpoint URL, the size-capped read of
//! an answer's body, and values quoted safely for one-line messages.

use imgpipe_core::{Error, ErrorKind, Result};

/// An absolute http(s) URL without query, fragment or credentials.
pub(super) fn base_url(endpoint: &str, what: &str) -> Result<reqwest::Url> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::Spec,
            format!("invalid {what} {}: {why}", printable(endpoint)),
        )
    };
    let url = reqwest::Url::parse(endpoint).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme {:?}; only http and https are allowed",
            url.scheme()
        )));
    }
    if url.host_str().is_none() {
        return Err(bad("no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not allowed".into()));
    }
    Ok(url)
}

/// Read the body, `Ok(None)` if it is longer than `cap`.
pub(super) async fn read_capped(
    resp: &mut reqwest::Response,
    cap: usize,
) -> std::result::Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if chunk.len() > cap.saturating_sub(body.len()) {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// `s` with control characters escaped and quoted, safe in a one-line message.
/// An `X-Auth-Token` value marked sensitive (never printed by the HTTP client), or a spec
/// error naming the service without showing the token.
pub(super) fn token_header(
    token: Option<String>,
    service: &str,
) -> Result<Option<reqwest::header::HeaderValue>> {
    let Some(t) = token else {
        return Ok(None);
    };
    let mut v = reqwest::header::HeaderValue::from_str(&t).map_err(|_| {
        Error::new(
            ErrorKind::Spec,
            format!(
                "{service} token is not a valid HTTP header value \
                 (it must be visible ASCII without control characters)"
            ),
        )
    })?;
    v.set_sensitive(true);
    Ok(Some(v))
}

pub(super) fn printable(s: &str) -> String {
    let t: String = s.chars().take(128).flat_map(char::escape_debug).collect();
    format!("\"{t}\"")
}
