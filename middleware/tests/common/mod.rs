//! Test harness: a real authorization-server stand-in (metadata + JWKS over HTTP on
//! 127.0.0.1:0), real keys, real signed tokens, and a real bmm server on 127.0.0.1:0.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_middleware::{AuthConfig, AuthContext, Issuer, Resource, ServeConfig, Server};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub private_pem: Vec<u8>,
    pub public_pem: Vec<u8>,
    pub jwk: Value,
}

impl TestKey {
    pub fn load(name: &str, kid: &str, alg: Algorithm) -> Self {
        let read = |suffix: &str| std::fs::read(format!("{FIXTURES}/{name}{suffix}")).unwrap();
        let mut jwk: Value = serde_json::from_slice(&read(".jwk.json")).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self {
            kid: kid.to_owned(),
            alg,
            private_pem: read(".pem"),
            public_pem: read(".pub.pem"),
            jwk,
        }
    }

    pub fn rsa_a() -> Self {
        Self::load("rsa-a", "rsa-a", Algorithm::RS256)
    }

    pub fn rsa_b() -> Self {
        Self::load("rsa-b", "rsa-b", Algorithm::RS256)
    }

    pub fn ec() -> Self {
        Self::load("ec-p256", "ec-1", Algorithm::ES256)
    }

    pub fn with_alg_in_jwk(mut self) -> Self {
        self.jwk["alg"] = json!(format!("{:?}", self.alg));
        self
    }

    fn encoding_key(&self) -> EncodingKey {
        match self.alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                EncodingKey::from_ec_pem(&self.private_pem).unwrap()
            }
            _ => EncodingKey::from_rsa_pem(&self.private_pem).unwrap(),
        }
    }

    /// Signs `claims` with this key and its kid.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding_key()).unwrap()
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The authorization server stand-in.
pub struct TestIssuer {
    pub issuer: String,
    pub addr: SocketAddr,
    pub state: Arc<IssuerState>,
    _shutdown: oneshot::Sender<()>,
}

pub struct IssuerState {
    pub issuer: Mutex<String>,
    pub path: String,
    pub keys: Mutex<Vec<Value>>,
    /// Requests for the JWKS, answered or not.
    pub jwks_fetches: AtomicUsize,
    pub metadata_fetches: AtomicUsize,
    pub down: AtomicBool,
    pub serve_rfc8414: AtomicBool,
    pub metadata_issuer_override: Mutex<Option<String>>,
    pub cache_control: Mutex<String>,
}

impl TestIssuer {
    pub async fn start(keys: &[&TestKey]) -> Self {
        Self::start_at_path("", keys).await
    }

    /// An issuer on a given address.
    pub async fn start_on(addr: SocketAddr, keys: &[&TestKey]) -> Self {
        Self::start_with_listener(TcpListener::bind(addr).await.unwrap(), "", keys)
    }

    /// An issuer whose identifier has a path (`http://127.0.0.1:port/tenant`).
    pub async fn start_at_path(path: &str, keys: &[&TestKey]) -> Self {
        Self::start_with_listener(TcpListener::bind("127.0.0.1:0").await.unwrap(), path, keys)
    }

    fn start_with_listener(listener: TcpListener, path: &str, keys: &[&TestKey]) -> Self {
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}{path}");
        let state = Arc::new(IssuerState {
            issuer: Mutex::new(issuer.clone()),
            path: path.to_owned(),
            keys: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            jwks_fetches: AtomicUsize::new(0),
            metadata_fetches: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            serve_rfc8414: AtomicBool::new(true),
            metadata_issuer_override: Mutex::new(None),
            cache_control: Mutex::new("public, max-age=300".to_owned()),
        });
        let (tx, mut rx) = oneshot::channel::<()>();
        let served = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = Arc::clone(&served);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let state = Arc::clone(&state);
                                async move { Ok::<_, Infallible>(issuer_route(&state, &req)) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    _ = &mut rx => break,
                }
            }
        });
        Self {
            issuer,
            addr,
            state,
            _shutdown: tx,
        }
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    pub fn set_raw_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Standard claims for `resource`, valid for an hour.
    pub fn claims(&self, resource: &str, scope: &str) -> Value {
        json!({
            "iss": self.issuer,
            "sub": "alice",
            "aud": resource,
            "exp": now() + 3600,
            "iat": now(),
            "scope": scope,
            "client_id": "bmm_test_client",
        })
    }
}

fn issuer_route(state: &IssuerState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let issuer = state.issuer.lock().unwrap().clone();
    let origin = issuer.trim_end_matches(&state.path).to_owned();
    let metadata = || {
        state.metadata_fetches.fetch_add(1, Ordering::SeqCst);
        let claimed = state
            .metadata_issuer_override
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| issuer.clone());
        json!({
            "issuer": claimed,
            "jwks_uri": format!("{origin}/jwks"),
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
        })
    };
    let rfc8414 = format!("/.well-known/oauth-authorization-server{}", state.path);
    let oidc = format!("/.well-known/openid-configuration{}", state.path);
    if path == "/jwks" {
        state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    }
    let (status, body, cache) = if state.down.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "down"}),
            None,
        )
    } else if (path == rfc8414 && state.serve_rfc8414.load(Ordering::SeqCst)) || path == oidc {
        (StatusCode::OK, metadata(), None)
    } else if path == "/jwks" {
        let keys = state.keys.lock().unwrap().clone();
        (
            StatusCode::OK,
            json!({"keys": keys}),
            Some(state.cache_control.lock().unwrap().clone()),
        )
    } else {
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}), None)
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    if let Some(cache) = cache {
        response
            .headers_mut()
            .insert(http::header::CACHE_CONTROL, cache.parse().unwrap());
    }
    response
}

/// The stand-in MCP service: reports what reached it.
pub fn echo_service() -> impl tower_service::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let ctx = AuthContext::from_request(&req).ok().cloned();
        let authorization_seen = req.headers().contains_key(http::header::AUTHORIZATION);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let report = json!({
            "subject": ctx.as_ref().and_then(|c| c.subject().map(str::to_owned)),
            "client_id": ctx.as_ref().and_then(|c| c.client_id().map(str::to_owned)),
            "scopes": ctx.as_ref().map(|c| c.scopes().iter().cloned().collect::<Vec<_>>()),
            "authorization_seen": authorization_seen,
            "body_len": body.len(),
        });
        let mut response = Response::new(Full::new(Bytes::from(report.to_string())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        Ok::<_, Infallible>(response)
    })
}

/// A bmm server on 127.0.0.1:0 around [`echo_service`].
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub resource: String,
    pub auth: bmm_middleware::Authenticator,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Starts a server; `configure` adjusts the auth config (resource is
    /// `http://127.0.0.1:<port>/mcp`).
    pub async fn start(
        issuer: &TestIssuer,
        configure: impl FnOnce(AuthConfig) -> AuthConfig,
    ) -> Self {
        Self::start_with(issuer, configure, |c| c).await
    }

    pub async fn start_with(
        issuer: &TestIssuer,
        configure: impl FnOnce(AuthConfig) -> AuthConfig,
        serve: impl FnOnce(ServeConfig) -> ServeConfig,
    ) -> Self {
        Self::start_for_issuer(&issuer.issuer, configure, serve).await
    }

    pub async fn start_for_issuer(
        issuer: &str,
        configure: impl FnOnce(AuthConfig) -> AuthConfig,
        serve: impl FnOnce(ServeConfig) -> ServeConfig,
    ) -> Self {
        // The listener stays bound: dropping it and binding its port again raced with
        // other tests taking the port (AddrInUse in CI).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let resource = format!("http://{addr}/mcp");
        let config = AuthConfig::new(Resource::parse(&resource).unwrap())
            .issuer(Issuer::parse(issuer).unwrap());
        let auth = configure(config).build().unwrap();
        let server = Server::from_listener(listener, serve(ServeConfig::new("/mcp", auth.clone())));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.serve(echo_service(), async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            url: resource.clone(),
            resource,
            auth,
            shutdown: Some(tx),
            handle,
        }
    }

    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.handle)
            .await
            .expect("server stopped")
            .unwrap()
    }

    pub fn metadata_url(&self) -> String {
        format!(
            "http://{}/.well-known/oauth-protected-resource/mcp",
            self.addr
        )
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn www_authenticate(&self) -> Option<&str> {
        self.headers
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn post(url: &str, token: Option<&str>) -> Reply {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    reply(req.send().await.unwrap()).await
}

pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// Sends raw HTTP/1.1 bytes and returns the status line and headers (for requests an HTTP
/// client refuses to build, such as two Authorization headers).
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A loopback address nothing listens on.
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
