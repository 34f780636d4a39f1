//! Scopes: what a token grants, what an operation needs, and how broader scopes imply
//! narrower ones.
//!
//! Rules:
//! 1. A token's scopes come from the claim its issuer's [`ScopeClaim`] names: `scope` (a
//!    space-separated string, RFC 9068 / RFC 7662), `scp` (an array of strings or a
//!    space-separated string, as Entra ID and Okta send it), or both, united (the
//!    default). Either claim may be a string or an array (some servers write `scope` as an
//!    array); non-string array items and empty tokens are ignored. A claim the issuer's
//!    setting does not name is ignored, so it can never grant a scope.
//! 2. A [`ScopeHierarchy`] lets a broader scope imply narrower ones (`mcp:admin` implies
//!    `mcp:write` implies `mcp:read`); implication is transitive and cycles are harmless.
//! 3. A [`ScopePolicy`] requires scopes server-wide, per route (path prefix) and per tool;
//!    every requirement is all-of.
//! 4. When a requirement is not met the answer is 403 `insufficient_scope` naming every
//!    scope the operation needs, not only the missing ones, so a client can ask for all of
//!    them in one step-up.
//! 5. Scope tokens are checked at configuration time (RFC 6749 section 3.3 characters), so
//!    they can be placed in a `WWW-Authenticate` header without escaping surprises.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::ConfigError;

/// A set of scope tokens, ordered for deterministic output.
pub type ScopeSet = BTreeSet<String>;

/// Checks a scope token (RFC 6749 section 3.3: `%x21 / %x23-5B / %x5D-7E`).
pub fn validate_scope_token(scope: &str) -> Result<(), ConfigError> {
    if bmm_core::is_scope_token(scope) {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "`{}` is not a valid scope token (RFC 6749 section 3.3: printable ASCII without space, `\"` or `\\`)",
            scope.escape_default()
        )))
    }
}

/// Which claim of a token (or of an introspection response) carries its scopes. Chosen per
/// issuer with [`crate::TrustedIssuer::scope_claim`].
///
/// | setting | read from | accepted shapes |
/// |---|---|---|
/// | `Scope` | `scope` | `"a b"` (or `["a", "b"]`) |
/// | `Scp` | `scp` | `["a", "b"]` or `"a b"` |
/// | `Both` (default) | `scope` and `scp`, united | as above |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ScopeClaim {
    /// Only `scope`: a space-separated string (RFC 9068, RFC 7662, RFC 8693).
    Scope,
    /// Only `scp`: an array of strings or a space-separated string (Entra ID, Okta).
    Scp,
    /// `scope` and `scp`, united.
    #[default]
    Both,
}

impl ScopeClaim {
    fn names(self) -> &'static [&'static str] {
        match self {
            Self::Scope => &["scope"],
            Self::Scp => &["scp"],
            Self::Both => &["scope", "scp"],
        }
    }

    /// The setting's name as the command line spells it: `scope`, `scp` or `both`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scope => "scope",
            Self::Scp => "scp",
            Self::Both => "both",
        }
    }
}

impl std::fmt::Display for ScopeClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ScopeClaim {
    type Err = ConfigError;

    /// Parses `scope`, `scp` or `both` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scope" => Ok(Self::Scope),
            "scp" => Ok(Self::Scp),
            "both" => Ok(Self::Both),
            _ => Err(ConfigError::new(format!(
                "`{}` is not a scope claim setting: use `scope`, `scp` or `both`",
                s.escape_default()
            ))),
        }
    }
}

/// Reads the granted scopes out of a claims object, from the claims `shape` names.
pub(crate) fn scopes_from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    shape: ScopeClaim,
) -> ScopeSet {
    let mut set = ScopeSet::new();
    for key in shape.names() {
        match claims.get(*key) {
            Some(serde_json::Value::String(s)) => {
                set.extend(s.split(' ').filter(|t| !t.is_empty()).map(str::to_owned));
            }
            Some(serde_json::Value::Array(items)) => {
                set.extend(
                    items
                        .iter()
                        .filter_map(|v| v.as_str())
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                );
            }
            _ => {}
        }
    }
    set
}

/// Which scopes imply which: `mcp:admin -> [mcp:write]`, `mcp:write -> [mcp:read]`.
#[derive(Clone, Debug, Default)]
pub struct ScopeHierarchy {
    implies: BTreeMap<String, Vec<String>>,
}

impl ScopeHierarchy {
    /// An empty hierarchy: every scope implies only itself.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares that `broader` implies each scope of `narrower`.
    pub fn imply<I, S>(mut self, broader: &str, narrower: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        validate_scope_token(broader)?;
        let entry = self.implies.entry(broader.to_owned()).or_default();
        for scope in narrower {
            let scope = scope.into();
            validate_scope_token(&scope)?;
            if !entry.contains(&scope) {
                entry.push(scope);
            }
        }
        Ok(self)
    }

    /// Whether no implications are configured.
    pub fn is_empty(&self) -> bool {
        self.implies.is_empty()
    }

    /// Every scope `granted` stands for: the granted ones plus all they imply, transitively.
    pub fn expand(&self, granted: &ScopeSet) -> ScopeSet {
        if self.implies.is_empty() {
            return granted.clone();
        }
        let mut out = granted.clone();
        let mut stack: Vec<&str> = granted.iter().map(String::as_str).collect();
        while let Some(scope) = stack.pop() {
            if let Some(narrower) = self.implies.get(scope) {
                for n in narrower {
                    if out.insert(n.clone()) {
                        stack.push(n);
                    }
                }
            }
        }
        out
    }
}

/// Which scopes an operation needs: server-wide, per route (path prefix) and per tool.
#[derive(Clone, Debug, Default)]
pub struct ScopePolicy {
    required: Vec<String>,
    routes: Vec<(String, Vec<String>)>,
    tools: HashMap<String, Vec<String>>,
    hierarchy: ScopeHierarchy,
}

impl ScopePolicy {
    /// A policy that requires nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scopes every request must carry (all-of).
    pub fn require<I, S>(mut self, scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        push_scopes(&mut self.required, scopes)?;
        Ok(self)
    }

    /// Scopes a request whose path starts with `prefix` must carry (all-of), on top of the
    /// server-wide ones. The prefix matches on a segment boundary: `/admin` covers
    /// `/admin` and `/admin/x`, not `/administrator`.
    pub fn require_for_route<I, S>(mut self, prefix: &str, scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if !prefix.starts_with('/') {
            return Err(ConfigError::new(format!(
                "route prefix `{prefix}` must start with `/`"
            )));
        }
        let mut list = Vec::new();
        push_scopes(&mut list, scopes)?;
        self.routes
            .push((prefix.trim_end_matches('/').to_owned(), list));
        Ok(self)
    }

    /// Scopes a `tools/call` of `tool` must carry (all-of), on top of the others.
    pub fn require_for_tool<I, S>(mut self, tool: &str, scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let entry = self.tools.entry(tool.to_owned()).or_default();
        push_scopes(entry, scopes)?;
        Ok(self)
    }

    /// Uses `hierarchy` to decide what a granted scope stands for.
    pub fn with_hierarchy(mut self, hierarchy: ScopeHierarchy) -> Self {
        self.hierarchy = hierarchy;
        self
    }

    /// The hierarchy in use.
    pub fn hierarchy(&self) -> &ScopeHierarchy {
        &self.hierarchy
    }

    /// The server-wide required scopes.
    pub fn required(&self) -> &[String] {
        &self.required
    }

    /// Whether any tool has scopes of its own (the per-tool layer is needed only then).
    pub fn has_tool_scopes(&self) -> bool {
        self.tools.values().any(|s| !s.is_empty())
    }

    /// Scopes configured for one tool (empty when none).
    pub fn tool_scopes(&self, tool: &str) -> &[String] {
        self.tools.get(tool).map_or(&[], Vec::as_slice)
    }

    /// Everything a request to `path` needs before any tool is considered.
    pub fn needed_for_path(&self, path: &str) -> ScopeSet {
        let mut needed: ScopeSet = self.required.iter().cloned().collect();
        for (prefix, scopes) in &self.routes {
            if path_has_prefix(path, prefix) {
                needed.extend(scopes.iter().cloned());
            }
        }
        needed
    }

    /// Checks `needed` against `effective` (already expanded through the hierarchy).
    /// Returns `Err(needed)` (the full list, for the challenge) when anything is missing.
    pub fn check(needed: &ScopeSet, effective: &ScopeSet) -> Result<(), ScopeSet> {
        if needed.iter().all(|s| effective.contains(s)) {
            Ok(())
        } else {
            Err(needed.clone())
        }
    }
}

pub(crate) fn push_scopes<I, S>(list: &mut Vec<String>, scopes: I) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    for scope in scopes {
        let scope = scope.into();
        validate_scope_token(&scope)?;
        if !list.contains(&scope) {
            list.push(scope);
        }
    }
    Ok(())
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> ScopeSet {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn scope_claim_and_scp_claim_are_both_read_and_united() {
        let claims = serde_json::json!({"scope": "a  b", "scp": ["c", 7, "a", ""]});
        let map = claims.as_object().cloned().unwrap_or_default();
        assert_eq!(
            scopes_from_claims(&map, ScopeClaim::Both),
            set(&["a", "b", "c"])
        );
        let scp_string = serde_json::json!({"scp": "x y"});
        assert_eq!(
            scopes_from_claims(scp_string.as_object().unwrap(), ScopeClaim::Both),
            set(&["x", "y"])
        );
    }

    #[test]
    fn scope_claim_not_named_by_the_setting_never_grants_a_scope() {
        let claims = serde_json::json!({"scope": "a b", "scp": ["c"]});
        let map = claims.as_object().unwrap();
        assert_eq!(scopes_from_claims(map, ScopeClaim::Scope), set(&["a", "b"]));
        assert_eq!(scopes_from_claims(map, ScopeClaim::Scp), set(&["c"]));
        let spring = serde_json::json!({"scope": ["r", "w"]});
        assert_eq!(
            scopes_from_claims(spring.as_object().unwrap(), ScopeClaim::Scope),
            set(&["r", "w"])
        );
        assert_eq!("SCP".parse::<ScopeClaim>(), Ok(ScopeClaim::Scp));
        assert_eq!("both".parse::<ScopeClaim>(), Ok(ScopeClaim::Both));
        assert!("scopes".parse::<ScopeClaim>().is_err());
        assert_eq!(ScopeClaim::default(), ScopeClaim::Both);
    }

    #[test]
    fn scope_hierarchy_is_transitive_and_survives_cycles() {
        let h = ScopeHierarchy::new()
            .imply("mcp:admin", ["mcp:write"])
            .and_then(|h| h.imply("mcp:write", ["mcp:read"]))
            .and_then(|h| h.imply("mcp:read", ["mcp:admin"]))
            .unwrap();
        let expanded = h.expand(&set(&["mcp:write"]));
        assert_eq!(expanded, set(&["mcp:admin", "mcp:read", "mcp:write"]));
        let h2 = ScopeHierarchy::new()
            .imply("mcp:admin", ["mcp:read"])
            .unwrap();
        assert_eq!(h2.expand(&set(&["mcp:read"])), set(&["mcp:read"]));
    }

    #[test]
    fn scope_requirements_are_all_of_and_report_every_needed_scope() {
        let needed = set(&["a", "b"]);
        assert!(ScopePolicy::check(&needed, &set(&["a", "b", "c"])).is_ok());
        assert_eq!(
            ScopePolicy::check(&needed, &set(&["a"])),
            Err(set(&["a", "b"]))
        );
    }

    #[test]
    fn scope_route_prefix_matches_on_segment_boundary() {
        let p = ScopePolicy::new()
            .require(["base"])
            .and_then(|p| p.require_for_route("/admin/", ["admin"]))
            .unwrap();
        assert_eq!(p.needed_for_path("/admin"), set(&["admin", "base"]));
        assert_eq!(p.needed_for_path("/admin/x"), set(&["admin", "base"]));
        assert_eq!(p.needed_for_path("/administrator"), set(&["base"]));
    }

    #[test]
    fn scope_tokens_with_space_quote_or_backslash_are_refused_at_configuration() {
        assert!(validate_scope_token("mcp:read").is_ok());
        assert!(validate_scope_token("a b").is_err());
        assert!(validate_scope_token("a\"b").is_err());
        assert!(validate_scope_token("a\\b").is_err());
        assert!(validate_scope_token("").is_err());
        assert!(ScopePolicy::new().require(["bad scope"]).is_err());
    }
}
