//! One upstream's OAuth client: its endpoints (given, or discovered once from the issuer),
//! its client id, and how it authenticates at the token endpoint.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Url;
use serde_json::Value;

use super::{Secret, TokenResponse, UpstreamAuthError};
use crate::def::{ClientAuthDef, OAuthDef, OAuthGrant};
use crate::secrets::Secrets;

/// Largest token or metadata response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Each token or metadata request, connection to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A failed discovery is answered from memory this long (no request per tool call to an
/// authorization server that is down).
const DISCOVERY_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Lifetime of a client assertion (RFC 7523).
const ASSERTION_LIFETIME_SECS: u64 = 60;
/// Longest access token accepted (it goes into a header).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// An error description is quoted up to this many characters.
const MAX_DESCRIPTION_CHARS: usize = 200;
/// Form fields whose values are credentials: redacted from anything the token endpoint
/// answers.
const SENSITIVE_FIELDS: &[&str] = &[
    "subject_token",
    "actor_token",
    "client_secret",
    "client_assertion",
    "code",
    "code_verifier",
    "refresh_token",
];

/// How the client authenticates at the token endpoint.
enum ClientAuth {
    None,
    Basic(Secret),
    Post(Secret),
    Jwt { key: EncodingKey, alg: Algorithm },
}

impl ClientAuth {
    fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Basic(_) => "client_secret_basic",
            Self::Post(_) => "client_secret_post",
            Self::Jwt { .. } => "private_key_jwt",
        }
    }
}

/// Endpoints found by discovery.
#[derive(Debug)]
struct Discovered {
    token: Url,
    authorization: Option<Url>,
    /// `authorization_response_iss_parameter_supported` (RFC 9207): every authorization
    /// response must then carry `iss`.
    iss_parameter: bool,
}

/// The definition behind [`OAuthClient::sign_in`]: a user authorization client whose
/// endpoints come from its issuer, with no resource or scopes of its own.
static SIGN_IN_DEF: OAuthDef = OAuthDef {
    grant: OAuthGrant::UserAuthorization,
    issuer: None,
    issuer_env: None,
    token_url: None,
    token_url_env: None,
    authorization_url: None,
    authorization_url_env: None,
    client_id: "",
    client_id_env: None,
    client_auth: ClientAuthDef::None,
    audience: None,
    resource: None,
    scopes: &[],
};

/// One upstream's OAuth client: endpoints (given or discovered once, lazily, from the
/// issuer: RFC 8414 `/.well-known/oauth-authorization-server[/path]`, then
/// `/.well-known/openid-configuration`), client id, client authentication.
pub(crate) struct OAuthClient {
    upstream: &'static str,
    def: &'static OAuthDef,
    client_id: String,
    auth: ClientAuth,
    /// The issuer identifier as configured (compared with the metadata's, used as the
    /// audience of client assertions).
    issuer: Option<String>,
    token_url: Option<Url>,
    authorization_url: Option<Url>,
    allow_http: bool,
    http: reqwest::Client,
    discovered: tokio::sync::OnceCell<Discovered>,
    discovery_failed: Mutex<Option<(Instant, UpstreamAuthError)>>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("upstream", &self.upstream)
            .field("grant", &self.def.grant)
            .field("client_id", &self.client_id)
            .field("client_auth", &self.auth.name())
            .field("issuer", &self.issuer)
            .field("token_url", &self.token_url.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

/// Whether `url`'s host is a loopback address or `localhost`.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        None => false,
    }
}

/// An endpoint URL: absolute, with a host, no fragment, and `https` unless plain `http`
/// is allowed (a `local` upstream) or the host is loopback.
fn check_url(text: &str, allow_http: bool) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not an absolute URL: {e}"))?;
    if url.host().is_none() {
        return Err(format!("`{text}` has no host"));
    }
    if url.fragment().is_some() {
        return Err(format!("`{text}` has a fragment (`#...`)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{}` carries credentials",
            url.host_str().unwrap_or("?")
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http || is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "`{text}` uses plain http: use https (http only for a loopback host or an upstream marked `local: true`)"
        )),
        other => Err(format!("`{text}` is not an http(s) URL (scheme `{other}`)")),
    }
}

/// The signing key of a PEM private key and the algorithm it signs with: RSA (RS256), EC
/// P-256 (ES256) or P-384 (ES384) in PKCS#8, or Ed25519 (EdDSA). A PEM whose line breaks
/// were written as `\n` (one line in an environment variable) is read too. The key is
/// tried once, so a key that cannot sign fails at start-up, not at the first call.
fn signing_key(pem: &str) -> Result<(EncodingKey, Algorithm), String> {
    let pem = if !pem.contains('\n') && pem.contains("\\n") {
        pem.replace("\\n", "\n")
    } else {
        pem.to_owned()
    };
    type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
    let candidates: [(Parse, Algorithm); 4] = [
        (EncodingKey::from_rsa_pem, Algorithm::RS256),
        (EncodingKey::from_ec_pem, Algorithm::ES256),
        (EncodingKey::from_ec_pem, Algorithm::ES384),
        (EncodingKey::from_ed_pem, Algorithm::EdDSA),
    ];
    for (parse, alg) in candidates {
        if let Ok(key) = parse(pem.as_bytes())
            && jsonwebtoken::encode(&Header::new(alg), &serde_json::json!({"probe": 1}), &key)
                .is_ok()
        {
            return Ok((key, alg));
        }
    }
    Err("is not a PEM private key this server can sign with (RSA, EC P-256 or P-384 in PKCS#8 `BEGIN PRIVATE KEY`, or Ed25519)".to_owned())
}

/// An issuer identifier: an endpoint URL without a query (RFC 8414).
fn check_issuer(issuer: &str, allow_http: bool) -> Result<Url, String> {
    let url = check_url(issuer, allow_http)?;
    if url.query().is_some() {
        return Err(format!("`{issuer}` has a query (RFC 8414)"));
    }
    Ok(url)
}

/// Whether two issuer identifiers name the same authorization server (a trailing `/`
/// aside, as discovery compares them).
fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A response body, read up to [`MAX_RESPONSE_BYTES`].
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err("the response is larger than 64 KiB".to_owned());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        if e.is_timeout() {
            "the response timed out"
        } else {
            "the response broke off"
        }
        .to_owned()
    })? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err("the response is larger than 64 KiB".to_owned());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An OAuth `error` code as RFC 6749 allows it (section 5.2), at most 64 characters.
fn error_code(value: Option<&Value>) -> Option<String> {
    let code = value?.as_str()?;
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E));
    ok.then(|| code.to_owned())
}

/// `expires_in` as a number of seconds (some servers send it as a string), at most a year.
fn expires_in(value: Option<&Value>) -> Option<u64> {
    let secs = match value? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some(secs.min(365 * 24 * 3600))
}

impl OAuthClient {
    /// The client of upstream `upstream_id`: environment overrides applied, URLs checked,
    /// the client's credential read from its declared secret. Errors name the upstream and
    /// the field (start-up refuses to run with them).
    pub(crate) fn new(
        upstream_id: &'static str,
        def: &'static OAuthDef,
        secrets: &Secrets,
        env: &impl Fn(&str) -> Option<String>,
        http: reqwest::Client,
        allow_http: bool,
    ) -> Result<Self, String> {
        let fail = |field: &str, why: String| format!("upstream `{upstream_id}`: `{field}` {why}");
        let value = |given: Option<&'static str>, var: Option<&'static str>| {
            var.and_then(env)
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.trim().to_owned())
                .or_else(|| given.map(str::to_owned))
        };
        let client_id = value(Some(def.client_id), def.client_id_env).unwrap_or_default();
        if client_id.is_empty() || client_id.chars().any(char::is_control) {
            return Err(fail(
                "client_id",
                "is empty or holds control characters".to_owned(),
            ));
        }
        let issuer = value(def.issuer, def.issuer_env);
        let token_url = value(def.token_url, def.token_url_env);
        let authorization_url = value(def.authorization_url, def.authorization_url_env);
        if let Some(issuer) = &issuer {
            check_issuer(issuer, allow_http).map_err(|e| fail("issuer", e))?;
        }
        let token_url = token_url
            .map(|t| check_url(&t, allow_http).map_err(|e| fail("token_url", e)))
            .transpose()?;
        let authorization_url = authorization_url
            .map(|t| check_url(&t, allow_http).map_err(|e| fail("authorization_url", e)))
            .transpose()?;
        if issuer.is_none() && token_url.is_none() {
            return Err(format!(
                "upstream `{upstream_id}`: give `issuer` (discovery) or `token_url`"
            ));
        }
        if def.grant == OAuthGrant::UserAuthorization
            && issuer.is_none()
            && authorization_url.is_none()
        {
            return Err(fail(
                "authorization_url",
                "is needed with `token_url` (or give `issuer` for discovery)".to_owned(),
            ));
        }
        if def.grant == OAuthGrant::TokenExchange
            && def.audience.is_none()
            && def.resource.is_none()
        {
            return Err(format!(
                "upstream `{upstream_id}`: token exchange needs `audience` or `resource` (the upstream the token is for)"
            ));
        }
        let secret = |field: &str, name: &'static str| {
            secrets.get(name).map(str::to_owned).ok_or_else(|| {
                fail(
                    field,
                    format!("names secret `{name}`, which is not set (declare it and set the environment variable)"),
                )
            })
        };
        let auth = match def.client_auth {
            ClientAuthDef::None if def.grant == OAuthGrant::UserAuthorization => ClientAuth::None,
            ClientAuthDef::None => {
                return Err(fail(
                    "client_auth",
                    "is `none`, which only a user_oauth upstream (a public client) may use"
                        .to_owned(),
                ));
            }
            ClientAuthDef::SecretBasic { secret: name } => {
                ClientAuth::Basic(Secret::new(&secret("client_secret", name)?))
            }
            ClientAuthDef::SecretPost { secret: name } => {
                ClientAuth::Post(Secret::new(&secret("client_secret", name)?))
            }
            ClientAuthDef::PrivateKeyJwt { key: name } => {
                let pem = secret("private_key", name)?;
                let (key, alg) = signing_key(&pem)
                    .map_err(|e| fail("private_key", format!("(secret `{name}`) {e}")))?;
                ClientAuth::Jwt { key, alg }
            }
        };
        Ok(Self {
            upstream: upstream_id,
            def,
            client_id,
            auth,
            issuer,
            token_url,
            authorization_url,
            allow_http,
            http,
            discovered: tokio::sync::OnceCell::new(),
            discovery_failed: Mutex::new(None),
        })
    }

    /// A client at `issuer` (endpoints discovered, RFC 8414 then OpenID Connect) that
    /// signs users in with the authorization code grant: `client_secret_basic` with
    /// `secret`, else a public client (PKCE alone). `label` names it in errors and logs.
    /// The connect pages' identity check uses one at each authorization server the MCP
    /// server trusts (crate::upstream_auth::connect, rule 2).
    pub(crate) fn sign_in(
        label: &'static str,
        issuer: &str,
        client_id: &str,
        secret: Option<&str>,
        http: reqwest::Client,
        allow_http: bool,
    ) -> Result<Self, String> {
        if client_id.is_empty() || client_id.chars().any(char::is_control) {
            return Err(format!(
                "{label}: the client id is empty or holds control characters"
            ));
        }
        check_issuer(issuer, allow_http).map_err(|e| format!("{label}: issuer {e}"))?;
        Ok(Self {
            upstream: label,
            def: &SIGN_IN_DEF,
            client_id: client_id.to_owned(),
            auth: secret.map_or(ClientAuth::None, |s| ClientAuth::Basic(Secret::new(s))),
            issuer: Some(issuer.to_owned()),
            token_url: None,
            authorization_url: None,
            allow_http,
            http,
            discovered: tokio::sync::OnceCell::new(),
            discovery_failed: Mutex::new(None),
        })
    }

    /// The issuer identifier, when one is configured (not with `token_url` alone).
    pub(crate) fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// Whether a caller's token from `caller_issuer` may be sent to this client's token
    /// endpoint for exchange: only to the authorization server that issued it. With an
    /// `issuer`, the identifiers must be the same; with `token_url` alone, the token
    /// endpoint must be on the caller issuer's origin (scheme, host and port). A server
    /// trusting several issuers never hands one issuer's token to another.
    pub(crate) fn may_receive_token_of(&self, caller_issuer: &str) -> bool {
        if let Some(issuer) = &self.issuer {
            return same_issuer(issuer, caller_issuer);
        }
        match (&self.token_url, Url::parse(caller_issuer)) {
            (Some(token_url), Ok(caller)) => token_url.origin() == caller.origin(),
            _ => false,
        }
    }

    /// RFC 9207: the `iss` parameter of an authorization response must name this client's
    /// issuer; when the issuer's metadata says it sends `iss`
    /// (`authorization_response_iss_parameter_supported`), a response without it is
    /// refused too. A client configured without an issuer cannot compare, and accepts.
    /// Returns why it was refused.
    pub(crate) async fn check_response_iss(&self, iss: Option<&str>) -> Result<(), &'static str> {
        let Some(issuer) = self.issuer() else {
            return Ok(());
        };
        match iss {
            Some(iss) if same_issuer(iss, issuer) => Ok(()),
            Some(_) => Err(
                "the answer came from another authorization server (its `iss` is not the one asked)",
            ),
            None => {
                let required = if self.authorization_url.is_none() {
                    self.discovered().await.is_ok_and(|d| d.iss_parameter)
                } else {
                    self.discovered.get().is_some_and(|d| d.iss_parameter)
                };
                if required {
                    Err("the answer lacks the `iss` its authorization server promises")
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The upstream this client is for.
    pub(crate) fn upstream(&self) -> &'static str {
        self.upstream
    }

    /// The upstream's OAuth definition.
    pub(crate) fn def(&self) -> &'static OAuthDef {
        self.def
    }

    /// The client id (environment override applied).
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The authorization endpoint: given, or discovered.
    pub(crate) async fn authorization_endpoint(&self) -> Result<Url, UpstreamAuthError> {
        if let Some(url) = &self.authorization_url {
            return Ok(url.clone());
        }
        self.discovered()
            .await?
            .authorization
            .clone()
            .ok_or_else(|| {
                UpstreamAuthError::Discovery(
                    "the authorization server's metadata names no authorization_endpoint"
                        .to_owned(),
                )
            })
    }

    /// The token endpoint: given, or discovered.
    pub(crate) async fn token_endpoint(&self) -> Result<Url, UpstreamAuthError> {
        if let Some(url) = &self.token_url {
            return Ok(url.clone());
        }
        Ok(self.discovered().await?.token.clone())
    }

    /// The endpoints from the issuer's metadata, fetched once (concurrent callers wait for
    /// the same fetch); a failure is answered from memory for a few seconds.
    async fn discovered(&self) -> Result<&Discovered, UpstreamAuthError> {
        if let Some(found) = self.discovered.get() {
            return Ok(found);
        }
        self.discovered
            .get_or_try_init(|| async {
                if let Ok(failed) = self.discovery_failed.lock()
                    && let Some((at, error)) = failed.as_ref()
                    && at.elapsed() < DISCOVERY_RETRY_AFTER
                {
                    return Err(error.clone());
                }
                let result = self.discover().await;
                if let Err(error) = &result
                    && let Ok(mut failed) = self.discovery_failed.lock()
                {
                    *failed = Some((Instant::now(), error.clone()));
                }
                result
            })
            .await
    }

    /// RFC 8414 metadata, then OpenID Connect discovery.
    async fn discover(&self) -> Result<Discovered, UpstreamAuthError> {
        let Some(issuer) = &self.issuer else {
            return Err(UpstreamAuthError::Discovery(
                "no issuer is configured".to_owned(),
            ));
        };
        let url = Url::parse(issuer)
            .map_err(|_| UpstreamAuthError::Discovery("the issuer is not a URL".to_owned()))?;
        let path = url.path().trim_end_matches('/');
        let mut rfc8414 = url.clone();
        rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
        let mut oidc = url.clone();
        oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
        let mut reasons = Vec::new();
        for candidate in [rfc8414, oidc] {
            match self.metadata(issuer, &candidate).await {
                Ok(found) => return Ok(found),
                Err(why) => reasons.push(format!("{candidate}: {why}")),
            }
        }
        Err(UpstreamAuthError::Discovery(reasons.join("; ")))
    }

    /// One metadata document, checked: its `issuer` is the configured one, its endpoints
    /// are URLs this client may use.
    async fn metadata(&self, issuer: &str, url: &Url) -> Result<Discovered, String> {
        let response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timed out"
                } else {
                    "could not be reached"
                }
                .to_owned()
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {}", status.as_u16()));
        }
        let body = read_bounded(response).await?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|_| "the metadata is not JSON".to_owned())?;
        let claimed = doc
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !same_issuer(claimed, issuer) {
            return Err(format!(
                "the metadata names another issuer (`{}`)",
                claimed
                    .chars()
                    .take(200)
                    .collect::<String>()
                    .escape_default()
            ));
        }
        let endpoint = |name: &str| -> Result<Option<Url>, String> {
            doc.get(name)
                .and_then(Value::as_str)
                .map(|text| check_url(text, self.allow_http).map_err(|e| format!("`{name}` {e}")))
                .transpose()
        };
        let token = endpoint("token_endpoint")?
            .ok_or_else(|| "the metadata names no token_endpoint".to_owned())?;
        let authorization = endpoint("authorization_endpoint")?;
        Ok(Discovered {
            token,
            authorization,
            iss_parameter: doc
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// An RFC 7523 client assertion for `endpoint`.
    fn assertion(
        &self,
        key: &EncodingKey,
        alg: Algorithm,
        endpoint: &Url,
    ) -> Result<String, UpstreamAuthError> {
        let now = now_secs();
        let jti = rand::random::<[u8; 16]>();
        let audience = self
            .issuer
            .clone()
            .unwrap_or_else(|| endpoint.as_str().to_owned());
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "jti": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        jsonwebtoken::encode(&Header::new(alg), &claims, key).map_err(|_| {
            UpstreamAuthError::Unavailable("the client assertion could not be signed".to_owned())
        })
    }

    /// POSTs `form` (grant_type and the grant's fields) to the token endpoint with the
    /// client's authentication added (basic / post / RFC 7523 assertion with aud = the
    /// issuer when known else the token endpoint, jti random, exp 60 s, iss = sub =
    /// client_id). Response bounded (64 KiB), timeout 10 s; `access_token` required;
    /// `token_type` must be Bearer (case-insensitive) or absent; OAuth error responses
    /// become [`UpstreamAuthError::Refused`] (description redacted and cut to 200 chars).
    pub(crate) async fn token_request(
        &self,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, UpstreamAuthError> {
        let endpoint = self.token_endpoint().await?;
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut request = self
            .http
            .post(endpoint.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(TIMEOUT);
        let mut sensitive: Vec<String> = form
            .iter()
            .filter(|(name, _)| SENSITIVE_FIELDS.contains(name))
            .map(|(_, value)| (*value).to_owned())
            .collect();
        match &self.auth {
            ClientAuth::None => {
                fields.push(("client_id", &self.client_id));
            }
            ClientAuth::Basic(secret) => {
                // RFC 6749 section 2.3.1: both form-urlencoded before Base64.
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", encode(&self.client_id), encode(secret.expose()));
                let mut value = reqwest::header::HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .map_err(|_| {
                    UpstreamAuthError::Unavailable(
                        "the client credentials are not a valid header value".to_owned(),
                    )
                })?;
                value.set_sensitive(true);
                request = request.header(reqwest::header::AUTHORIZATION, value);
                sensitive.push(secret.expose().to_owned());
            }
            ClientAuth::Post(secret) => {
                fields.push(("client_id", &self.client_id));
                fields.push(("client_secret", secret.expose()));
                sensitive.push(secret.expose().to_owned());
            }
            ClientAuth::Jwt { .. } => {}
        }
        let assertion = match &self.auth {
            ClientAuth::Jwt { key, alg } => Some(self.assertion(key, *alg, &endpoint)?),
            _ => None,
        };
        if let Some(assertion) = &assertion {
            fields.push(("client_id", &self.client_id));
            fields.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
            fields.push(("client_assertion", assertion));
            sensitive.push(assertion.clone());
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let response =
            request
                .body(body)
                .send()
                .await
                .map_err(|e| UpstreamAuthError::Unreachable {
                    timeout: e.is_timeout(),
                })?;
        let status = response.status();
        let bytes = read_bounded(response)
            .await
            .map_err(UpstreamAuthError::BadResponse)?;
        let doc: Option<Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let doc = doc.unwrap_or(Value::Null);
            let Some(error) = error_code(doc.get("error")) else {
                return Err(UpstreamAuthError::BadResponse(format!(
                    "the token endpoint answered {}",
                    status.as_u16()
                )));
            };
            let redactor = Secrets::default()
                .with_values(&sensitive.iter().map(String::as_str).collect::<Vec<_>>());
            let description = doc
                .get("error_description")
                .and_then(Value::as_str)
                .map(|d| {
                    let redacted = redactor.redact(d);
                    redacted
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(MAX_DESCRIPTION_CHARS)
                        .collect::<String>()
                })
                .filter(|d| !d.is_empty());
            return Err(UpstreamAuthError::Refused { error, description });
        }
        let Some(doc) = doc.filter(Value::is_object) else {
            return Err(UpstreamAuthError::BadResponse(
                "the token response is not a JSON object".to_owned(),
            ));
        };
        let text = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_owned);
        let access_token = text("access_token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                UpstreamAuthError::BadResponse("the token response has no access_token".to_owned())
            })?;
        if access_token.len() > MAX_TOKEN_BYTES
            || !access_token.bytes().all(|b| (0x21..=0x7E).contains(&b))
        {
            return Err(UpstreamAuthError::BadResponse(
                "the access_token is not a usable bearer token (visible ASCII, at most 16 KiB)"
                    .to_owned(),
            ));
        }
        if let Some(kind) = text("token_type")
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(UpstreamAuthError::BadResponse(format!(
                "the token_type is `{}`, not Bearer",
                kind.chars().take(32).collect::<String>().escape_default()
            )));
        }
        Ok(TokenResponse {
            access_token: Secret::new(&access_token),
            refresh_token: text("refresh_token")
                .filter(|t| !t.is_empty())
                .map(|t| Secret::new(&t)),
            expires_in: expires_in(doc.get("expires_in")),
            scope: text("scope"),
            issued_token_type: text("issued_token_type"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_https_unless_loopback_or_local() {
        assert!(check_url("https://as.example/token", false).is_ok());
        assert!(check_url("http://127.0.0.1:9/token", false).is_ok());
        assert!(check_url("http://[::1]:9/token", false).is_ok());
        assert!(check_url("http://localhost:9/token", false).is_ok());
        let err = check_url("http://as.example/token", false).unwrap_err();
        assert!(err.contains("local: true"), "{err}");
        assert!(check_url("http://as.example/token", true).is_ok());
        assert!(check_url("ftp://as.example/token", true).is_err());
        assert!(check_url("/token", true).is_err());
        assert!(check_url("https://as.example/token#x", true).is_err());
        let err = check_url("https://user:pw@as.example/token", true).unwrap_err();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn oauth_error_codes_and_expiry_are_read_strictly() {
        assert_eq!(
            error_code(Some(&serde_json::json!("invalid_grant"))).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(error_code(Some(&serde_json::json!("bad\"quote"))), None);
        assert_eq!(error_code(Some(&serde_json::json!("x".repeat(65)))), None);
        assert_eq!(error_code(Some(&serde_json::json!(5))), None);
        assert_eq!(expires_in(Some(&serde_json::json!(3600))), Some(3600));
        assert_eq!(expires_in(Some(&serde_json::json!("60"))), Some(60));
        assert_eq!(expires_in(Some(&serde_json::json!(-5))), None);
        assert_eq!(
            expires_in(Some(&serde_json::json!(u64::MAX))),
            Some(365 * 24 * 3600)
        );
    }

    #[test]
    fn a_pem_key_that_cannot_sign_is_refused() {
        let err = signing_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .err()
            .unwrap();
        assert!(err.contains("PEM private key"), "{err}");
        assert!(signing_key("not a key").is_err());
    }
}
