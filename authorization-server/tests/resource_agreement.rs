//! bmm-as writes a resource's canonical form into every token's `aud`; the middleware of
//! the MCP server compares `aud` with its own resource. Both take the form from
//! `bmm_core::canonical_resource`, and this test holds them to it: whatever bmm-as accepts
//! as a resource, the middleware accepts with the same canonical text and matches the
//! `aud` bmm-as would write; what bmm-as refuses, the middleware refuses too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bmm_authorization_server::{Args, Settings};
use bmm_middleware::Resource;
use clap::Parser;

fn as_resource(resource: &str) -> Result<String, String> {
    let args = Args::try_parse_from([
        "bmm-as",
        "--issuer",
        "http://127.0.0.1:4000",
        "--resource",
        resource,
    ])
    .unwrap();
    Settings::from_args(args)
        .map(|s| s.resources.into_iter().next().unwrap())
        .map_err(|e| e.to_string())
}

#[test]
fn the_aud_bmm_as_writes_is_the_resource_the_middleware_protects() {
    for resource in [
        "http://127.0.0.1:4103/mcp",
        "http://127.0.0.1:4103/mcp/",
        "HTTP://LOCALHOST:4103/mcp",
        "http://127.0.0.1:80/mcp",
        "https://MCP.Example.com:443/mcp/",
        "https://mcp.example.com/",
        "https://mcp.example.com",
        "https://mcp.example.com/tenant/mcp?x=1",
    ] {
        let aud = as_resource(resource).unwrap_or_else(|e| panic!("{resource}: {e}"));
        let protected = Resource::parse_insecure(resource).unwrap();
        assert_eq!(protected.as_str(), aud, "{resource}");
        assert!(protected.matches_audience(&aud), "{resource}");
        assert_eq!(bmm_core::canonical_resource(resource).unwrap(), aud);
    }
}

#[test]
fn what_bmm_as_refuses_as_a_resource_the_middleware_refuses_too() {
    for resource in [
        "https://mcp.example.com/mcp#frag",
        "https://user:pass@mcp.example.com/mcp",
        "ftp://mcp.example.com/mcp",
        "mcp.example.com/mcp",
    ] {
        let refused = as_resource(resource).unwrap_err();
        assert!(refused.contains(resource), "{refused}");
        assert!(Resource::parse_insecure(resource).is_err(), "{resource}");
    }
}
