//! Rule 12: an upstream's `auth:`. The secret types (`bearer`, `header`, `query`) name a
//! declared secret; the OAuth types (`token_exchange`, `client_credentials`,
//! `user_oauth`) describe the server's OAuth client at the upstream's authorization server:
//!
//! - each type takes only its own keys (`name`/`secret` are the secret types', the client
//!   keys the OAuth types', `authorization_url` is `user_oauth`'s, `audience` is not);
//! - exactly one of `issuer` (discovery) and `token_url`; `user_oauth` with `token_url`
//!   also needs `authorization_url`; each `*_env` override needs the value it overrides
//!   and is an environment variable name;
//! - `client_id` is given; `client_secret` and `private_key` name declared secrets, at
//!   most one of them; `client_auth` defaults to `client_secret_basic` with
//!   `client_secret`, `private_key_jwt` with `private_key`, and is `none` (a public
//!   client, neither secret given) only for `user_oauth`;
//! - `token_exchange` needs `audience` or `resource`;
//! - endpoint URLs are absolute `https` URLs (plain `http` only with `local: true` or a
//!   loopback host) without credentials or a fragment (an issuer has no query either);
//!   `resource` is an absolute URI without a fragment; scopes are scope tokens.

use serde_saphyr::{Location, Spanned};

use super::super::diagnostic::Diagnostic;
use super::super::model::{ClientAuth, Spec, Upstream, UpstreamAuth, UpstreamAuthKind};
use super::{Checker, is_env_name};

/// The OAuth keys, for the secret types' "does not belong here" errors.
fn oauth_fields(a: &UpstreamAuth) -> [(&'static str, Option<&Spanned<String>>); 12] {
    [
        ("issuer", a.issuer.as_ref()),
        ("issuer_env", a.issuer_env.as_ref()),
        ("token_url", a.token_url.as_ref()),
        ("token_url_env", a.token_url_env.as_ref()),
        ("authorization_url", a.authorization_url.as_ref()),
        ("authorization_url_env", a.authorization_url_env.as_ref()),
        ("client_id", a.client_id.as_ref()),
        ("client_id_env", a.client_id_env.as_ref()),
        ("client_secret", a.client_secret.as_ref()),
        ("private_key", a.private_key.as_ref()),
        ("audience", a.audience.as_ref()),
        ("resource", a.resource.as_ref()),
    ]
}

/// Whether a URL's host is the loopback interface (plain `http` is fine there).
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl Checker<'_> {
    fn error_at(&mut self, at: Location, message: impl Into<String>, help: impl Into<String>) {
        self.out
            .push(Diagnostic::error(self.file, at, message).help(help));
    }

    pub(super) fn upstream_auth(&mut self, spec: &Spec, id: &str, upstream: &Spanned<Upstream>) {
        let Some(auth) = &upstream.value.auth else {
            return;
        };
        let kind = auth.kind.value;
        if kind.is_oauth() {
            self.oauth_auth(spec, id, &upstream.value, auth);
            return;
        }
        let t = kind.as_str();
        match &auth.secret {
            None => self.error(
                &auth.kind,
                format!("upstream `{id}`: `{t}` auth needs `secret:`"),
                "name the declared secret that holds the credential: `secret: MY_API_KEY`",
            ),
            Some(secret) if !spec.secrets.contains_key(&secret.value) => self.error(
                secret,
                format!(
                    "upstream `{id}` uses secret `{}`, which is not declared",
                    secret.value
                ),
                "declare it under `secrets:` with a description",
            ),
            Some(_) => {}
        }
        match (kind, &auth.name) {
            (UpstreamAuthKind::Header | UpstreamAuthKind::Query, None) => self.error(
                upstream,
                format!("upstream `{id}`: auth of this type needs `name:` (the header or query parameter)"),
                "add `name: X-Api-Key` (for example)",
            ),
            (UpstreamAuthKind::Bearer, Some(name)) => {
                self.warning(name, "`name` is ignored for bearer auth", "remove it");
            }
            _ => {}
        }
        for (field, value) in oauth_fields(auth) {
            if let Some(value) = value {
                self.error(
                    value,
                    format!("upstream `{id}`: `{field}` does not belong to `{t}` auth"),
                    "OAuth client keys belong to `type: token_exchange`, `client_credentials` or `user_oauth`; remove it, or change the type",
                );
            }
        }
        if let Some(c) = &auth.client_auth {
            self.error(
                c,
                format!("upstream `{id}`: `client_auth` does not belong to `{t}` auth"),
                "OAuth client keys belong to `type: token_exchange`, `client_credentials` or `user_oauth`; remove it, or change the type",
            );
        }
        if auth.scopes.is_some() {
            let at = auth
                .scopes
                .iter()
                .flatten()
                .next()
                .map_or(auth.kind.referenced, |s| s.referenced);
            self.error_at(
                at,
                format!("upstream `{id}`: `scopes` does not belong to `{t}` auth"),
                "scopes are asked for by the OAuth types; a secret carries whatever access it was issued with",
            );
        }
    }

    fn oauth_auth(&mut self, spec: &Spec, id: &str, upstream: &Upstream, a: &UpstreamAuth) {
        let kind = a.kind.value;
        let t = kind.as_str();
        let user = kind == UpstreamAuthKind::UserOauth;
        for (field, value) in [("name", &a.name), ("secret", &a.secret)] {
            if let Some(value) = value {
                self.error(
                    value,
                    format!("upstream `{id}`: `{field}` does not belong to `{t}` auth"),
                    "the client's own secret goes in `client_secret:` (or a key in `private_key:`), naming a declared secret; `name` and `secret` are for bearer, header and query auth",
                );
            }
        }
        if !user {
            for (field, value) in [
                ("authorization_url", &a.authorization_url),
                ("authorization_url_env", &a.authorization_url_env),
            ] {
                if let Some(value) = value {
                    self.error(
                        value,
                        format!("upstream `{id}`: `{field}` does not belong to `{t}` auth"),
                        "only `user_oauth` sends a user's browser to the authorization endpoint; remove it",
                    );
                }
            }
        } else if let Some(audience) = &a.audience {
            self.error(
                audience,
                format!("upstream `{id}`: `audience` does not belong to `user_oauth` auth"),
                "name the upstream with `resource:` (RFC 8707), which the authorization request carries",
            );
        }
        // Where the tokens come from.
        match (&a.issuer, &a.token_url) {
            (Some(_), Some(token_url)) => self.error(
                token_url,
                format!("upstream `{id}` gives both `issuer` and `token_url`"),
                "keep `issuer` (the endpoints are discovered from its metadata) or `token_url`, not both",
            ),
            (None, None) => self.error(
                &a.kind,
                format!("upstream `{id}`: `{t}` auth needs `issuer:` or `token_url:`"),
                "give the authorization server's issuer (its endpoints are discovered, RFC 8414 then OpenID Connect) or its token endpoint",
            ),
            _ => {}
        }
        if user {
            match (&a.issuer, &a.token_url, &a.authorization_url) {
                (None, Some(token_url), None) => self.error(
                    token_url,
                    format!("upstream `{id}`: `user_oauth` with `token_url` also needs `authorization_url`"),
                    "add the authorization endpoint the user's browser is sent to, or give `issuer` instead to discover both",
                ),
                (Some(_), None, Some(authorization_url)) => self.error(
                    authorization_url,
                    format!("upstream `{id}` gives both `issuer` and `authorization_url`"),
                    "with `issuer` the endpoints are discovered: remove `authorization_url`, or replace `issuer` by `token_url`",
                ),
                _ => {}
            }
        }
        for (env_field, env, base_field, base) in [
            ("issuer_env", &a.issuer_env, "issuer", &a.issuer),
            ("token_url_env", &a.token_url_env, "token_url", &a.token_url),
            (
                "authorization_url_env",
                &a.authorization_url_env,
                "authorization_url",
                &a.authorization_url,
            ),
            ("client_id_env", &a.client_id_env, "client_id", &a.client_id),
        ] {
            let Some(env) = env else { continue };
            if !is_env_name(&env.value) {
                self.error(
                    env,
                    format!(
                        "`{}` is not an environment variable name",
                        env.value.escape_default()
                    ),
                    "use uppercase letters, digits and `_`, starting with a letter",
                );
            }
            if base.is_none() {
                self.error(
                    env,
                    format!("upstream `{id}`: `{env_field}` overrides `{base_field}`, which is not given"),
                    format!("give `{base_field}:` too: the value used when the variable is not set"),
                );
            }
        }
        for (field, value, is_issuer) in [
            ("issuer", &a.issuer, true),
            ("token_url", &a.token_url, false),
            ("authorization_url", &a.authorization_url, false),
        ] {
            if let Some(value) = value {
                self.endpoint_url(id, field, value, upstream.local, is_issuer);
            }
        }
        // The client.
        match &a.client_id {
            None => self.error(
                &a.kind,
                format!("upstream `{id}`: `{t}` auth needs `client_id:`"),
                "register this server as a client at the authorization server and give its client id",
            ),
            Some(c) if c.value.is_empty() || c.value.len() > 255 || !c.value.bytes().all(|b| (0x20..0x7f).contains(&b)) => self.error(
                c,
                format!("upstream `{id}`: `client_id` must be 1 to 255 printable ASCII characters"),
                "copy the client id the authorization server issued",
            ),
            Some(_) => {}
        }
        for value in [&a.client_secret, &a.private_key].into_iter().flatten() {
            if !spec.secrets.contains_key(&value.value) {
                self.error(
                    value,
                    format!(
                        "upstream `{id}` uses secret `{}`, which is not declared",
                        value.value.escape_default()
                    ),
                    "declare it under `secrets:` with a description (the server reads it from that environment variable)",
                );
            }
        }
        self.client_auth(id, a);
        // What is asked for.
        if kind == UpstreamAuthKind::TokenExchange && a.audience.is_none() && a.resource.is_none() {
            self.error(
                &a.kind,
                format!("upstream `{id}`: `token_exchange` auth needs `audience:` or `resource:`"),
                "name the upstream the exchanged token is for: `audience:` as its authorization server knows it, or `resource:` (its URI, RFC 8707)",
            );
        }
        if let Some(audience) = &a.audience
            && (audience.value.trim().is_empty() || audience.value.chars().any(char::is_control))
        {
            self.error(
                audience,
                format!("upstream `{id}`: `audience` is empty or holds control characters"),
                "write the upstream's name at its authorization server, like `https://api.example.com`",
            );
        }
        if let Some(resource) = &a.resource {
            match url::Url::parse(&resource.value) {
                Err(e) => self.error(
                    resource,
                    format!("upstream `{id}`: `resource` is not an absolute URI: {e}"),
                    "RFC 8707 resources are absolute URIs, like `https://api.example.com/`",
                ),
                Ok(u) if u.fragment().is_some() => self.error(
                    resource,
                    format!("upstream `{id}`: `resource` has a fragment"),
                    "RFC 8707 resources carry no fragment; remove the `#...`",
                ),
                Ok(_) => {}
            }
        }
        for scope in a.scopes.iter().flatten() {
            self.scope_token(scope);
        }
    }

    /// `client_auth`, given or defaulted, against the keys given.
    fn client_auth(&mut self, id: &str, a: &UpstreamAuth) {
        let user = a.kind.value == UpstreamAuthKind::UserOauth;
        let t = a.kind.value.as_str();
        match (&a.client_secret, &a.private_key) {
            (Some(_), Some(key)) => {
                self.error(
                    key,
                    format!("upstream `{id}` gives both `client_secret` and `private_key`"),
                    "keep one: a client secret (client_secret_basic/post) or a private key (private_key_jwt)",
                );
                return;
            }
            (None, None) if a.client_auth.is_none() && !user => {
                self.error(
                    &a.kind,
                    format!("upstream `{id}`: `{t}` auth needs `client_secret:` or `private_key:`"),
                    "the server authenticates as a confidential client: name the declared secret holding its client secret or its PEM private key",
                );
                return;
            }
            _ => {}
        }
        let Some(method) = &a.client_auth else {
            return;
        };
        let name = match method.value {
            ClientAuth::ClientSecretBasic => "client_secret_basic",
            ClientAuth::ClientSecretPost => "client_secret_post",
            ClientAuth::PrivateKeyJwt => "private_key_jwt",
            ClientAuth::Public => "none",
        };
        match method.value {
            ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost => {
                if a.client_secret.is_none() {
                    self.error(
                        method,
                        format!("upstream `{id}`: `client_auth: {name}` needs `client_secret:`"),
                        "name the declared secret holding the client secret, or use `private_key_jwt` with `private_key:`",
                    );
                }
            }
            ClientAuth::PrivateKeyJwt => {
                if a.private_key.is_none() {
                    self.error(
                        method,
                        format!("upstream `{id}`: `client_auth: private_key_jwt` needs `private_key:`"),
                        "name the declared secret holding the PEM private key the assertion is signed with",
                    );
                }
            }
            ClientAuth::Public => {
                if !user {
                    self.error(
                        method,
                        format!("upstream `{id}`: `client_auth: none` is not possible with `{t}` auth"),
                        "only `user_oauth` may be a public client (PKCE protects its code); give `client_secret:` or `private_key:`",
                    );
                } else if let Some(value) = a.client_secret.as_ref().or(a.private_key.as_ref()) {
                    self.error(
                        value,
                        format!("upstream `{id}`: a public client (`client_auth: none`) has no secret or key"),
                        "remove `client_secret`/`private_key`, or remove `client_auth: none`",
                    );
                }
            }
        }
    }

    /// An authorization server endpoint or issuer: absolute, https (http on loopback or a
    /// `local: true` upstream), no credentials or fragment; an issuer has no query.
    fn endpoint_url(
        &mut self,
        id: &str,
        field: &str,
        value: &Spanned<String>,
        local: bool,
        issuer: bool,
    ) {
        let url = match url::Url::parse(&value.value) {
            Ok(url) => url,
            Err(e) => {
                self.error(
                    value,
                    format!("upstream `{id}`: `{field}` is not an absolute URL: {e}"),
                    "write an absolute URL like `https://as.example.com/token`",
                );
                return;
            }
        };
        let http_allowed = url.scheme() == "http" && (local || is_loopback(&url));
        if url.scheme() != "https" && !http_allowed {
            self.error(
                value,
                format!(
                    "upstream `{id}`: `{field}` uses `{}`; only https is allowed",
                    url.scheme()
                ),
                "use https (client credentials and tokens cross this connection), or add `local: true` for a local development upstream",
            );
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.fragment().is_some()
            || (issuer && url.query().is_some())
        {
            self.error(
                value,
                format!(
                    "upstream `{id}`: `{field}` carries credentials, a fragment{}",
                    if issuer { " or a query" } else { "" }
                ),
                "client credentials belong in declared secrets (`client_secret:`); an issuer identifier is a plain https URL (RFC 8414)",
            );
        }
    }
}
