use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Authenticator;
use super::binding::Admitted;
use super::challenge::DPOP_NONCE;
use crate::body::{LocalResponse, ResponseBody, from_local};
use crate::jwt::VerifyFuture;

pin_project! {
    /// Response future of [`Auth`](super::Auth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Verifying {
            verify: VerifyFuture,
            inner: Option<S>,
            request: Option<Request<B>>,
            auth: Authenticator,
        },
        Inner {
            #[pin]
            future: S::Future,
            // A fresh DPoP nonce for the response (the proof's one is ageing).
            nonce: Option<HeaderValue>,
        },
        Rejected {
            response: Option<LocalResponse>,
        },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn inner(future: S::Future) -> Self {
        Self::inner_with_nonce(future, None)
    }

    pub(crate) fn inner_with_nonce(future: S::Future, nonce: Option<HeaderValue>) -> Self {
        Self {
            state: State::Inner { future, nonce },
        }
    }

    pub(crate) fn rejected(response: LocalResponse) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(crate) fn verifying(
        verify: VerifyFuture,
        inner: S,
        request: Request<B>,
        auth: Authenticator,
    ) -> Self {
        Self {
            state: State::Verifying {
                verify,
                inner: Some(inner),
                request: Some(request),
                auth,
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Verifying {
                    verify,
                    inner,
                    request,
                    auth,
                } => {
                    let result = ready!(verify.as_mut().poll(cx));
                    #[allow(clippy::expect_used)]
                    let (mut service, mut request) = (
                        inner.take().expect("future polled after completion"),
                        request.take().expect("future polled after completion"),
                    );
                    // A verified token refused for its scopes keeps its context for the
                    // audit line (crate::observe rule 2).
                    let admitted = result.and_then(|ctx| {
                        auth.bind(
                            ctx,
                            request.method(),
                            request.uri().path(),
                            request.headers(),
                        )
                    });
                    let outcome = match admitted {
                        Ok(Admitted { ctx, nonce }) => {
                            match auth.authorize(&ctx, request.uri().path()) {
                                Ok(()) => Ok((ctx, nonce)),
                                Err(error) => Err((error, Some(ctx))),
                            }
                        }
                        Err(error) => Err((error, None)),
                    };
                    match outcome {
                        Ok((ctx, nonce)) => {
                            super::service::admit(&mut request, ctx, auth.keeps_subject_token());
                            let future = service.call(request);
                            this.state.set(State::Inner { future, nonce });
                        }
                        Err((error, caller)) => {
                            tracing::debug!(%error, "request refused");
                            let mut response = auth.challenge().response(error);
                            if let Some(ctx) = caller {
                                response.extensions_mut().insert(ctx);
                            }
                            this.state.set(State::Rejected {
                                response: Some(response),
                            });
                        }
                    }
                }
                StateProj::Inner { future, nonce } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(nonce) = nonce.take() {
                        response.headers_mut().insert(DPOP_NONCE, nonce);
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Rejected { response } => {
                    #[allow(clippy::expect_used)]
                    let response = response.take().expect("future polled after completion");
                    return Poll::Ready(Ok(from_local(response)));
                }
            }
        }
    }
}
