//! `cargo xtask connections`: a per-user upstream connection (issue 16, `user_oauth`) made
//! in headless Chromium against the generated `connections` server (specs/connections.yaml).
//!
//! bmm-as plays both roles: the MCP server's authorization server and the notebook's (its
//! config pre-registers the server's confidential notebook client, `connections-notebook`,
//! with the server's callback as redirect URI; the server's confidential connect client,
//! `connections-connect`, with `/connections/verify` as redirect URI, for the identity
//! check of the connect page; and user alice). The generated server runs
//! with its token vault in `target/conformance/connections/vault.sqlite` and points its
//! `notebook` upstream at the stand-in API that `tests/connections/connect.mjs` serves.
//! The script (Node 22 and playwright-core, pinned in tests/package.json, with Debian's
//! chromium) signs alice in as an MCP client, calls `list_notes`, follows the URL
//! elicitation in the browser (the connect page, the sign-in at the MCP server's
//! authorization server proving the browser user is alice, bmm-as's sign-in and consent
//! as the notebook's, the callback), retries the call, checks what the notebook API saw, and disconnects. Logs
//! and screenshots in `target/conformance/connections/`; every process is stopped on
//! exit, on success or failure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::conformance::{Guard, chromium, free_port, fresh_dir, npm_tools, wait_for};
use crate::demo::{http, random};
use crate::{cargo, run};

/// The notebook's resource identifier in specs/connections.yaml (the audience of its
/// tokens; the stand-in API itself listens on a free port).
const NOTEBOOK_RESOURCE: &str = "http://127.0.0.1:4503/notebook";
/// alice / wonderland (as in tests/consent/bmm-as.toml).
const ALICE: &str = "$argon2id$v=19$m=19456,t=2,p=1$7fmTQThxut2Y0YnIBhe1Yg$+rl6QuLx63i16fclG8cKnACWop5qVxZDVk4OLlYwgd4";

fn wait_healthy(name: &str, base: &str, log: &Path) -> Result<(), String> {
    let url = format!("{base}/healthz");
    wait_for(name, Duration::from_secs(30), || {
        http("GET", &url, &[], None)
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| String::new())
    })
    .map(|_| ())
    .map_err(|e| format!("{e} (log: {})", log.display()))
}

/// The run; see the module documentation.
pub(crate) fn connections(root: &Path) -> Result<(), String> {
    let node = npm_tools(root)?;
    let browser = chromium()?;
    // The binaries the workspace test build made (a no-op when they are up to date).
    run(
        "build bmm-as and generated/connections (the workspace test build)",
        cargo().args(["test", "--workspace", "--no-run", "--quiet"]),
    )?;
    let out = fresh_dir(root, "connections")?;
    let log = |name: &str| std::fs::File::create(out.join(name)).map_err(|e| e.to_string());

    let (as_port, mcp_port, notebook_port) = (free_port()?, free_port()?, free_port()?);
    let issuer = format!("http://127.0.0.1:{as_port}");
    let mcp_origin = format!("http://127.0.0.1:{mcp_port}");
    let mcp_url = format!("{mcp_origin}/mcp");
    let notebook = format!("http://127.0.0.1:{notebook_port}/notebook");
    let notebook_secret = random()?;
    let connect_secret = random()?;
    let config = out.join("bmm-as.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Written by `cargo xtask connections` (test use only).
scopes = ["notes:read"]
default_scopes = ["notes:read"]

[[users]]
name = "alice"
password_hash = "{ALICE}"

[[clients]]
client_id = "connections-notebook"
client_name = "Connections (notebook)"
client_secret = "{notebook_secret}"
redirect_uris = ["{mcp_origin}/connections/notebook/callback"]

[[clients]]
client_id = "connections-connect"
client_name = "Connections (sign-in check of the connect page)"
client_secret = "{connect_secret}"
redirect_uris = ["{mcp_origin}/connections/verify"]
"#
        ),
    )
    .map_err(|e| e.to_string())?;
    let _as = Guard(
        Command::new(root.join("target/debug/bmm-as"))
            .args([
                "--listen",
                &format!("127.0.0.1:{as_port}"),
                "--issuer",
                &issuer,
            ])
            .arg("--data-dir")
            .arg(out.join("as-data"))
            .arg("--config")
            .arg(&config)
            .args(["--resource", &mcp_url, "--resource", NOTEBOOK_RESOURCE])
            .stdout(Stdio::null())
            .stderr(log("bmm-as.log")?)
            .spawn()
            .map_err(|e| format!("cannot start bmm-as: {e}"))?,
    );
    wait_healthy("bmm-as", &issuer, &out.join("bmm-as.log"))?;

    let _server = Guard(
        Command::new(root.join("target/debug/connections"))
            .args([
                "--listen",
                &format!("127.0.0.1:{mcp_port}"),
                "--issuer",
                &issuer,
            ])
            .arg("--vault")
            .arg(out.join("vault.sqlite"))
            .env("BMM_VAULT_KEY", random()?)
            .env("NOTEBOOK_URL", &notebook)
            .env("NOTEBOOK_ISSUER", &issuer)
            .env("NOTEBOOK_CLIENT_SECRET", &notebook_secret)
            .env("BMM_CONNECT_CLIENT_ID", "connections-connect")
            .env("BMM_CONNECT_CLIENT_SECRET", &connect_secret)
            // The other two upstreams are not called here; their secrets must be set.
            .env("DIRECTORY_CLIENT_SECRET", "unused")
            .env("REPORTS_CLIENT_SECRET", "unused")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log("connections.log")?)
            .spawn()
            .map_err(|e| format!("cannot start generated/connections: {e}"))?,
    );
    wait_healthy("connections", &mcp_origin, &out.join("connections.log"))?;

    run(
        "a per-user connection in headless Chromium (generated/connections, bmm-as in two roles)",
        Command::new(&node)
            .arg(root.join("tests/connections/connect.mjs"))
            .args([
                mcp_url.as_str(),
                issuer.as_str(),
                &notebook_port.to_string(),
                NOTEBOOK_RESOURCE,
            ])
            .arg(&out)
            .env("CHROMIUM", &browser)
            .current_dir(root.join("tests")),
    )
    .map_err(|e| {
        format!(
            "{e} (logs: {}, {})",
            out.join("connections.log").display(),
            out.join("bmm-as.log").display()
        )
    })
}
