//! Rust types for the JSON Schemas of Rust tools: the `types` module of a generated crate.
//!
//! Every schema that names its shape becomes a named type, all the way down: objects with
//! `properties` become structs (fields in the spec's order, `Option` unless required, doc
//! comments from `description` or `title`), string `enum`s become enums with
//! `#[serde(rename)]` variants, `oneOf`/`anyOf` become `Option` (one alternative and
//! `null`), an internally tagged enum (object alternatives told apart by a `const` string
//! property) or an untagged enum, and `$ref`s inside the schema (`#`, `#/$defs/...`) become
//! the type of what they point at (recursion through a `Box`). Only open schemas (no
//! type, `{ type: object }` without properties) stay `serde_json::Value`/`Map`; an object
//! whose `additionalProperties` is a schema is a `BTreeMap` of that schema's type. Where a
//! schema has a shape but no clean Rust form (`allOf` of unrelated pieces, mixed enums,
//! `$ref`s outside the schema), the field stays `Value` and its doc comment says why.
//!
//! oxide's typify was considered and not used: it reads schemas through schemars 0.8's
//! draft-07 model (`definitions`, not 2020-12's `$defs` or `prefixItems`), pulls regress,
//! heck, semver and (in current releases) syn 3 next to this crate's syn 2, and emits
//! builders, `TryFrom` newtypes for constrained strings and an `error` module: much more
//! code than a tool author should have to read, re-checking constraints the server already
//! validates against the schema itself.
//!
//! Names are deterministic and collision-free: a nested type is named after its path from
//! the tool's root type (`ListNotesOutputNotesItem`), or after its `title` or `$defs` key
//! when it has one; a name already taken gets a number. Spec text reaches the source only
//! as identifiers made by [`crate::names`] and as escaped literals.

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote};
use serde_json::{Map, Value};

use crate::names::{snake_case, snake_ident};

/// Deeper than this (through properties, items and `$ref`s), a schema stays `Value`.
const MAX_DEPTH: usize = 32;

/// A Rust type for a schema.
#[derive(Clone)]
struct Ty {
    tokens: TokenStream,
    /// Already an `Option` (the schema allows `null`).
    nullable: bool,
    /// Implements `Default`.
    default: bool,
    /// Why the schema stayed `Value` although it has a shape.
    note: Option<String>,
}

impl Ty {
    fn plain(tokens: TokenStream) -> Self {
        Self {
            tokens,
            nullable: false,
            default: true,
            note: None,
        }
    }

    fn named(ident: &Ident, default: bool) -> Self {
        Self {
            tokens: quote!(#ident),
            nullable: false,
            default,
            note: None,
        }
    }

    fn value() -> Self {
        Self::plain(quote!(bmm_runtime::serde_json::Value))
    }

    fn opaque(why: impl Into<String>) -> Self {
        Self {
            note: Some(why.into()),
            ..Self::value()
        }
    }
}

/// A `$ref` target: its type name, and whether its type is still being built (a reference
/// to it is recursive and needs a `Box` unless a `Vec` or map already adds indirection).
struct Target {
    ident: Ident,
    done: bool,
    default: bool,
}

/// Names handed out in one scope (the crate's types, one struct's fields, one enum's
/// variants): `wanted`, else `wanted2`, `wanted3`... Each base remembers its next number,
/// so many collisions on one name cost linear time, not quadratic.
#[derive(Default)]
struct Names {
    taken: BTreeSet<String>,
    next: BTreeMap<String, u32>,
}

impl Names {
    fn fresh(&mut self, wanted: &str, separator: &str) -> String {
        if self.taken.insert(wanted.to_owned()) {
            return wanted.to_owned();
        }
        let mut n = self.next.get(wanted).copied().unwrap_or(2);
        let mut candidate = format!("{wanted}{separator}{n}");
        while !self.taken.insert(candidate.clone()) {
            n += 1;
            candidate = format!("{wanted}{separator}{n}");
        }
        self.next.insert(wanted.to_owned(), n + 1);
        candidate
    }
}

/// Type names a nested type may never take: the generated code names these types
/// unqualified, so a schema `title: String` would otherwise shadow `String` for every
/// field of the module.
const RESERVED_TYPE_NAMES: &[&str] = &[
    "String",
    "Option",
    "Vec",
    "Box",
    "Some",
    "None",
    "Ok",
    "Err",
    "Result",
    "Default",
    "Clone",
    "Debug",
    "PartialEq",
    "Eq",
    "Copy",
    "Send",
    "Sync",
    "Sized",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "Iterator",
    "IntoIterator",
    "ToString",
    "ToOwned",
    "From",
    "Into",
    "AsRef",
    "AsMut",
    "Extend",
    "serde",
    "std",
    "core",
    "alloc",
    "bmm_runtime",
    "Self",
];

/// The types of one generated crate, in the order they are declared.
#[derive(Default)]
pub(crate) struct TypeSpace {
    items: Vec<TokenStream>,
    taken: Names,
    /// Where the next type without a description sits: (property, struct), for its doc.
    place: Option<(String, String)>,
}

impl std::fmt::Debug for TypeSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypeSpace")
            .field("types", &self.items.len())
            .finish()
    }
}

/// One root schema being mapped: `$ref`s resolve inside it.
struct Root<'a> {
    schema: &'a Value,
    /// JSON pointer (`#...`) -> its struct.
    targets: BTreeMap<String, Target>,
    /// JSON pointer -> the type of a target that is no struct (an enum, a list...).
    aliases: BTreeMap<String, Ty>,
}

impl TypeSpace {
    /// A type space whose root names (`AddNoteInput`, ...) are reserved up front, so no
    /// nested type of an earlier tool can take the name a later tool's file uses.
    pub(crate) fn new<'a>(roots: impl IntoIterator<Item = &'a Ident>) -> Self {
        Self {
            items: Vec::new(),
            taken: Names {
                taken: roots
                    .into_iter()
                    .map(ToString::to_string)
                    .chain(RESERVED_TYPE_NAMES.iter().map(|n| (*n).to_owned()))
                    .collect(),
                next: BTreeMap::new(),
            },
            place: None,
        }
    }

    /// The declared types.
    pub(crate) fn into_items(self) -> Vec<TokenStream> {
        self.items
    }

    /// Declares `name` (reserved in [`TypeSpace::new`]) for a tool's argument or result
    /// schema, with the types it needs. The root is always a struct: an object schema
    /// without properties gives one without fields.
    pub(crate) fn add_root(&mut self, name: &Ident, schema: &Value, doc: &str) {
        let mut root = Root {
            schema,
            targets: BTreeMap::new(),
            aliases: BTreeMap::new(),
        };
        root.targets.insert(
            "#".to_owned(),
            Target {
                ident: name.clone(),
                done: false,
                default: false,
            },
        );
        let slot = self.reserve_slot();
        let (item, _) = self.object(&mut root, name, schema, Some(doc), 0, None);
        self.items[slot] = item;
    }

    fn reserve_slot(&mut self) -> usize {
        self.items.push(TokenStream::new());
        self.items.len() - 1
    }

    /// A fresh type name: `wanted`, or `wanted2`, `wanted3`...
    fn name(&mut self, wanted: &str) -> Ident {
        let mut wanted = wanted.to_owned();
        if syn::parse_str::<Ident>(&wanted).is_err() {
            wanted.push('_');
        }
        Ident::new(&self.taken.fresh(&wanted, ""), Span::call_site())
    }

    /// The name for a nested schema: its `title` when it reads as a name, else `hint`.
    fn name_for(&mut self, schema: &Value, hint: &str) -> Ident {
        let title = schema
            .get("title")
            .and_then(Value::as_str)
            .filter(|t| {
                t.len() <= 64
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-'))
            })
            .map(type_name)
            .filter(|t| !t.is_empty() && !t.starts_with(|c: char| c.is_ascii_digit()));
        match title {
            Some(t) => self.name(&t),
            None => self.name(hint),
        }
    }

    /// The type of `schema`; `hint` names it if it needs a new type. `indirect`: the type
    /// sits inside a `Vec` or map (a recursive reference needs no `Box` there).
    fn ty(
        &mut self,
        root: &mut Root<'_>,
        schema: &Value,
        hint: &str,
        depth: usize,
        indirect: bool,
    ) -> Ty {
        let Some(obj) = schema.as_object() else {
            // `true` accepts anything; `false` nothing.
            return Ty::value();
        };
        if depth > MAX_DEPTH {
            return Ty::opaque(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        if ["$id", "$dynamicRef", "$recursiveRef"]
            .iter()
            .any(|k| obj.contains_key(*k))
        {
            // `$ref`s below a `$id` resolve against it, not against the tool's schema.
            return Ty::opaque("it sets its own `$id` or uses dynamic references");
        }
        if let Some(reference) = obj.get("$ref") {
            return self.reference(root, reference, depth, indirect);
        }
        if let Some(values) = obj.get("enum").and_then(Value::as_array) {
            return self.enumeration(schema, values, hint);
        }
        if let Some(c) = obj.get("const") {
            return match c {
                Value::String(_) => Ty::plain(quote!(String)),
                Value::Bool(_) => Ty::plain(quote!(bool)),
                Value::Number(n) if n.is_i64() || n.is_u64() => Ty::plain(quote!(i64)),
                Value::Number(_) => Ty::plain(quote!(f64)),
                _ => Ty::value(),
            };
        }
        let alternatives = obj
            .get("oneOf")
            .or_else(|| obj.get("anyOf"))
            .and_then(Value::as_array);
        if let Some(alternatives) = alternatives
            && !obj.contains_key("properties")
        {
            return self.alternatives(root, alternatives, hint, depth, indirect);
        }
        match obj.get("type") {
            Some(Value::String(t)) => self.typed(root, schema, t, hint, depth),
            Some(Value::Array(types)) => {
                let types: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
                let non_null: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
                match non_null.as_slice() {
                    [one] => {
                        let inner = self.typed(root, schema, one, hint, depth);
                        if types.len() > 1 {
                            optional(inner)
                        } else {
                            inner
                        }
                    }
                    _ => Ty::opaque(format!("it may be any of {}", types.join(", "))),
                }
            }
            _ if obj.contains_key("properties") => self.typed(root, schema, "object", hint, depth),
            _ => match obj.get("allOf").and_then(Value::as_array) {
                Some(all) if all.len() == 1 => self.ty(root, &all[0], hint, depth + 1, indirect),
                Some(_) => Ty::opaque("its schema is an `allOf` of several schemas"),
                None => Ty::value(),
            },
        }
    }

    fn typed(
        &mut self,
        root: &mut Root<'_>,
        schema: &Value,
        t: &str,
        hint: &str,
        depth: usize,
    ) -> Ty {
        match t {
            "string" => Ty::plain(quote!(String)),
            "integer" => Ty::plain(quote!(i64)),
            "number" => Ty::plain(quote!(f64)),
            "boolean" => Ty::plain(quote!(bool)),
            "null" => Ty::plain(quote!(())),
            "array" => match schema.get("items") {
                Some(items) if schema.get("prefixItems").is_none() => {
                    let item = self.ty(root, items, &format!("{hint}Item"), depth + 1, true);
                    let note = item.note.clone();
                    let tokens = item.tokens;
                    Ty {
                        note,
                        ..Ty::plain(quote!(Vec<#tokens>))
                    }
                }
                Some(_) => Ty::opaque("its items are a tuple (`prefixItems`)"),
                None => Ty::plain(quote!(Vec<bmm_runtime::serde_json::Value>)),
            },
            "object" => {
                let properties = schema
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|p| !p.is_empty());
                if properties {
                    let ident = self.name_for(schema, hint);
                    let slot = self.reserve_slot();
                    let (item, default) = self.object(root, &ident, schema, None, depth, None);
                    self.items[slot] = item;
                    Ty::named(&ident, default)
                } else {
                    self.map(root, schema, hint, depth)
                }
            }
            _ => Ty::value(),
        }
    }

    /// An object without properties: a map of `additionalProperties`' type, or open.
    fn map(&mut self, root: &mut Root<'_>, schema: &Value, hint: &str, depth: usize) -> Ty {
        match schema.get("additionalProperties") {
            Some(extra @ Value::Object(o)) if !o.is_empty() => {
                let value = self.ty(root, extra, &format!("{hint}Value"), depth + 1, true);
                let note = value.note.clone();
                let tokens = value.tokens;
                Ty {
                    note,
                    ..Ty::plain(quote!(std::collections::BTreeMap<String, #tokens>))
                }
            }
            _ => Ty::plain(
                quote!(bmm_runtime::serde_json::Map<String, bmm_runtime::serde_json::Value>),
            ),
        }
    }

    /// A struct for an object schema with properties; returns it and whether it derives
    /// `Default`. `skip` leaves out one property (the tag of a tagged enum variant).
    fn object(
        &mut self,
        root: &mut Root<'_>,
        ident: &Ident,
        schema: &Value,
        doc: Option<&str>,
        depth: usize,
        skip: Option<&str>,
    ) -> (TokenStream, bool) {
        let base = ident.to_string();
        let place = self.place.take();
        let required: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let empty = Map::new();
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut seen = Names::default();
        let mut fields = Vec::new();
        let mut default = true;
        for (prop, prop_schema) in properties {
            if Some(prop.as_str()) == skip {
                continue;
            }
            let wanted = snake_ident(prop);
            let field = if seen.taken.insert(wanted.to_string()) {
                wanted
            } else {
                let base = wanted.to_string();
                let base = base.trim_start_matches("r#");
                // The bare word may be a keyword: only its numbered forms are handed out.
                seen.taken.insert(base.to_owned());
                format_ident!("{}", seen.fresh(base, "_"))
            };
            self.place = Some((prop.clone(), base.clone()));
            let ty = self.ty(
                root,
                prop_schema,
                &format!("{base}{}", type_name(prop)),
                depth + 1,
                false,
            );
            self.place = None;
            let rename = (field.to_string().trim_start_matches("r#") != prop.as_str())
                .then(|| quote!(rename = #prop,));
            let mut text = describe(prop_schema).unwrap_or_default().to_owned();
            if let Some(note) = &ty.note {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&format!("Any JSON: {note}."));
            }
            let field_doc = (!text.is_empty()).then(|| {
                let d = crate::emit::doc_text(&text);
                quote!(#[doc = #d])
            });
            let tokens = &ty.tokens;
            let optional = !required.contains(prop.as_str());
            fields.push(if optional && !ty.nullable {
                quote! { #field_doc #[serde(#rename default, skip_serializing_if = "Option::is_none")] pub #field: Option<#tokens> }
            } else if ty.nullable {
                quote! { #field_doc #[serde(#rename default)] pub #field: #tokens }
            } else {
                default &= ty.default;
                let rename = rename.is_some().then(|| quote!(#[serde(rename = #prop)]));
                quote! { #field_doc #rename pub #field: #tokens }
            });
        }
        // Keys beyond `properties` that the schema lets through keep their values.
        let extra = match schema.get("additionalProperties") {
            Some(extra @ Value::Object(o)) if !o.is_empty() => {
                let value = self.ty(root, extra, &format!("{base}Value"), depth + 1, true);
                let tokens = value.tokens;
                Some(quote!(std::collections::BTreeMap<String, #tokens>))
            }
            Some(Value::Bool(true)) | Some(Value::Object(_)) => {
                Some(quote!(bmm_runtime::serde_json::Map<String, bmm_runtime::serde_json::Value>))
            }
            _ if schema.get("patternProperties").is_some() => {
                Some(quote!(bmm_runtime::serde_json::Map<String, bmm_runtime::serde_json::Value>))
            }
            _ => None,
        };
        if let Some(tokens) = extra {
            let field = format_ident!("{}", seen.fresh("extra", "_"));
            fields.push(quote! {
                #[doc = " The object's other keys (`additionalProperties`), with their values."]
                #[serde(flatten)]
                pub #field: #tokens
            });
        }
        let text = doc
            .map(ToOwned::to_owned)
            .or_else(|| describe(schema).map(ToOwned::to_owned))
            .unwrap_or_else(|| match &place {
                Some((prop, parent)) => format!("The shape of `{prop}` in `{parent}`."),
                None => format!("`{base}`, an object of the tool's schema."),
            });
        let doc = crate::emit::doc_text(&text);
        let derive_default = default.then(|| quote!(Default,));
        if let Some(t) = root.targets.values_mut().find(|t| t.ident == *ident) {
            t.done = true;
            t.default = default;
        }
        (
            quote! {
                #[doc = #doc]
                #[derive(Debug, Clone, PartialEq, #derive_default serde::Serialize, serde::Deserialize)]
                pub struct #ident {
                    #(#fields,)*
                }
            },
            default,
        )
    }

    /// `$ref`: a pointer into the root schema (`#`, `#/$defs/name`).
    fn reference(
        &mut self,
        root: &mut Root<'_>,
        reference: &Value,
        depth: usize,
        indirect: bool,
    ) -> Ty {
        let Some(pointer) = reference.as_str().filter(|r| r.starts_with('#')) else {
            return Ty::opaque("its `$ref` points outside the schema");
        };
        if let Some(target) = root.targets.get(pointer) {
            let ident = target.ident.clone();
            return if target.done {
                Ty::named(&ident, target.default)
            } else if indirect {
                Ty::named(&ident, false)
            } else {
                Ty {
                    default: false,
                    ..Ty::plain(quote!(Box<#ident>))
                }
            };
        }
        let Some(target) = resolve(root.schema, pointer) else {
            return Ty::opaque(format!(
                "its `$ref` `{}` does not name a schema inside this one",
                pointer.escape_default()
            ));
        };
        let is_object = target
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| !p.is_empty())
            && target.get("$ref").is_none();
        if !is_object {
            // Not a struct: built once, on first use (a cycle without a struct in between
            // is cut by the depth limit).
            if let Some(ty) = root.aliases.get(pointer) {
                return ty.clone();
            }
            // Built as if used directly (a recursive reference boxed), so the same type
            // fits every use.
            let hint = pointer_hint(root, pointer);
            let ty = self.ty(root, target, &hint, depth + 1, false);
            root.aliases.insert(pointer.to_owned(), ty.clone());
            return ty;
        }
        let hint = pointer_hint(root, pointer);
        let ident = self.name_for(target, &hint);
        root.targets.insert(
            pointer.to_owned(),
            Target {
                ident: ident.clone(),
                done: false,
                default: false,
            },
        );
        let slot = self.reserve_slot();
        let (item, default) = self.object(root, &ident, target, None, depth + 1, None);
        self.items[slot] = item;
        Ty::named(&ident, default)
    }

    /// A string `enum` becomes an enum; `null` among the values makes it an `Option`.
    fn enumeration(&mut self, schema: &Value, values: &[Value], hint: &str) -> Ty {
        let strings: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        let nulls = values.iter().filter(|v| v.is_null()).count();
        if strings.is_empty() || strings.len() + nulls != values.len() {
            return match schema.get("type").and_then(Value::as_str) {
                Some("integer") => Ty::plain(quote!(i64)),
                Some("number") => Ty::plain(quote!(f64)),
                Some("boolean") => Ty::plain(quote!(bool)),
                _ => Ty::opaque("its `enum` mixes kinds of values"),
            };
        }
        let ident = self.name_for(schema, hint);
        let place = self.place.take();
        let mut seen = Names::default();
        let variants = strings.iter().map(|value| {
            let mut name = type_name(value);
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                name.insert(0, 'V');
            }
            if syn::parse_str::<Ident>(&name).is_err() {
                name.push('_');
            }
            let variant = Ident::new(&seen.fresh(&name, ""), Span::call_site());
            quote! { #[serde(rename = #value)] #variant }
        });
        let variants: Vec<TokenStream> = variants.collect();
        let text = describe(schema).map_or_else(
            || match &place {
                Some((prop, parent)) => format!("The values of `{prop}` in `{parent}`."),
                None => format!("The values of `{ident}`."),
            },
            ToOwned::to_owned,
        );
        let doc = crate::emit::doc_text(&text);
        self.items.push(quote! {
            #[doc = #doc]
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
            pub enum #ident {
                #(#variants,)*
            }
        });
        let ty = Ty::named(&ident, false);
        if nulls > 0 { optional(ty) } else { ty }
    }

    /// `oneOf`/`anyOf`: `null` and one schema is an `Option`; object schemas told apart by
    /// a `const` string property are a tagged enum; other schemas an untagged enum.
    fn alternatives(
        &mut self,
        root: &mut Root<'_>,
        alternatives: &[Value],
        hint: &str,
        depth: usize,
        indirect: bool,
    ) -> Ty {
        let is_null = |s: &Value| s.get("type").and_then(Value::as_str) == Some("null");
        let nullable = alternatives.iter().any(is_null);
        let rest: Vec<&Value> = alternatives.iter().filter(|s| !is_null(s)).collect();
        let ty = match rest.as_slice() {
            [] => return Ty::value(),
            [one] => self.ty(root, one, hint, depth + 1, indirect),
            _ => match tag_of(&rest) {
                Some((tag, values)) => self.tagged(root, &rest, &tag, &values, hint, depth),
                None => self.untagged(root, &rest, hint, depth),
            },
        };
        if nullable && !ty.nullable {
            optional(ty)
        } else {
            ty
        }
    }

    fn tagged(
        &mut self,
        root: &mut Root<'_>,
        alternatives: &[&Value],
        tag: &str,
        values: &[String],
        hint: &str,
        depth: usize,
    ) -> Ty {
        let ident = self.name(hint);
        let place = self.place.take();
        let slot = self.reserve_slot();
        let mut seen = Names::default();
        let mut variants = Vec::new();
        for (schema, value) in alternatives.iter().zip(values) {
            let variant = variant_ident(value, &mut seen);
            let struct_ident = self.name(&format!("{ident}{variant}"));
            let slot = self.reserve_slot();
            let doc = describe(schema).map_or_else(
                || format!("The fields of `{ident}::{variant}` (`{tag}` is `{value}`)."),
                ToOwned::to_owned,
            );
            let (item, _) = self.object(
                root,
                &struct_ident,
                schema,
                Some(&doc),
                depth + 1,
                Some(tag),
            );
            self.items[slot] = item;
            variants.push(quote! { #[serde(rename = #value)] #variant(#struct_ident) });
        }
        let doc = crate::emit::doc_text(&match place {
            Some((prop, parent)) => {
                format!("`{prop}` in `{parent}`: one of several shapes, told apart by `{tag}`.")
            }
            None => format!("One of several shapes, told apart by `{tag}`."),
        });
        self.items[slot] = quote! {
            #[doc = #doc]
            #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
            #[serde(tag = #tag)]
            pub enum #ident {
                #(#variants,)*
            }
        };
        Ty::named(&ident, false)
    }

    fn untagged(
        &mut self,
        root: &mut Root<'_>,
        alternatives: &[&Value],
        hint: &str,
        depth: usize,
    ) -> Ty {
        let ident = self.name(hint);
        let place = self.place.take();
        let slot = self.reserve_slot();
        let mut seen = Names::default();
        let mut variants = Vec::new();
        let mut open = 0;
        for (i, schema) in alternatives.iter().enumerate() {
            let label = alternative_label(schema, i);
            let variant = variant_ident(&label, &mut seen);
            let ty = self.ty(root, schema, &format!("{ident}{variant}"), depth + 1, false);
            if ty.note.is_some() || ty.tokens.to_string() == Ty::value().tokens.to_string() {
                open += 1;
            }
            let tokens = ty.tokens;
            variants.push(quote! { #variant(#tokens) });
        }
        if open == alternatives.len() {
            self.taken.taken.remove(&ident.to_string());
            return Ty::opaque("none of its alternatives has a Rust type");
        }
        let doc = crate::emit::doc_text(&match place {
            Some((prop, parent)) => format!(
                "`{prop}` in `{parent}`: one of several shapes (the first that matches is taken when reading)."
            ),
            None => {
                "One of several shapes (the first that matches is taken when reading).".to_owned()
            }
        });
        self.items[slot] = quote! {
            #[doc = #doc]
            #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
            #[serde(untagged)]
            pub enum #ident {
                #(#variants,)*
            }
        };
        Ty::named(&ident, false)
    }
}

fn optional(ty: Ty) -> Ty {
    let tokens = ty.tokens;
    Ty {
        tokens: quote!(Option<#tokens>),
        nullable: true,
        default: true,
        note: ty.note,
    }
}

/// The description, else the title.
fn describe(schema: &Value) -> Option<&str> {
    schema
        .get("description")
        .or_else(|| schema.get("title"))
        .and_then(Value::as_str)
        .filter(|d| !d.trim().is_empty())
}

/// `text` as UpperCamelCase words (`GET` -> `Get`, `in_progress` -> `InProgress`), ASCII
/// letters and digits only; may be empty. Never all capitals (`a-b` -> `Ab`, not `AB`:
/// clippy's `upper_case_acronyms`).
pub(crate) fn type_name(text: &str) -> String {
    let name: String = snake_case(text)
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    if name.len() > 1 && !name.bytes().any(|b| b.is_ascii_lowercase()) {
        let mut c = name.chars();
        return c.next().map(String::from).unwrap_or_default() + &c.as_str().to_ascii_lowercase();
    }
    name
}

fn variant_ident(label: &str, seen: &mut Names) -> Ident {
    let mut name = type_name(label);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, 'V');
    }
    if syn::parse_str::<Ident>(&name).is_err() {
        name.push('_');
    }
    Ident::new(&seen.fresh(&name, ""), Span::call_site())
}

/// A variant name for an untagged alternative: its title, `$ref` name or kind.
fn alternative_label(schema: &Value, index: usize) -> String {
    if let Some(t) = schema.get("title").and_then(Value::as_str) {
        return t.to_owned();
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some(t) if t != "object" || schema.get("properties").is_none() => t.to_owned(),
        _ => format!("variant{}", index + 1),
    }
}

/// The property every alternative fixes to a different `const` string (inline object
/// schemas that require it), and each alternative's value.
fn tag_of(alternatives: &[&Value]) -> Option<(String, Vec<String>)> {
    let first = alternatives.first()?.get("properties")?.as_object()?;
    first.keys().find_map(|candidate| {
        let mut values = Vec::new();
        for schema in alternatives {
            let required = schema
                .get("required")
                .and_then(Value::as_array)
                .is_some_and(|r| r.iter().any(|n| n.as_str() == Some(candidate)));
            let prop = schema.get("properties")?.get(candidate)?;
            let value = prop.get("const").and_then(Value::as_str).or_else(|| {
                match prop.get("enum").and_then(Value::as_array)?.as_slice() {
                    [one] => one.as_str(),
                    _ => None,
                }
            });
            match value {
                Some(v) if required && !values.iter().any(|x| x == v) => values.push(v.to_owned()),
                _ => return None,
            }
        }
        Some((candidate.clone(), values))
    })
}

/// The schema `pointer` (`#`, `#/$defs/a~1b`, percent-encoded) names inside `root`.
fn resolve<'a>(root: &'a Value, pointer: &str) -> Option<&'a Value> {
    let fragment = pointer.strip_prefix('#')?;
    let decoded = percent_encoding::percent_decode_str(fragment)
        .decode_utf8()
        .ok()?;
    if decoded.is_empty() {
        return Some(root);
    }
    if !decoded.starts_with('/') {
        return None;
    }
    root.pointer(&decoded)
}

/// A type name for a `$ref` target: the root's name and the pointer's last piece.
fn pointer_hint(root: &Root<'_>, pointer: &str) -> String {
    let base = root
        .targets
        .get("#")
        .map(|t| t.ident.to_string())
        .unwrap_or_default();
    let last = pointer.rsplit('/').next().unwrap_or_default();
    format!("{base}{}", type_name(last))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The types for one input schema, as formatted source.
    fn types(schema: Value) -> String {
        let root = format_ident!("ToolInput");
        let mut space = TypeSpace::new([&root]);
        space.add_root(&root, &schema, "Arguments.");
        let items = space.into_items();
        let file: syn::File = syn::parse2(quote!(#(#items)*)).unwrap();
        prettyplease::unparse(&file)
    }

    /// A `title` naming a type the module uses unqualified (`String`, `Option`, `Vec`,
    /// `Box`) must not declare it: every other field would change type.
    #[test]
    fn titles_cannot_shadow_the_types_the_module_names() {
        for title in ["String", "Option", "Vec", "Box", "Result"] {
            let code = types(json!({
                "type": "object",
                "properties": {
                    "meta": { "title": title, "type": "object", "properties": { "x": { "type": "integer" } } },
                    "name": { "type": "string" }
                }
            }));
            assert!(!code.contains(&format!("pub struct {title} ")), "{code}");
            assert!(code.contains(&format!("pub struct {title}2 ")), "{code}");
        }
    }

    /// `gen` is reserved in edition 2024, though syn reads it as an identifier.
    #[test]
    fn edition_2024_reserved_words_become_raw_fields() {
        let code = types(json!({
            "type": "object",
            "properties": { "gen": { "type": "string" }, "try": { "type": "string" } }
        }));
        assert!(code.contains("pub r#gen: Option<String>"), "{code}");
        assert!(code.contains("pub r#try: Option<String>"), "{code}");
    }

    /// Many properties with one title, or names that map to one identifier, each get
    /// their own name (numbered per base, in linear time).
    #[test]
    fn colliding_names_are_numbered_once_each() {
        let mut properties = Map::new();
        for i in 0..300 {
            properties.insert(
                format!("p{i}"),
                json!({ "title": "A", "type": "object", "properties": { "a": { "type": "integer" } } }),
            );
            properties.insert(
                format!("a{}", " ".repeat(i % 5)),
                json!({ "type": "string" }),
            );
        }
        let code = types(json!({ "type": "object", "properties": properties }));
        assert!(code.contains("pub struct A {"), "{code}");
        assert!(code.contains("pub struct A300 {"), "{code}");
        assert!(!code.contains("pub struct A301 {"), "{code}");
        for field in ["pub a:", "pub a_2:", "pub a_5:"] {
            assert!(code.contains(field), "{field}: {code}");
        }
    }

    /// Keys beyond `properties` that the schema lets through keep their values.
    #[test]
    fn additional_properties_beside_properties_are_kept() {
        let code =
            types(json!({ "type": "object", "additionalProperties": { "type": "integer" } }));
        assert!(code.contains("#[serde(flatten)]"), "{code}");
        assert!(
            code.contains("pub extra: std::collections::BTreeMap<String, i64>"),
            "{code}"
        );
        let code = types(json!({
            "type": "object",
            "properties": { "extra": { "type": "string" } },
            "additionalProperties": true
        }));
        assert!(code.contains("pub extra: Option<String>"), "{code}");
        assert!(
            code.contains("pub extra_2: bmm_runtime::serde_json::Map"),
            "{code}"
        );
        let code = types(json!({ "type": "object", "additionalProperties": false }));
        assert!(!code.contains("flatten"), "{code}");
    }

    /// Below a `$id`, `$ref`s resolve against that `$id`: the type stays open rather than
    /// resolving them against the tool's schema.
    #[test]
    fn a_subschema_with_its_own_id_stays_open() {
        let code = types(json!({
            "type": "object",
            "$defs": { "B": { "type": "string" } },
            "properties": {
                "sub": {
                    "$id": "https://example.com/sub",
                    "$defs": { "B": { "type": "integer" } },
                    "type": "object",
                    "properties": { "w": { "$ref": "#/$defs/B" } }
                }
            }
        }));
        assert!(
            code.contains("pub sub: Option<bmm_runtime::serde_json::Value>"),
            "{code}"
        );
        assert!(!code.contains("pub w:"), "{code}");
    }

    #[test]
    fn nested_objects_arrays_and_enums_are_named_types_in_spec_order() {
        let code = types(json!({
            "type": "object",
            "properties": {
                "zeta": { "type": "string" },
                "items": { "type": "array", "items": {
                    "type": "object",
                    "description": "One line.",
                    "properties": { "qty": { "type": "integer" }, "type": { "type": "string" } },
                    "required": ["qty"]
                }},
                "mode": { "type": "string", "enum": ["GET", "in_progress", "a-b", "3d", "Self"] },
                "maybe": { "type": ["number", "null"] },
                "labels": { "type": "object", "additionalProperties": { "type": "boolean" } },
                "open": { "type": "object" },
                "anything": {}
            },
            "required": ["zeta", "items"]
        }));
        let zeta = code.find("pub zeta: String").unwrap();
        let items = code.find("pub items: Vec<ToolInputItemsItem>").unwrap();
        assert!(zeta < items, "{code}");
        assert!(code.contains("/// One line.\n"), "{code}");
        assert!(code.contains("pub struct ToolInputItemsItem {"), "{code}");
        assert!(code.contains("pub qty: i64"), "{code}");
        assert!(code.contains("pub r#type: Option<String>"), "{code}");
        for variant in ["Get,", "InProgress,", "Ab,", "V3d,", "Self_,"] {
            assert!(code.contains(variant), "{variant}: {code}");
        }
        assert!(
            code.contains("#[serde(rename = \"in_progress\")]"),
            "{code}"
        );
        assert!(code.contains("pub mode: Option<ToolInputMode>"), "{code}");
        assert!(code.contains("pub maybe: Option<f64>"), "{code}");
        assert!(
            code.contains("pub labels: Option<std::collections::BTreeMap<String, bool>>"),
            "{code}"
        );
        assert!(
            code.contains("bmm_runtime::serde_json::Map<String, bmm_runtime::serde_json::Value>"),
            "{code}"
        );
        assert!(
            code.contains("pub anything: Option<bmm_runtime::serde_json::Value>"),
            "{code}"
        );
    }

    #[test]
    fn refs_to_defs_are_shared_and_recursion_is_boxed() {
        let code = types(json!({
            "type": "object",
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string" },
                        "parent": { "$ref": "#/$defs/node" },
                        "children": { "type": "array", "items": { "$ref": "#/$defs/node" } }
                    },
                    "required": ["name"]
                },
                "kind": { "enum": ["a", "b"] }
            },
            "properties": {
                "first": { "$ref": "#/$defs/node" },
                "second": { "$ref": "#/$defs/node" },
                "k1": { "$ref": "#/$defs/kind" },
                "k2": { "$ref": "#/$defs/kind" },
                "again": { "$ref": "#" },
                "far": { "$ref": "https://example.com/schema" }
            }
        }));
        assert_eq!(
            code.matches("pub struct ToolInputNode ").count(),
            1,
            "{code}"
        );
        assert!(
            code.contains("pub parent: Option<Box<ToolInputNode>>"),
            "{code}"
        );
        assert!(
            code.contains("pub children: Option<Vec<ToolInputNode>>"),
            "{code}"
        );
        assert!(code.contains("pub second: Option<ToolInputNode>"), "{code}");
        assert_eq!(code.matches("pub enum ").count(), 1, "{code}");
        assert!(code.contains("pub k2: Option<ToolInputKind>"), "{code}");
        assert!(code.contains("pub again: Option<Box<ToolInput>>"), "{code}");
        assert!(
            code.contains("Any JSON: its `$ref` points outside the schema."),
            "{code}"
        );
    }

    #[test]
    fn one_of_becomes_option_tagged_or_untagged_enum() {
        let code = types(json!({
            "type": "object",
            "properties": {
                "nullable": { "oneOf": [{ "type": "string" }, { "type": "null" }] },
                "shape": { "oneOf": [
                    { "type": "object", "properties": { "kind": { "const": "circle" }, "r": { "type": "number" } }, "required": ["kind", "r"] },
                    { "type": "object", "properties": { "kind": { "const": "square" }, "side": { "type": "number" } }, "required": ["kind"] }
                ]},
                "either": { "anyOf": [{ "type": "integer" }, { "type": "object", "title": "Pair", "properties": { "a": { "type": "string" } } }] },
                "merged": { "allOf": [{ "type": "object" }, { "type": "object" }] }
            }
        }));
        assert!(code.contains("pub nullable: Option<String>"), "{code}");
        assert!(code.contains("#[serde(tag = \"kind\")]"), "{code}");
        assert!(code.contains("Circle(ToolInputShapeCircle)"), "{code}");
        assert!(code.contains("pub struct ToolInputShapeSquare {"), "{code}");
        assert!(!code.contains("pub kind"), "the tag is not a field: {code}");
        assert!(code.contains("#[serde(untagged)]"), "{code}");
        assert!(code.contains("Integer(i64)"), "{code}");
        assert!(code.contains("Pair(Pair)"), "{code}");
        assert!(
            code.contains("Any JSON: its schema is an `allOf` of several schemas."),
            "{code}"
        );
    }

    #[test]
    fn names_never_collide_and_spec_text_stays_in_literals() {
        let first = format_ident!("AInput");
        let second = format_ident!("AInputBInput");
        let mut space = TypeSpace::new([&first, &second]);
        space.add_root(
            &first,
            &json!({ "type": "object", "properties": {
                "b_input": { "type": "object", "properties": { "x": { "type": "string" } } },
                "t1": { "type": "object", "title": "Same", "properties": { "x": { "type": "string" } } },
                "t2": { "type": "object", "title": "Same", "properties": { "x": { "type": "string" } } },
                "evil": { "type": "object", "title": "x\"); fn evil() {", "description": "*/ fn evil() {} /*", "properties": { "\"); fn evil() {": { "type": "string" } } }
            }}),
            "A.",
        );
        space.add_root(&second, &json!({ "type": "object" }), "B.");
        let items = space.into_items();
        let file: syn::File = syn::parse2(quote!(#(#items)*)).unwrap();
        let code = prettyplease::unparse(&file);
        assert_eq!(
            code.matches("pub struct AInputBInput ").count(),
            1,
            "{code}"
        );
        assert!(code.contains("pub struct AInputBInput2 "), "{code}");
        assert!(
            code.contains("pub struct Same ") && code.contains("pub struct Same2 "),
            "{code}"
        );
        assert!(
            file.items
                .iter()
                .all(|i| matches!(i, syn::Item::Struct(_) | syn::Item::Enum(_))),
            "{code}"
        );
    }
}
