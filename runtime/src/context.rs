//! What a Rust tool gets besides its input: the caller's verified identity, the MCP request
//! context (progress, logging, sampling, elicitation through `peer`), and the upstreams it
//! declared, pre-authenticated with the server's own secrets.

use bmm_middleware::AuthContext;
use rmcp::RoleServer;
use rmcp::service::RequestContext;

/// The context of one tool call.
#[derive(Debug, Clone)]
pub struct ToolContext {
    auth: Option<AuthContext>,
    request: RequestContext<RoleServer>,
}

impl ToolContext {
    pub(crate) fn new(request: RequestContext<RoleServer>) -> Self {
        let auth = request
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| AuthContext::from_parts(parts).ok().cloned());
        Self { auth, request }
    }

    /// The verified caller (`None` with `--no-auth` or over stdio).
    pub fn auth(&self) -> Option<&AuthContext> {
        self.auth.as_ref()
    }

    /// The rmcp request context: `peer` for progress, logging, sampling and elicitation;
    /// `ct` to notice cancellation.
    pub fn request(&self) -> &RequestContext<RoleServer> {
        &self.request
    }
}
