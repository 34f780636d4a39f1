//! bmm-runtime: what every bmm-generated MCP server shares.
//!
//! A generated crate describes its server as data ([`ServerDef`]: tools with their JSON
//! Schemas served verbatim, HTTP tool bodies, Rust tool handlers, resources, prompts,
//! secrets, upstreams) and calls [`run::main_with_state`] with its start-up hook, which
//! builds the server's own state ([`app`]). The runtime turns that into an rmcp
//! `ServerHandler` ([`McpServer`]), executes HTTP tools with the server's own credentials
//! (the client's token is never forwarded), checks secrets at start-up, parses the runtime
//! flags, and serves everything behind bmm-middleware on one endpoint for both protocol
//! eras (2026-07-28 stateless, and initialize-based 2025-11-25 / 06-18 / 03-26 sessions).

pub mod app;
mod context;
pub mod def;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod http_tool;
mod listen_cap;
pub mod metrics;
mod observe;
mod output;
pub mod run;
mod secrets;
mod session_cap;
mod stateless;
pub mod tasks;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tools_list;
pub mod traces;
mod trust;
mod upstream_auth;
pub mod validate;

pub use app::{Context, Startup};
/// `{placeholder}` templates: one parser, shared with the generator's validation (bmm-core).
pub use bmm_core::template;
pub use context::{Question, STATE_TTL, ToolContext};
pub use def::ServerDef;
pub use handler::McpServer;
pub use output::{ToolError, ToolOutput};
pub use secrets::Secrets;

/// mimalloc as the global allocator (feature `mimalloc`).
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// jemalloc as the global allocator (feature `jemalloc`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Re-exported so generated crates need no direct dependency on these.
pub use {bmm_middleware, rmcp, serde_json, tokio, tracing};
