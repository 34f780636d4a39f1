use tower_layer::Layer;

use super::{Auth, Authenticator};

/// Layer that applies [`Auth`], the bearer-token check. See the [module docs](crate::auth).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Option<Authenticator>,
}

impl AuthLayer {
    /// A layer that verifies requests with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth: Some(auth) }
    }

    /// A layer that lets every request through unauthenticated (local protocol tests with
    /// `--no-auth` only); it keeps the stack's types the same.
    pub(crate) fn disabled() -> Self {
        Self { auth: None }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth::with_optional(inner, self.auth.clone())
    }
}
