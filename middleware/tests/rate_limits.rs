//! Per-subject and per-tool rate limits, reloading signing keys, and the drain on shutdown,
//! over real sockets against the stand-in issuer (issue 17, items 4 and 6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bmm_core::Rate;
use bmm_middleware::{RateLimit, RateLimits, Reload, ServeConfig};
use common::*;
use serde_json::json;

fn limit(text: &str) -> RateLimit {
    RateLimit::new(Rate::parse(text).unwrap())
}

async fn call(url: &str, token: &str, tool: &str) -> Reply {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
    let response = client()
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    reply(response).await
}

fn token_for(issuer: &TestIssuer, key: &TestKey, resource: &str, subject: &str) -> String {
    let mut claims = issuer.claims(resource, "");
    claims["sub"] = json!(subject);
    key.sign(&claims)
}

fn assert_rate_limited(reply: &Reply, limit: &str) {
    assert_eq!(reply.status, 429, "{}", reply.text);
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
    assert_eq!(reply.body["jsonrpc"], "2.0");
    assert_eq!(reply.body["error"]["code"], -32000);
    assert_eq!(reply.body["error"]["data"]["limit"], limit);
    assert_eq!(
        reply.body["error"]["data"]["retryAfterSeconds"],
        json!(retry)
    );
}

#[tokio::test]
async fn empty_bucket_answers_429_with_retry_after_and_recovers_after_refill() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start_with(
        &issuer,
        |c| c,
        |s| s.rate_limits(RateLimits::new().per_subject(limit("2/s"))),
    )
    .await;
    let token = token_for(&issuer, &key, &server.resource, "alice");
    for _ in 0..2 {
        assert_eq!(post(&server.url, Some(&token)).await.status, 200);
    }
    let refused = post(&server.url, Some(&token)).await;
    assert_rate_limited(&refused, "subject");
    assert_eq!(refused.headers["retry-after"], "1");
    // A token comes back every 500 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = post(&server.url, Some(&token)).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text);
        assert!(Instant::now() < deadline, "never recovered");
    }
}

#[tokio::test]
async fn two_subjects_have_independent_buckets() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start_with(
        &issuer,
        |c| c,
        |s| s.rate_limits(RateLimits::new().per_subject(limit("3/hour"))),
    )
    .await;
    let alice = token_for(&issuer, &key, &server.resource, "alice");
    let bob = token_for(&issuer, &key, &server.resource, "bob");
    for _ in 0..3 {
        assert_eq!(post(&server.url, Some(&alice)).await.status, 200);
    }
    assert_rate_limited(&post(&server.url, Some(&alice)).await, "subject");
    // A second token of the same subject (another client) shares the bucket.
    let mut claims = issuer.claims(&server.resource, "");
    claims["client_id"] = json!("another_client");
    assert_eq!(
        post(&server.url, Some(&key.sign(&claims))).await.status,
        429
    );
    for _ in 0..3 {
        assert_eq!(post(&server.url, Some(&bob)).await.status, 200);
    }
    assert_eq!(post(&server.url, Some(&bob)).await.status, 429);
}

#[tokio::test]
async fn per_tool_limit_applies_only_to_that_tool() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start_with(
        &issuer,
        |c| c,
        |s| s.rate_limits(RateLimits::new().per_tool("expensive", limit("1/hour"))),
    )
    .await;
    let alice = token_for(&issuer, &key, &server.resource, "alice");
    let bob = token_for(&issuer, &key, &server.resource, "bob");
    assert_eq!(call(&server.url, &alice, "expensive").await.status, 200);
    let refused = call(&server.url, &alice, "expensive").await;
    assert_rate_limited(&refused, "tool");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 3500, "an hour's token: {retry}");
    // Other tools and other methods of the same caller are not limited; nor is another
    // caller's call of the same tool.
    for _ in 0..5 {
        assert_eq!(call(&server.url, &alice, "cheap").await.status, 200);
        assert_eq!(post(&server.url, Some(&alice)).await.status, 200);
    }
    assert_eq!(call(&server.url, &bob, "expensive").await.status, 200);
    // The body reached the MCP service unchanged.
    let r = call(&server.url, &bob, "cheap").await;
    assert!(r.body["body_len"].as_u64().unwrap() > 40, "{}", r.text);
}

#[tokio::test]
async fn no_limit_applies_without_authentication() {
    let config = ServeConfig::unauthenticated("/mcp")
        .rate_limits(RateLimits::new().per_subject(limit("1/hour")));
    let server = bmm_middleware::Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(echo_service(), std::future::pending()));
    for _ in 0..3 {
        assert_eq!(post(&format!("http://{addr}/mcp"), None).await.status, 200);
    }
}

#[tokio::test]
async fn reload_refetches_the_jwks_so_a_key_added_after_start_is_accepted() {
    let old = TestKey::rsa_a();
    let new = TestKey::rsa_b();
    let issuer = TestIssuer::start(&[&old]).await;
    let reload = Reload::new();
    let server = TestServer::start_with(&issuer, |c| c, {
        let reload = reload.clone();
        move |s| s.reload(reload)
    })
    .await;
    let token = new.sign(&issuer.claims(&server.resource, ""));
    // Wait for the start-up fetch, then: a kid fetched for once and found missing is
    // remembered, and the refetch cooldown holds, so the token stays refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while issuer.jwks_fetches() == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(&server.url, Some(&token)).await.status, 401);
    issuer.set_keys(&[&old, &new]);
    assert_eq!(post(&server.url, Some(&token)).await.status, 401);
    let before = issuer.jwks_fetches();
    reload.trigger();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if issuer.jwks_fetches() > before {
            break;
        }
        assert!(Instant::now() < deadline, "no JWKS fetch after the reload");
    }
    let mut reply = post(&server.url, Some(&token)).await;
    while reply.status != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = post(&server.url, Some(&token)).await;
    }
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test]
async fn an_answer_during_the_drain_carries_connection_close_and_serve_returns() {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slow = tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let server =
        bmm_middleware::Server::from_listener(listener, ServeConfig::unauthenticated("/mcp"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(slow, async move {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 2\r\n\r\n{{}}")
                .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the connection closed after its answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returned once drained")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
