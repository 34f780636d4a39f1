//! Token exchange (RFC 8693) at `/token`: a resource server trades the access token its
//! caller presented (the subject token) for a token of another resource, to call that
//! resource on the caller's behalf without passing the caller's token on.
//!
//! Rules:
//! 1. The caller authenticates as a `[[resource_servers]]` entry exactly as at
//!    `/introspect` (`client_secret_basic` or `private_key_jwt`, see `introspect`): no
//!    credentials, a wrong secret, `client_secret_post` or a `[[clients]]` client is 401
//!    `invalid_client`. The entry needs a `token_exchange` policy (`config` rule 5):
//!    without one, 400 `unauthorized_client`. Rate limits (429 `slow_down`) as at
//!    `/introspect`: failed authentications count against the caller's address in the
//!    token endpoint's bucket; an authenticated resource server shares its own bucket
//!    ([`crate::ratelimit::INTROSPECTIONS_PER_RESOURCE_SERVER`] a minute) with its
//!    introspections, so a busy server exchanging for many users is not held to one
//!    address's 600 a minute.
//! 2. `subject_token_type` must be [`ACCESS_TOKEN_TYPE`], `requested_token_type` absent or
//!    the same, `subject_token` given; `actor_token` is not supported (the `act` claim
//!    names the authenticated resource server). Otherwise 400 `invalid_request`.
//! 3. The subject token must be a live access token this server issued for the caller's
//!    own resource: a JWT verified with the published keys (RS256, `typ` `at+jwt`, a known
//!    `kid`), `iss` this issuer, `nbf` passed, `exp` not, `aud` the caller's `resource`; or
//!    an opaque `bmo_` token found in the store, unrevoked and unexpired, of the caller's
//!    resource. Its grant (`sid`, the refresh family) must not be revoked. Anything else
//!    (another issuer's or key's token, a refresh token, garbage, more than
//!    [`crate::introspect::MAX_TOKEN_BYTES`]) is 400 `invalid_grant`; a token of another
//!    resource is logged as a warning too (a confused or compromised resource server).
//! 4. `audience` and/or `resource` name the target (both: the same resource once
//!    canonical). It must be a configured resource and one of the policy's `audiences`:
//!    400 `invalid_target` otherwise; neither given is `invalid_request`.
//! 5. `scope` may only narrow: each requested scope must be the subject token's and, when
//!    the policy lists `scopes`, one of them (400 `invalid_scope`). Without `scope`, the
//!    subject token's scopes narrowed to the policy's.
//! 6. The result is a JWT access token shaped like bmm-as's others (rule 9 of `token`):
//!    `aud` the target, `sub` and `client_id` the subject token's, `scope` as rule 5,
//!    `act: {"sub": <resource server client_id>}` (the subject's own `act` nested in it),
//!    `sid` the subject's grant when it has one (revoking the grant makes the exchanged
//!    token introspect inactive), `exp` = min(subject `exp`, now + access-token lifetime),
//!    `cnf.jkt` when the request carries a DPoP proof (`token_type` `DPoP`). The response
//!    holds `access_token`, `issued_token_type` ([`ACCESS_TOKEN_TYPE`]), `token_type`,
//!    `expires_in` and `scope`; never a refresh token.
//! 7. Every exchange and every refusal (failed authentications included) is audited as a
//!    `token_exchange` event: the resource server, the user, the target, the scopes and the
//!    outcome, never a token.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::config::{ResourceServer, TokenExchangePolicy};
use crate::error::OAuthError;
use crate::introspect::{MAX_TOKEN_BYTES, audience_has};
use crate::ratelimit::Bucket;
use crate::token::{Exchanged, Issue, OPAQUE_PREFIX, token_response};
use crate::{AppState, now, sha256_hex};
use bmm_core::canonical_resource;

/// The grant type (RFC 8693 section 2.1).
pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The only token type exchanged and issued (RFC 8693 section 3).
pub(crate) const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// What an exchanged token is made from: the subject token's claims (rule 3).
struct Subject {
    subject: String,
    client_id: String,
    scope: String,
    expires_at: u64,
    family: Option<String>,
    act: Option<Value>,
}

/// What an exchange issued, for the audit trail.
struct Done {
    subject: String,
    target: String,
    scope: String,
    client_id: String,
}

/// `POST /token` with `grant_type` [`GRANT_TYPE`]; `jkt` is the thumbprint of the
/// request's verified DPoP proof, if any.
pub(crate) async fn exchange(
    state: &AppState,
    caller: IpAddr,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let rs = match crate::introspect::authenticate(state, caller, headers, params).await {
        Ok(rs) => rs,
        Err(_) if !state.inner.limiter.allow(caller, Bucket::Token) => {
            tracing::info!("token exchange refused: too many failed authentications");
            return Err(OAuthError::rate_limited());
        }
        Err((error, named)) => {
            tracing::info!(
                error = error.code(),
                "token exchange refused: authentication"
            );
            let mut event = crate::audit::event("token_exchange")
                .address(caller)
                .outcome(error.code())
                .detail(error.description());
            if let Some(id) = named {
                event = event.client(&id);
            }
            crate::audit::record(state, event).await;
            return Err(error);
        }
    };
    if !state.inner.limiter.allow_resource_server(&rs.client_id) {
        tracing::warn!(client_id = %rs.client_id, "a resource server is over its rate limit");
        return Err(OAuthError::rate_limited());
    }
    // The proof (when any) is checked once the caller is known (`token` rule 8).
    let jkt = crate::dpop::check_token_request(state, headers).await?;
    match issue(state, &rs, params, jkt.as_deref()).await {
        Ok((response, done)) => {
            tracing::info!(client_id = %rs.client_id, resource = %done.target, "token exchanged");
            let event = crate::audit::event("token_exchange")
                .client(&rs.client_id)
                .subject(&done.subject)
                .resource(&done.target)
                .scope(&done.scope)
                .address(caller)
                .detail(&format!(
                    "a token of client `{}` for {} exchanged",
                    done.client_id, rs.resource
                ));
            crate::audit::record(state, event).await;
            Ok(response)
        }
        Err(error) => {
            let event = crate::audit::event("token_exchange")
                .client(&rs.client_id)
                .address(caller)
                .outcome(error.code())
                .detail(error.description());
            crate::audit::record(state, event).await;
            Err(error)
        }
    }
}

/// Rules 1 to 6 once the resource server is authenticated.
async fn issue(
    state: &AppState,
    rs: &ResourceServer,
    params: &HashMap<String, String>,
    jkt: Option<&str>,
) -> Result<(Response, Done), OAuthError> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(policy) = &rs.token_exchange else {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "this resource server may not exchange tokens (it has no token_exchange policy in the config)",
        ));
    };
    if get("subject_token_type") != Some(ACCESS_TOKEN_TYPE) {
        return Err(OAuthError::invalid_request(format!(
            "subject_token_type must be {ACCESS_TOKEN_TYPE}"
        )));
    }
    if get("requested_token_type").is_some_and(|t| t != ACCESS_TOKEN_TYPE) {
        return Err(OAuthError::invalid_request(format!(
            "requested_token_type must be {ACCESS_TOKEN_TYPE} (or left out)"
        )));
    }
    if params.contains_key("actor_token") || params.contains_key("actor_token_type") {
        return Err(OAuthError::invalid_request(
            "actor_token is not supported: the issued token's `act` names the authenticated resource server",
        ));
    }
    let token = get("subject_token")
        .ok_or_else(|| OAuthError::invalid_request("subject_token is required"))?;
    let target = target(state, policy, get("audience"), get("resource"))?;
    let subject = subject(state, rs, token).await?;
    let scope = narrowed(&subject.scope, policy, get("scope"))?;
    let mut act = json!({ "sub": rs.client_id });
    if let Some(inner) = subject.act {
        act["act"] = inner;
    }
    let response = token_response(
        state,
        Issue {
            client_id: &subject.client_id,
            subject: &subject.subject,
            scope: &scope,
            resource: &target,
            refresh_token: None,
            family: subject.family.as_deref(),
            jkt,
            exchanged: Some(Exchanged {
                act: &act,
                not_after: subject.expires_at,
            }),
        },
    )
    .await?;
    Ok((
        response,
        Done {
            subject: subject.subject,
            target,
            scope,
            client_id: subject.client_id,
        },
    ))
}

/// Rule 4: the canonical target resource.
fn target(
    state: &AppState,
    policy: &TokenExchangePolicy,
    audience: Option<&str>,
    resource: Option<&str>,
) -> Result<String, OAuthError> {
    let mut target: Option<String> = None;
    for (name, value) in [("audience", audience), ("resource", resource)] {
        let Some(value) = value else { continue };
        let canonical = canonical_resource(value)
            .ok()
            .filter(|r| state.inner.settings.resources.contains(r))
            .ok_or_else(|| {
                OAuthError::invalid_target(format!(
                    "the {name} is not a resource this authorization server issues tokens for"
                ))
            })?;
        match &target {
            Some(other) if *other != canonical => {
                return Err(OAuthError::invalid_target(
                    "audience and resource name different resources; an exchanged token has one audience",
                ));
            }
            _ => target = Some(canonical),
        }
    }
    let target = target.ok_or_else(|| {
        OAuthError::invalid_request(
            "audience or resource is required: the resource the new token is for",
        )
    })?;
    if !policy.audiences.contains(&target) {
        return Err(OAuthError::invalid_target(format!(
            "this resource server may not exchange tokens for `{target}` (not in its token_exchange.audiences)"
        )));
    }
    Ok(target)
}

/// Rule 3: the live subject token of `rs`'s resource, or `invalid_grant`.
async fn subject(
    state: &AppState,
    rs: &ResourceServer,
    token: &str,
) -> Result<Subject, OAuthError> {
    let refused = |why: &str| OAuthError::invalid_grant(why.to_owned());
    if token.len() > MAX_TOKEN_BYTES {
        return Err(refused(
            "the subject token is not an access token this server issued",
        ));
    }
    let t = now();
    let other_resource = || {
        tracing::warn!(client_id = %rs.client_id, "a resource server tried to exchange a token of another resource");
        refused("the subject token was not issued for this resource server's resource")
    };
    let found = if token.starts_with(OPAQUE_PREFIX) {
        let record = state
            .store()
            .opaque(&sha256_hex(token), t)
            .await?
            .ok_or_else(|| refused("the subject token is unknown, expired or revoked"))?;
        if record.resource != rs.resource {
            return Err(other_resource());
        }
        Subject {
            subject: record.subject,
            client_id: record.client_id,
            scope: record.scope,
            expires_at: record.expires_at,
            family: record.family,
            act: None,
        }
    } else {
        let claims = state.inner.keys.verify_access_token(token).ok_or_else(|| {
            refused("the subject token is not an access token this server issued")
        })?;
        let number = |name: &str| claims.get(name).and_then(Value::as_u64);
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("iss") != Some(state.inner.settings.issuer.as_str()) {
            return Err(refused("the subject token was issued by another issuer"));
        }
        let (Some(exp), Some(sub), Some(client_id)) =
            (number("exp"), text("sub"), text("client_id"))
        else {
            return Err(refused(
                "the subject token is not an access token this server issued",
            ));
        };
        if exp <= t {
            return Err(refused("the subject token has expired"));
        }
        if number("nbf").is_some_and(|n| n > t) {
            return Err(refused("the subject token is not valid yet"));
        }
        if !audience_has(claims.get("aud"), &rs.resource) {
            return Err(other_resource());
        }
        Subject {
            subject: sub.to_owned(),
            client_id: client_id.to_owned(),
            scope: text("scope").unwrap_or_default().to_owned(),
            expires_at: exp,
            family: text("sid").map(str::to_owned),
            act: claims.get("act").filter(|a| a.is_object()).cloned(),
        }
    };
    if found.subject.is_empty() {
        return Err(refused("the subject token has no subject"));
    }
    if let Some(family) = &found.family
        && state.store().family_revoked(family).await?
    {
        return Err(refused("the subject token's grant was revoked"));
    }
    Ok(found)
}

/// Rule 5: the scopes of the exchanged token.
fn narrowed(
    held: &str,
    policy: &TokenExchangePolicy,
    asked: Option<&str>,
) -> Result<String, OAuthError> {
    let held: Vec<&str> = held.split(' ').filter(|s| !s.is_empty()).collect();
    let allowed = |scope: &str| {
        policy
            .scopes
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == scope))
    };
    let Some(asked) = asked else {
        let kept: Vec<&str> = held.into_iter().filter(|s| allowed(s)).collect();
        return Ok(kept.join(" "));
    };
    let mut out: Vec<&str> = Vec::new();
    for scope in asked.split(' ').filter(|s| !s.is_empty()) {
        if !bmm_core::is_scope_token(scope) {
            return Err(OAuthError::invalid_scope(
                "scope is not a list of scope tokens",
            ));
        }
        if !held.contains(&scope) {
            return Err(OAuthError::invalid_scope(format!(
                "scope `{scope}` is not in the subject token; an exchange may only narrow"
            )));
        }
        if !allowed(scope) {
            return Err(OAuthError::invalid_scope(format!(
                "this resource server may not exchange for scope `{scope}` (not in its token_exchange.scopes)"
            )));
        }
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    Ok(out.join(" "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(scopes: Option<&[&str]>) -> TokenExchangePolicy {
        TokenExchangePolicy {
            audiences: vec!["https://api.example.com".to_owned()],
            scopes: scopes.map(|s| s.iter().map(|x| (*x).to_owned()).collect()),
        }
    }

    #[test]
    fn scopes_only_narrow_to_the_subject_and_the_policy() {
        let open = policy(None);
        let strict = policy(Some(&["a", "c"]));
        assert_eq!(narrowed("a b c", &open, None).unwrap(), "a b c");
        assert_eq!(narrowed("a b c", &strict, None).unwrap(), "a c");
        assert_eq!(narrowed("a b c", &open, Some("b b a")).unwrap(), "b a");
        assert_eq!(narrowed("a b", &strict, Some("a")).unwrap(), "a");
        for (held, p, asked) in [
            ("a", &open, "a d"),
            ("a b", &strict, "b"),
            ("a", &open, "a\"x"),
        ] {
            let error = narrowed(held, p, Some(asked)).unwrap_err();
            assert_eq!(error.code(), "invalid_scope", "{held} {asked}");
        }
    }
}
