//! `bmm-as`: runs the authorization server until SIGINT or SIGTERM.

use std::process::ExitCode;

use bmm_authorization_server::config::Command;
use bmm_authorization_server::{AppState, Args, Settings, audit, serve};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hash-password") {
        return hash_password();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "bmm_authorization_server=info".into());
    // tokio-postgres logs every statement's parameters at debug level: signing keys and
    // pending sign-in documents (CSRF tokens). Never below info, whatever RUST_LOG says.
    let filter = match "tokio_postgres=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Audit(audit)) => return audit_command(&audit).await,
        Some(Command::HashPassword) => return hash_password(),
        None => {}
    }
    let settings = match Settings::from_args(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bmm-as: {e}");
            return ExitCode::from(2);
        }
    };
    if settings.dev_user.is_some() {
        tracing::warn!(
            "dev mode: every authorization request is approved as {:?} without sign-in; registration, token and revocation answer CORS only for loopback origins",
            settings.dev_user
        );
    }
    let listen = settings.listen;
    let issuer = settings.issuer.clone();
    let limits = format!(
        "header read {}s, idle {}s, {} connections per address",
        settings.header_read_timeout.as_secs(),
        settings.idle_timeout.as_secs(),
        settings.max_connections_per_address
    );
    let state = match AppState::open(settings).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bmm-as: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bmm-as: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = state.store().backend();
    tracing::info!(%listen, %issuer, %limits, store, "bmm-as ready");
    match serve(listener, state, bmm_shutdown()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bmm-as: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bmm_shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// `bmm-as audit`: lists the audit trail; exit status 2 for a bad flag, 1 when the store
/// cannot be read.
async fn audit_command(args: &audit::AuditArgs) -> ExitCode {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = audit::command(args, &mut out).await;
    let flushed = std::io::Write::flush(&mut out);
    match (result, flushed) {
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
        (Ok(_), Err(e)) => {
            eprintln!("bmm-as audit: cannot write: {e}");
            ExitCode::FAILURE
        }
        (Err(audit::CommandError::Usage(e)), _) => {
            eprintln!("bmm-as audit: {e}");
            ExitCode::from(2)
        }
        (Err(audit::CommandError::Store(e)), _) => {
            eprintln!("bmm-as audit: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `bmm-as hash-password`: reads a password on stdin, prints the argon2id PHC string to put
/// in the config file's `password_hash`.
fn hash_password() -> ExitCode {
    use argon2::PasswordHasher;
    let mut password = String::new();
    if std::io::stdin().read_line(&mut password).is_err() {
        eprintln!("bmm-as hash-password: cannot read the password from stdin");
        return ExitCode::from(2);
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("bmm-as hash-password: the password is empty");
        return ExitCode::from(2);
    }
    let mut salt_bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut salt_bytes).is_err() {
        eprintln!("bmm-as hash-password: no randomness available");
        return ExitCode::FAILURE;
    }
    let salt = match argon2::password_hash::SaltString::encode_b64(&salt_bytes) {
        Ok(salt) => salt,
        Err(e) => {
            eprintln!("bmm-as hash-password: {e}");
            return ExitCode::FAILURE;
        }
    };
    match argon2::Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bmm-as hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}
