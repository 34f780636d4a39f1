//! Your Rust tools, one module each.
//!
//! Yours: created by bmm once, never overwritten by `bmm generate`.
//!
//! When the spec gains a Rust tool, `bmm generate` creates its file and you add its
//! `mod` line here (the compiler names it if you do not). Modules of your own, such as
//! helpers the tools share, belong here too.

pub(crate) mod add_note;
pub(crate) mod delete_note;
pub(crate) mod get_note;
pub(crate) mod list_notes;
