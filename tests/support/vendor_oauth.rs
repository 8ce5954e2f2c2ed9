//! The vendors' OAuth servers, stood in as far as a login goes before it waits for the user. A
//! CLI reaches them the way it reaches the internet from a VM: through an HTTP proxy
//! (`HTTPS_PROXY`), with `CONNECT host:443`. This proxy terminates that TLS itself, with a
//! certificate for the vendor's host signed by a throwaway CA that the test makes the guest
//! trust, and answers as the vendor does:
//! - Codex's device-code login (`auth.openai.com`): `POST /api/accounts/deviceauth/usercode`
//!   gives a device id and a user code; `POST /api/accounts/deviceauth/token` answers
//!   `authorization_pending` (403), as the vendor does until the user enters the code.
//!
//! Claude Code and Gemini CLI print their authorize URL before any request, so they need none.
//! The certificates are made with the `openssl` command (Debian's `openssl`, which
//! `ca-certificates` depends on).

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub const CODEX_HOST: &str = "auth.openai.com";
/// The one-time code the stub hands out.
pub const USER_CODE: &str = "MCTE-5T01";

pub struct VendorOAuth {
    pub addr: std::net::SocketAddr,
    /// The CA that signed the stub's certificate, in PEM: the guest must trust it.
    pub ca_pem: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for VendorOAuth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a certificate for `host` that it signed, in `dir`.
fn certificates(dir: &Path, host: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=master-controller test vendor CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            &format!("/CN={host}"),
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n"),
    )
    .expect("write the extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

impl VendorOAuth {
    /// Listens on `listen`, with its certificates made in `dir`.
    pub async fn start(listen: &str, dir: &Path) -> VendorOAuth {
        certificates(dir, CODEX_HOST);
        let read = |name: &str| std::fs::read(dir.join(name)).expect("a certificate file");
        let chain = vec![CertificateDer::from_pem_slice(&read("server.pem")).expect("PEM")];
        let key = PrivateKeyDer::from_pem_slice(&read("server.key")).expect("PEM key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(tunnel(stream, acceptor.clone(), shared.clone()));
            }
        });
        VendorOAuth {
            addr,
            ca_pem: String::from_utf8(read("ca.pem")).expect("PEM is text"),
            seen,
            task,
        }
    }

    /// `host path` of every request answered inside a tunnel.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// One proxy connection: `CONNECT`, then TLS, then the vendor's answers.
async fn tunnel(stream: TcpStream, acceptor: TlsAcceptor, seen: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(stream);
    let Some((request, _)) = read_head(&mut reader).await else {
        return;
    };
    let mut parts = request.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        let _ = reader
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let host = target.split(':').next().unwrap_or_default().to_string();
    if host != CODEX_HOST {
        let _ = reader
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    let mut stream = reader.into_inner();
    if stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let mut tls = BufReader::new(tls);
    while let Some((request, length)) = read_head(&mut tls).await {
        let mut body = vec![0u8; length];
        if tls.read_exact(&mut body).await.is_err() {
            return;
        }
        let path = request.split_whitespace().nth(1).unwrap_or_default();
        if let Ok(mut seen) = seen.lock() {
            seen.push(format!("{host} {path}"));
        }
        let (status, answer) = answer(path);
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if tls.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The vendor's answer to `path`.
fn answer(path: &str) -> (&'static str, String) {
    if path.ends_with("/deviceauth/usercode") {
        let body = serde_json::json!({
            "device_auth_id": "dev_mc_test",
            "user_code": USER_CODE,
            "interval": "5",
        });
        ("200 OK", body.to_string())
    } else if path.ends_with("/deviceauth/token") {
        (
            "403 Forbidden",
            serde_json::json!({"error": "authorization_pending"}).to_string(),
        )
    } else {
        ("404 Not Found", "{}".to_string())
    }
}

/// A request line and its `content-length`, once the head has ended.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<(String, usize)> {
    let mut request = String::new();
    if reader.read_line(&mut request).await.ok()? == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some((request.trim_end().to_string(), length));
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
}
