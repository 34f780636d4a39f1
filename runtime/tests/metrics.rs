//! Prometheus metrics over real sockets (crate::metrics, crate::observe): `/metrics` on its
//! own port, parsed with a Prometheus text-format parser, counters and histograms moving
//! as real requests with real tokens are made.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod observe_common;

use std::net::SocketAddr;

use observe_common::{call_tool, start, token};
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::json;

async fn scrape(metrics: SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of a counter or gauge sample with exactly these labels (0 when absent).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && has_labels(&s.labels, labels))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

/// The observation count of a histogram with these labels (0 when absent).
fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && has_labels(&s.labels, labels))
        .map(|s| match &s.value {
            Sample::Histogram(buckets) => buckets.iter().map(|b| b.count as u64).max().unwrap_or(0),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

fn delta_of(after: &Scrape, before: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(after, name, labels) - value(before, name, labels)
}

fn has_labels(have: &prometheus_parse::Labels, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(*v))
}

#[test]
fn metrics_listen_on_the_mcp_address_is_refused_at_start_up() {
    let addr: SocketAddr = "127.0.0.1:4999".parse().unwrap();
    let args = observe_common::args(
        addr,
        "http://127.0.0.1:1/jwks",
        &["--metrics-listen", "127.0.0.1:4999"],
    );
    let env = |name: &str| (name == "ITEMS_API_KEY").then(|| "k".to_owned());
    let Err(err) = bmm_runtime::run::prepare(
        bmm_runtime::ServerDef {
            tools: Vec::new(),
            ..observe_common_def()
        },
        &args,
        env,
    ) else {
        panic!("start-up was not refused");
    };
    assert!(err.message.contains("--metrics-listen"), "{err}");
}

fn observe_common_def() -> bmm_runtime::ServerDef {
    bmm_runtime::ServerDef {
        name: "observed",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &[],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams: &[],
        tools: Vec::new(),
        resources: &[],
        prompts: Vec::new(),
        resource_templates: &[],
    }
}

/// One test for the whole process: the recorder is global.
#[tokio::test]
async fn metrics_count_requests_refusals_and_tool_calls_on_their_own_port_only() {
    let s = start(&["--metrics-listen", "127.0.0.1:0"], None).await;
    let metrics = bmm_runtime::metrics::start("127.0.0.1:0".parse().unwrap(), s.addr)
        .await
        .unwrap();
    assert_ne!(metrics.port(), s.addr.port());

    // Counters with fixed label sets are described and shown from zero before anything
    // happened, rate limits included.
    let before = scrape(metrics).await;
    for name in [
        "bmm_auth_refusals_total",
        "bmm_jwks_fetches_total",
        "bmm_sessions_open",
        "bmm_rate_limit_refusals_total",
    ] {
        assert!(before.docs.contains_key(name), "no HELP for {name}");
    }
    assert!(
        before
            .samples
            .iter()
            .any(|s| s.metric == "bmm_rate_limit_refusals_total"
                && has_labels(&s.labels, &[("limit", "subject")]))
    );

    let read = token(&s.url, "demo:read", "client-a", 600);
    let (status, answer) = call_tool(&s, Some(&read), "get_item", json!({"id": "42"})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["result"].is_object(), "{answer}");
    let (status, _) = call_tool(&s, Some(&read), "whoami", json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = call_tool(&s, None, "whoami", json!({})).await;
    assert_eq!(status, 401);
    let (status, _) = call_tool(&s, Some(&read), "purge", json!({})).await;
    assert_eq!(status, 403);
    let expired = token(&s.url, "demo:read", "client-a", -600);
    let (status, _) = call_tool(&s, Some(&expired), "whoami", json!({})).await;
    assert_eq!(status, 401);

    let after = scrape(metrics).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        delta(
            "bmm_requests_total",
            &[("method", "tools/call"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "bmm_requests_total",
            &[("method", "tools/call"), ("outcome", "refused")]
        ),
        3.0
    );
    assert_eq!(
        delta("bmm_auth_refusals_total", &[("reason", "missing")]),
        1.0
    );
    assert_eq!(
        delta("bmm_auth_refusals_total", &[("reason", "scope")]),
        1.0
    );
    assert_eq!(
        delta("bmm_auth_refusals_total", &[("reason", "expired")]),
        1.0
    );
    assert_eq!(
        histogram_count(
            &after,
            "bmm_tool_call_duration_seconds",
            &[("tool", "get_item"), ("outcome", "ok")]
        ),
        1
    );
    assert_eq!(
        histogram_count(
            &after,
            "bmm_tool_call_duration_seconds",
            &[("tool", "whoami"), ("outcome", "ok")]
        ),
        1
    );
    assert_eq!(
        histogram_count(
            &after,
            "bmm_upstream_request_duration_seconds",
            &[("upstream", "items"), ("status", "2xx")]
        ),
        1
    );
    assert!(value(&after, "bmm_jwks_fetches_total", &[("outcome", "ok")]) >= 1.0);
    for name in [
        "bmm_requests_total",
        "bmm_tool_call_duration_seconds",
        "bmm_upstream_request_duration_seconds",
    ] {
        assert!(after.docs.contains_key(name), "no HELP for {name}");
    }
    // Only declared tool names label the histogram.
    let (_, answer) = call_tool(&s, Some(&read), "no_such_tool\"}", json!({})).await;
    assert!(answer["error"].is_object(), "{answer}");
    let last = scrape(metrics).await;
    for sample in &last.samples {
        if let Some(tool) = sample.labels.get("tool") {
            assert!(
                ["whoami", "get_item", "purge", "unknown"].contains(&tool),
                "{tool}"
            );
        }
    }

    // A legacy session is counted at the next scrape.
    let opened = reqwest::Client::new()
        .post(&s.url)
        .header("authorization", format!("Bearer {read}"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 200);
    assert!(opened.headers().contains_key("mcp-session-id"));
    let with_session = scrape(metrics).await;
    assert_eq!(value(&with_session, "bmm_sessions_open", &[]), 1.0);
    assert_eq!(
        delta_of(
            &with_session,
            &last,
            "bmm_requests_total",
            &[("method", "initialize"), ("outcome", "ok")]
        ),
        1.0
    );

    // The metrics port serves only /metrics; the MCP port never serves metrics.
    let client = reqwest::Client::new();
    let on_metrics = client
        .post(format!("http://{metrics}/mcp"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(on_metrics.status(), 404);
    let post_metrics = client
        .post(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post_metrics.status(), 405);
    let on_mcp = client
        .get(format!("http://{}/metrics", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(on_mcp.status(), 404);
    let text = on_mcp.text().await.unwrap();
    assert!(!text.contains("bmm_requests_total"), "{text}");
}
