//! Reading the access token out of a request (RFC 6750 section 2.1, RFC 9449 section 7.1).
//!
//! Only the `Authorization` header is read; a token in the query string or the body is
//! never looked at, so it can neither authenticate a request nor end up in a log. The
//! schemes `Bearer` and `DPoP` are recognised (case-insensitively); the DPoP proof comes
//! from exactly one `DPoP` header.

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// What the `Authorization` header of a request holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Credentials<'a> {
    /// No bearer credentials: no header, or another scheme (`Basic ...`).
    Absent,
    /// A syntactically valid bearer token.
    Bearer(&'a str),
    /// A syntactically valid token with the `DPoP` scheme (its proof is in the `DPoP`
    /// header).
    Dpop(&'a str),
    /// The header is there but broken; the reason is safe to show to the client.
    Malformed(&'static str),
}

/// Reads the credentials of a request.
pub(crate) fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credentials::Absent;
    };
    if values.next().is_some() {
        return Credentials::Malformed("more than one Authorization header");
    }
    let Ok(value) = value.to_str() else {
        return Credentials::Malformed("the Authorization header is not visible ASCII");
    };
    parse_authorization(value)
}

/// Parses one `Authorization` header value.
pub(crate) fn parse_authorization(value: &str) -> Credentials<'_> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.is_empty() {
        return Credentials::Malformed("the Authorization header is empty");
    }
    let (scheme, rest) = match value.find([' ', '\t']) {
        Some(at) => (&value[..at], &value[at..]),
        None => (value, ""),
    };
    let dpop = scheme.eq_ignore_ascii_case("dpop");
    if !dpop && !scheme.eq_ignore_ascii_case("bearer") {
        return Credentials::Absent;
    }
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Credentials::Malformed(if dpop {
            "the DPoP scheme carries no token"
        } else {
            "the Bearer scheme carries no token"
        });
    }
    if !is_b64token(token) {
        return Credentials::Malformed(
            "the access token is not a single b64token (RFC 6750 section 2.1)",
        );
    }
    if dpop {
        Credentials::Dpop(token)
    } else {
        Credentials::Bearer(token)
    }
}

/// The `DPoP` header name.
pub(crate) const DPOP: http::HeaderName = http::HeaderName::from_static("dpop");

/// Reads the one DPoP proof of a request; the error is safe to show to the client.
pub(crate) fn dpop_proof(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(DPOP).iter();
    let Some(value) = values.next() else {
        return Err("the DPoP scheme needs a DPoP proof header");
    };
    if values.next().is_some() {
        return Err("more than one DPoP header");
    }
    let proof = value
        .to_str()
        .map_err(|_| "the DPoP header is not visible ASCII")?
        .trim_matches(|c| c == ' ' || c == '\t');
    if proof.is_empty() {
        return Err("the DPoP header is empty");
    }
    Ok(proof)
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(
            parse_authorization("bearer abc.def"),
            Credentials::Bearer("abc.def")
        );
        assert_eq!(
            parse_authorization("BEARER abc"),
            Credentials::Bearer("abc")
        );
        assert_eq!(
            parse_authorization("Bearer   abc=="),
            Credentials::Bearer("abc==")
        );
    }

    #[test]
    fn missing_header_and_other_schemes_are_absent_credentials() {
        assert_eq!(credentials(&HeaderMap::new()), Credentials::Absent);
        assert_eq!(
            parse_authorization("Basic dXNlcjpwYXNz"),
            Credentials::Absent
        );
        assert_eq!(parse_authorization("Bearerx abc"), Credentials::Absent);
    }

    #[test]
    fn dpop_scheme_is_case_insensitive_and_needs_one_proof_header() {
        assert_eq!(
            parse_authorization("DPoP abc.def"),
            Credentials::Dpop("abc.def")
        );
        assert_eq!(parse_authorization("dpop abc"), Credentials::Dpop("abc"));
        assert!(matches!(
            parse_authorization("DPoP"),
            Credentials::Malformed(_)
        ));
        assert!(matches!(
            parse_authorization("DPoP a b"),
            Credentials::Malformed(_)
        ));
        let mut h = HeaderMap::new();
        assert!(dpop_proof(&h).is_err());
        h.append(DPOP, HeaderValue::from_static("p.r.s"));
        assert_eq!(dpop_proof(&h), Ok("p.r.s"));
        h.append(DPOP, HeaderValue::from_static("p.r.s"));
        assert!(dpop_proof(&h).is_err());
        let mut empty = HeaderMap::new();
        empty.append(DPOP, HeaderValue::from_static(""));
        assert!(dpop_proof(&empty).is_err());
    }

    #[test]
    fn two_authorization_headers_are_malformed() {
        let h = headers(&[b"Bearer a", b"Bearer b"]);
        assert!(matches!(credentials(&h), Credentials::Malformed(_)));
    }

    #[test]
    fn malformed_bearer_values_are_refused() {
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,Bearer b",
            "Bearer ===",
            "Bearer a\"b",
            "",
        ] {
            assert!(
                matches!(parse_authorization(bad), Credentials::Malformed(_)),
                "{bad:?} should be malformed"
            );
        }
        let h = headers(&[b"Bearer \xff"]);
        assert!(matches!(credentials(&h), Credentials::Malformed(_)));
    }
}
