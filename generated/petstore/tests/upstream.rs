//! The imported Petstore tools called against a local upstream that serves recorded
//! responses (`tests/recorded/`): path, query (an array as one pair per element) and JSON
//! body (named fields, or one field as the whole body) built from the arguments, the
//! server's own credential sent, the MCP client's token never, and the JSON response
//! returned as structured content. This file is not generated.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use bmm_runtime::serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_petstore");
const RECORDED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/recorded");

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    authorization: Option<String>,
    api_key: Option<String>,
    body: String,
}

/// A one-thread HTTP/1.1 upstream: answers from `tests/recorded/` by request line.
fn upstream() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/api/v3", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let (mut length, mut authorization, mut api_key) = (0usize, None, None);
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "authorization" => authorization = Some(value.trim().to_owned()),
                    "api_key" => api_key = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let line = line.trim_end().to_owned();
            let file = match line
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
                .as_str()
            {
                "GET /api/v3/pet/10" => Some("get-pet-10.json"),
                "GET /api/v3/pet/findByStatus?status=available" => {
                    Some("find-by-status-available.json")
                }
                "POST /api/v3/pet" => Some("post-pet.json"),
                "POST /api/v3/user/createWithList" => Some("post-user-create-with-list.json"),
                "GET /api/v3/pet/findByTags?tags=tag1&tags=tag+2" => Some("find-by-tags.json"),
                _ => None,
            };
            log.lock().unwrap().push(Seen {
                line,
                authorization,
                api_key,
                body: String::from_utf8(body).unwrap(),
            });
            let (status, body) = match file {
                Some(f) => (
                    "200 OK",
                    std::fs::read_to_string(format!("{RECORDED}/{f}")).unwrap(),
                ),
                None => (
                    "404 Not Found",
                    r#"{"code":404,"message":"not recorded"}"#.to_owned(),
                ),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, seen)
}

fn recorded(file: &str) -> Value {
    bmm_runtime::serde_json::from_str(
        &std::fs::read_to_string(format!("{RECORDED}/{file}")).unwrap(),
    )
    .unwrap()
}

#[test]
fn imported_tools_call_the_upstream_with_the_server_credential() {
    let (base, seen) = upstream();
    let results = bmm_runtime::testing::call_tools(
        BINARY,
        &[
            ("PETSTORE_API_KEY", "upstream-secret"),
            ("PETSTORE_BASE_URL", &base),
        ],
        "",
        &[
            ("get_pet_by_id", json!({"pet_id": 10})),
            ("find_pets_by_status", json!({"status": "available"})),
            (
                "add_pet",
                json!({"name": "rex", "photoUrls": ["https://example.com/rex.png"], "status": "pending"}),
            ),
            ("get_pet_by_id", json!({"pet_id": 99})),
            (
                "create_users_with_list_input",
                json!({"body": [{"username": "theUser", "email": "john@email.com"}, {"username": "second"}]}),
            ),
            ("find_pets_by_tags", json!({"tags": ["tag1", "tag 2"]})),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // An object response is the structured content as is; an array is wrapped in `result`.
    assert_eq!(results[0]["structuredContent"], recorded("get-pet-10.json"));
    assert_eq!(
        results[1]["structuredContent"],
        json!({"result": recorded("find-by-status-available.json")})
    );
    assert_eq!(results[2]["structuredContent"], recorded("post-pet.json"));
    // A 404 from the upstream is a tool error naming the status, not a protocol error.
    assert_eq!(results[3]["isError"], json!(true), "{}", results[3]);
    assert!(results[3].to_string().contains("404"), "{}", results[3]);
    assert_eq!(
        results[4]["structuredContent"],
        recorded("post-user-create-with-list.json")
    );
    // An array argument in the query: one pair per element (OpenAPI's default form style).
    assert_eq!(
        results[5]["structuredContent"],
        json!({"result": recorded("find-by-tags.json")}),
        "{}",
        results[5]
    );

    let seen = seen.lock().unwrap().clone();
    let lines: Vec<&str> = seen.iter().map(|s| s.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "GET /api/v3/pet/10 HTTP/1.1",
            "GET /api/v3/pet/findByStatus?status=available HTTP/1.1",
            "POST /api/v3/pet HTTP/1.1",
            "GET /api/v3/pet/99 HTTP/1.1",
            "POST /api/v3/user/createWithList HTTP/1.1",
            "GET /api/v3/pet/findByTags?tags=tag1&tags=tag+2 HTTP/1.1",
        ]
    );
    for s in &seen {
        // The server's own credential (the document's `api_key` header scheme; its only
        // OAuth scheme is an implicit flow, which bmm does not use); the client's token
        // never reaches the upstream.
        assert_eq!(s.api_key.as_deref(), Some("upstream-secret"), "{s:?}");
        assert_eq!(s.authorization, None, "{s:?}");
    }
    let body: Value = bmm_runtime::serde_json::from_str(&seen[2].body).unwrap();
    assert_eq!(
        body,
        json!({"name": "rex", "photoUrls": ["https://example.com/rex.png"], "status": "pending"})
    );
    // A body that is an array in the document is one argument, sent as the whole body.
    let body: Value = bmm_runtime::serde_json::from_str(&seen[4].body).unwrap();
    assert_eq!(
        body,
        json!([{"username": "theUser", "email": "john@email.com"}, {"username": "second"}])
    );
}
