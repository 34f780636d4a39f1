//! Security schemes: the credentials the upstream takes, the one bmm applies, and the
//! parameters that carry them (never tool inputs).
//!
//! - `apiKey` in a header or query and `http` bearer: a declared secret (`header`,
//!   `query`, `bearer`).
//! - `oauth2` with an `authorizationCode` flow: `user_oauth` (each user connects their own
//!   account; authorization and token URLs from the flow); else with a
//!   `clientCredentials` flow: `client_credentials` (the server's own token). The scopes
//!   asked for are the ones the imported operations' security requirements name for the
//!   scheme, else every scope the flow declares; a `client_credentials` tool whose
//!   requirement names fewer asks for just those (`upstream_scopes`). `implicit` and
//!   `password` flows are never used (OAuth 2.1 removes both), each with a report line.
//! - `openIdConnect`: `user_oauth` with the issuer its discovery URL names (the
//!   well-known suffix removed), only when no other scheme is usable.
//! - The client is this server's, registered at the upstream's authorization server: its
//!   id is `client_id` (the server name until edited) or `<NAME>_<SCHEME>_CLIENT_ID`, its
//!   secret the declared secret `<NAME>_<SCHEME>_CLIENT_SECRET`; endpoint URLs are https
//!   (plain http on loopback only), relative ones resolved against the server URL.
//! - Anything else (cookies, HTTP basic, mutual TLS) cannot be applied: a report line.

use std::collections::BTreeSet;

use serde_json::Value;

use super::naming::{clip, env_name, is_scope_token, one_line};
use super::operations::Location;
use super::output::ToolOut;
use super::{Importer, METHODS};

/// A credential the upstream takes, from `securitySchemes`.
#[derive(Debug, Clone)]
pub(super) struct Credential {
    pub(super) scheme: String,
    /// The declared secret: the credential itself, or an OAuth client's secret.
    pub(super) secret: String,
    /// `header`, `query`, `bearer`, `user_oauth`, `client_credentials`; `unsupported`
    /// (reported when chosen credentials are looked at) or `refused` (already reported).
    pub(super) kind: &'static str,
    pub(super) name: Option<String>,
    pub(super) description: String,
    /// The OAuth client, for `user_oauth` and `client_credentials`.
    pub(super) oauth: Option<OAuthClient>,
}

/// An OAuth scheme as bmm's upstream auth.
#[derive(Debug, Clone)]
pub(super) struct OAuthClient {
    /// From an `openIdConnect` scheme: used only when nothing else is.
    pub(super) open_id_connect: bool,
    pub(super) issuer: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) authorization_url: Option<String>,
    /// The flow's declared scopes (valid scope tokens only).
    pub(super) flow_scopes: Vec<String>,
    /// Environment variable prefix of the overrides (`<NAME>_<SCHEME>`).
    pub(super) env: String,
}

/// The `(location, lowercase name)` of every parameter that carries a credential: API
/// keys in a header or query (other schemes with a name count as cookies).
pub(super) fn credential_params(credentials: &[Credential]) -> BTreeSet<(Location, String)> {
    credentials
        .iter()
        .filter_map(|c| {
            let name = c.name.as_ref()?.to_ascii_lowercase();
            let location = match c.kind {
                "header" => Location::Header,
                "query" => Location::Query,
                _ => Location::Cookie,
            };
            Some((location, name))
        })
        .collect()
}

/// The issuer an OpenID Connect (or RFC 8414) discovery URL belongs to: the URL without
/// its well-known part (`https://as/tenant/.well-known/openid-configuration` and
/// `https://as/.well-known/oauth-authorization-server/tenant` are `https://as/tenant`).
fn issuer_of(discovery: &url::Url) -> Option<String> {
    if discovery.query().is_some() || discovery.fragment().is_some() {
        return None;
    }
    let path = discovery.path();
    let issuer_path = if let Some(prefix) = path.strip_suffix("/.well-known/openid-configuration") {
        prefix.to_owned()
    } else if let Some(rest) = path.strip_prefix("/.well-known/oauth-authorization-server") {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest.to_owned()
    } else {
        return None;
    };
    let mut issuer = discovery.clone();
    issuer.set_path(&issuer_path);
    // `Url` writes an empty path as `/`; an issuer identifier is written without it.
    let text = issuer.as_str().to_owned();
    Some(if issuer_path.is_empty() {
        text.trim_end_matches('/').to_owned()
    } else {
        text
    })
}

impl Importer<'_> {
    /// An endpoint URL of a security scheme, absolute (a relative one is resolved against
    /// the upstream base URL), https or loopback http, without credentials or a fragment;
    /// `Err` says why it cannot be used.
    fn endpoint(&self, raw: Option<&str>, base: &str, what: &str) -> Result<url::Url, String> {
        let raw = raw
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| format!("it has no {what}"))?;
        let url = url::Url::parse(raw)
            .or_else(|_| url::Url::parse(&format!("{base}/")).and_then(|b| b.join(raw)))
            .map_err(|e| {
                format!(
                    "its {what} `{}` is not a URL: {e}",
                    clip(raw, 120).escape_default()
                )
            })?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            return Err(format!(
                "its {what} `{}` is not https (tokens and client secrets cross it)",
                clip(url.as_str(), 120).escape_default()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(format!("its {what} carries credentials or a fragment"));
        }
        Ok(url)
    }

    /// The valid scope tokens of a flow's `scopes` map; the others are reported.
    fn flow_scopes(&mut self, scheme: &str, flow: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for scope in flow
            .get("scopes")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|s| s.keys())
        {
            if is_scope_token(scope) {
                out.push(scope.clone());
            } else {
                self.report.warn(format!(
                    "security scheme `{}`: scope `{}` is not an OAuth scope token; never asked for",
                    clip(scheme, 60).escape_default(),
                    clip(scope, 80).escape_default()
                ));
            }
        }
        out
    }

    /// An `oauth2` scheme: its authorization code flow (`user_oauth`), else its client
    /// credentials flow (`client_credentials`); `Err` says why neither can be used. The
    /// flows bmm never runs are reported.
    fn oauth2(
        &mut self,
        name: &str,
        scheme: &Value,
        base: &str,
        env: &str,
    ) -> Result<(&'static str, OAuthClient), String> {
        let flows = scheme.get("flows").and_then(Value::as_object);
        let shown = clip(name, 60).escape_default().to_string();
        // Flows OAuth 2.1 removes: named in a report line whichever way the scheme goes.
        let removed: Vec<String> = [
            ("implicit", "the implicit grant (tokens in browser URLs)"),
            (
                "password",
                "the resource owner password grant (the server would see users' passwords)",
            ),
        ]
        .iter()
        .filter(|(flow, _)| flows.is_some_and(|f| f.contains_key(*flow)))
        .map(|(flow, why)| format!("its `{flow}` flow is never used: OAuth 2.1 removes {why}"))
        .collect();
        let code = flows.and_then(|f| f.get("authorizationCode"));
        let client = flows.and_then(|f| f.get("clientCredentials"));
        let mut why_not = Vec::new();
        if let Some(flow) = code {
            let urls = self
                .endpoint(
                    flow.get("authorizationUrl").and_then(Value::as_str),
                    base,
                    "authorizationUrl",
                )
                .and_then(|a| {
                    self.endpoint(
                        flow.get("tokenUrl").and_then(Value::as_str),
                        base,
                        "tokenUrl",
                    )
                    .map(|t| (a, t))
                });
            match urls {
                Ok((authorization, token)) => {
                    if client.is_some() {
                        self.report.warn(format!(
                            "security scheme `{shown}` also offers the client credentials flow; the spec uses the authorization code flow (each user's own account): change the upstream to `type: client_credentials` (without `authorization_url`) to act as the server instead"
                        ));
                    }
                    self.report_removed(&shown, &removed);
                    let flow_scopes = self.flow_scopes(name, flow);
                    return Ok((
                        "user_oauth",
                        OAuthClient {
                            open_id_connect: false,
                            issuer: None,
                            token_url: Some(token.into()),
                            authorization_url: Some(authorization.into()),
                            flow_scopes,
                            env: env.to_owned(),
                        },
                    ));
                }
                Err(e) => why_not.push(format!("authorization code flow: {e}")),
            }
        }
        if let Some(flow) = client {
            match self.endpoint(
                flow.get("tokenUrl").and_then(Value::as_str),
                base,
                "tokenUrl",
            ) {
                Ok(token) => {
                    self.report_removed(&shown, &removed);
                    let flow_scopes = self.flow_scopes(name, flow);
                    return Ok((
                        "client_credentials",
                        OAuthClient {
                            open_id_connect: false,
                            issuer: None,
                            token_url: Some(token.into()),
                            authorization_url: None,
                            flow_scopes,
                            env: env.to_owned(),
                        },
                    ));
                }
                Err(e) => why_not.push(format!("client credentials flow: {e}")),
            }
        }
        if why_not.is_empty() {
            why_not.push(
                "it has no authorization code or client credentials flow (the flows bmm runs)"
                    .to_owned(),
            );
        }
        why_not.extend(removed);
        Err(why_not.join("; "))
    }

    fn report_removed(&mut self, scheme: &str, removed: &[String]) {
        for line in removed {
            self.report
                .warn(format!("security scheme `{scheme}`: {line}"));
        }
    }

    /// An `openIdConnect` scheme: `user_oauth` at the issuer its discovery URL names.
    fn open_id_connect(
        &self,
        scheme: &Value,
        base: &str,
        env: &str,
    ) -> Result<OAuthClient, String> {
        let url = self.endpoint(
            scheme.get("openIdConnectUrl").and_then(Value::as_str),
            base,
            "openIdConnectUrl",
        )?;
        let issuer = issuer_of(&url).ok_or_else(|| {
            format!(
                "its openIdConnectUrl `{}` does not end in /.well-known/openid-configuration, so its issuer is unknown",
                clip(url.as_str(), 120).escape_default()
            )
        })?;
        Ok(OAuthClient {
            open_id_connect: true,
            issuer: Some(issuer),
            token_url: None,
            authorization_url: None,
            flow_scopes: Vec::new(),
            env: env.to_owned(),
        })
    }

    /// Every declared security scheme, as the credential bmm would hold for it.
    pub(super) fn credentials(&mut self, env_prefix: &str, base_url: &str) -> Vec<Credential> {
        let Some(schemes) = self
            .doc
            .pointer("/components/securitySchemes")
            .and_then(Value::as_object)
            .cloned()
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, scheme) in &schemes {
            let scheme = match self.resolver.resolve(scheme, &mut Vec::new()) {
                Ok(s) => s,
                Err(e) => {
                    self.report.warn(format!(
                        "security scheme `{}`: {e}",
                        clip(name, 60).escape_default()
                    ));
                    continue;
                }
            };
            let kind = scheme.get("type").and_then(Value::as_str).unwrap_or("");
            let location = scheme.get("in").and_then(Value::as_str).unwrap_or("");
            let param = scheme
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let http_scheme = scheme
                .get("scheme")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            let env = format!("{env_prefix}_{}", env_name(name));
            let described = scheme
                .get("description")
                .and_then(Value::as_str)
                .map(|d| format!(" {}", clip(&one_line(d), 200)))
                .unwrap_or_default();
            let oauth = match kind {
                "oauth2" => Some(self.oauth2(name, &scheme, base_url, &env)),
                "openIdConnect" => Some(
                    self.open_id_connect(&scheme, base_url, &env)
                        .map(|c| ("user_oauth", c)),
                ),
                _ => None,
            };
            let credential = match oauth {
                Some(Ok((kind, client))) => {
                    let how = match (kind, client.open_id_connect) {
                        ("client_credentials", _) => "client credentials flow",
                        (_, true) => "OpenID Connect, authorization code flow",
                        _ => "authorization code flow",
                    };
                    let redirect = if kind == "user_oauth" {
                        " Register the redirect URI <MCP server origin>/connections/api/callback with the client."
                    } else {
                        ""
                    };
                    Credential {
                        scheme: name.clone(),
                        secret: format!("{env}_CLIENT_SECRET"),
                        kind,
                        name: None,
                        description: format!(
                            "Client secret of this server's OAuth client at the upstream's authorization server (security scheme `{name}`, {how}); the client id is the spec's `client_id` or {env}_CLIENT_ID.{redirect}{described}"
                        ),
                        oauth: Some(client),
                    }
                }
                Some(Err(why)) => {
                    self.report.warn(format!(
                        "security scheme `{}` ({kind}) is not used: {why}",
                        clip(name, 60).escape_default()
                    ));
                    Credential {
                        scheme: name.clone(),
                        secret: env,
                        kind: "refused",
                        name: param,
                        description: String::new(),
                        oauth: None,
                    }
                }
                None => {
                    let (kind, param) = match (kind, location) {
                        ("apiKey", "header") if param.is_some() => ("header", param),
                        ("apiKey", "query") if param.is_some() => ("query", param),
                        ("http", _) if http_scheme == "bearer" => ("bearer", None),
                        _ => ("unsupported", param),
                    };
                    Credential {
                        scheme: name.clone(),
                        secret: env,
                        kind,
                        name: param,
                        description: format!(
                            "Credential for the upstream API (security scheme `{name}`).{described}"
                        ),
                        oauth: None,
                    }
                }
            };
            out.push(credential);
        }
        out
    }

    /// The scheme the upstream uses: the first of the document's `security` that bmm can
    /// apply, else the first one used by an operation, else the first declared; an
    /// OpenID Connect scheme only when no other can be applied.
    pub(super) fn chosen_credential(&mut self, credentials: &[Credential]) -> Option<Credential> {
        let mut wanted: Vec<String> = Vec::new();
        let collect = |security: Option<&Value>, wanted: &mut Vec<String>| {
            for req in security.and_then(Value::as_array).into_iter().flatten() {
                if let Some(obj) = req.as_object() {
                    wanted.extend(obj.keys().cloned());
                }
            }
        };
        collect(self.doc.get("security"), &mut wanted);
        if let Some(paths) = self.doc.get("paths").and_then(Value::as_object) {
            for item in paths.values() {
                for m in METHODS {
                    collect(item.get(m).and_then(|op| op.get("security")), &mut wanted);
                }
            }
        }
        wanted.extend(credentials.iter().map(|c| c.scheme.clone()));
        let usable = |c: &Credential, oidc: bool| {
            !matches!(c.kind, "unsupported" | "refused")
                && c.oauth.as_ref().is_some_and(|o| o.open_id_connect) == oidc
        };
        let find = |oidc: bool| {
            wanted.iter().find_map(|w| {
                credentials
                    .iter()
                    .find(|c| &c.scheme == w && usable(c, oidc))
            })
        };
        let chosen = find(false).or_else(|| find(true))?;
        match chosen.kind {
            "bearer" => self.report.warn(format!(
                "security scheme `{}`: the upstream gets a fixed bearer token from the secret {} (bmm never forwards the MCP client's token)",
                chosen.scheme.escape_default(), chosen.secret
            )),
            "user_oauth" => self.report.warn(format!(
                "security scheme `{}`: each user connects their own account (`user_oauth`: the first call asks the user to sign in at the upstream in a browser; tokens are kept encrypted in the vault, BMM_VAULT_KEY); register this server as an OAuth client there with the redirect URI <MCP server origin>/connections/api/callback, then set the client id (`client_id` or {}_CLIENT_ID) and the secret {}",
                chosen.scheme.escape_default(),
                chosen.oauth.as_ref().map_or("", |o| o.env.as_str()),
                chosen.secret
            )),
            "client_credentials" => self.report.warn(format!(
                "security scheme `{}`: the server calls the upstream with its own token (`client_credentials`; every user acts as the server); register it as an OAuth client there, then set the client id (`client_id` or {}_CLIENT_ID) and the secret {}",
                chosen.scheme.escape_default(),
                chosen.oauth.as_ref().map_or("", |o| o.env.as_str()),
                chosen.secret
            )),
            _ => {}
        }
        for c in credentials.iter().filter(|c| c.kind == "unsupported") {
            self.report.warn(format!(
                "security scheme `{}` (cookie API key, HTTP basic, mutual TLS, ...) cannot be applied by bmm upstreams; operations that need only it will fail upstream",
                c.scheme.escape_default()
            ));
        }
        Some(chosen.clone())
    }

    /// The scopes an operation's security requirements name for `scheme` (the
    /// operation's `security`, else the document's), in order; `None` when no requirement
    /// names the scheme.
    pub(super) fn requirement_scopes(
        &mut self,
        key: &str,
        op: &Value,
        scheme: &str,
    ) -> Option<Vec<String>> {
        let security = op.get("security").or_else(|| self.doc.get("security"))?;
        let mut found = false;
        let mut scopes: Vec<String> = Vec::new();
        let mut bad = Vec::new();
        for req in security.as_array().into_iter().flatten() {
            let Some(named) = req.get(scheme) else {
                continue;
            };
            found = true;
            for s in named.as_array().into_iter().flatten() {
                match s.as_str() {
                    Some(s) if is_scope_token(s) => {
                        if !scopes.iter().any(|have| have == s) {
                            scopes.push(s.to_owned());
                        }
                    }
                    _ => bad.push(clip(&s.to_string(), 80)),
                }
            }
        }
        for b in bad {
            self.report.warn(format!(
                "{key}: security scope {} is not an OAuth scope token; never asked for",
                b.escape_default()
            ));
        }
        found.then_some(scopes)
    }
}

impl Importer<'_> {
    /// The scopes the chosen OAuth scheme's token is asked for: those the imported
    /// operations' requirements name (in order), else every scope the flow declares. A
    /// `client_credentials` tool whose requirement names a different set asks for its own
    /// (`upstream_scopes`); a `user_oauth` user consents once, to all of them.
    pub(super) fn oauth_scopes(
        &mut self,
        chosen: &Credential,
        tools: &mut [ToolOut],
    ) -> Vec<String> {
        let Some(client) = &chosen.oauth else {
            return Vec::new();
        };
        let mut scopes: Vec<String> = Vec::new();
        for tool in tools.iter() {
            for s in &tool.oauth_scopes {
                if !scopes.contains(s) {
                    scopes.push(s.clone());
                }
            }
        }
        let from = if scopes.is_empty() {
            scopes.clone_from(&client.flow_scopes);
            "every scope the flow declares: no imported operation's security requirement names any"
        } else {
            "the scopes the imported operations' security requirements name"
        };
        if !scopes.is_empty() {
            self.report.warn(format!(
                "security scheme `{}`: the upstream token is asked for `{}` ({from})",
                chosen.scheme.escape_default(),
                clip(&scopes.join(" "), 300).escape_default()
            ));
        }
        if chosen.kind == "client_credentials" {
            let all: BTreeSet<&String> = scopes.iter().collect();
            for tool in tools.iter_mut() {
                let own: BTreeSet<&String> = tool.oauth_scopes.iter().collect();
                if !own.is_empty() && own != all {
                    tool.run.http.upstream_scopes = tool.oauth_scopes.clone();
                }
            }
        }
        scopes
    }
}

#[cfg(test)]
mod tests {
    use super::issuer_of;

    #[test]
    fn discovery_urls_name_their_issuer() {
        let issuer = |u: &str| issuer_of(&url::Url::parse(u).unwrap());
        assert_eq!(
            issuer("https://as.example.com/.well-known/openid-configuration").as_deref(),
            Some("https://as.example.com")
        );
        assert_eq!(
            issuer("https://as.example.com/realms/x/.well-known/openid-configuration").as_deref(),
            Some("https://as.example.com/realms/x")
        );
        assert_eq!(
            issuer("https://as.example.com/.well-known/oauth-authorization-server/t1").as_deref(),
            Some("https://as.example.com/t1")
        );
        assert_eq!(issuer("https://as.example.com/openid").as_deref(), None);
        assert_eq!(
            issuer("https://as.example.com/.well-known/openid-configuration?x=1").as_deref(),
            None
        );
        assert_eq!(
            issuer("https://as.example.com/.well-known/oauth-authorization-serverx").as_deref(),
            None
        );
    }
}
