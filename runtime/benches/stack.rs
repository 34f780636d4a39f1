//! The whole server stack in memory (no sockets, no load generator): one stateless
//! 2026-07-28 `tools/call word_stats` through each of
//!
//! - `stack/plain_rmcp`: rmcp's Streamable HTTP service alone (what bmm served every
//!   stateless request with before issue 19);
//! - `stack/mcp_service`: bmm's MCP service, which answers this request on the direct
//!   stateless path (`bmm_runtime`'s `stateless` module) and passes the rest to rmcp;
//! - `stack/bmm_auth_off`: every `bmm_middleware::stack` layer, authentication disabled;
//! - `stack/bmm_auth_on`: the same with a valid RS256 token (verified-token cache warm);
//! - `stack/bmm_auth_on_default_logs`: the same with a generated server's default logging
//!   (`fmt` at the default filter) writing to a sink, so the request span is on;
//! - `stack/bmm_auth_on_info_logs`: the same at plain `info`, rmcp's per-session lines
//!   included;
//! - `stack/bmm_auth_on_traces`: `stack/bmm_auth_on` with OpenTelemetry traces on (HTTP
//!   and MCP spans built, ended and queued to a batch processor whose exporter discards
//!   them: the OTLP encoding and sending run on the processor's own thread).
//!
//! - `layers/NN …`: the auth-on stack built up one layer at a time from the MCP service
//!   outwards (`bmm_middleware::stack_by_layer`), each variant boxed the same way.
//!
//! Differences between neighbours are what each part costs per request:
//! `cargo bench -p bmm-runtime --bench stack`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/common/word_stats.rs"]
mod word_stats;

use std::convert::Infallible;
use std::sync::Arc;

use bmm_middleware::{AuthConfig, Issuer, Resource, ServeConfig};
use bmm_runtime::{McpServer, Secrets};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tower::{Service, ServiceExt};

const ISSUER: &str = "https://as.example.com";
const RESOURCE: &str = "http://127.0.0.1:4103/mcp";

fn auth_config() -> ServeConfig {
    let auth = AuthConfig::new(Resource::parse(RESOURCE).unwrap())
        .issuer_with_static_jwks(
            Issuer::parse(ISSUER).unwrap(),
            &bmm_runtime::testing::stand_in_jwks().unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
    ServeConfig::new("/mcp", auth)
}

/// The request `cargo xtask bench` sends, as hyper would hand it over.
fn request(token: Option<&str>) -> Request<Full<Bytes>> {
    // The body is built once: a bench iteration measures the server, not `json!`.
    static BODY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| {
        Bytes::from(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "bmm-bench", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}
        },
        "name": "word_stats",
        "arguments": {"text": "The quick brown fox jumps over the lazy dog. Twice! Really?"}}})
            .to_string(),
        )
    });
    let mut builder = Request::post("/mcp")
        .header("host", "127.0.0.1:4103")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "word_stats");
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    builder.body(Full::new(body.clone())).unwrap()
}

/// One call, the whole response body read.
async fn call<S, B>(service: &S, token: Option<&str>) -> (u16, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let response = service.clone().oneshot(request(token)).await.unwrap();
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => panic!("response body: {e}"),
    };
    (status, body)
}

fn bench<S, B>(c: &mut Criterion, name: &str, service: &S, token: Option<&str>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every variant must answer the call, or its figure means nothing.
    let (status, body) = rt.block_on(call(service, token));
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{name}: {text}");
    assert!(text.contains(r#""words":11"#), "{name}: {text}");
    c.bench_function(name, |b| b.iter(|| rt.block_on(call(service, token))));
}

/// An exporter that drops every batch.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

fn stack(c: &mut Criterion) {
    let server = McpServer::new(word_stats::server_def(), Secrets::default(), |_| None).unwrap();
    let factory = server.clone();
    let plain = StreamableHttpService::new(
        move || Ok(factory.session()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_legacy_session_mode(true),
    );
    bench(c, "stack/plain_rmcp", &plain, None);

    let off = ServeConfig::unauthenticated("/mcp");
    let inner = bmm_runtime::run::mcp_service(&server, off.allowed_hosts(), 256, 16);
    bench(c, "stack/mcp_service", &inner, None);
    let bmm_off = bmm_middleware::stack(&off, inner);
    bench(c, "stack/bmm_auth_off", &bmm_off, None);

    let on = auth_config();
    let token = bmm_runtime::testing::stand_in_token(ISSUER, RESOURCE, "mcp:read").unwrap();
    let bmm_on = bmm_middleware::stack(
        &on,
        bmm_runtime::run::mcp_service(&server, on.allowed_hosts(), 256, 16),
    );
    bench(c, "stack/bmm_auth_on", &bmm_on, Some(&token));

    // Layer by layer (the auth-on stack, built up from the MCP service outwards; each
    // variant boxed once, so neighbours differ by one layer).
    let layers = bmm_middleware::stack_by_layer(
        &on,
        bmm_runtime::run::mcp_service(&server, on.allowed_hosts(), 256, 16),
    );
    for (i, (name, service)) in layers.iter().enumerate() {
        bench(c, &format!("layers/{i:02} {name}"), service, Some(&token));
    }

    // Traces on: a server of its own (its tracer is set once).
    let traced = McpServer::new(word_stats::server_def(), Secrets::default(), |_| None).unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    let traces = bmm_middleware::Traces::new(opentelemetry::trace::TracerProvider::tracer(
        &provider, "bench",
    ));
    traced.set_traces(traces.clone());
    let traced_config = auth_config().traces(traces);
    let bmm_traced = bmm_middleware::stack(
        &traced_config,
        bmm_runtime::run::mcp_service(&traced, traced_config.allowed_hosts(), 256, 16),
    );
    bench(c, "stack/bmm_auth_on_traces", &bmm_traced, Some(&token));
    let _ = provider.shutdown();

    // A generated server's logging when RUST_LOG is unset, and plain `info` (which also
    // lets rmcp's per-session lines through), both into a sink.
    for (name, filter) in [
        (
            "stack/bmm_auth_on_default_logs",
            bmm_runtime::run::DEFAULT_LOG_FILTER,
        ),
        ("stack/bmm_auth_on_info_logs", "info"),
    ] {
        let logs = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(logs, || {
            bench(c, name, &bmm_on, Some(&token));
        });
    }
}

criterion_group!(benches, stack);
criterion_main!(benches);
