//! The floor `cargo xtask bench` compares against: the same `word_stats` tool served by
//! rmcp's Streamable HTTP service on plain hyper, with no bmm-middleware layer at all (no
//! auth, no Origin check, no limits, no tracing).
//!
//! usage: plain_rmcp <listen address>
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "common/word_stats.rs"]
mod word_stats;

use std::sync::Arc;

use bmm_runtime::{McpServer, Secrets};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

#[tokio::main]
async fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4199".to_owned());
    let def = word_stats::server_def();
    let server = McpServer::new(def, Secrets::default(), |_| None).unwrap();
    let service = StreamableHttpService::new(
        move || Ok(server.session()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_legacy_session_mode(true),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    eprintln!("plain rmcp on {listen}/mcp");
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
