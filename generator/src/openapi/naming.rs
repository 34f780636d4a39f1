//! Names: tools, input fields, the server and its secrets; and the text helpers that keep
//! every string bounded and on one line.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// The server name: the option when it is a valid crate name, else one from the title.
pub(super) fn server_name(wanted: Option<&str>, title: &str) -> Result<String, String> {
    match wanted {
        Some(n) if bmm_core::is_server_name(n) => Ok(n.to_owned()),
        Some(n) => Err(format!(
            "server name `{}` is not a valid crate name: use {}",
            clip(n, 60).escape_default(),
            bmm_core::server_name::SERVER_NAME_RULE
        )),
        None => Ok(crate_name(title)),
    }
}

/// An OAuth scope token bmm accepts (and not absurdly long).
pub(super) fn is_scope_token(s: &str) -> bool {
    s.len() <= 200 && crate::spec::is_scope_token(s)
}

/// `[a-z0-9_]`, starting with a letter, at most `max` long.
pub(super) fn is_tool_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `[a-z0-9_]` from any text (the generator's own snake_case).
pub(super) fn snake(text: &str) -> String {
    crate::names::snake_case(text)
}

/// A field name not yet `taken`: `base`, else `<prefix>_<base>`, else numbered.
pub(super) fn unique_field(base: &str, prefix: &str, taken: &mut BTreeSet<String>) -> String {
    let base = if base.is_empty() { "param" } else { base };
    let base = if base.starts_with(|c: char| c.is_ascii_digit()) {
        format!("p_{base}")
    } else {
        base.to_owned()
    };
    let mut candidate = base.clone();
    if taken.contains(&candidate) {
        candidate = format!("{prefix}_{base}");
    }
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{prefix}_{base}_{n}");
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

/// A tool name from the operationId (or method and path), shortened with a stable hash
/// and made unique.
pub(super) fn derived_name(
    operation_id: Option<&str>,
    method: &str,
    path: &str,
    max: usize,
    names: &BTreeSet<String>,
) -> String {
    let mut base = operation_id.map(snake).unwrap_or_default();
    if base.is_empty() {
        base = snake(&format!("{method} {}", path.replace(['{', '}'], "")));
    }
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert_str(0, "op_");
    }
    let base = shorten(&base, max);
    if !names.contains(&base) {
        return base;
    }
    (2..)
        .map(|n| {
            let suffix = format!("_{n}");
            format!("{}{suffix}", shorten(&base, max - suffix.len()))
        })
        .find(|c| !names.contains(c))
        .unwrap_or(base)
}

/// `name` if it fits in `max`, else a prefix, `_`, and 8 hex digits of its SHA-256.
pub(super) fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = max.saturating_sub(hash.len() + 1);
    let prefix = name[..keep].trim_end_matches('_');
    format!("{prefix}_{hash}")
}

/// A crate-style server name from a title.
pub(super) fn crate_name(title: &str) -> String {
    let mut name = snake(title).replace('_', "-");
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "api-");
    }
    let name = name.trim_end_matches('-');
    let mut name: String = name.chars().take(40).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        "openapi-server".to_owned()
    } else {
        name
    }
}

/// An environment-variable style name from any text.
pub(super) fn env_name(text: &str) -> String {
    let s = snake(text).to_ascii_uppercase();
    if s.is_empty() {
        "CREDENTIAL".to_owned()
    } else {
        s
    }
}
/// At most `max` characters, with an ellipsis when cut.
pub(super) fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Control characters become spaces; trimmed.
pub(super) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}
