//! The response body every bmm layer returns: the inner service's body, or a small
//! buffered body the layer produced itself (a challenge, a metadata document, a 403).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

pin_project! {
    /// Response body of the bmm layers.
    ///
    /// Either the wrapped service's own body, passed through untouched, or a complete body
    /// the layer answered with. No boxing: the variant is known when the response is built.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Local {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body produced locally.
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        Self::full(Full::new(bytes.into()))
    }

    fn full(body: Full<Bytes>) -> Self {
        Self {
            kind: Kind::Local { body },
        }
    }

    /// An empty body (for `HEAD`, `204` and the like).
    pub fn empty() -> Self {
        Self::local(Bytes::new())
    }
}

/// A response a layer produced itself, before its body type is joined with the inner one.
pub(crate) type LocalResponse = http::Response<Full<Bytes>>;

/// Turns a locally produced response into one of the layer's response type.
pub(crate) fn from_local<B>(response: LocalResponse) -> http::Response<ResponseBody<B>> {
    response.map(ResponseBody::full)
}

/// Builds a small JSON response.
pub(crate) fn json_response(status: http::StatusCode, body: &serde_json::Value) -> LocalResponse {
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Local { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Local { body } => body.size_hint(),
        }
    }
}
