//! The response future shared by the layers that either answer locally or pass on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::{LocalResponse, ResponseBody, from_local};

pin_project! {
    /// Either a response produced by the layer, or the inner service's future.
    #[derive(Debug)]
    pub struct LocalOrInner<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Inner {
            #[pin]
            future: F,
        },
        Local {
            response: Option<LocalResponse>,
        },
    }
}

impl<F> LocalOrInner<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn local(response: LocalResponse) -> Self {
        Self {
            state: State::Local {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for LocalOrInner<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            StateProj::Local { response } => {
                #[allow(clippy::expect_used)]
                let response = response.take().expect("future polled after completion");
                Poll::Ready(Ok(from_local(response)))
            }
        }
    }
}
