//! bmm-generator: tool specs (YAML or JSON) become complete rmcp server crates that run
//! behind bmm-middleware.
//!
//! The pipeline is plain data: parse (with line and column for every value that can be
//! wrong) -> validate -> render (`quote!` + prettyplease for Rust, askama for crate files)
//! -> write. Generated crates describe their server as data for `bmm-runtime`, which holds
//! the protocol code once.

pub mod emit;
pub mod generate;
mod layout;
mod names;
pub mod openapi;
mod rust_types;
pub mod spec;

pub use emit::{RuntimeDependency, starter_spec};
pub use generate::{GenerateError, Outcome, generate};
