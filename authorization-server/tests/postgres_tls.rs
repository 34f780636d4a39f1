//! bmm-as's TLS to PostgreSQL over real sockets: a private PostgreSQL server with
//! `ssl=on` and a certificate from a CA made here, whose pg_hba.conf accepts TLS
//! connections only (`hostssl ... trust`, `hostnossl ... reject`).
//!
//! It needs the PostgreSQL server binaries (`/usr/lib/postgresql/*/bin`). Without them it
//! passes after saying why, unless `BMM_AS_TEST_DATABASE_URL` is set: then the harness
//! (`cargo xtask test-postgres`, CI) has installed PostgreSQL and their absence fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bmm_authorization_server::store::{Client, PgStore, Store};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// `/usr/lib/postgresql/<newest>/bin`, if PostgreSQL is installed.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A CA, and a server certificate from it for `names`, as PEM (CA, server cert, key).
fn certificates(names: &[&str]) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "bmm-as test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "bmm-as test database");
    let server_pem = server.signed_by(&server_key, &issuer).unwrap().pem();
    (ca_pem, server_pem, server_key.serialize_pem())
}

/// A private PostgreSQL server with TLS only, stopped and deleted when dropped.
struct TlsPostgres {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres_user: bool,
    port: u16,
    /// The CA that signed the server's certificate (PEM file).
    ca_file: PathBuf,
}

impl TlsPostgres {
    fn start(bin: PathBuf) -> Self {
        let as_postgres_user = is_root();
        // The postgres user must reach the directory: a root's TMPDIR may be private.
        let base = if as_postgres_user {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let mut suffix = [0u8; 8];
        aws_lc_rs::rand::fill(&mut suffix).unwrap();
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let dir = base.join(format!("bmm-pg-tls-{suffix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            bin,
            dir,
            as_postgres_user,
            port: 0,
            ca_file: PathBuf::new(),
        };
        let (ca, cert, key) = certificates(&["localhost", "127.0.0.1"]);
        server.ca_file = server.dir.join("ca.pem");
        std::fs::write(&server.ca_file, ca).unwrap();
        let cert_file = server.dir.join("server.crt");
        let key_file = server.dir.join("server.key");
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            // PostgreSQL refuses a key file others can read.
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if as_postgres_user {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&server.dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres");
        }
        let data = server.dir.join("data");
        let status = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb");
        // TLS connections only; the Unix socket (psql below) is trusted.
        let hba = "local all all trust\n\
                   hostssl all scram 127.0.0.1/32 scram-sha-256\n\
                   hostssl all all 127.0.0.1/32 trust\n\
                   hostnossl all all 127.0.0.1/32 reject\n";
        let hba_file = data.join("pg_hba.conf");
        std::fs::write(&hba_file, hba).unwrap();
        if as_postgres_user {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&hba_file)
                .status()
                .unwrap();
            assert!(status.success(), "chown pg_hba.conf");
        }
        let mut last = String::new();
        for _ in 0..3 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let options = format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                server.port,
                server.dir.display(),
                cert_file.display(),
                key_file.display(),
            );
            let output = server
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(server.dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdout(Stdio::null())
                .output()
                .unwrap();
            if output.status.success() {
                return server;
            }
            last = String::from_utf8_lossy(&output.stderr).into_owned();
        }
        let log = std::fs::read_to_string(server.dir.join("postgres.log")).unwrap_or_default();
        panic!("pg_ctl start: {last}\n--- PostgreSQL log ---\n{log}");
    }

    /// Runs `sql` as the superuser over the Unix socket (no TLS there).
    fn psql(&self, sql: &str) {
        let output = self
            .command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql -c {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A PostgreSQL binary, run as the `postgres` user when we are root.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect_error(url: &str, ca_file: Option<&Path>) -> String {
    match PgStore::connect(url, 1, ca_file).await {
        Ok(_) => panic!("{url} connected; it must be refused"),
        Err(e) => {
            let error = e.to_string();
            eprintln!("refused as it must be: {error}");
            error
        }
    }
}

#[tokio::test]
async fn the_store_speaks_verified_tls_to_postgres_and_refuses_anything_less() {
    let Some(bin) = postgres_bin() else {
        assert!(
            std::env::var_os("BMM_AS_TEST_DATABASE_URL").is_none(),
            "BMM_AS_TEST_DATABASE_URL is set but no /usr/lib/postgresql/*/bin/initdb exists: the TLS test cannot start its server"
        );
        eprintln!(
            "SKIPPED: no PostgreSQL server binaries (/usr/lib/postgresql/*/bin); `cargo xtask test-postgres` installs them"
        );
        return;
    };
    let server = TlsPostgres::start(bin);
    let port = server.port;
    let ca = server.ca_file.as_path();
    server.psql("CREATE DATABASE bmm_tls");
    server.psql("CREATE ROLE scram LOGIN PASSWORD 'scram-pw'");
    server.psql("CREATE DATABASE bmm_scram OWNER scram");

    // Verified against the CA file, by IP address: the store opens (migrations run over
    // TLS) and a client round-trips.
    let url = format!("postgres://postgres@127.0.0.1:{port}/bmm_tls?sslmode=require");
    let store = PgStore::connect(&url, 2, Some(ca)).await.unwrap();
    let client = Client {
        client_id: "bmm_tls_client".to_owned(),
        secret_sha256: None,
        redirect_uris: vec!["http://127.0.0.1/cb".to_owned()],
        client_name: Some("over TLS".to_owned()),
        token_endpoint_auth_method: "none".to_owned(),
        created_at: 1_700_000_000,
        grant_types: Vec::new(),
        jwks: None,
        jwks_uri: None,
        scope: None,
    };
    store.put_client(&client).await.unwrap();
    assert_eq!(store.client("bmm_tls_client").await.unwrap(), Some(client));
    drop(store);

    // By DNS name (hostaddr keeps it off IPv6), and libpq's verify-full spelling.
    let url = format!(
        "postgres://postgres@localhost:{port}/bmm_tls?sslmode=verify-full&hostaddr=127.0.0.1"
    );
    PgStore::connect(&url, 1, Some(ca)).await.unwrap();

    // SCRAM with channel binding required: the TLS stream gives tls-server-end-point.
    let url = format!(
        "postgres://scram:scram-pw@127.0.0.1:{port}/bmm_scram?sslmode=require&channel_binding=require"
    );
    PgStore::connect(&url, 1, Some(ca)).await.unwrap();

    // Without the CA file, the system's roots do not know the issuer.
    let url = format!("postgres://postgres@127.0.0.1:{port}/bmm_tls?sslmode=require");
    let error = connect_error(&url, None).await;
    assert!(
        error.contains("UnknownIssuer") || error.contains("no CA certificates"),
        "{error}"
    );
    assert!(error.contains("--database-ca-file"), "{error}");

    // A certificate for other names: the host name is checked, not only the chain.
    let url = format!(
        "postgres://postgres@db.other.example:{port}/bmm_tls?sslmode=require&hostaddr=127.0.0.1"
    );
    let error = connect_error(&url, Some(ca)).await;
    assert!(
        error.contains("not valid for name") || error.contains("NotValidForName"),
        "{error}"
    );
    assert!(error.contains("verifies the database server"), "{error}");

    // Plain text: the server refuses it (hostnossl reject), whatever bmm-as would do.
    let url = format!("postgres://postgres@127.0.0.1:{port}/bmm_tls?sslmode=disable");
    let error = connect_error(&url, None).await;
    assert!(
        error.contains("pg_hba.conf") && error.contains("no encryption"),
        "{error}"
    );
    // prefer (and no sslmode) stays plain text too: refused the same way.
    let url = format!("postgres://postgres@127.0.0.1:{port}/bmm_tls");
    let error = connect_error(&url, None).await;
    assert!(error.contains("no encryption"), "{error}");
}
