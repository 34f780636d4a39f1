//! Key lookup while the key set is being refreshed, and the per-tool scope layer's body
//! inspection: `cargo bench -p bmm-middleware --bench keys_and_scopes`.
//!
//! - `jwks/steady` and `jwks/under_refresh`: full verification (token cache off) against
//!   a real issuer on 127.0.0.1. In `under_refresh` the key set expires at once (every
//!   lookup also starts a background refresh) and a task re-fetches the JWKS every
//!   millisecond, so readers race a writer all the time; rule 1 of
//!   `jwks.rs` (lock-free reads) says the two figures should match.
//! - `scope/*`: `ToolScopeLayer` alone (the auth context is already in the request) around
//!   an in-memory service, for a small `tools/call`, one with 64 KiB of arguments, a batch
//!   of 16 calls and a `tools/list`, against the service called bare.
//! - `scope_body/*`: the layer's body reader alone, against a `serde_json::Value` parse of
//!   the same body.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bmm_middleware::{
    AuthConfig, Authenticator, Issuer, KeySettings, Resource, ScopePolicy, ToolScopeLayer,
};
use bytes::Bytes;
use common::{TestIssuer, TestKey};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

const RESOURCE: &str = "http://127.0.0.1:9/mcp";

fn authenticator(issuer: &str, settings: KeySettings) -> Authenticator {
    let policy = ScopePolicy::new()
        .require_for_tool("echo", ["mcp:write"])
        .unwrap();
    AuthConfig::new(Resource::parse(RESOURCE).unwrap())
        .issuer(Issuer::parse(issuer).unwrap())
        .key_settings(settings)
        .scope_policy(policy)
        .token_cache_capacity(0)
        .build()
        .unwrap()
}

fn inner() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"ok\":true}",
        ))))
    })
}

fn call(id: usize, text: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#
    )
}

fn jwks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let key = TestKey::rsa_a();
    let issuer = rt.block_on(TestIssuer::start(&[&key]));
    let token = key.sign(&issuer.claims(RESOURCE, "mcp:read mcp:write"));

    let steady = authenticator(&issuer.issuer, KeySettings::default());
    let churning = authenticator(
        &issuer.issuer,
        KeySettings::default()
            .refetch_cooldown(Duration::ZERO)
            .ttl_bounds(Duration::ZERO, Duration::ZERO, Duration::ZERO),
    );
    for auth in [&steady, &churning] {
        rt.block_on(auth.prefetch_keys()).unwrap();
        assert!(rt.block_on(auth.verify_token(&token)).is_ok());
    }

    let mut group = c.benchmark_group("jwks");
    group.bench_function("steady", |b| {
        b.iter(|| rt.block_on(steady.verify_token(&token)).unwrap());
    });

    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let auth = churning.clone();
        let stop = Arc::clone(&stop);
        rt.spawn(async move {
            let mut fetched = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if auth.prefetch_keys().await.is_ok() {
                    fetched += 1;
                }
                // A thousand refreshes a second: far beyond any real issuer, without the
                // loop itself taking one of the two cores away from the readers.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            fetched
        })
    };
    let before = churning.jwks_fetch_count();
    group.bench_function("under_refresh", |b| {
        b.iter(|| rt.block_on(churning.verify_token(&token)).unwrap());
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let refreshed = rt.block_on(refresher).unwrap();
    println!(
        "jwks/under_refresh: {} JWKS fetches ({refreshed} by the refresh loop) while it ran",
        churning.jwks_fetch_count() - before
    );
}

fn scope(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = TestKey::rsa_a();
    let issuer = rt.block_on(TestIssuer::start(&[&key]));
    let auth = authenticator(&issuer.issuer, KeySettings::default());
    let token = key.sign(&issuer.claims(RESOURCE, "mcp:read mcp:write"));
    let context = rt.block_on(auth.verify_token(&token)).unwrap();
    let layer = ToolScopeLayer::new(auth, 4 << 20);

    let big = "x".repeat(64 * 1024);
    let batch = format!(
        "[{}]",
        (0..16).map(|i| call(i, "hi")).collect::<Vec<_>>().join(",")
    );
    let bodies = [
        ("tools_call", Bytes::from(call(1, "hi"))),
        ("tools_call_64k", Bytes::from(call(1, &big))),
        ("batch_16_calls", Bytes::from(batch)),
        (
            "tools_list",
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
        ),
    ];
    let request = |body: &Bytes| {
        let mut request = Request::post("/mcp")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        request.extensions_mut().insert(context.clone());
        request
    };

    let mut group = c.benchmark_group("scope");
    group.bench_function("bare_service", |b| {
        b.iter(|| rt.block_on(inner().oneshot(request(&bodies[0].1))).unwrap());
    });
    for (name, body) in &bodies {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let response = rt
                    .block_on(layer.layer(inner()).oneshot(request(body)))
                    .unwrap();
                assert_eq!(response.status(), 200);
            });
        });
    }
    group.finish();

    // The body reader alone, against parsing the body into a `serde_json::Value` tree
    // (what the layer did before it read names in one pass).
    let mut group = c.benchmark_group("scope_body");
    for (name, body) in &bodies {
        group.bench_function(format!("{name}/names_only"), |b| {
            b.iter(|| bmm_middleware::fuzzing::tool_call_names(body).unwrap());
        });
        group.bench_function(format!("{name}/value_tree"), |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(body).unwrap());
        });
    }
    group.finish();
}

criterion_group!(keys_and_scopes, jwks, scope);
criterion_main!(keys_and_scopes);
