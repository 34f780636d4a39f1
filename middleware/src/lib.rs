//! bmm-middleware: the tower stack that makes every bmm server an OAuth 2.1 resource
//! server, and [`serve`], the accept loop that runs it.
//!
//! The layers work on any `tower::Service<http::Request<B>>` (rmcp's
//! `StreamableHttpService`, axum, plain hyper):
//!
//! - [`AuthLayer`]: bearer tokens (RFC 6750), JWT verification against the issuer's JWKS,
//!   opaque tokens by RFC 7662 introspection ([`introspect`]), several trusted issuers each
//!   with its own keys, algorithms, audiences and scope claim ([`TrustedIssuer`]), `iss`,
//!   `aud` (RFC 8707 audience binding), `exp`/`nbf`, scopes; 401/400/403/503 with the right
//!   `WWW-Authenticate`. The verified identity lands in the request extensions as an
//!   [`AuthContext`]. The client's token is never forwarded; only with
//!   [`AuthConfig::keep_subject_token`] is it kept, as a [`SubjectToken`], for an RFC 8693
//!   token exchange (never sent to an upstream API, never printed).
//! - [`ToolScopeLayer`]: per-tool scopes read from the JSON-RPC body.
//! - [`RateLimitLayer`]: per-subject and per-tool rate limits (429 with `Retry-After`).
//! - [`MetadataLayer`]: RFC 9728 protected resource metadata.
//! - [`OriginLayer`]: Host and Origin validation, CORS for allowed browser origins.
//! - [`ConcurrencyLimitLayer`]: load shedding.
//!
//! Wrapping any tower service (here a plain `service_fn`) with the auth layer:
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use bmm_middleware::{AuthConfig, AuthContext, AuthLayer, Issuer, Resource};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = AuthConfig::new(Resource::parse("https://api.example.com/mcp")?)
//!     .issuer(Issuer::parse("https://auth.example.com")?)
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(auth))
//!     .service_fn(|request: Request<Full<Bytes>>| async move {
//!         // Only authenticated requests get here, without their Authorization header.
//!         let who = AuthContext::from_request(&request)
//!             .map(|ctx| ctx.subject().unwrap_or("?").to_owned())
//!             .unwrap_or_default();
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
//!     });
//! let request = Request::post("/mcp").body(Full::new(Bytes::new()))?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), 401); // no token: a challenge, the handler never ran
//! # Ok(()) }
//! ```
//!
//! Serving an MCP service (rmcp's `StreamableHttpService`, or any other) behind the whole
//! stack:
//!
//! ```no_run
//! # async fn run<S>(mcp: S) -> Result<(), Box<dyn std::error::Error>>
//! # where S: tower_service::Service<http::Request<http_body_util::Full<bytes::Bytes>>,
//! #   Response = http::Response<http_body_util::Full<bytes::Bytes>>, Error = std::convert::Infallible>
//! #   + Clone + Send + 'static, S::Future: Send + 'static {
//! use bmm_middleware::{AuthConfig, Issuer, Resource, ServeConfig, serve};
//!
//! let resource = Resource::parse("https://mcp.example.com/mcp")?;
//! let auth = AuthConfig::new(resource)
//!     .issuer(Issuer::parse("https://auth.example.com")?)
//!     .build()?;
//! serve("127.0.0.1:4103".parse()?, ServeConfig::new("/mcp", auth), mcp).await?;
//! # Ok(()) }
//! ```

pub mod audit;
pub mod auth;
mod body;
pub mod config;
pub mod conn;
mod context;
mod discovery;
pub mod dpop;
mod fetch;
mod future;
#[doc(hidden)]
pub mod fuzzing;
pub mod introspect;
pub mod issuer;
pub mod jwks;
pub mod jwt;
mod limit;
mod macros;
pub mod metadata;
pub mod observe;
pub mod origin;
pub mod otel;
pub mod rate_limit;
mod refusal;
pub mod reload;
mod resource;
pub mod scope;
mod serve;
mod token_cache;
pub mod tool_scope;

pub use audit::{AuditEntry, AuditLog, AuditTarget};
pub use auth::{Auth, AuthConfig, AuthError, AuthLayer, Authenticator, SubjectToken};
pub use body::ResponseBody;
pub use config::{ConfigError, KeySettings};
pub use context::{AuthContext, MissingAuthContext, TokenKind};
pub use dpop::{DpopConfig, DpopMode};
pub use future::LocalOrInner;
pub use introspect::{Introspection, IntrospectionAuth};
pub use issuer::TrustedIssuer;
pub use jsonwebtoken::Algorithm;
pub use limit::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use metadata::{Metadata, MetadataLayer, ProtectedResourceMetadata};
pub use observe::{Observer, PeerAddr};
pub use origin::{OriginCheck, OriginLayer, OriginPolicy};
pub use otel::{HttpSpan, Traces};
pub use rate_limit::{RateLimit, RateLimitLayer, RateLimited, RateLimits};
pub use refusal::Refusal;
pub use reload::{Reload, reload_on_sighup};
pub use resource::{Issuer, Resource};
pub use scope::{ScopeClaim, ScopeHierarchy, ScopePolicy, ScopeSet};
pub use serve::{
    BoxedStack, ServeConfig, Server, is_loopback_listen, serve, shutdown_signal, stack,
    stack_by_layer,
};
pub use tool_scope::{CalledTools, ToolScope, ToolScopeLayer};
