//! [`Refusal`]: why the stack answered a request itself instead of passing it on.

/// A response extension that says why the stack refused a request.
///
/// Layers that answer a request themselves (authentication, per-tool scopes, rate limits)
/// insert one into the response's extensions; outer layers (metrics, the audit log) read
/// it to count and record refusals without parsing bodies or headers. The reason is a
/// fixed string from this list, never request input, so it is safe as a metric label:
///
/// | reason | answer | meaning |
/// |---|---|---|
/// | `missing` | 401 | no bearer token |
/// | `malformed` | 400 | malformed or repeated `Authorization` header |
/// | `invalid` | 401 | the token failed verification (signature, format, claims) |
/// | `expired` | 401 | the token expired or is not valid yet |
/// | `audience` | 401 | the token was issued for another resource |
/// | `issuer` | 401 | the token's issuer is missing or not trusted |
/// | `scope` | 403 | the token lacks scopes the operation needs |
/// | `unavailable` | 503 | the issuer's signing keys, or an introspection answer, could not be obtained |
/// | `dpop` | 401, 503 | DPoP: a missing, invalid or replayed proof, a key mismatch, a bound token without its proof or an unbound one with the `DPoP` scheme, `Bearer` where DPoP is required; 503 when the replay cache is full |
/// | `dpop_nonce` | 401 | DPoP: the proof lacks a fresh server nonce (`use_dpop_nonce`, a normal step of the nonce flow) |
/// | `rate_limited` | 429 | a rate limit was exceeded |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Why: one of the reasons listed above.
    pub reason: &'static str,
}

impl Refusal {
    /// The refusal of a request without a bearer token.
    pub const MISSING: Self = Self { reason: "missing" };
    /// The refusal of a malformed `Authorization` header.
    pub const MALFORMED: Self = Self {
        reason: "malformed",
    };
    /// The refusal of a token that failed verification.
    pub const INVALID: Self = Self { reason: "invalid" };
    /// The refusal of an expired or not yet valid token.
    pub const EXPIRED: Self = Self { reason: "expired" };
    /// The refusal of a token issued for another resource.
    pub const AUDIENCE: Self = Self { reason: "audience" };
    /// The refusal of a token from an untrusted issuer.
    pub const ISSUER: Self = Self { reason: "issuer" };
    /// The refusal of a token lacking needed scopes.
    pub const SCOPE: Self = Self { reason: "scope" };
    /// The refusal because the issuer's signing keys could not be obtained.
    pub const UNAVAILABLE: Self = Self {
        reason: "unavailable",
    };
    /// The refusal of a DPoP proof or binding problem.
    pub const DPOP: Self = Self { reason: "dpop" };
    /// The refusal of a DPoP proof without a fresh server nonce (`use_dpop_nonce`).
    pub const DPOP_NONCE: Self = Self {
        reason: "dpop_nonce",
    };
    /// The refusal because a rate limit was exceeded.
    pub const RATE_LIMITED: Self = Self {
        reason: "rate_limited",
    };

    /// The refusal recorded on `response`, if the stack refused it.
    pub fn from_response<B>(response: &http::Response<B>) -> Option<Self> {
        response.extensions().get::<Self>().copied()
    }
}
