//! `tools/list` filtered by the caller's scopes (`--tools-list-by-scope`).
//!
//! The 2026-07-28 specification lets the tool list vary by the authorization presented on
//! the request ("returning only the tools the caller's granted scopes permit"), and asks
//! for caching hints (`ttlMs`, `cacheScope`) on every list result (SEP-2549).
//!
//! Rules:
//! 1. When filtering is on (`--tools-list-by-scope on`, the default when any tool has
//!    scopes of its own, never with `--no-auth` or `--stdio`), `tools/list` lists only the
//!    tools the request's token may call: every scope the call would need (server-wide,
//!    route and the tool's own, as the middleware's [`ScopePolicy`] says) is among the
//!    token's effective scopes (its granted scopes with the scope hierarchy applied, as
//!    the middleware computed them), in the order of the definition
//!    (`tools_list_hides_tools_the_token_lacks_scopes_for`).
//! 2. The identity is the one of the request carrying `tools/list`, in both eras: a
//!    stateless 2026-07-28 request's own token, and in a legacy session the token of that
//!    request, not the one that opened the session, so a step-up shows the new tools at
//!    once (`tools_list_follows_the_token_of_each_request`).
//! 3. A filtered list is `cacheScope: "private"` (a shared cache must not serve it to
//!    another authorization context) with `ttlMs` of at most [`FILTERED_TTL`], never
//!    past the token's expiry (`filtered_list_is_private_and_fresh_until_the_token_expires`).
//!    An unfiltered list keeps rmcp's hints (`ttlMs: 0`, `"private"` on 2026-07-28).
//! 4. Without an [`AuthContext`] while filtering is on (the stack always adds one when
//!    authentication is on) only the tools that need no scope are listed: fail closed
//!    (`a_request_without_identity_sees_only_unscoped_tools`).
//! 5. Hiding is not access control: calling a hidden tool is still refused by the
//!    middleware with 403 `insufficient_scope` naming every scope the call needs, in one
//!    challenge (`calling_a_hidden_tool_is_refused_with_every_missing_scope`).

use std::time::{Duration, SystemTime};

use bmm_middleware::{AuthContext, ScopePolicy, ScopeSet};
use rmcp::model::{CacheScope, ListToolsResult, Tool};

use crate::def::ToolDef;

/// The longest a filtered list may be considered fresh (rule 3).
pub const FILTERED_TTL: Duration = Duration::from_secs(300);

/// The tools `auth` may call on `path`, in definition order (rules 1 and 4). `defs` and
/// `tools` are parallel.
pub(crate) fn visible(
    policy: &ScopePolicy,
    path: &str,
    auth: Option<&AuthContext>,
    defs: &[ToolDef],
    tools: &[Tool],
) -> Vec<Tool> {
    let none = ScopeSet::new();
    let granted = auth.map_or(&none, AuthContext::effective_scopes);
    let base = policy.needed_for_path(path);
    defs.iter()
        .zip(tools)
        .filter(|(def, _)| {
            let own = policy.tool_scopes(def.name);
            if own.is_empty() {
                return ScopePolicy::check(&base, granted).is_ok();
            }
            let mut needed = base.clone();
            needed.extend(own.iter().cloned());
            ScopePolicy::check(&needed, granted).is_ok()
        })
        .map(|(_, tool)| tool.clone())
        .collect()
}

/// `ttlMs` for a list filtered for `auth` at `now` (rule 3).
pub(crate) fn ttl_ms(auth: Option<&AuthContext>, now: SystemTime) -> u64 {
    let remaining = auth.map_or(Duration::ZERO, |a| {
        a.expires_at().duration_since(now).unwrap_or(Duration::ZERO)
    });
    u64::try_from(remaining.min(FILTERED_TTL).as_millis()).unwrap_or(0)
}

/// The `tools/list` answer filtered for the request (rules 1 to 4).
pub(crate) fn filtered(
    policy: &ScopePolicy,
    parts: Option<&http::request::Parts>,
    defs: &[ToolDef],
    tools: &[Tool],
) -> ListToolsResult {
    let auth = parts.and_then(|p| AuthContext::from_parts(p).ok());
    let path = parts.map_or("/", |p| p.uri.path());
    ListToolsResult::with_all_items(visible(policy, path, auth, defs, tools))
        .with_cache_scope(CacheScope::Private)
        .with_ttl_ms(ttl_ms(auth, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::def::{AnnotationsDef, Handler, TaskSupport};
    use crate::output::ToolOutput;

    fn tool(name: &'static str, scopes: &'static [&'static str]) -> ToolDef {
        ToolDef {
            name,
            title: None,
            description: "",
            input_schema: "{}",
            output_schema: None,
            annotations: AnnotationsDef::default(),
            scopes,
            task: TaskSupport::Forbidden,
            rate_limit: None,
            handler: Handler::Rust(std::sync::Arc::new(|_, _| {
                Box::pin(async { Ok(ToolOutput::Text(String::new())) })
            })),
        }
    }

    #[test]
    fn a_request_without_identity_sees_only_unscoped_tools() {
        let defs = vec![
            tool("open", &[]),
            tool("read", &["r"]),
            tool("write", &["w"]),
        ];
        let tools: Vec<Tool> = defs
            .iter()
            .map(|t| Tool::new(t.name, t.description, std::sync::Arc::default()))
            .collect();
        let policy = ScopePolicy::new()
            .require_for_tool("read", ["r"])
            .and_then(|p| p.require_for_tool("write", ["w"]))
            .unwrap();
        let listed = filtered(&policy, None, &defs, &tools);
        let names: Vec<&str> = listed.tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, ["open"]);
        assert_eq!(listed.cache_scope, Some(CacheScope::Private));
        assert_eq!(
            listed.ttl_ms,
            Some(0),
            "no token: nothing to stay fresh for"
        );
        // A server-wide scope the (absent) token lacks hides even the open tool.
        let strict = policy.require(["base"]).unwrap();
        assert!(filtered(&strict, None, &defs, &tools).tools.is_empty());
        assert_eq!(ttl_ms(None, SystemTime::now()), 0);
    }
}
