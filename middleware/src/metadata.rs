//! RFC 9728 protected resource metadata, served without authentication.
//!
//! Rules:
//! 1. The document is served at the root well-known URL
//!    `/.well-known/oauth-protected-resource` and at the path-suffixed one
//!    `/.well-known/oauth-protected-resource<resource path>` (a trailing slash tolerated).
//! 2. `resource` is the configured canonical resource, never derived from the `Host`
//!    header, at both URLs (MCP clients compare it with the URL they connect to).
//! 3. It lists `authorization_servers`, `scopes_supported` (never `offline_access`, which
//!    is the authorization server's business) and `bearer_methods_supported: ["header"]`.
//! 4. `GET` and `HEAD` answer 200 with CORS `Access-Control-Allow-Origin: *` (browser
//!    clients discover it cross-origin); `OPTIONS` answers the preflight with 204; any
//!    other method gets 405 with `Allow`.
//! 5. The document is rendered once, at start-up.
//! 6. With DPoP on ([`crate::DpopConfig`]), it lists `dpop_signing_alg_values_supported`
//!    (the accepted proof algorithms) and, when DPoP is required,
//!    `dpop_bound_access_tokens_required: true` (RFC 9728 section 2); [`crate::serve`]
//!    fills them from the authenticator.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ALLOW, CACHE_CONTROL, CONTENT_TYPE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{LocalResponse, ResponseBody};
use crate::config::ConfigError;
use crate::resource::{Issuer, Resource};
use crate::scope::push_scopes;

/// The root well-known path of protected resource metadata.
pub const WELL_KNOWN_PRM: &str = "/.well-known/oauth-protected-resource";

/// The protected resource metadata document (RFC 9728 section 2).
#[derive(Clone, Debug, Serialize)]
#[must_use]
pub struct ProtectedResourceMetadata {
    resource: String,
    authorization_servers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes_supported: Vec<String>,
    bearer_methods_supported: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_documentation: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dpop_signing_alg_values_supported: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dpop_bound_access_tokens_required: bool,
    #[serde(skip)]
    path: String,
}

impl ProtectedResourceMetadata {
    /// Metadata for `resource`, protected by tokens of `issuers`.
    pub fn new<'a>(resource: &Resource, issuers: impl IntoIterator<Item = &'a Issuer>) -> Self {
        Self {
            resource: resource.as_str().to_owned(),
            authorization_servers: issuers.into_iter().map(|i| i.as_str().to_owned()).collect(),
            scopes_supported: Vec::new(),
            bearer_methods_supported: ["header"],
            resource_name: None,
            resource_documentation: None,
            dpop_signing_alg_values_supported: Vec::new(),
            dpop_bound_access_tokens_required: false,
            path: resource.path().trim_end_matches('/').to_owned(),
        }
    }

    /// The scopes clients may request. `offline_access` is refused: it is not a scope of
    /// this resource.
    pub fn scopes_supported<I, S>(mut self, scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        push_scopes(&mut self.scopes_supported, scopes)?;
        if self.scopes_supported.iter().any(|s| s == "offline_access") {
            return Err(ConfigError::new(
                "`offline_access` does not belong in scopes_supported of a protected resource",
            ));
        }
        Ok(self)
    }

    /// A human-readable name for the resource.
    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// A URL of human-readable documentation.
    pub fn resource_documentation(mut self, url: impl Into<String>) -> Self {
        self.resource_documentation = Some(url.into());
        self
    }

    /// Advertises DPoP: the accepted proof `algorithms` (empty: DPoP off) and whether
    /// DPoP-bound tokens are `required`.
    pub fn dpop(mut self, algorithms: &[jsonwebtoken::Algorithm], required: bool) -> Self {
        self.dpop_signing_alg_values_supported =
            algorithms.iter().map(|a| format!("{a:?}")).collect();
        self.dpop_bound_access_tokens_required = required && !algorithms.is_empty();
        self
    }

    /// Advertises the DPoP settings of `auth` ([`ProtectedResourceMetadata::dpop`]).
    pub fn dpop_of(self, auth: &crate::Authenticator) -> Self {
        self.dpop(
            auth.dpop_algorithms(),
            auth.dpop_mode() == crate::DpopMode::Required,
        )
    }

    /// The paths the document is served at.
    pub fn paths(&self) -> Vec<String> {
        let mut paths = vec![WELL_KNOWN_PRM.to_owned()];
        if !self.path.is_empty() {
            paths.push(format!("{WELL_KNOWN_PRM}{}", self.path));
        }
        paths
    }

    fn is_metadata_path(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix(WELL_KNOWN_PRM) else {
            return false;
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        rest.is_empty() || rest == self.path
    }
}

/// Layer that serves [`ProtectedResourceMetadata`] in front of a service.
#[derive(Clone, Debug)]
pub struct MetadataLayer {
    document: Bytes,
    metadata: Option<std::sync::Arc<ProtectedResourceMetadata>>,
}

impl MetadataLayer {
    /// Serves `metadata`.
    pub fn new(metadata: ProtectedResourceMetadata) -> Self {
        Self::new_optional(Some(metadata))
    }

    /// Serves `metadata` if there is one (none when authentication is off).
    pub(crate) fn new_optional(metadata: Option<ProtectedResourceMetadata>) -> Self {
        let document = metadata
            .as_ref()
            .and_then(|m| serde_json::to_vec(m).ok())
            .map(Bytes::from)
            .unwrap_or_default();
        Self {
            document,
            metadata: metadata.map(std::sync::Arc::new),
        }
    }
}

impl<S> Layer<S> for MetadataLayer {
    type Service = Metadata<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metadata {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that answers the protected resource metadata URLs and passes everything
/// else on.
#[derive(Clone, Debug)]
pub struct Metadata<S> {
    inner: S,
    layer: MetadataLayer,
}

impl<S> Metadata<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metadata<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = crate::future::LocalOrInner<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let served = self
            .layer
            .metadata
            .as_ref()
            .is_some_and(|m| m.is_metadata_path(request.uri().path()));
        if !served {
            return crate::future::LocalOrInner::inner(self.inner.call(request));
        }
        crate::future::LocalOrInner::local(self.layer.answer(request.method()))
    }
}

impl MetadataLayer {
    fn answer(&self, method: &Method) -> LocalResponse {
        let mut response = match *method {
            Method::GET => Response::new(Full::new(self.document.clone())),
            Method::HEAD => Response::new(Full::default()),
            Method::OPTIONS => {
                let mut r = Response::new(Full::default());
                *r.status_mut() = StatusCode::NO_CONTENT;
                let h = r.headers_mut();
                h.insert(
                    ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, HEAD, OPTIONS"),
                );
                h.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
                h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
                r
            }
            _ => {
                let mut r = Response::new(Full::default());
                *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
                r
            }
        };
        let h = response.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        if matches!(*method, Method::GET | Method::HEAD) {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            if let Ok(len) = HeaderValue::from_str(&self.document.len().to_string()) {
                h.insert(http::header::CONTENT_LENGTH, len);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_served_at_root_and_path_suffixed_urls_only() {
        let r = Resource::parse("https://rs.example/mcp").unwrap();
        let i = Issuer::parse("https://as.example").unwrap();
        let m = ProtectedResourceMetadata::new(&r, [&i]);
        assert!(m.is_metadata_path("/.well-known/oauth-protected-resource"));
        assert!(m.is_metadata_path("/.well-known/oauth-protected-resource/"));
        assert!(m.is_metadata_path("/.well-known/oauth-protected-resource/mcp"));
        assert!(m.is_metadata_path("/.well-known/oauth-protected-resource/mcp/"));
        assert!(!m.is_metadata_path("/.well-known/oauth-protected-resource/other"));
        assert!(!m.is_metadata_path("/.well-known/oauth-protected-resourcex"));
    }

    #[test]
    fn metadata_advertises_dpop_algs_and_required_binding() {
        let r = Resource::parse("https://rs.example/mcp").unwrap();
        let plain = serde_json::to_value(ProtectedResourceMetadata::new(&r, [])).unwrap();
        assert!(plain.get("dpop_signing_alg_values_supported").is_none());
        assert!(plain.get("dpop_bound_access_tokens_required").is_none());
        let algs = [
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::Algorithm::EdDSA,
        ];
        let allowed =
            serde_json::to_value(ProtectedResourceMetadata::new(&r, []).dpop(&algs, false))
                .unwrap();
        assert_eq!(
            allowed["dpop_signing_alg_values_supported"],
            serde_json::json!(["ES256", "EdDSA"])
        );
        assert!(allowed.get("dpop_bound_access_tokens_required").is_none());
        let required =
            serde_json::to_value(ProtectedResourceMetadata::new(&r, []).dpop(&algs, true)).unwrap();
        assert_eq!(required["dpop_bound_access_tokens_required"], true);
    }

    #[test]
    fn metadata_refuses_offline_access_in_scopes_supported() {
        let r = Resource::parse("https://rs.example/mcp").unwrap();
        let m = ProtectedResourceMetadata::new(&r, []);
        assert!(m.clone().scopes_supported(["mcp:read"]).is_ok());
        assert!(m.scopes_supported(["offline_access"]).is_err());
    }
}
