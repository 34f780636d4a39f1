//! Server names: the name in `server.name` of a spec, which becomes the crate name, the
//! binary name and the MCP server name.

/// The longest server name.
pub const MAX_SERVER_NAME_LEN: usize = 48;

/// The rule, in words, for error messages.
pub const SERVER_NAME_RULE: &str = "lowercase letters, digits and `-`, starting with a letter and not ending with `-`, at most 48 characters";

/// Whether `name` is a server name: `[a-z][a-z0-9-]*`, not ending with `-`, at most
/// [`MAX_SERVER_NAME_LEN`] bytes. Such a name is a valid crate and binary name and needs
/// no quoting in YAML, TOML or a shell.
pub fn is_server_name(name: &str) -> bool {
    name.len() <= MAX_SERVER_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_lowercase_crate_names() {
        for ok in [
            "a",
            "weather",
            "weather-tools",
            "notes2",
            "a-b-c",
            &"a".repeat(48),
        ] {
            assert!(is_server_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Weather",
            "2weather",
            "-weather",
            "weather-",
            "weather_tools",
            "weather tools",
            "wéather",
            "a\nb",
            &"a".repeat(49),
        ] {
            assert!(!is_server_name(bad), "{bad:?}");
        }
    }
}
