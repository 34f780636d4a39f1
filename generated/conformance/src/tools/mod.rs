//! Your Rust tools, one module each.
//!
//! Yours: created by bmm once, never overwritten by `bmm generate`.
//!
//! When the spec gains a Rust tool, `bmm generate` creates its file and you add its
//! `mod` line here (the compiler names it if you do not). Modules of your own, such as
//! helpers the tools share, belong here too.

pub(crate) mod audio_content;
pub(crate) mod confirm_delete;
pub(crate) mod custom_header;
pub(crate) mod elicitation;
pub(crate) mod elicitation_sep1034_defaults;
pub(crate) mod elicitation_sep1330_enums;
pub(crate) mod embedded_resource;
pub(crate) mod error_handling;
pub(crate) mod failing_job;
pub(crate) mod greet;
pub(crate) mod image_content;
pub(crate) mod input_required_capabilities;
pub(crate) mod input_required_elicitation;
pub(crate) mod input_required_list_roots;
pub(crate) mod input_required_multi_round;
pub(crate) mod input_required_multiple_inputs;
pub(crate) mod input_required_request_state;
pub(crate) mod input_required_sampling;
pub(crate) mod input_required_tampered_state;
pub(crate) mod json_schema_2020_12;
pub(crate) mod logging_tool;
pub(crate) mod missing_capability;
pub(crate) mod multi_input;
pub(crate) mod multiple_content_types;
pub(crate) mod protocol_error_job;
pub(crate) mod reconnection;
pub(crate) mod sampling;
pub(crate) mod simple_text;
pub(crate) mod slow_compute;
pub(crate) mod streaming_elicitation;
pub(crate) mod tool_with_logging;
pub(crate) mod tool_with_progress;
pub(crate) mod tool_with_task;
