use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::binding::Admitted;
use super::future::ResponseFuture;
use super::{Attempt, AuthLayer, Authenticator, SubjectToken};
use crate::body::ResponseBody;

/// Middleware that authenticates every request with a bearer token before the inner
/// service sees it. See the [module docs](crate::auth) for the rules.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    auth: Option<Authenticator>,
}

impl<S> Auth<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, auth: Authenticator) -> Self {
        Self {
            inner,
            auth: Some(auth),
        }
    }

    pub(crate) fn with_optional(inner: S, auth: Option<Authenticator>) -> Self {
        Self { inner, auth }
    }

    /// A layer for this middleware.
    pub fn layer(auth: Authenticator) -> AuthLayer {
        AuthLayer::new(auth)
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let Some(auth) = &self.auth else {
            return ResponseFuture::inner(self.inner.call(request));
        };
        match auth.attempt(request.method(), request.uri().path(), request.headers()) {
            Attempt::Done(Ok(Admitted { ctx, nonce })) => {
                match auth.authorize(&ctx, request.uri().path()) {
                    Ok(()) => {
                        tracing::debug!(subject = ctx.subject(), "request authenticated");
                        admit(&mut request, ctx, auth.keeps_subject_token());
                        ResponseFuture::inner_with_nonce(self.inner.call(request), nonce)
                    }
                    Err(error) => {
                        let mut response = auth.challenge().response(error);
                        // Verified but not authorized (scopes): the audit line names the
                        // caller (crate::observe rule 2).
                        response.extensions_mut().insert(ctx);
                        ResponseFuture::rejected(response)
                    }
                }
            }
            Attempt::Done(Err(error)) => {
                tracing::debug!(%error, "request refused");
                ResponseFuture::rejected(auth.challenge().response(error))
            }
            Attempt::Later(verify) => {
                // The readied service goes with the request; this one keeps a fresh clone
                // (tower: "be careful when cloning inner services").
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::verifying(verify, inner, request, auth.clone())
            }
        }
    }
}

/// Hands the verified identity to the inner service and takes the token (and its DPoP
/// proof) away from it: code behind this layer cannot forward what it never sees. With
/// `keep_subject_token` (rule 12) the token stays reachable only as a [`SubjectToken`],
/// for RFC 8693 token exchange.
pub(super) fn admit<B>(
    request: &mut Request<B>,
    ctx: crate::AuthContext,
    keep_subject_token: bool,
) {
    if keep_subject_token {
        let kept = match super::credentials(request.headers()) {
            super::bearer::Credentials::Bearer(token) | super::bearer::Credentials::Dpop(token) => {
                Some(SubjectToken::new(token))
            }
            _ => None,
        };
        if let Some(kept) = kept {
            request.extensions_mut().insert(kept);
        }
    }
    request.headers_mut().remove(http::header::AUTHORIZATION);
    request.headers_mut().remove(super::bearer::DPOP);
    request.extensions_mut().insert(ctx);
}
