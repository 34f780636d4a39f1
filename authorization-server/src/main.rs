//! `bmm-as`: runs the authorization server until SIGINT or SIGTERM.

use std::process::ExitCode;

use bmm_authorization_server::{AppState, Args, Settings, serve};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bmm_authorization_server=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = match Settings::from_args(Args::parse()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bmm-as: {e}");
            return ExitCode::from(2);
        }
    };
    if settings.dev_user.is_some() {
        tracing::warn!(
            "dev mode: every authorization request is approved as {:?} without sign-in",
            settings.dev_user
        );
    }
    let listen = settings.listen;
    let issuer = settings.issuer.clone();
    let state = match AppState::open(settings) {
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
    tracing::info!(%listen, %issuer, "bmm-as ready");
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
