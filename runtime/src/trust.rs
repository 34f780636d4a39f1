//! Which authorization servers a generated server trusts, and how: from the runtime flags
//! (`--issuer`, `--jwks-uri`, `--audience`, `--scope-claim`, `--introspection-*`) or from
//! an issuers file (`--issuers-file`), checked into a [`TrustPlan`] before anything is
//! built, then handed to the middleware's [`AuthConfig`].
//!
//! The issuers file (YAML, or JSON when its name ends in `.json`):
//!
//! ```yaml
//! issuers:
//!   - issuer: https://login.microsoftonline.com/<tenant-id>/v2.0
//!     audiences: ["api://<application-id>"]   # accepted besides this server's URL
//!     scope_claim: scp                         # scope | scp | both (default both)
//!     algorithms: [RS256]                      # default: every asymmetric algorithm
//!     jwks_uri: https://...                    # default: from the issuer's metadata
//!   - issuer: https://as.example.com
//!     introspection:                           # opaque tokens (RFC 7662)
//!       client_id: notes-rs
//!       client_secret_env: NOTES_RS_SECRET     # or: private_key_file: rs-key.pem
//!       endpoint: https://as.example.com/introspect   # default: from the metadata
//!       cache_secs: 60                         # default 60
//! ```
//!
//! Rules:
//! 1. Either the issuer flags or `--issuers-file`, never both: a flag of one with the
//!    other is refused by the flag parser (`issuers_file_conflicts_with_the_issuer_flags`).
//! 2. The issuers file holds one `issuers` list of 1 to [`MAX_ISSUERS`] entries and is at
//!    most [`MAX_FILE_BYTES`]; unknown fields are refused at every level; every error names
//!    the file, the entry (its index from 1, and its `issuer` when it has one) and the
//!    field (`issuers_file_errors_name_the_file_the_entry_and_the_field`).
//! 3. Introspection needs exactly one credential: a client secret (from the environment:
//!    `BMM_INTROSPECTION_CLIENT_SECRET` for the flags, the variable named by
//!    `client_secret_env` in the file) or a PEM private key (`private_key_jwt`; its
//!    algorithm is read from the key: RS256, ES256, ES384 or EdDSA). Both or neither is
//!    refused, and so is an unset or empty variable, named without its value
//!    (`introspection_needs_exactly_one_credential`). A relative `private_key_file` is
//!    read relative to the issuers file.
//! 4. The `--introspection-*` flags introspect at the one `--issuer`: with several, use an
//!    issuers file (`introspection_flags_need_exactly_one_issuer`). Only one issuer may
//!    introspect (the one an opaque token goes to).
//! 5. Secrets and private keys never appear in `Debug` output or in errors
//!    (`introspection_secrets_are_never_printed`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bmm_middleware::{
    Algorithm, AuthConfig, Introspection, IntrospectionAuth, Issuer, ScopeClaim, TrustedIssuer,
};
use serde_json::Value;
use url::Url;

use crate::run::{Args, ScopeClaimArg, StartError, fail};

/// Largest issuers file read.
pub(crate) const MAX_FILE_BYTES: u64 = 256 * 1024;
/// Most issuers an issuers file may list.
pub(crate) const MAX_ISSUERS: usize = 32;
/// Largest private key file read.
const MAX_KEY_BYTES: u64 = 64 * 1024;
/// Default and bounds of the introspection cache ceiling, seconds.
pub(crate) const DEFAULT_INTROSPECTION_CACHE_SECS: u64 = 60;
const MAX_INTROSPECTION_CACHE_SECS: u64 = 3600;

/// The issuers to trust, checked.
#[derive(Debug)]
pub(crate) struct TrustPlan {
    pub(crate) issuers: Vec<IssuerPlan>,
}

/// One trusted issuer.
#[derive(Debug)]
pub(crate) struct IssuerPlan {
    /// Where it was configured, for errors (`--issuer` or the file's entry).
    pub(crate) origin: String,
    pub(crate) issuer: Issuer,
    pub(crate) jwks_uri: Option<String>,
    pub(crate) algorithms: Option<Vec<Algorithm>>,
    pub(crate) audiences: Vec<String>,
    pub(crate) scope_claim: ScopeClaimArg,
    pub(crate) introspection: Option<IntrospectionPlan>,
}

/// Introspection of opaque tokens at one issuer.
#[derive(Debug)]
pub(crate) struct IntrospectionPlan {
    pub(crate) client_id: String,
    pub(crate) endpoint: Option<Url>,
    pub(crate) credential: Credential,
    pub(crate) cache: Duration,
}

/// How the server authenticates to the introspection endpoint.
pub(crate) enum Credential {
    /// `client_secret_basic`.
    Secret(String),
    /// `private_key_jwt` with this PEM key.
    PrivateKey { pem: String, alg: Algorithm },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(<redacted>)"),
            Self::PrivateKey { alg, .. } => write!(f, "PrivateKey({alg:?}, <redacted>)"),
        }
    }
}

/// The trust configuration of `args`; `env` reads environment variables (secrets).
pub(crate) fn plan(
    args: &Args,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<TrustPlan, StartError> {
    match &args.issuers_file {
        Some(path) => from_file(path, env),
        None => from_flags(args, env),
    }
}

fn from_flags(args: &Args, env: &impl Fn(&str) -> Option<String>) -> Result<TrustPlan, StartError> {
    if args.issuers.is_empty() {
        return Err(fail(
            "no issuer: pass the authorization server with --issuer (BMM_ISSUER) or several with --issuers-file (BMM_ISSUERS_FILE), or --no-auth for a local test",
        ));
    }
    if args.jwks_uri.is_some() && args.issuers.len() != 1 {
        return Err(fail("--jwks-uri works with exactly one --issuer"));
    }
    let secret = env("BMM_INTROSPECTION_CLIENT_SECRET").filter(|s| !s.is_empty());
    let introspection = match &args.introspection_client_id {
        None => {
            if secret.is_some() || args.introspection_private_key.is_some() {
                return Err(fail(
                    "an introspection credential (BMM_INTROSPECTION_CLIENT_SECRET or --introspection-private-key) is set without --introspection-client-id (BMM_INTROSPECTION_CLIENT_ID): pass the client id this server introspects as",
                ));
            }
            None
        }
        Some(client_id) => {
            if args.issuers.len() != 1 {
                return Err(fail(
                    "--introspection-client-id works with exactly one --issuer (the one opaque tokens are sent to); for several issuers use --issuers-file",
                ));
            }
            let credential = credential(
                secret,
                args.introspection_private_key.as_deref(),
                "--introspection-private-key",
                "BMM_INTROSPECTION_CLIENT_SECRET",
                None,
            )
            .map_err(|e| fail(format!("--introspection-client-id: {e}")))?;
            let endpoint = args
                .introspection_endpoint
                .as_deref()
                .map(|e| endpoint(e).map_err(|e| fail(format!("--introspection-endpoint: {e}"))))
                .transpose()?;
            Some(IntrospectionPlan {
                client_id: non_empty(client_id, "--introspection-client-id")?,
                endpoint,
                credential,
                cache: cache_secs(args.introspection_cache_secs)
                    .map_err(|e| fail(format!("--introspection-cache-secs: {e}")))?,
            })
        }
    };
    let mut issuers = Vec::with_capacity(args.issuers.len());
    let mut introspection = introspection;
    for text in &args.issuers {
        let issuer = Issuer::parse(text).map_err(|e| fail(format!("--issuer: {e}")))?;
        let audiences = args
            .audiences
            .iter()
            .map(|a| audience(a).map_err(|e| fail(format!("--audience: {e}"))))
            .collect::<Result<_, _>>()?;
        issuers.push(IssuerPlan {
            origin: format!("--issuer `{issuer}`"),
            issuer,
            jwks_uri: args.jwks_uri.clone(),
            algorithms: None,
            audiences,
            scope_claim: args.scope_claim.unwrap_or(ScopeClaimArg::Both),
            introspection: introspection.take(),
        });
    }
    Ok(TrustPlan { issuers })
}

/// The fields an issuers file entry may have.
const ENTRY_FIELDS: &[&str] = &[
    "issuer",
    "jwks_uri",
    "algorithms",
    "audiences",
    "scope_claim",
    "introspection",
];
/// The fields of an entry's `introspection`.
const INTROSPECTION_FIELDS: &[&str] = &[
    "client_id",
    "endpoint",
    "client_secret_env",
    "private_key_file",
    "cache_secs",
];

/// The members of `value`, a mapping with only `known` keys; errors are `(field, text)`.
fn mapping<'a>(
    value: &'a Value,
    known: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, (String, String)> {
    let Some(map) = value.as_object() else {
        return Err((String::new(), "is not a mapping".to_owned()));
    };
    if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err((
            unknown.escape_default().to_string(),
            format!("unknown field; the known ones are {}", known.join(", ")),
        ));
    }
    Ok(map)
}

/// Field `name` of `map`, as a `T` (absent or null: `None`).
fn field<T: serde::de::DeserializeOwned>(
    map: &serde_json::Map<String, Value>,
    name: &str,
    expected: &str,
) -> Result<Option<T>, (String, String)> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|_| (name.to_owned(), format!("must be {expected}"))),
    }
}

fn from_file(path: &Path, env: &impl Fn(&str) -> Option<String>) -> Result<TrustPlan, StartError> {
    let shown = path.display();
    let text = read_bounded(path, MAX_FILE_BYTES)
        .map_err(|e| fail(format!("--issuers-file `{shown}`: {e}")))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let doc: Value = if json {
        serde_json::from_str(&text)
            .map_err(|e| fail(format!("--issuers-file `{shown}` is not valid JSON: {e}")))?
    } else {
        serde_saphyr::from_str(&text)
            .map_err(|e| fail(format!("--issuers-file `{shown}` is not valid YAML: {e}")))?
    };
    let list = mapping(&doc, &["issuers"])
        .and_then(|map| {
            field::<Vec<Value>>(map, "issuers", "a list of issuers")?
                .ok_or_else(|| ("issuers".to_owned(), "is missing".to_owned()))
        })
        .map_err(|(f, e)| {
            let f = if f.is_empty() {
                String::new()
            } else {
                format!("`{f}` ")
            };
            fail(format!(
                "--issuers-file `{shown}`: {f}{e} (the file holds `issuers:`, a list of issuers)"
            ))
        })?;
    if list.is_empty() || list.len() > MAX_ISSUERS {
        return Err(fail(format!(
            "--issuers-file `{shown}`: `issuers` lists {} entries; give 1 to {MAX_ISSUERS}",
            list.len()
        )));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut issuers: Vec<IssuerPlan> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let named = raw
            .get("issuer")
            .and_then(Value::as_str)
            .map(|s| format!(" (issuer `{}`)", s.escape_default()))
            .unwrap_or_default();
        let origin = format!("--issuers-file `{shown}`, entry {}{named}", i + 1);
        let plan = entry_plan(raw, &origin, base, env)?;
        if let Some(first) = issuers.iter().find(|p| p.issuer == plan.issuer) {
            return Err(fail(format!(
                "{origin}: `issuer`: configured twice (also {})",
                first.origin
            )));
        }
        if plan.introspection.is_some()
            && let Some(other) = issuers.iter().find(|p| p.introspection.is_some())
        {
            return Err(fail(format!(
                "{origin}: `introspection`: configured for a second issuer (also {}): opaque tokens name no issuer, so only one issuer may introspect them",
                other.origin
            )));
        }
        issuers.push(plan);
    }
    Ok(TrustPlan { issuers })
}

fn entry_plan(
    raw: &Value,
    origin: &str,
    base: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<IssuerPlan, StartError> {
    let at = |(field, e): (String, String)| {
        if field.is_empty() {
            fail(format!("{origin}: {e}"))
        } else {
            fail(format!("{origin}: `{field}`: {e}"))
        }
    };
    let map = mapping(raw, ENTRY_FIELDS).map_err(at)?;
    let issuer = field::<String>(map, "issuer", "a string (the issuer URL)")
        .and_then(|v| {
            v.ok_or_else(|| {
                (
                    "issuer".to_owned(),
                    "is missing: every entry names its issuer URL".to_owned(),
                )
            })
        })
        .map_err(at)?;
    let issuer = Issuer::parse(&issuer).map_err(|e| at(("issuer".into(), e.to_string())))?;
    let jwks_uri = field::<String>(map, "jwks_uri", "a string (a URL)").map_err(at)?;
    // Checked here too, so the error names the field.
    if let Some(uri) = &jwks_uri {
        let _checked = TrustedIssuer::new(issuer.clone())
            .jwks_uri(uri)
            .map_err(|e| at(("jwks_uri".into(), e.to_string())))?;
    }
    let algorithms = field::<Vec<String>>(map, "algorithms", "a list of algorithm names")
        .map_err(at)?
        .map(|list| {
            if list.is_empty() {
                return Err(at(("algorithms".into(), "the list is empty".into())));
            }
            list.iter()
                .map(|a| {
                    a.parse::<Algorithm>().map_err(|_| {
                        at((
                            "algorithms".into(),
                            format!(
                                "`{}` is not a JOSE algorithm name (like RS256, ES256, EdDSA)",
                                a.escape_default()
                            ),
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .and_then(|list| {
                    let _checked = TrustedIssuer::new(issuer.clone())
                        .algorithms(&list)
                        .map_err(|e| at(("algorithms".into(), e.to_string())))?;
                    Ok(list)
                })
        })
        .transpose()?;
    let audiences = field::<Vec<String>>(map, "audiences", "a list of strings")
        .map_err(at)?
        .unwrap_or_default()
        .iter()
        .map(|a| audience(a).map_err(|e| at(("audiences".into(), e))))
        .collect::<Result<_, _>>()?;
    let scope_claim = field::<ScopeClaimArg>(map, "scope_claim", "one of scope, scp, both")
        .map_err(at)?
        .unwrap_or(ScopeClaimArg::Both);
    let introspection = match map.get("introspection") {
        None | Some(Value::Null) => None,
        Some(raw) => Some(introspection_plan(raw, base, env).map_err(|(f, e)| {
            at((
                format!("introspection{}{f}", if f.is_empty() { "" } else { "." }),
                e,
            ))
        })?),
    };
    Ok(IssuerPlan {
        origin: origin.to_owned(),
        issuer,
        jwks_uri,
        algorithms,
        audiences,
        scope_claim,
        introspection,
    })
}

fn introspection_plan(
    raw: &Value,
    base: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<IntrospectionPlan, (String, String)> {
    let map = mapping(raw, INTROSPECTION_FIELDS)?;
    let client_id = field::<String>(map, "client_id", "a string")?
        .ok_or_else(|| ("client_id".to_owned(), "is missing".to_owned()))?;
    let client_id =
        non_empty(&client_id, "the client id").map_err(|e| ("client_id".to_owned(), e.message))?;
    let endpoint = field::<String>(map, "endpoint", "a string (a URL)")?
        .as_deref()
        .map(endpoint)
        .transpose()
        .map_err(|e| ("endpoint".to_owned(), e))?;
    let secret_var = field::<String>(
        map,
        "client_secret_env",
        "a string (an environment variable name)",
    )?;
    let key = field::<PathBuf>(map, "private_key_file", "a string (a file path)")?;
    let cache = field::<u64>(map, "cache_secs", "a whole number of seconds")?
        .unwrap_or(DEFAULT_INTROSPECTION_CACHE_SECS);
    let cache = cache_secs(cache).map_err(|e| ("cache_secs".to_owned(), e))?;
    let secret = match &secret_var {
        Some(name) => Some(env(name).filter(|s| !s.is_empty()).ok_or_else(|| {
            (
                "client_secret_env".to_owned(),
                format!(
                    "the environment variable `{}` is not set (or empty): set it to the client secret",
                    name.escape_default()
                ),
            )
        })?),
        None => None,
    };
    let key = key.map(|p| base.join(p));
    let credential = credential(
        secret,
        key.as_deref(),
        "`private_key_file`",
        "`client_secret_env`",
        secret_var.as_deref(),
    )
    .map_err(|e| (String::new(), e))?;
    Ok(IntrospectionPlan {
        client_id,
        endpoint,
        credential,
        cache,
    })
}

/// Exactly one of a secret and a key file (rule 3). `key_name` and `secret_name` say
/// where each comes from; `secret_var` is the variable the secret was read from, if any.
fn credential(
    secret: Option<String>,
    key: Option<&Path>,
    key_name: &str,
    secret_name: &str,
    secret_var: Option<&str>,
) -> Result<Credential, String> {
    match (secret, key) {
        (Some(_), Some(_)) => Err(format!(
            "both a client secret ({}) and a private key ({key_name}) are given: choose one (client_secret_basic or private_key_jwt)",
            secret_var.map_or_else(
                || secret_name.to_owned(),
                |v| format!("`{}`", v.escape_default())
            )
        )),
        (None, None) => Err(format!(
            "no credential: give a client secret ({secret_name}) or a PEM private key ({key_name})"
        )),
        (Some(secret), None) => Ok(Credential::Secret(secret)),
        (None, Some(path)) => {
            let pem = read_bounded(path, MAX_KEY_BYTES)
                .map_err(|e| format!("private key `{}`: {e}", path.display()))?;
            let alg = pem_algorithm(&pem)
                .map_err(|e| format!("private key `{}`: {e}", path.display()))?;
            Ok(Credential::PrivateKey { pem, alg })
        }
    }
}

/// The signing algorithm for a PEM private key: RS256 for RSA, ES256/ES384 by the curve,
/// EdDSA for Ed25519.
pub(crate) fn pem_algorithm(pem: &str) -> Result<Algorithm, String> {
    use base64::Engine as _;
    let mut label = None;
    let mut body = String::new();
    for line in pem.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            label = Some(rest.trim_end_matches('-').to_owned());
        } else if line.starts_with("-----END ") {
            break;
        } else if label.is_some() && !line.contains(':') {
            body.push_str(line);
        }
    }
    let Some(label) = label else {
        return Err("not a PEM file (no `-----BEGIN ...-----` line)".into());
    };
    match label.as_str() {
        "RSA PRIVATE KEY" => return Ok(Algorithm::RS256),
        "PRIVATE KEY" | "EC PRIVATE KEY" => {}
        "ENCRYPTED PRIVATE KEY" => {
            return Err("the key is encrypted; give an unencrypted PEM key (keep the file readable only by the server)".into());
        }
        other => return Err(format!("a PEM `{other}` is not a private key")),
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|_| "the PEM body is not base64".to_owned())?;
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    if label == "PRIVATE KEY" && has(RSA) {
        Ok(Algorithm::RS256)
    } else if has(P256) {
        Ok(Algorithm::ES256)
    } else if has(P384) {
        Ok(Algorithm::ES384)
    } else if label == "PRIVATE KEY" && has(ED25519) {
        Ok(Algorithm::EdDSA)
    } else {
        Err("the key type is not supported; use an RSA, P-256, P-384 or Ed25519 key".into())
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot be read as UTF-8 text: {e}"))?;
    if text.len() as u64 > max {
        return Err(format!("is larger than {max} bytes"));
    }
    Ok(text)
}

fn non_empty(value: &str, name: &str) -> Result<String, StartError> {
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(fail(format!(
            "{name} must be 1 to 256 characters without control characters"
        )));
    }
    Ok(value.to_owned())
}

/// An extra accepted audience: an absolute URI or a plain identifier, printable.
fn audience(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 1024 || value.chars().any(char::is_control) {
        return Err(format!(
            "`{}` is not an audience value (1 to 1,024 bytes without control characters)",
            value.escape_default()
        ));
    }
    Ok(value.to_owned())
}

fn endpoint(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("`{value}` is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(format!(
            "`{value}` must be https (http only on a loopback host): the client credential travels with every request"
        ));
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{value}` must have no fragment or user info"));
    }
    Ok(url)
}

fn cache_secs(secs: u64) -> Result<Duration, String> {
    if secs > MAX_INTROSPECTION_CACHE_SECS {
        return Err(format!(
            "{secs} s is above the {MAX_INTROSPECTION_CACHE_SECS} s ceiling (0 turns the cache off)"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// Adds every issuer of `plan` to `config` (the middleware's [`TrustedIssuer`]s); errors
/// name where the issuer was configured.
pub(crate) fn configure(mut config: AuthConfig, plan: TrustPlan) -> Result<AuthConfig, StartError> {
    for p in plan.issuers {
        let origin = p.origin;
        let at = |e: bmm_middleware::ConfigError| fail(format!("{origin}: {e}"));
        let mut trusted = TrustedIssuer::new(p.issuer);
        if let Some(uri) = &p.jwks_uri {
            trusted = trusted.jwks_uri(uri).map_err(at)?;
        }
        if let Some(algorithms) = &p.algorithms {
            trusted = trusted.algorithms(algorithms).map_err(at)?;
        }
        for audience in p.audiences {
            trusted = trusted.audience(audience);
        }
        trusted = trusted.scope_claim(match p.scope_claim {
            ScopeClaimArg::Scope => ScopeClaim::Scope,
            ScopeClaimArg::Scp => ScopeClaim::Scp,
            ScopeClaimArg::Both => ScopeClaim::Both,
        });
        if let Some(i) = p.introspection {
            let auth = match i.credential {
                Credential::Secret(secret) => IntrospectionAuth::ClientSecretBasic(secret),
                Credential::PrivateKey { pem, alg } => {
                    IntrospectionAuth::PrivateKeyJwt { pem, alg }
                }
            };
            let mut introspection = Introspection::new(i.client_id, auth).cache_ceiling(i.cache);
            if let Some(endpoint) = i.endpoint {
                introspection = introspection.endpoint(endpoint);
            }
            trusted = trusted.introspection(introspection);
        }
        config = config.trust(trusted);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../middleware/tests/fixtures");

    fn args(flags: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("demo").chain(flags.iter().copied()))
    }

    /// A file named `name` holding `text` in a directory of this test's own.
    fn file(test: &str, name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bmm-trust-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn env_with<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn plan_of(flags: &[&str], vars: &[(&str, &str)]) -> Result<TrustPlan, String> {
        let args = args(flags).map_err(|e| e.to_string())?;
        plan(&args, &env_with(vars)).map_err(|e| e.message)
    }

    #[test]
    fn issuers_file_conflicts_with_the_issuer_flags() {
        for other in [
            &["--issuer", "https://as.example.com"][..],
            &["--jwks-uri", "https://as.example.com/jwks"],
            &["--audience", "api://x"],
            &["--scope-claim", "scp"],
            &["--introspection-client-id", "rs"],
        ] {
            let mut flags = vec!["--issuers-file", "issuers.yaml"];
            flags.extend_from_slice(other);
            let err = args(&flags).unwrap_err().to_string();
            assert!(err.contains("cannot be used with"), "{other:?}: {err}");
        }
    }

    #[test]
    fn bad_flag_values_are_refused_with_the_accepted_ones() {
        let err = args(&["--scope-claim", "scopes"]).unwrap_err().to_string();
        assert!(
            err.contains("scopes") && err.contains("scope, scp, both"),
            "{err}"
        );
        let err = args(&["--dpop", "maybe"]).unwrap_err().to_string();
        assert!(err.contains("off, allowed, required"), "{err}");
        let err = args(&["--introspection-cache-secs", "7200"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("7200"), "{err}");
        let err = args(&["--introspection-endpoint", "https://as/introspect"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--introspection-client-id"), "{err}");
        let a = args(&[]).unwrap();
        assert_eq!(
            (a.dpop, a.dpop_nonce, a.scope_claim),
            (crate::run::DpopArg::Allowed, false, None)
        );
        let err = plan_of(
            &["--issuer", "https://as.example.com", "--audience", "a\u{7}"],
            &[],
        )
        .unwrap_err();
        assert!(err.starts_with("--audience:"), "{err}");
    }

    #[test]
    fn flags_make_one_issuer_per_issuer_with_the_audiences_and_scope_claim() {
        let plan = plan_of(
            &[
                "--issuer",
                "https://a.example.com,https://b.example.com",
                "--audience",
                "api://one,two",
                "--scope-claim",
                "scp",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(plan.issuers.len(), 2);
        for p in &plan.issuers {
            assert_eq!(p.audiences, ["api://one", "two"]);
            assert_eq!(p.scope_claim, ScopeClaimArg::Scp);
            assert!(p.introspection.is_none() && p.jwks_uri.is_none());
        }
        assert_eq!(plan.issuers[1].issuer.as_str(), "https://b.example.com");
        let err = plan_of(&["--jwks-uri", "https://a.example.com/jwks"], &[]).unwrap_err();
        assert!(err.contains("no issuer"), "{err}");
    }

    #[test]
    fn introspection_flags_need_exactly_one_issuer() {
        let err = plan_of(
            &[
                "--issuer",
                "https://a.example.com,https://b.example.com",
                "--introspection-client-id",
                "rs",
            ],
            &[("BMM_INTROSPECTION_CLIENT_SECRET", "s3cret-value")],
        )
        .unwrap_err();
        assert!(
            err.contains("exactly one --issuer") && err.contains("--issuers-file"),
            "{err}"
        );
        let plan = plan_of(
            &[
                "--issuer",
                "https://a.example.com",
                "--introspection-client-id",
                "rs",
                "--introspection-endpoint",
                "https://a.example.com/introspect",
                "--introspection-cache-secs",
                "30",
            ],
            &[("BMM_INTROSPECTION_CLIENT_SECRET", "s3cret-value")],
        )
        .unwrap();
        let i = plan.issuers[0].introspection.as_ref().unwrap();
        assert_eq!(i.client_id, "rs");
        assert_eq!(i.cache, Duration::from_secs(30));
        assert_eq!(
            i.endpoint.as_ref().map(Url::as_str),
            Some("https://a.example.com/introspect")
        );
        assert!(matches!(&i.credential, Credential::Secret(s) if s == "s3cret-value"));
        let err = plan_of(
            &[
                "--issuer",
                "https://a.example.com",
                "--introspection-client-id",
                "rs",
                "--introspection-endpoint",
                "http://a.example.com/introspect",
            ],
            &[("BMM_INTROSPECTION_CLIENT_SECRET", "s3cret-value")],
        )
        .unwrap_err();
        assert!(
            err.starts_with("--introspection-endpoint:") && err.contains("https"),
            "{err}"
        );
        // A secret without a client id is a mistake, not silently ignored.
        let err = plan_of(
            &["--issuer", "https://a.example.com"],
            &[("BMM_INTROSPECTION_CLIENT_SECRET", "s3cret-value")],
        )
        .unwrap_err();
        assert!(err.contains("--introspection-client-id"), "{err}");
    }

    #[test]
    fn introspection_needs_exactly_one_credential() {
        let key = format!("{FIXTURES}/ec-p256.pem");
        let base = [
            "--issuer",
            "https://a.example.com",
            "--introspection-client-id",
            "rs",
        ];
        let err = plan_of(&base, &[]).unwrap_err();
        assert!(
            err.contains("no credential") && err.contains("BMM_INTROSPECTION_CLIENT_SECRET"),
            "{err}"
        );
        let mut with_key = base.to_vec();
        with_key.extend(["--introspection-private-key", &key]);
        let err = plan_of(
            &with_key,
            &[("BMM_INTROSPECTION_CLIENT_SECRET", "s3cret-value")],
        )
        .unwrap_err();
        assert!(err.contains("both a client secret"), "{err}");
        assert!(!err.contains("s3cret-value"));
        let plan = plan_of(&with_key, &[]).unwrap();
        let i = plan.issuers[0].introspection.as_ref().unwrap();
        assert!(matches!(
            i.credential,
            Credential::PrivateKey {
                alg: Algorithm::ES256,
                ..
            }
        ));

        // The same in the file, where the errors name the entry.
        let both = file(
            "both",
            "issuers.yaml",
            "issuers:\n  - issuer: https://a.example.com\n    introspection:\n      client_id: rs\n      client_secret_env: RS_SECRET\n      private_key_file: key.pem\n",
        );
        std::fs::copy(&key, both.with_file_name("key.pem")).unwrap();
        let flags = ["--issuers-file", both.to_str().unwrap()];
        let err = plan_of(&flags, &[("RS_SECRET", "s3cret-value")]).unwrap_err();
        assert!(
            err.contains("entry 1 (issuer `https://a.example.com`): `introspection`: both a client secret (`RS_SECRET`)"),
            "{err}"
        );
        let err = plan_of(&flags, &[]).unwrap_err();
        assert!(
            err.contains(
                "`introspection.client_secret_env`: the environment variable `RS_SECRET` is not set"
            ),
            "{err}"
        );
        let neither = file(
            "neither",
            "issuers.yml",
            "issuers:\n  - issuer: https://a.example.com\n    introspection: {client_id: rs}\n",
        );
        let err = plan_of(&["--issuers-file", neither.to_str().unwrap()], &[]).unwrap_err();
        assert!(err.contains("`introspection`: no credential"), "{err}");
        // A relative key file is read next to the issuers file.
        let key_only = file(
            "both",
            "key-only.yaml",
            "issuers:\n  - issuer: https://a.example.com\n    introspection: {client_id: rs, private_key_file: key.pem, cache_secs: 0}\n",
        );
        let plan = plan_of(&["--issuers-file", key_only.to_str().unwrap()], &[]).unwrap();
        let i = plan.issuers[0].introspection.as_ref().unwrap();
        assert_eq!(i.cache, Duration::ZERO);
        assert!(matches!(
            i.credential,
            Credential::PrivateKey {
                alg: Algorithm::ES256,
                ..
            }
        ));
    }

    #[test]
    fn issuers_file_errors_name_the_file_the_entry_and_the_field() {
        let cases = [
            (
                "issuers:\n  - issuer: https://a.example.com\n  - issuer: https://b.example.com\n    audience: api://b\n",
                "entry 2 (issuer `https://b.example.com`): `audience`: unknown field",
            ),
            (
                "issuers:\n  - audiences: [x]\n",
                "entry 1: `issuer`: is missing",
            ),
            ("issuer: https://a.example.com\n", "`issuer` unknown field"),
            ("issuers: []\n", "lists 0 entries"),
            (
                "issuers:\n  - issuer: https://a.example.com\n    scope_claim: scopes\n",
                "entry 1 (issuer `https://a.example.com`): `scope_claim`: must be one of scope, scp, both",
            ),
            (
                "issuers:\n  - issuer: https://a.example.com\n    algorithms: [HS256]\n",
                "`algorithms`",
            ),
            (
                "issuers:\n  - issuer: https://a.example.com\n    introspection: {client_id: rs, client_secret: x}\n",
                "`introspection.client_secret`: unknown field",
            ),
            (
                "issuers:\n  - issuer: https://a.example.com\n    introspection: {client_id: rs, client_secret_env: S, cache_secs: 9000}\n",
                "`introspection.cache_secs`: 9000 s is above",
            ),
            (
                "issuers:\n  - issuer: https://a.example.com\n  - issuer: https://a.example.com\n",
                "entry 2 (issuer `https://a.example.com`): `issuer`: configured twice (also",
            ),
            (
                "issuers:\n  - {issuer: https://a.example.com, introspection: {client_id: a, client_secret_env: S}}\n  - {issuer: https://b.example.com, introspection: {client_id: b, client_secret_env: S}}\n",
                "entry 2 (issuer `https://b.example.com`): `introspection`: configured for a second issuer",
            ),
            ("issuers:\n  - issuer: [1\n", "is not valid YAML"),
        ];
        for (i, (text, expected)) in cases.iter().enumerate() {
            let path = file("errors", &format!("case-{i}.yaml"), text);
            let err = plan_of(&["--issuers-file", path.to_str().unwrap()], &[("S", "v")])
                .expect_err(text);
            assert!(
                err.starts_with(&format!("--issuers-file `{}`", path.display())),
                "{err}"
            );
            assert!(
                err.contains(expected),
                "{text}\n→ {err}\nwanted: {expected}"
            );
        }
        // JSON by its extension; a JSON error is reported as JSON.
        let path = file(
            "errors",
            "issuers.json",
            r#"{"issuers": [{"issuer": "https://a.example.com", "jwks_uri": 5}]}"#,
        );
        let err = plan_of(&["--issuers-file", path.to_str().unwrap()], &[]).unwrap_err();
        assert!(
            err.contains("entry 1 (issuer `https://a.example.com`): `jwks_uri`: must be a string"),
            "{err}"
        );
        let path = file("errors", "broken.json", "{");
        let err = plan_of(&["--issuers-file", path.to_str().unwrap()], &[]).unwrap_err();
        assert!(err.contains("is not valid JSON"), "{err}");
        let missing =
            plan_of(&["--issuers-file", "/nonexistent/bmm/issuers.yaml"], &[]).unwrap_err();
        assert!(
            missing.contains("/nonexistent/bmm/issuers.yaml") && missing.contains("cannot be read"),
            "{missing}"
        );
    }

    #[test]
    fn issuers_file_with_two_issuers_is_planned_entry_by_entry() {
        let path = file(
            "two",
            "issuers.yaml",
            "issuers:\n  - issuer: https://login.example.com/tenant/v2.0\n    audiences: [\"api://app\"]\n    scope_claim: scp\n    algorithms: [RS256]\n    jwks_uri: https://login.example.com/keys\n  - issuer: https://as.example.com\n    introspection:\n      client_id: notes-rs\n      client_secret_env: NOTES_RS_SECRET\n      endpoint: https://as.example.com/introspect\n",
        );
        let plan = plan_of(
            &["--issuers-file", path.to_str().unwrap()],
            &[("NOTES_RS_SECRET", "s3cret-value")],
        )
        .unwrap();
        let [entra, bmm] = &plan.issuers[..] else {
            panic!("{plan:?}")
        };
        assert_eq!(entra.audiences, ["api://app"]);
        assert_eq!(entra.scope_claim, ScopeClaimArg::Scp);
        assert_eq!(entra.algorithms.as_deref(), Some(&[Algorithm::RS256][..]));
        assert_eq!(
            entra.jwks_uri.as_deref(),
            Some("https://login.example.com/keys")
        );
        assert!(entra.introspection.is_none());
        assert_eq!(bmm.scope_claim, ScopeClaimArg::Both);
        let i = bmm.introspection.as_ref().unwrap();
        assert_eq!(
            (i.client_id.as_str(), i.cache),
            ("notes-rs", Duration::from_secs(60))
        );
        // And the middleware takes it.
        let resource = bmm_middleware::Resource::parse("https://mcp.example.com/mcp").unwrap();
        let auth = configure(AuthConfig::new(resource), plan)
            .unwrap()
            .build()
            .unwrap();
        let issuers: Vec<&str> = auth.issuers().map(Issuer::as_str).collect();
        assert_eq!(
            issuers,
            [
                "https://login.example.com/tenant/v2.0",
                "https://as.example.com"
            ]
        );
    }

    #[test]
    fn introspection_secrets_are_never_printed() {
        let plan = plan_of(
            &[
                "--issuer",
                "https://a.example.com",
                "--introspection-client-id",
                "rs",
            ],
            &[("BMM_INTROSPECTION_CLIENT_SECRET", "s3cret-value")],
        )
        .unwrap();
        let shown = format!("{plan:?}");
        assert!(
            !shown.contains("s3cret-value") && shown.contains("<redacted>"),
            "{shown}"
        );
        let key = std::fs::read_to_string(format!("{FIXTURES}/rsa-a.pem")).unwrap();
        let credential = Credential::PrivateKey {
            pem: key.clone(),
            alg: Algorithm::RS256,
        };
        let shown = format!("{credential:?}");
        assert!(!shown.contains(key.lines().nth(1).unwrap()), "{shown}");
    }

    #[test]
    fn private_key_algorithm_is_read_from_the_key() {
        let read = |name: &str| std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
        assert_eq!(pem_algorithm(&read("rsa-a.pem")), Ok(Algorithm::RS256));
        assert_eq!(pem_algorithm(&read("ec-p256.pem")), Ok(Algorithm::ES256));
        assert!(
            pem_algorithm(&read("rsa-a.pub.pem"))
                .unwrap_err()
                .contains("not a private key")
        );
        assert!(pem_algorithm("hello").unwrap_err().contains("not a PEM"));
        let ed = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_algorithm(ed), Ok(Algorithm::EdDSA));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(pem_algorithm(encrypted).unwrap_err().contains("encrypted"));
    }
}
