//! Request bodies as a client (or an attacker) could send them to the per-tool scope layer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bmm_middleware::fuzzing::tool_call_names(data);
});
