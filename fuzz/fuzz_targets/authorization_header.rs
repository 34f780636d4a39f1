//! The request path from an `Authorization` header value to a verdict: bearer syntax,
//! JWT header and claims parsing, issuer selection, key lookup, challenge rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bmm_middleware::fuzzing::authorization_header(data);
    bmm_middleware::fuzzing::jwt(data);
});
