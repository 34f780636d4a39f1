//! The guard over real sockets: a listener on 127.0.0.1 receives no connection from a
//! public-only guard, whatever form the URL names it in; the development policy reaches it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use bmm_netguard::{Guard, Policy, refused_in};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

async fn assert_no_connection(listener: &TcpListener) {
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "the guard let a connection through");
}

#[tokio::test]
async fn public_only_guard_never_connects_to_loopback_in_any_url_form() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let guard = Guard::new(Policy::public_only(), Duration::from_secs(2)).unwrap();
    for host in [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "127.1",
        "[::ffff:127.0.0.1]",
    ] {
        let url = Url::parse(&format!("http://{host}:{port}/doc.json")).unwrap();
        let refused = guard.get(url).unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains("loopback") || text.contains("non-public"),
            "{text}"
        );
    }
    // A name is checked when it is resolved: the request fails with the guard's refusal.
    let url = Url::parse(&format!("http://localhost:{port}/doc.json")).unwrap();
    let error = guard.get(url).unwrap().send().await.unwrap_err();
    let refused =
        refused_in(&error).unwrap_or_else(|| panic!("not refused by the guard: {error:?}"));
    assert!(refused.reason().contains("loopback"), "{refused}");
    assert_no_connection(&listener).await;
}

#[tokio::test]
async fn loopback_policy_reaches_a_local_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    });
    let guard = Guard::new(
        Policy::public_only().allow_loopback(true),
        Duration::from_secs(2),
    )
    .unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let url = Url::parse(&format!("http://{host}:{port}/")).unwrap();
        let response = guard.get(url).unwrap().send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "ok");
    }
}
