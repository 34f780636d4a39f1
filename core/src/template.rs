//! `{name}` templates, shared by HTTP paths, query and header values, prompt messages and
//! resource templates. `{{` and `}}` stand for literal braces, so JSON text can be written
//! in a template (`{{"id": "{id}"}}`). The generator validates every template with the same
//! rules, so a template that reaches the runtime is well formed; the functions here still
//! never panic on a malformed one.

/// One piece of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text copied as is.
    Literal(&'a str),
    /// A `{{` or `}}`: one literal brace.
    Brace(char),
    /// A `{name}` placeholder.
    Var(&'a str),
}

/// Why a template is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Splits a template into its segments.
pub fn parse(template: &str) -> Result<Vec<Segment<'_>>, TemplateError> {
    let mut out = Vec::new();
    let bytes = template.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if bytes.get(i + 1) == Some(&bytes[i]) => {
                if start < i {
                    out.push(Segment::Literal(&template[start..i]));
                }
                out.push(Segment::Brace(char::from(bytes[i])));
                i += 2;
                start = i;
            }
            b'}' => {
                return Err(TemplateError(
                    "a `}` without a matching `{` (write `}}` for a literal brace)".to_owned(),
                ));
            }
            b'{' => {
                if start < i {
                    out.push(Segment::Literal(&template[start..i]));
                }
                let rest = &template[i + 1..];
                let Some(close) = rest.find('}') else {
                    return Err(TemplateError(
                        "a `{` without a matching `}` (write `{{` for a literal brace)".to_owned(),
                    ));
                };
                let name = &rest[..close];
                if name.is_empty() || !name.bytes().all(is_name_byte) {
                    return Err(TemplateError(format!(
                        "`{{{}}}` is not a placeholder (letters, digits, `_` and `-` only; write `{{{{` for a literal brace)",
                        name.escape_default()
                    )));
                }
                out.push(Segment::Var(name));
                i += close + 2;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < bytes.len() {
        out.push(Segment::Literal(&template[start..]));
    }
    Ok(out)
}

/// The placeholder a template consists of alone (`"{tags}"`), if that is all it is.
pub fn sole_placeholder(template: &str) -> Option<&str> {
    let name = template.strip_prefix('{')?.strip_suffix('}')?;
    (!name.is_empty() && name.bytes().all(is_name_byte)).then_some(name)
}

/// The placeholder names of a template, in order (malformed templates have none).
pub fn names(template: &str) -> Vec<&str> {
    parse(template)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| match s {
            Segment::Var(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// Renders a template; `value` gives each placeholder's text, or `None` to leave the
/// placeholder as written. A malformed template is returned unchanged.
pub fn render(template: &str, mut value: impl FnMut(&str) -> Option<String>) -> String {
    let Ok(segments) = parse(template) else {
        return template.to_owned();
    };
    let mut out = String::with_capacity(template.len());
    for s in segments {
        match s {
            Segment::Literal(text) => out.push_str(text),
            Segment::Brace(c) => out.push(c),
            Segment::Var(name) => match value(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    out
}

/// Matches a concrete URI against a URI template of simple `{name}` expressions (RFC 6570
/// level 1). A variable matches one or more characters other than `/`, `?` and `#`; the
/// captured values are returned in template order, still percent-encoded.
pub fn match_uri<'u>(template: &str, uri: &'u str) -> Option<Vec<(String, &'u str)>> {
    let segments = parse(template).ok()?;
    let mut captures = Vec::new();
    let mut rest = uri;
    let mut pending: Option<&str> = None;
    let mut literal = String::new();
    let flush = |literal: &mut String,
                 pending: &mut Option<&str>,
                 rest: &mut &'u str,
                 captures: &mut Vec<(String, &'u str)>|
     -> Option<()> {
        if let Some(name) = pending.take() {
            let end = if literal.is_empty() {
                rest.len()
            } else {
                rest.find(literal.as_str())?
            };
            let value = &rest[..end];
            if value.is_empty() || value.contains(['/', '?', '#']) {
                return None;
            }
            captures.push((name.to_owned(), value));
            *rest = &rest[end..];
        }
        *rest = rest.strip_prefix(literal.as_str())?;
        literal.clear();
        Some(())
    };
    for s in segments {
        match s {
            Segment::Literal(text) => literal.push_str(text),
            Segment::Brace(c) => literal.push(c),
            Segment::Var(name) => {
                flush(&mut literal, &mut pending, &mut rest, &mut captures)?;
                pending = Some(name);
            }
        }
    }
    flush(&mut literal, &mut pending, &mut rest, &mut captures)?;
    rest.is_empty().then_some(captures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubled_braces_are_literal() {
        let out = render("{{\"id\":\"{id}\"}}", |n| {
            (n == "id").then(|| "7".to_owned())
        });
        assert_eq!(out, "{\"id\":\"7\"}");
        assert_eq!(names("{{x}} {y}"), vec!["y"]);
    }

    #[test]
    fn malformed_templates_are_reported() {
        assert!(parse("a { b").is_err());
        assert!(parse("a } b").is_err());
        assert!(parse("{a b}").is_err());
        assert!(parse("{}").is_err());
        assert_eq!(render("a } b", |_| None), "a } b");
    }

    #[test]
    fn unknown_placeholders_stay_as_written() {
        assert_eq!(render("hi {who}", |_| None), "hi {who}");
    }

    #[test]
    fn uri_templates_capture_one_segment_per_variable() {
        let t = "test://template/{id}/data";
        assert_eq!(
            match_uri(t, "test://template/123/data"),
            Some(vec![("id".to_owned(), "123")])
        );
        assert_eq!(match_uri(t, "test://template//data"), None);
        assert_eq!(match_uri(t, "test://template/1/2/data"), None);
        assert_eq!(match_uri(t, "test://template/1/datax"), None);
        assert_eq!(
            match_uri("notes://{a}-{b}", "notes://x-y-z"),
            Some(vec![("a".to_owned(), "x"), ("b".to_owned(), "y-z")])
        );
        assert_eq!(
            match_uri("file:///{name}", "file:///a.txt"),
            Some(vec![("name".to_owned(), "a.txt")])
        );
        assert_eq!(match_uri("x://{a}", "x://a?b"), None);
    }
}
