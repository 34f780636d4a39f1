//! Bounded HTTP GETs of JSON documents (authorization server metadata, JWKS): a timeout on
//! every fetch, a size limit on every body, `Cache-Control: max-age` read for the caller.

use std::time::Duration;

use http::header::{ACCEPT, CACHE_CONTROL};
use url::Url;

use crate::config::{ConfigError, KeySettings};

/// A shared HTTP client with the limits of [`KeySettings`]. Every fetch goes through it.
#[derive(Clone, Debug)]
pub(crate) struct Fetcher {
    client: reqwest::Client,
    max_bytes: usize,
}

/// A fetched JSON document.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) json: serde_json::Value,
    pub(crate) max_age: Option<Duration>,
}

/// Why a fetch failed. The text names the URL and is safe to log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("GET {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("GET {url}: the body is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("GET {url}: the body is not JSON: {reason}")]
    NotJson { url: String, reason: String },
}

impl Fetcher {
    pub(crate) fn new(settings: &KeySettings) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .connect_timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("bmm-middleware/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::new(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            max_bytes: settings.max_document_bytes,
        })
    }

    pub(crate) async fn get_json(&self, url: &Url) -> Result<Fetched, FetchError> {
        let transport = |e: reqwest::Error| FetchError::Transport {
            url: url.to_string(),
            reason: error_chain(&e),
        };
        let mut response = self
            .client
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit: self.max_bytes,
            });
        }
        let max_age = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                    limit: self.max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let json = serde_json::from_slice(&body).map_err(|e| FetchError::NotJson {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Fetched { json, max_age })
    }
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads `max-age` from a `Cache-Control` value; `no-store`/`no-cache` mean zero.
pub(crate) fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some((name, v)) = directive.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
        {
            max_age = v
                .trim()
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age_is_read_and_no_store_means_zero() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_max_age("max-age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }
}
