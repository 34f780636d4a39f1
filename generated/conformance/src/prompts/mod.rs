//! Your Rust prompts, one module each.
//!
//! Yours: created by bmm once, never overwritten by `bmm generate`.
//!
//! When the spec gains a Rust prompt, `bmm generate` creates its file and you add its
//! `mod` line here (the compiler names it if you do not). Modules of your own, such as
//! helpers the prompts share, belong here too.

pub(crate) mod input_required_prompt;
