//! bmm-generator: tool specs (YAML or JSON) become complete rmcp server crates that run
//! behind bmm-middleware.
//!
//! The pipeline is plain data: parse (with line and column for every value that can be
//! wrong) -> validate -> plan -> render. This release holds the first two stages and the
//! `bmm check` command; planning and rendering follow.

pub mod spec;
