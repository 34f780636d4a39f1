//! Load shedding: at most N requests are handled at once; the next one is answered 503 with
//! `Retry-After` at once instead of queueing without bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::RETRY_AFTER;
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{LocalResponse, ResponseBody, from_local, json_response};

/// Layer that applies [`ConcurrencyLimit`].
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    semaphore: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    /// Allows `max` requests in flight across every connection sharing this layer.
    pub fn new(max: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            semaphore: Arc::clone(&self.semaphore),
        }
    }
}

/// Middleware that sheds requests beyond the concurrency limit with 503.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
}

impl<S> ConcurrencyLimit<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match Arc::clone(&self.semaphore).try_acquire_owned() {
            Ok(permit) => ResponseFuture {
                state: State::Inner {
                    future: self.inner.call(request),
                    permit: Some(permit),
                },
            },
            Err(_) => {
                tracing::debug!("request shed: concurrency limit reached");
                let mut response = json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"error": "overloaded", "error_description": "the server is handling as many requests as it allows; retry shortly"}),
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                ResponseFuture {
                    state: State::Shed {
                        response: Some(response),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`ConcurrencyLimit`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        // Admitted; the permit is released when the response is ready.
        Inner {
            #[pin]
            future: F,
            permit: Option<OwnedSemaphorePermit>,
        },
        Shed {
            response: Option<LocalResponse>,
        },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future, permit } => {
                let response = ready!(future.poll(cx));
                drop(permit.take());
                Poll::Ready(response.map(|r| r.map(ResponseBody::inner)))
            }
            StateProj::Shed { response } => {
                #[allow(clippy::expect_used)]
                let response = response.take().expect("future polled after completion");
                Poll::Ready(Ok(from_local(response)))
            }
        }
    }
}
