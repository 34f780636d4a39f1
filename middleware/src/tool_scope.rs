//! Per-tool scopes: a layer that looks inside the JSON-RPC body and applies the scopes a
//! tool needs before the MCP service runs it.
//!
//! Rules:
//! 1. The body is read up to a limit (413 beyond it) and handed on unchanged.
//! 2. For every `tools/call` in the body (a single message or a batch) the scopes of that
//!    tool, plus the server-wide and route scopes, must be granted by the token (through
//!    the scope hierarchy); otherwise 403 `insufficient_scope` naming every scope needed.
//! 3. On 2026-07-28 requests an `Mcp-Name` header must agree with the body's tool name;
//!    a disagreement is refused with 400 before anything runs.
//! 4. A body that is not JSON, or whose `method`/`params` appear twice, is refused with a
//!    JSON-RPC parse error rather than guessed at: the decision never rests on a reading
//!    the MCP service could make differently.
//! 5. Requests without an [`AuthContext`] are refused with 401: this layer only runs behind
//!    [`AuthLayer`](crate::AuthLayer).
//! 6. When it read the body, the names of the called tools go on in the request extensions
//!    as [`CalledTools`], so inner layers (per-tool rate limits) never parse it again.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde::de::IgnoredAny;
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::{AuthError, Authenticator};
use crate::body::{LocalResponse, ResponseBody, from_local, json_response};
use crate::context::AuthContext;
use crate::scope::{ScopePolicy, ScopeSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The tools a request's JSON-RPC body calls, in order (a request extension set by
/// [`ToolScope`] when it read the body: when tools have scopes or rate limits of their own,
/// or an `Mcp-Name` header was sent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CalledTools(Vec<String>);

impl CalledTools {
    /// The tool names, one per `tools/call` message.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// Layer that applies [`ToolScope`].
#[derive(Clone, Debug)]
pub struct ToolScopeLayer {
    auth: Option<Authenticator>,
    max_body: usize,
    read_tools: bool,
}

impl ToolScopeLayer {
    /// Uses the scope policy of `auth`; bodies above `max_body` bytes are refused.
    pub fn new(auth: Authenticator, max_body: usize) -> Self {
        Self {
            auth: Some(auth),
            max_body,
            read_tools: false,
        }
    }

    /// Only buffers the body (no authentication configured: `--no-auth`).
    pub(crate) fn buffer_only(max_body: usize) -> Self {
        Self {
            auth: None,
            max_body,
            read_tools: false,
        }
    }

    /// Always reads the called tools into [`CalledTools`] (per-tool rate limits need them),
    /// not only when some tool has scopes of its own.
    pub(crate) fn reading_tools(mut self) -> Self {
        self.read_tools = true;
        self
    }
}

impl<S> Layer<S> for ToolScopeLayer {
    type Service = ToolScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ToolScope {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware enforcing per-tool scopes. The inner service receives the buffered body.
#[derive(Clone, Debug)]
pub struct ToolScope<S> {
    inner: S,
    layer: ToolScopeLayer,
}

impl<S> ToolScope<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ToolScope<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Collecting {
                collect: Limited::new(body, self.layer.max_body).collect(),
                parts: Some(parts),
                inner: Some(inner),
                auth: self.layer.auth.clone(),
                read_tools: self.layer.read_tools,
            },
        }
    }
}

pin_project! {
    /// Response future of [`ToolScope`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        Collecting {
            #[pin]
            collect: Collect<Limited<B>>,
            parts: Option<http::request::Parts>,
            inner: Option<S>,
            auth: Option<Authenticator>,
            read_tools: bool,
        },
        Inner {
            #[pin]
            future: S::Future,
        },
        Done {
            response: Option<LocalResponse>,
        },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Collecting {
                    collect,
                    parts,
                    inner,
                    auth,
                    read_tools,
                } => {
                    let collected = ready!(collect.poll(cx));
                    #[allow(clippy::expect_used)]
                    let (mut parts, mut service) = (
                        parts.take().expect("future polled after completion"),
                        inner.take().expect("future polled after completion"),
                    );
                    let bytes = match collected {
                        Ok(c) => c.to_bytes(),
                        Err(_) => {
                            let response = json_response(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                &serde_json::json!({"error": "request_too_large", "error_description": "the request body is larger than this server accepts (or could not be read)"}),
                            );
                            this.state.set(State::Done {
                                response: Some(response),
                            });
                            continue;
                        }
                    };
                    let verdict = match auth {
                        Some(auth) => check(auth, &mut parts, &bytes, *read_tools),
                        None => Ok(()),
                    };
                    match verdict {
                        Ok(()) => {
                            let future = service.call(Request::from_parts(parts, Full::new(bytes)));
                            this.state.set(State::Inner { future });
                        }
                        Err(response) => this.state.set(State::Done {
                            response: Some(response),
                        }),
                    }
                }
                StateProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Done { response } => {
                    #[allow(clippy::expect_used)]
                    let response = response.take().expect("future polled after completion");
                    return Poll::Ready(Ok(from_local(response)));
                }
            }
        }
    }
}

/// One JSON-RPC message, read in one pass without building a tree: `method` and the
/// `name` inside `params` are decoded (borrowed from the body when unescaped), everything
/// else is skipped. Duplicate keys are an error (serde's derive), never "last one wins".
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<Params<'a>>,
}

/// What this layer reads of `params`.
enum Params<'a> {
    /// An object, with its `name` member: `None` when absent, `Some(None)` when present
    /// but not a string.
    Object { name: Option<Option<Cow<'a, str>>> },
    /// An array or a scalar: never valid for `tools/call`.
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ParamsVisitor)
    }
}

struct ParamsVisitor;

/// A JSON value kept only if it is a string.
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> serde::de::Visitor<'de> for ParamsVisitor {
    type Value = Params<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON-RPC params")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut name = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "name" {
                if name.is_some() {
                    return Err(serde::de::Error::duplicate_field("name"));
                }
                name = Some(map.next_value::<MaybeStr<'de>>()?.0);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Params::Object { name })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Params::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Params::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Params::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Params::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Params::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Params::Other)
    }
}

/// The tool names called by a JSON-RPC payload; `Err` when it cannot be read safely.
pub(crate) fn called_tools(body: &[u8]) -> Result<Vec<String>, ()> {
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(Vec::new());
    };
    let messages: Vec<Message<'_>> = if *first == b'[' {
        serde_json::from_slice(body).map_err(|_| ())?
    } else {
        vec![serde_json::from_slice(body).map_err(|_| ())?]
    };
    let mut tools = Vec::new();
    for m in messages {
        if m.method.as_deref() == Some("tools/call") {
            match m.params {
                Some(Params::Object {
                    name: Some(Some(name)),
                }) => tools.push(name.into_owned()),
                _ => return Err(()),
            }
        }
    }
    Ok(tools)
}

// A rejection is rare and built once; boxing it would only cost the common path.
#[allow(clippy::result_large_err)]
fn check(
    auth: &Authenticator,
    parts: &mut http::request::Parts,
    body: &[u8],
    read_tools: bool,
) -> Result<(), LocalResponse> {
    let Ok(ctx) = AuthContext::from_extensions(&parts.extensions) else {
        return Err(auth.challenge().response(AuthError::missing_token()));
    };
    if !read_tools && !auth.policy().has_tool_scopes() && parts.headers.get("mcp-name").is_none() {
        return Ok(());
    }
    let Ok(tools) = called_tools(body) else {
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "the request body is not a JSON-RPC message this server can read"}}),
        ));
    };
    if let Some(header) = parts.headers.get("mcp-name")
        && let [tool] = tools.as_slice()
        && header.as_bytes() != tool.as_bytes()
    {
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32020, "message": "the Mcp-Name header does not match the tool named in the body"}}),
        ));
    }
    let path = parts.uri.path();
    let mut needed = ScopeSet::new();
    for tool in &tools {
        needed.extend(auth.needed_for_tool(path, tool));
    }
    ScopePolicy::check(&needed, ctx.effective_scopes()).map_err(|needed| {
        let mut response = auth
            .challenge()
            .response(AuthError::insufficient_scope(needed));
        // The audit line names the caller it refused (crate::observe rule 2).
        response.extensions_mut().insert(ctx.clone());
        response
    })?;
    parts.extensions.insert(CalledTools(tools));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_read_from_single_and_batch_messages() {
        let one = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{}}}"#;
        assert_eq!(called_tools(one), Ok(vec!["a".to_owned()]));
        let batch = br#"[{"method":"tools/call","params":{"name":"a"}},{"method":"tools/list"},{"method":"tools/call","params":{"name":"b"}}]"#;
        assert_eq!(
            called_tools(batch),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            called_tools(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            Ok(vec![])
        );
        assert_eq!(called_tools(b""), Ok(vec![]));
        // Other methods' params are skipped whatever their shape.
        assert_eq!(
            called_tools(
                br#"{"method":"prompts/get","params":{"name":5,"arguments":[1,{"a":null}]}}"#
            ),
            Ok(vec![])
        );
        assert_eq!(
            called_tools(br#"{"method":"ping","params":[1,2]}"#),
            Ok(vec![])
        );
        // Escapes are decoded, in keys and values alike.
        assert_eq!(
            called_tools(br#"{"method":"tools\/call","params":{"na\u006de":"a\u0062"}}"#),
            Ok(vec!["ab".to_owned()])
        );
    }

    #[test]
    fn unreadable_or_ambiguous_bodies_fail_closed() {
        assert!(called_tools(b"{not json").is_err());
        assert!(
            called_tools(br#"{"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#)
                .is_err()
        );
        assert!(called_tools(br#"{"method":"tools/call","params":{"name":5}}"#).is_err());
        assert!(called_tools(br#"{"method":"tools/call"}"#).is_err());
        assert!(
            called_tools(br#"{"method":"tools/call","params":{"name":"a","name":"b"}}"#).is_err()
        );
        assert!(called_tools(br#"{"method":"tools/call","params":["a"]}"#).is_err());
        assert!(called_tools(br#"{"method":"tools/call","params":null}"#).is_err());
        assert!(called_tools(br#"[{"method":"tools/list"},{"method":"tools/call"}]"#).is_err());
        assert!(called_tools(b"5").is_err());
    }
}
