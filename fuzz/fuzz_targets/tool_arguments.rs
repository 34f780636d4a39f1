//! Tool arguments as a client (or an attacker) could send them: JSON Schema validation
//! (bounded errors, no panic) and HTTP tool path filling (no value changes the path).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bmm_runtime::fuzzing::tool_arguments(data);
});
