//! bmm-core: the rules several bmm crates must agree on, in one place.
//!
//! If two crates each kept their own copy of one of these rules, the copies could drift
//! and a valid token, scope or template would fail in one crate and pass in the other.
//!
//! - [`resource`]: the canonical form of a resource URL. bmm-as writes it into a token's
//!   `aud`; the middleware compares `aud` with it.
//! - [`scope`]: RFC 6749 scope-token syntax, checked by the generator (spec scopes, OpenAPI
//!   `x-bmm` scopes), the middleware (configured scopes) and bmm-as (requested scopes).
//! - [`server_name`]: what a server name is (the generator validates it, `bmm new` writes
//!   it, it becomes the crate, binary and MCP server name).
//! - [`rate`]: request rates like `10/min`, checked by the generator (`tools[].rate_limit`)
//!   and parsed by the runtime (`--rate-limit`).
//! - [`template`]: `{placeholder}` templates, validated by the generator and rendered by
//!   the runtime with the same parser.
//!
//! - `input_schema` (feature `input-schema`): how a tool's input schema is compiled. `bmm
//!   check` refuses what a generated server would refuse at start-up because both call it.
//!
//! The crate depends on nothing but `url` (and `jsonschema` with the `input-schema`
//! feature): depending on it never pulls in a server stack.

#[cfg(feature = "input-schema")]
pub mod input_schema;
pub mod rate;
pub mod resource;
pub mod scope;
pub mod server_name;
pub mod template;

pub use rate::{Rate, RateError};
pub use resource::{ResourceUrlError, canonical_resource};
pub use scope::is_scope_token;
pub use server_name::is_server_name;
