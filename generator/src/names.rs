//! Rust names derived from spec names: types, fields, functions. Spec text never becomes
//! an identifier without passing through here.

use proc_macro2::Ident;
use proc_macro2::Span;

const STRICT: &[&str] = &["self", "Self", "super", "crate", "_"];

/// `name` in snake_case, `[a-z0-9_]` only: camelCase split at case changes, every other
/// character an underscore, no leading, trailing or doubled underscores.
pub(crate) fn snake_case(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            if !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    out.trim_matches('_').to_owned()
}

/// A field or function identifier for `name` (snake_case; raw identifier for keywords).
pub(crate) fn snake_ident(name: &str) -> Ident {
    let mut out = snake_case(name);
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "field_");
    }
    ident(&out)
}

/// A type identifier (`get_weather` -> `GetWeather`).
pub(crate) fn pascal(name: &str) -> String {
    let mut out = String::new();
    let mut upper = true;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if upper {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
            upper = false;
        } else {
            upper = true;
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'T');
    }
    out
}

/// Words reserved in edition 2024 that syn parses as plain identifiers (`gen`) or that only
/// some editions reserve: always written raw.
const RESERVED_RAW: &[&str] = &[
    "gen", "try", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield",
];

fn ident(text: &str) -> Ident {
    if STRICT.contains(&text) {
        return Ident::new(&format!("{text}_"), Span::call_site());
    }
    if RESERVED_RAW.contains(&text) {
        return Ident::new_raw(text, Span::call_site());
    }
    match syn::parse_str::<Ident>(text) {
        Ok(id) => id,
        Err(_) => Ident::new_raw(text, Span::call_site()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_valid_identifiers() {
        assert_eq!(snake_ident("cityName").to_string(), "city_name");
        assert_eq!(snake_ident("x-api key").to_string(), "x_api_key");
        assert_eq!(snake_ident("type").to_string(), "r#type");
        assert_eq!(snake_ident("self").to_string(), "self_");
        assert_eq!(snake_ident("3d").to_string(), "field_3d");
        assert_eq!(snake_ident("\"); evil();").to_string(), "evil");
        assert_eq!(pascal("get_current-weather"), "GetCurrentWeather");
        assert_eq!(pascal("1x"), "T1x");
    }
}
