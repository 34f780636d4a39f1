//! Scope tokens (RFC 6749 section 3.3).

/// Whether `scope` is one RFC 6749 scope token: one or more of `%x21 / %x23-5B / %x5D-7E`,
/// that is printable ASCII without space, `"` or `\`.
pub fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_tokens_are_printable_ascii_without_space_quote_or_backslash() {
        for ok in [
            "mcp:read",
            "notes.write",
            "a",
            "!",
            "#[]{}~",
            "https://x.example/s",
        ] {
            assert!(is_scope_token(ok), "{ok}");
        }
        for bad in ["", "a b", "a\"b", "a\\b", "é", "a\tb", "a\u{7f}", "a\nb"] {
            assert!(!is_scope_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_byte_is_classified_as_the_rfc_grammar_says() {
        for b in 0u8..=255 {
            let text = [b];
            let Ok(s) = std::str::from_utf8(&text) else {
                continue;
            };
            let rfc = b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b);
            assert_eq!(is_scope_token(s), rfc, "byte {b:#x}");
        }
    }
}
