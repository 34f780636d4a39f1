//! The server's state: built once at start-up, shared by every tool call.
//!
//! Yours: created by bmm once, never overwritten by `bmm generate`.
//!
//! Put here what the tools share (a database pool, an HTTP client, a cache); a tool
//! reads it with `ctx.state()`.

use bmm_runtime::Startup;

/// What every tool call shares.
#[derive(Debug)]
pub(crate) struct State {}

impl State {
    /// The start-up hook: runs once, after the flags and secrets are checked
    /// (`startup.secret("NAME")`) and before the server accepts a connection. An
    /// error stops start-up with its message.
    pub(crate) async fn start(
        startup: Startup,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let _ = startup;
        Ok(Self {})
    }
}
