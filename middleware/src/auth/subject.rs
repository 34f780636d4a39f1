//! The caller's verified access token, kept for RFC 8693 token exchange only.

use std::sync::Arc;

/// The access token an admitted request presented, put in the request extensions by
/// [`AuthLayer`](super::AuthLayer) only when
/// [`AuthConfig::keep_subject_token`](super::AuthConfig::keep_subject_token) is on.
///
/// It exists for one use: as the `subject_token` of an RFC 8693 token exchange at an
/// authorization server, which gives the server a token of its own for an upstream API
/// that names the caller as its subject. It must never be forwarded to an upstream API,
/// logged or echoed: `Debug` prints `SubjectToken(..)`, there is no `Display`, and the
/// value is reached only through [`SubjectToken::expose`]. The `Authorization` header
/// is still removed from the request (rule 9 of the [module docs](super)).
#[derive(Clone)]
pub struct SubjectToken(Arc<str>);

impl SubjectToken {
    pub(crate) fn new(token: &str) -> Self {
        Self(Arc::from(token))
    }

    /// The token itself, for the `subject_token` of a token exchange request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectToken(..)")
    }
}
