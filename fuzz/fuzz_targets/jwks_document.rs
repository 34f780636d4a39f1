//! JWKS documents as an issuer (or an attacker in its place) could serve them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bmm_middleware::fuzzing::jwks(data);
});
