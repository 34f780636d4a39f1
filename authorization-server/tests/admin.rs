//! The admin page and `bmm-as audit` on a real socket: admin-only sign-in with CSRF
//! checks, clients and grants listed without secrets, revocation that ends the grant at
//! `/token`, the audit trail filtered, sessions that survive a restart; the audit command
//! run as a real process over the same data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::path::Path;
use std::time::Duration;

use bmm_authorization_server::{AppState, Args, Settings, serve};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const RESOURCE: &str = "http://127.0.0.1:4113/mcp";
const REDIRECT: &str = "http://127.0.0.1:33418/callback";

struct TestAs {
    /// Where its endpoints are (the issuer, with its `/oauth` path, except for a twin).
    url: String,
    settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestAs {
    async fn start(data_dir: &Path, config: &Path) -> Self {
        Self::start_at(data_dir, config, "127.0.0.1:0").await
    }

    /// Starts on `listen` (a restart keeps the address, hence the issuer).
    async fn start_at(data_dir: &Path, config: &Path, listen: &str) -> Self {
        // Carol is approved without a password: the grant the admin sees is hers.
        Self::start_with(data_dir, config, listen, &["--dev-user", "carol"]).await
    }

    async fn start_with(data_dir: &Path, config: &Path, listen: &str, extra: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listen = addr.to_string();
        let issuer = format!("http://{addr}/oauth");
        let database = database_args(data_dir);
        let mut argv = vec![
            "bmm-as",
            "--listen",
            &listen,
            "--issuer",
            &issuer,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--resource",
            RESOURCE,
            "--config",
            config.to_str().unwrap(),
        ];
        argv.extend_from_slice(extra);
        argv.extend(database.iter().map(String::as_str));
        let settings = Settings::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        Self::serve(listener, settings, issuer).await
    }

    async fn serve(listener: tokio::net::TcpListener, settings: Settings, url: String) -> Self {
        let state = AppState::open(settings.clone()).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            settings,
            stop: Some(tx),
            handle,
        }
    }

    /// A second instance with the same settings (issuer, store) on another port, as
    /// behind a load balancer.
    async fn twin(&self) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth", listener.local_addr().unwrap());
        Self::serve(listener, self.settings.clone(), url).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    fn admin(&self) -> String {
        format!("{}/admin", self.url)
    }
}

/// A config with `alice` (admin, password `wonderland`) and `bob` (not admin, `builder`).
fn config() -> tempfile::NamedTempFile {
    use argon2::PasswordHasher;
    use std::io::Write;
    let salt = argon2::password_hash::SaltString::encode_b64(b"bmm-test-salt-16").unwrap();
    let hash = |p: &str| {
        argon2::Argon2::default()
            .hash_password(p.as_bytes(), &salt)
            .unwrap()
            .to_string()
    };
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "scopes = [\"mcp:read\"]\n\
         [[users]]\nname = \"alice\"\npassword_hash = \"{}\"\nadmin = true\n\
         [[users]]\nname = \"bob\"\npassword_hash = \"{}\"\n",
        hash("wonderland"),
        hash("builder")
    )
    .unwrap();
    file
}

fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}

/// The `name=value` of the response's cookie `name`, and its attributes.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            (pair.to_owned(), attrs.to_owned())
        })
}

/// Registers a client, runs the code flow (dev mode approves as carol); returns the client
/// id and the refresh token.
async fn grant(as_: &TestAs, auth: &str) -> (String, String, Option<String>) {
    let (status, reg) = json_of(
        http()
            .post(format!("{}/register", as_.url))
            .json(&json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": auth, "client_name": "Admin Test Client"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let client_id = reg["client_id"].as_str().unwrap().to_owned();
    let secret = reg["client_secret"].as_str().map(str::to_owned);
    let p = pkce();
    let response = http()
        .get(format!("{}/authorize", as_.url))
        .query(&[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("scope", "mcp:read"),
            ("resource", RESOURCE),
        ])
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let mut request = http().post(format!("{}/token", as_.url));
    if let Some(secret) = &secret {
        request = request.basic_auth(&client_id, Some(secret));
    }
    let (status, tokens) = json_of(
        request
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &p.verifier),
                ("client_id", &client_id),
                ("resource", RESOURCE),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    (
        client_id,
        tokens["refresh_token"].as_str().unwrap().to_owned(),
        secret,
    )
}

async fn refresh(as_: &TestAs, client_id: &str, refresh_token: &str) -> (u16, Value) {
    json_of(
        http()
            .post(format!("{}/token", as_.url))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", client_id),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Opens the sign-in form; returns its CSRF cookie (`name=value`) and form token.
async fn login_form(as_: &TestAs) -> (String, String) {
    let page = http().get(as_.admin()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let (cookie, attrs) = set_cookie(&page, "bmm_admin_login").expect("a sign-in CSRF cookie");
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Strict"),
        "{attrs}"
    );
    let html = page.text().await.unwrap();
    (cookie, hidden(&html, "csrf"))
}

async fn sign_in(as_: &TestAs, user: &str, password: &str) -> reqwest::Response {
    let (cookie, csrf) = login_form(as_).await;
    http()
        .post(as_.admin())
        .header("cookie", cookie)
        .form(&[
            ("action", "login"),
            ("csrf", &csrf),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

/// Signs alice in; returns the session cookie (`name=value`).
async fn admin_session(as_: &TestAs) -> String {
    let response = sign_in(as_, "alice", "wonderland").await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/oauth/admin");
    let (cookie, attrs) = set_cookie(&response, "bmm_admin").expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/oauth/admin"] {
        assert!(attrs.contains(attr), "{attr} in {attrs}");
    }
    cookie
}

async fn admin_page(as_: &TestAs, session: &str, query: &str) -> (u16, String) {
    let response = http()
        .get(format!("{}{query}", as_.admin()))
        .header("cookie", session)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "no CORS"
    );
    (status, response.text().await.unwrap())
}

fn count(html: &str, needle: &str) -> usize {
    html.matches(needle).count()
}

#[tokio::test]
async fn only_admins_sign_in_and_forms_need_their_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let as_ = TestAs::start(dir.path(), config.path()).await;

    // Not signed in: the sign-in form, not the page.
    let (status, html) = admin_page(&as_, "", "").await;
    assert_eq!(status, 200);
    assert!(html.contains("name=\"password\"") && !html.contains("id=\"clients\""));

    // A right password but a forged CSRF token: refused before the password is checked.
    let (cookie, _) = login_form(&as_).await;
    let forged = http()
        .post(as_.admin())
        .header("cookie", cookie)
        .form(&[
            ("action", "login"),
            ("csrf", "forged"),
            ("username", "alice"),
            ("password", "wonderland"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(set_cookie(&forged, "bmm_admin").is_none());

    // A wrong password, then a user who is not an admin.
    let wrong = sign_in(&as_, "alice", "looking-glass").await;
    assert_eq!(wrong.status(), 200);
    assert!(set_cookie(&wrong, "bmm_admin").is_none());
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("Wrong user name or password")
    );
    let bob = sign_in(&as_, "bob", "builder").await;
    assert_eq!(bob.status(), 403);
    assert!(set_cookie(&bob, "bmm_admin").is_none());
    assert!(
        bob.text()
            .await
            .unwrap()
            .contains("may not open the admin page")
    );

    // Alice gets a session; a tampered one is worth nothing.
    let session = admin_session(&as_).await;
    let (status, html) = admin_page(&as_, &session, "").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Signed in as <strong>alice</strong>"),
        "{html}"
    );
    let tampered = format!("{session}x");
    let (_, html) = admin_page(&as_, &tampered, "").await;
    assert!(
        html.contains("name=\"password\""),
        "a tampered session is refused"
    );
    let (_, payload_swapped) = {
        // Another user's claims under alice's signature.
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = session.strip_prefix("bmm_admin=").unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("bob");
        let forged = format!(
            "bmm_admin={}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        admin_page(&as_, &forged, "").await
    };
    assert!(payload_swapped.contains("name=\"password\""));

    // A POST with the session but without its CSRF token changes nothing.
    let (_, refresh_token, _) = grant(&as_, "none").await;
    let (_, html) = admin_page(&as_, &session, "").await;
    let family = hidden(&html, "family");
    let csrf = hidden(&html, "csrf");
    let no_csrf = http()
        .post(as_.admin())
        .header("cookie", &session)
        .form(&[
            ("action", "revoke"),
            ("csrf", "forged"),
            ("family", &family),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), 403);
    // ... nor does the right token without the session (a cross-site form has no cookie).
    let no_session = http()
        .post(as_.admin())
        .form(&[("action", "revoke"), ("csrf", &csrf), ("family", &family)])
        .send()
        .await
        .unwrap();
    assert_eq!(no_session.status(), 401);
    let (_, html) = admin_page(&as_, &session, "").await;
    assert_eq!(
        count(&html, "class=\"grant\""),
        1,
        "the grant is still live"
    );
    assert!(!html.contains(&refresh_token));

    // The session still works after a restart (it is verified with the stored keys).
    let listen = as_.url["http://".len()..]
        .trim_end_matches("/oauth")
        .to_owned();
    as_.stop().await;
    let as_ = TestAs::start_at(dir.path(), config.path(), &listen).await;
    let (_, html) = admin_page(&as_, &session, "").await;
    assert!(html.contains("Signed in as"), "{html}");

    // Signing out clears the cookie.
    let out = http()
        .post(as_.admin())
        .header("cookie", &session)
        .form(&[("action", "logout"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let (cleared, attrs) = set_cookie(&out, "bmm_admin").unwrap();
    assert_eq!(cleared, "bmm_admin=");
    assert!(attrs.contains("Max-Age=0"));
    as_.stop().await;
}

#[tokio::test]
async fn admin_sees_clients_and_grants_without_secrets_revokes_and_filters_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let as_ = TestAs::start(dir.path(), config.path()).await;
    let (public, public_refresh, _) = grant(&as_, "none").await;
    let (confidential, confidential_refresh, secret) = grant(&as_, "client_secret_basic").await;
    let secret = secret.unwrap();
    let session = admin_session(&as_).await;

    let (status, html) = admin_page(&as_, &session, "").await;
    assert_eq!(status, 200);
    // Both clients with their redirect URI and a last use; both grants, carol's.
    assert!(
        html.contains(&public) && html.contains(&confidential),
        "{html}"
    );
    assert!(html.contains(REDIRECT));
    assert_eq!(count(&html, "class=\"client\""), 2);
    assert_eq!(count(&html, "class=\"last-used\">never<"), 0, "{html}");
    assert_eq!(count(&html, "class=\"grant\""), 2);
    assert_eq!(count(&html, "class=\"grant-subject\">carol<"), 2);
    // No secret, token or hash of one anywhere on the page.
    let secret_hash = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(secret.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let refresh_hash = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(public_refresh.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    for leaked in [
        &secret,
        &secret_hash,
        &public_refresh,
        &confidential_refresh,
        &refresh_hash,
    ] {
        assert!(!html.contains(leaked.as_str()), "a secret is on the page");
    }
    // The audit trail has the registrations and the tokens.
    for kind in [
        "registration",
        "code_issued",
        "code_redeemed",
        "token_issued",
        "admin_sign_in",
    ] {
        assert!(
            html.contains(&format!("class=\"event-type\">{kind}<")),
            "{kind} in the audit trail"
        );
    }

    // Filter by type and by client.
    let (status, html) = admin_page(&as_, &session, "?type=registration").await;
    assert_eq!(status, 200);
    assert_eq!(count(&html, "class=\"event\""), 2, "{html}");
    assert_eq!(count(&html, "class=\"event-type\">registration<"), 2);
    let (_, html) = admin_page(&as_, &session, &format!("?client={public}")).await;
    assert!(count(&html, "class=\"event\"") >= 3);
    assert!(!html.contains(&format!("class=\"event-client\">{confidential}<")));
    assert_eq!(
        count(&html, "class=\"grant\""),
        1,
        "the grants follow the client filter"
    );
    let (_, html) = admin_page(&as_, &session, "?type=registration&since=1h").await;
    assert_eq!(count(&html, "class=\"event\""), 2);
    let (_, html) = admin_page(
        &as_,
        &session,
        "?type=registration&until=2000-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(count(&html, "class=\"event\""), 0);
    let (status, html) = admin_page(&as_, &session, "?since=yesterday").await;
    assert_eq!(status, 400);
    assert!(html.contains("id=\"error\""));

    // Revoke the public client's grant: its refresh token then fails at /token.
    let (_, html) = admin_page(&as_, &session, &format!("?client={public}")).await;
    let family = hidden(&html, "family");
    let csrf = hidden(&html, "csrf");
    let back = hidden(&html, "back");
    let revoked = http()
        .post(as_.admin())
        .header("cookie", &session)
        .form(&[
            ("action", "revoke"),
            ("csrf", &csrf),
            ("family", &family),
            ("back", &back.replace("&amp;", "&")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 303);
    let location = revoked.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/oauth/admin?client="), "{location}");
    assert!(location.ends_with("revoked=1"), "{location}");
    let (status, body) = refresh(&as_, &public, &public_refresh).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let (_, html) = admin_page(&as_, &session, "?type=admin_revoke").await;
    assert_eq!(count(&html, "class=\"event\""), 1, "{html}");
    assert!(html.contains(&format!("class=\"event-client\">{public}<")));
    assert!(html.contains("class=\"event-subject\">carol<"));
    let (_, html) = admin_page(&as_, &session, "").await;
    assert_eq!(count(&html, "class=\"grant\""), 1, "one grant left");
    as_.stop().await;
}

#[tokio::test]
async fn audit_command_lists_and_filters_events_as_a_table_or_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let as_ = TestAs::start(dir.path(), config.path()).await;
    let (client, _, _) = grant(&as_, "none").await;
    let wrong = sign_in(&as_, "alice", "not-her-password").await;
    assert_eq!(wrong.status(), 200);
    as_.stop().await;

    // The same store the server used: its data dir, or its PostgreSQL database.
    let database = database_args(dir.path());
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_bmm-as"))
            .arg("audit")
            .arg("--data-dir")
            .arg(dir.path())
            .args(&database)
            .args(args)
            .env_remove("BMM_AS_DATABASE_URL")
            .env_remove("BMM_AS_CONFIG")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (code, out, err) = run(&["--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 5, "{out}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in [
        "registration",
        "code_issued",
        "code_redeemed",
        "token_issued",
        "admin_sign_in",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    // Newest first.
    let ats: Vec<u64> = events.iter().map(|e| e["at"].as_u64().unwrap()).collect();
    assert!(ats.windows(2).all(|w| w[0] >= w[1]));

    let (_, out, _) = run(&["--format", "json", "--type", "admin_sign_in"]);
    let failed: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(failed["subject"], "alice");
    assert_eq!(failed["outcome"], "invalid_credentials");
    assert_eq!(failed["address"], "127.0.0.1");
    assert!(!out.contains("not-her-password"));

    let (_, out, _) = run(&["--format", "json", "--client", &client, "--since", "1h"]);
    assert!(out.lines().count() >= 3, "{out}");
    assert!(out.lines().all(|l| l.contains(&client)));
    let (_, out, _) = run(&["--format", "json", "--until", "2000-01-01T00:00:00Z"]);
    assert_eq!(out, "");
    let (_, out, _) = run(&["--format", "json", "--limit", "2"]);
    assert_eq!(out.lines().count(), 2);

    let (code, out, _) = run(&["--type", "registration"]);
    assert_eq!(code, Some(0));
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("TIME "));
    let row = lines.next().unwrap();
    assert!(
        row.contains("registration") && row.contains(&client),
        "{out}"
    );

    let (code, _, err) = run(&["--type", "nonsense"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown event type"), "{err}");
    let (code, _, err) = run(&["--since", "yesterday"]);
    assert_eq!(code, Some(2), "{err}");
}

/// Runs `bmm-as audit --format json` over the store of the AS in `dir`; returns the events.
fn audit_events(dir: &Path, args: &[&str]) -> Vec<Value> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bmm-as"))
        .arg("audit")
        .arg("--data-dir")
        .arg(dir)
        .args(database_args(dir))
        .args(["--format", "json"])
        .args(args)
        .env_remove("BMM_AS_DATABASE_URL")
        .env_remove("BMM_AS_CONFIG")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn consent_sign_ins_approvals_and_denials_are_audited_without_what_was_typed() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    // No dev user: the consent page asks for a password.
    let as_ = TestAs::start_with(dir.path(), config.path(), "127.0.0.1:0", &[]).await;
    let (status, reg) = json_of(
        http()
            .post(format!("{}/register", as_.url))
            .json(&json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let client_id = reg["client_id"].as_str().unwrap().to_owned();
    let p = pkce();
    let authorize = || async {
        let page = http()
            .get(format!("{}/authorize", as_.url))
            .query(&[
                ("response_type", "code"),
                ("client_id", client_id.as_str()),
                ("redirect_uri", REDIRECT),
                ("code_challenge", p.challenge.as_str()),
                ("code_challenge_method", "S256"),
                ("scope", "mcp:read"),
                ("resource", RESOURCE),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let (cookie, _) = set_cookie(&page, "bmm_csrf").unwrap();
        let html = page.text().await.unwrap();
        (cookie, hidden(&html, "request_id"), hidden(&html, "csrf"))
    };
    let post = |cookie: String,
                request_id: String,
                csrf: String,
                user: &'static str,
                password: &'static str,
                decision: &'static str| {
        let url = format!("{}/authorize", as_.url);
        async move {
            http()
                .post(url)
                .header("cookie", cookie)
                .form(&[
                    ("request_id", request_id.as_str()),
                    ("csrf", csrf.as_str()),
                    ("username", user),
                    ("password", password),
                    ("decision", decision),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    // A name that is no user (perhaps a password typed in the wrong field), a wrong
    // password, then the right one.
    let (cookie, request_id, csrf) = authorize().await;
    let page = post(
        cookie,
        request_id,
        csrf,
        "s3cret-typed-as-name",
        "x",
        "approve",
    )
    .await;
    assert_eq!(page.status(), 200);
    // Each new form comes with a fresh CSRF cookie.
    let (cookie, _) = set_cookie(&page, "bmm_csrf").unwrap();
    let html = page.text().await.unwrap();
    let page = post(
        cookie,
        hidden(&html, "request_id"),
        hidden(&html, "csrf"),
        "alice",
        "not-her-password",
        "approve",
    )
    .await;
    assert_eq!(page.status(), 200);
    let (cookie, _) = set_cookie(&page, "bmm_csrf").unwrap();
    let html = page.text().await.unwrap();
    let approved = post(
        cookie,
        hidden(&html, "request_id"),
        hidden(&html, "csrf"),
        "alice",
        "wonderland",
        "approve",
    )
    .await;
    assert_eq!(approved.status(), 303);
    let (cookie, request_id, csrf) = authorize().await;
    let denied = post(cookie, request_id, csrf, "", "", "deny").await;
    assert_eq!(denied.status(), 303);
    assert!(
        denied.headers()["location"]
            .to_str()
            .unwrap()
            .contains("error=access_denied")
    );
    as_.stop().await;

    let sign_ins = audit_events(dir.path(), &["--type", "sign_in"]);
    let outcomes: Vec<(&str, &str)> = sign_ins
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap(),
                e["subject"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    // Newest first.
    assert_eq!(
        outcomes,
        [
            ("ok", "alice"),
            ("invalid_credentials", "alice"),
            ("invalid_credentials", "-")
        ]
    );
    assert!(
        sign_ins
            .iter()
            .all(|e| e["client_id"] == client_id.as_str())
    );
    assert_eq!(sign_ins[2]["detail"], "unknown user");
    let consents = audit_events(dir.path(), &["--type", "consent"]);
    assert_eq!(consents.len(), 2);
    assert_eq!(consents[0]["outcome"], "access_denied");
    assert_eq!(consents[1]["outcome"], "ok");
    assert_eq!(consents[1]["subject"], "alice");
    assert_eq!(consents[1]["resource"], RESOURCE);
    assert_eq!(consents[1]["scope"], "mcp:read");
    let codes = audit_events(dir.path(), &["--type", "code_issued"]);
    assert_eq!(codes.len(), 1);
    assert_eq!(codes[0]["subject"], "alice");
    let everything = serde_json::to_string(&audit_events(dir.path(), &[])).unwrap();
    for typed in ["s3cret-typed-as-name", "not-her-password", "wonderland"] {
        assert!(!everything.contains(typed), "{typed} is in the audit trail");
    }
}

#[tokio::test]
async fn an_admin_session_made_by_one_instance_works_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let a = TestAs::start(dir.path(), config.path()).await;
    let b = a.twin().await;
    let (client, refresh_token, _) = grant(&a, "none").await;
    let session = admin_session(&a).await;
    // B verifies A's session with the keys both load from the store, and lists A's grant.
    let (status, html) = admin_page(&b, &session, "").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Signed in as <strong>alice</strong>"),
        "{html}"
    );
    assert!(html.contains(&format!("class=\"grant-client\">{client}<")));
    let csrf = hidden(&html, "csrf");
    let family = hidden(&html, "family");
    let revoked = http()
        .post(b.admin())
        .header("cookie", &session)
        .form(&[("action", "revoke"), ("csrf", &csrf), ("family", &family)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 303);
    // Revoked on B, refused on A.
    let (status, body) = refresh(&a, &client, &refresh_token).await;
    assert_eq!(status, 400, "{body}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn revocations_key_rotations_and_refused_metadata_documents_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let as_ = TestAs::start_with(
        dir.path(),
        config.path(),
        "127.0.0.1:0",
        &[
            "--dev-user",
            "carol",
            "--rotate-keys",
            "--allow-loopback-cimd",
        ],
    )
    .await;
    let (client, refresh_token, _) = grant(&as_, "none").await;
    for token in [refresh_token.as_str(), "not-a-token-of-this-server"] {
        let response = http()
            .post(format!("{}/revoke", as_.url))
            .form(&[("token", token), ("client_id", client.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // A metadata document that cannot be fetched (nothing listens on its port).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let document = format!("http://{}/client.json", closed.local_addr().unwrap());
    drop(closed);
    let p = pkce();
    let refused = http()
        .get(format!("{}/authorize", as_.url))
        .query(&[
            ("response_type", "code"),
            ("client_id", document.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", p.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", RESOURCE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16() / 100, 4);
    as_.stop().await;

    let rotations = audit_events(dir.path(), &["--type", "key_rotation"]);
    assert_eq!(rotations.len(), 1);
    assert!(
        rotations[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("new signing key ")
    );
    let revocations = audit_events(dir.path(), &["--type", "revocation"]);
    assert_eq!(revocations.len(), 2);
    assert!(
        revocations
            .iter()
            .all(|e| e["client_id"] == client.as_str())
    );
    assert_eq!(revocations[0]["outcome"], "ignored");
    assert_eq!(revocations[1]["outcome"], "ok");
    let cimd = audit_events(dir.path(), &["--type", "cimd_refused"]);
    assert_eq!(cimd.len(), 1, "{cimd:?}");
    assert_eq!(cimd[0]["client_id"], document.as_str());
    assert_eq!(cimd[0]["address"], "127.0.0.1");
    assert_ne!(cimd[0]["outcome"], "ok");
    let everything = serde_json::to_string(&audit_events(dir.path(), &[])).unwrap();
    assert!(!everything.contains(&refresh_token));
}

#[tokio::test]
async fn nul_bytes_and_multibyte_times_from_outside_are_refused_not_server_errors() {
    // On PostgreSQL (BMM_AS_TEST_DATABASE_URL), whose text cannot hold NUL, each of these
    // was a 500 (or a dropped connection for the time) before it was refused.
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let as_ = TestAs::start(dir.path(), config.path()).await;
    let session = admin_session(&as_).await;
    for query in [
        "?client=a%00b",
        "?subject=%00",
        "?until=1%C3%A9",
        "?since=%C3%A9",
    ] {
        let (status, html) = admin_page(&as_, &session, query).await;
        assert_eq!(status, 400, "{query}: {html}");
        assert!(html.contains("id=\"error\""), "{query}");
    }
    let token = format!("{}/token", as_.url);
    let response = http()
        .post(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=a%00b")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request", "{body}");
    let response = http()
        .post(&token)
        .json(&json!({"grant_type": "client_credentials", "client_id": "a\u{0}b"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400, "{body}");
    let response = http()
        .post(format!("{}/revoke", as_.url))
        .form(&[("token", "x\u{0}y"), ("client_id", "a\u{0}b")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http()
        .post(format!("{}/register", as_.url))
        .json(
            &json!({"redirect_uris": [REDIRECT], "client_name": "a\u{0}b",
            "token_endpoint_auth_method": "none"}),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_client_metadata", "{body}");
    let response = http()
        .get(format!(
            "{}/authorize?response_type=code&client_id=a%00b&redirect_uri={REDIRECT}",
            as_.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http()
        .post(format!("{}/authorize", as_.url))
        .form(&[
            ("request_id", "a\u{0}b"),
            ("csrf", "c"),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // The server still answers, and nothing failed to be written.
    let (status, _) = admin_page(&as_, &session, "").await;
    assert_eq!(status, 200);
    as_.stop().await;
}

#[tokio::test]
async fn admin_sign_in_refusals_are_audited_once_per_back_off_and_floods_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let as_ = TestAs::start(dir.path(), config.path()).await;
    let (mut backed_off, mut rate_limited) = (0, 0);
    for _ in 0..70 {
        let response = sign_in(&as_, "mallory", "guess").await;
        let status = response.status().as_u16();
        let html = response.text().await.unwrap();
        if html.contains("Too many failed sign-ins") {
            backed_off += 1;
        }
        if html.contains("Too many sign-in requests from this address") {
            assert_eq!(status, 429);
            rate_limited += 1;
        }
    }
    // 60 sign-ins a minute per address; then refused before anything else.
    assert_eq!(rate_limited, 10);
    assert!(backed_off >= 20, "{backed_off}");
    // The real admin can still sign in from elsewhere.
    let other = http_from(Some("127.0.0.2".parse().unwrap()));
    let page = other.get(as_.admin()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    as_.stop().await;
    let throttled = audit_events(dir.path(), &["--type", "admin_sign_in"])
        .into_iter()
        .filter(|e| e["outcome"] == "throttled")
        .count();
    assert!(
        (1..=8).contains(&throttled),
        "{throttled} throttled events for {backed_off} refusals: one per back-off period"
    );
}

#[tokio::test]
async fn consent_page_and_its_sign_in_form_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let as_ = TestAs::start(dir.path(), config.path()).await;
    let authorize = format!("{}/authorize", as_.url);
    let mut statuses = Vec::new();
    for _ in 0..301 {
        statuses.push(
            http()
                .get(&authorize)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses[..300].iter().all(|s| *s == 400), "{statuses:?}");
    assert_eq!(statuses[300], 429);
    let mut statuses = Vec::new();
    for _ in 0..61 {
        let response = http()
            .post(&authorize)
            .form(&[
                ("request_id", "unknown"),
                ("csrf", "c"),
                ("decision", "approve"),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert!(statuses[..60].iter().all(|s| *s == 400), "{statuses:?}");
    assert_eq!(statuses[60], 429);
    // Another address is not affected.
    let other = http_from(Some("127.0.0.3".parse().unwrap()));
    let response = other.get(&authorize).send().await.unwrap();
    assert_eq!(response.status(), 400);
    as_.stop().await;
}
