//! The gateway against a real store, a fake upstream proxy and a tiny origin server, all on
//! 127.0.0.1 (so the guest's address is 127.0.0.1).

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex as AsyncMutex;

use super::*;
use crate::metrics::egress::EgressRefusalLabels;
use crate::model::tables;
use crate::model::{IpLease, User, UserStatus, Vm, VmStatus};
use crate::store;
/// What the fake upstream accepts.
const PASSWORD: &str = "hunter2-upstream-secret";
const WRONG_PASSWORD: &str = "stale-but-still-secret";
const USER: &str = "user-1";
/// Generous: only for "it eventually happens", never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(3);

fn upstream(password: &str) -> Upstream {
    Upstream {
        host: "127.0.0.1".to_string(),
        user: "decodo-account".to_string(),
        password: SecretString::from(password),
    }
}

fn auth_for(password: &str) -> String {
    upstream(password)
        .authorization()
        .expose_secret()
        .to_string()
}

fn expected_auth() -> String {
    auth_for(PASSWORD)
}

/// Everything the fake upstream or origin received, one head (or tunnel payload) per entry.
type Seen = Arc<AsyncMutex<Vec<String>>>;

/// A fake upstream proxy: CONNECT with the right credentials gets 200 and an echo; a plain
/// request gets `200 via-upstream`. Wrong credentials get a 407 whose body echoes them back
/// (the worst an upstream could do), which the gateway must never pass on.
async fn fake_upstream(seen: Seen) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                seen.lock().await.push(head.clone());
                let authorized =
                    head.contains(&format!("Proxy-Authorization: {}\r\n", expected_auth()));
                if !authorized {
                    let body = format!("bad credentials: {head}");
                    let reply = format!(
                        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"{PASSWORD}\"\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                } else if head.starts_with("CONNECT ") {
                    stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
                    echo(stream).await;
                } else {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nvia-upstream")
                        .await;
                }
            });
        }
    });
    port
}

/// A tiny origin: a plain GET gets `hello`, anything else is echoed (a direct CONNECT tunnel).
async fn origin(seen: Seen) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 4];
                stream.read_exact(&mut first).await.unwrap();
                if &first == b"GET " {
                    let head = format!("GET {}", read_head(&mut stream).await);
                    seen.lock().await.push(head);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                        .await;
                } else {
                    seen.lock()
                        .await
                        .push(String::from_utf8_lossy(&first).into_owned());
                    stream.write_all(&first).await.unwrap();
                    echo(stream).await;
                }
            });
        }
    });
    port
}

async fn echo(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

struct Fixture {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    upstream_seen: Seen,
    origin_seen: Seen,
    origin_port: u16,
    cancel: CancellationToken,
    served: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Setup {
    limits: GatewayLimits,
    vm_status: VmStatus,
    /// The user's upstream port; `None` leases the fake upstream's.
    port: Option<u16>,
    /// The password the gateway is configured with.
    password: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            limits: GatewayLimits {
                header_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(2),
                ..GatewayLimits::default()
            },
            vm_status: VmStatus::Running,
            port: None,
            password: PASSWORD,
        }
    }
}

async fn fixture(setup: Setup) -> Fixture {
    let upstream_seen = Seen::default();
    let origin_seen = Seen::default();
    let upstream_port = fake_upstream(upstream_seen.clone()).await;
    let origin_port = origin(origin_seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    seed(&store, setup.vm_status, setup.port.unwrap_or(upstream_port)).await;
    let metrics = Arc::new(Metrics::new());
    let gateway = Gateway::bind(
        "127.0.0.1:0".parse().unwrap(),
        upstream(setup.password),
        // The origin is the bypassed host; everything else goes to the upstream.
        Bypass::parse("127.0.0.1").unwrap(),
        setup.limits,
        store,
        metrics.clone(),
    )
    .await
    .unwrap();
    let addr = gateway.local_addr().unwrap();
    let shared = gateway.shared.clone();
    let cancel = CancellationToken::new();
    let served = tokio::spawn(gateway.serve(cancel.clone()));
    Fixture {
        addr,
        metrics,
        shared,
        upstream_seen,
        origin_seen,
        origin_port,
        cancel,
        served: Some(served),
        _dir: dir,
    }
}

async fn seed(store: &Store, status: VmStatus, port: u16) {
    let user = User {
        status: UserStatus::Active,
        decodo_port: Some(port),
        ..crate::model::fixtures::user(USER)
    };
    let vm = Vm {
        status,
        ip_address: Some("127.0.0.1".into()),
        tap_device: None,
        ..crate::model::fixtures::vm("vm-1", USER)
    };
    let lease = IpLease {
        ip: "127.0.0.1".into(),
        vm_id: "vm-1".into(),
        leased_at_ms: 0,
    };
    store
        .write(move |tx| {
            store::put(&mut tx.open_table(tables::USERS)?, &user.id, &user)?;
            store::put(&mut tx.open_table(tables::VMS)?, &vm.id, &vm)?;
            store::put(&mut tx.open_table(tables::IP_LEASES)?, &lease.ip, &lease)?;
            Ok::<_, store::StoreError>(())
        })
        .await
        .unwrap();
}

impl Fixture {
    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// Sends `request` and reads everything until the gateway closes.
    async fn exchange(&self, request: &[u8]) -> String {
        let mut client = self.connect().await;
        client.write_all(request).await.unwrap();
        read_all(&mut client).await
    }

    fn refused(&self, reason: &str) -> u64 {
        self.metrics
            .egress
            .refused
            .get_or_create(&EgressRefusalLabels {
                reason: reason.into(),
            })
            .get()
    }

    fn connections(&self, route: &str) -> u64 {
        self.metrics
            .egress
            .connections
            .get_or_create(&EgressConnectionLabels {
                user_id: USER.into(),
                route: route.into(),
            })
            .get()
    }

    fn bytes(&self, direction: &str) -> u64 {
        self.metrics
            .egress
            .bytes
            .get_or_create(&EgressBytesLabels {
                user_id: USER.into(),
                direction: direction.into(),
            })
            .get()
    }
}

async fn read_all(client: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut out))
        .await
        .expect("the gateway closed the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads exactly `n` bytes within the patience bound.
async fn read_n(client: &mut TcpStream, n: usize) -> String {
    let mut out = vec![0u8; n];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn assert_no_secret(text: &str, password: &str) {
    let auth = auth_for(password);
    let base64 = auth.trim_start_matches("Basic ");
    assert!(!text.contains(PASSWORD), "password leaked: {text}");
    assert!(!text.contains(base64), "credentials leaked: {text}");
}

const ESTABLISHED: &str = "HTTP/1.1 200 Connection established\r\n\r\n";

#[tokio::test]
async fn connect_through_the_upstream() {
    let f = fixture(Setup::default()).await;
    let mut client = f.connect().await;
    // The tunnel's first bytes ride along with the head.
    client
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic Z3Vlc3Q6cHc=\r\n\r\nearly")
        .await
        .unwrap();
    assert_eq!(read_n(&mut client, ESTABLISHED.len()).await, ESTABLISHED);
    assert_eq!(read_n(&mut client, 5).await, "early");
    client.write_all(b"ping").await.unwrap();
    assert_eq!(read_n(&mut client, 4).await, "ping");
    drop(client);

    let seen = f.upstream_seen.lock().await.clone();
    assert_eq!(
        seen,
        [format!(
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: {}\r\n\r\n",
            expected_auth()
        )]
    );
    assert_eq!(f.connections("upstream"), 1);
    assert!(f.bytes("from_guest") >= 9);
    assert!(f.bytes("to_guest") >= 9);
    assert!(f.origin_seen.lock().await.is_empty());
}

#[tokio::test]
async fn plain_http_through_the_upstream() {
    let f = fixture(Setup::default()).await;
    let answer = f
        .exchange(b"GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\nProxy-Authorization: Basic Z3Vlc3Q6cHc=\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n")
        .await;
    assert!(answer.ends_with("via-upstream"), "{answer}");
    let seen = f.upstream_seen.lock().await.clone();
    assert_eq!(
        seen,
        [format!(
            "GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
            expected_auth()
        )]
    );
    assert_eq!(f.connections("upstream"), 1);
}

#[tokio::test]
async fn bypassed_hosts_go_direct() {
    let f = fixture(Setup::default()).await;
    let port = f.origin_port;
    let answer = f
        .exchange(format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nProxy-Authorization: Basic Z3Vlc3Q6cHc=\r\nConnection: keep-alive\r\n\r\n").as_bytes())
        .await;
    assert!(answer.ends_with("hello"), "{answer}");
    assert_eq!(
        f.origin_seen.lock().await.clone(),
        [format!(
            "GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )]
    );

    let mut client = f.connect().await;
    client
        .write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_n(&mut client, ESTABLISHED.len()).await, ESTABLISHED);
    client.write_all(b"ping").await.unwrap();
    assert_eq!(read_n(&mut client, 4).await, "ping");
    assert!(f.upstream_seen.lock().await.is_empty());
    assert_eq!(f.connections("direct"), 2);
    assert_eq!(f.connections("upstream"), 0);
}

#[tokio::test]
async fn a_source_without_a_running_vm_is_refused() {
    let f = fixture(Setup {
        vm_status: VmStatus::Stopped,
        ..Setup::default()
    })
    .await;
    let answer = f
        .exchange(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.contains("no running VM"), "{answer}");
    assert_eq!(f.refused("unknown_source"), 1);
    assert!(f.upstream_seen.lock().await.is_empty());
}

#[tokio::test]
async fn bad_and_oversized_and_slow_heads() {
    let mut setup = Setup::default();
    setup.limits.max_header_bytes = 1024;
    setup.limits.header_timeout = Duration::from_millis(300);
    let f = fixture(setup).await;
    let big = format!(
        "GET http://example.com/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let answer = f.exchange(big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_eq!(f.refused("header_too_large"), 1);

    let answer = f.exchange(b"GET /index.html HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    let answer = f.exchange(b"GET http://example.com/ HT").await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_eq!(f.refused("header_timeout"), 1);
    assert!(f.upstream_seen.lock().await.is_empty());
}

#[tokio::test]
async fn connections_per_vm_are_bounded_and_given_back() {
    let mut setup = Setup::default();
    setup.limits.connections_per_vm = 2;
    let f = fixture(setup).await;
    let held = [f.connect().await, f.connect().await];
    let mut third = f.connect().await;
    let answer = read_all(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert_eq!(f.refused("vm_connection_limit"), 1);
    drop(held);
    tokio::time::timeout(PATIENCE, async {
        while !f.shared.open.lock().unwrap().per_ip.is_empty()
            || f.metrics.egress.active_connections.get() != 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every connection gave its place back");
    assert_eq!(f.shared.open.lock().unwrap().total, 0);
}

#[tokio::test]
async fn upstream_refusals_never_show_the_credentials() {
    // The gateway holds a password the upstream does not accept: it answers 407, echoing the
    // credentials it got in its headers and body.
    let f = fixture(Setup {
        password: WRONG_PASSWORD,
        ..Setup::default()
    })
    .await;
    for request in [
        &b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"[..],
        b"GET http://example.com/ HTTP/1.1\r\n\r\n",
    ] {
        let answer = f.exchange(request).await;
        assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
        assert!(answer.contains("upstream proxy answered 407"), "{answer}");
        assert!(!answer.contains("Proxy-Authenticate"), "{answer}");
        assert_no_secret(&answer, WRONG_PASSWORD);
        assert_no_secret(&answer, PASSWORD);
    }
    // The upstream really did get the credentials, so they were there to leak.
    assert!(f.upstream_seen.lock().await[0].contains(&auth_for(WRONG_PASSWORD)));

    // An upstream port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    let g = fixture(Setup {
        port: Some(dead_port),
        ..Setup::default()
    })
    .await;
    for request in [
        &b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"[..],
        b"GET http://example.com/ HTTP/1.1\r\n\r\n",
    ] {
        let answer = g.exchange(request).await;
        assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
        assert!(
            answer.contains(&format!("127.0.0.1:{dead_port}")),
            "{answer}"
        );
        assert!(answer.contains("example.com:"), "{answer}");
        assert_no_secret(&answer, PASSWORD);
    }
}

#[tokio::test]
async fn a_silent_tunnel_idles_out() {
    let mut setup = Setup::default();
    setup.limits.idle_timeout = Duration::from_millis(300);
    let f = fixture(setup).await;
    let mut client = f.connect().await;
    client
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_n(&mut client, ESTABLISHED.len()).await, ESTABLISHED);
    // Nothing more is sent: the gateway closes the tunnel on its own.
    assert_eq!(read_all(&mut client).await, "");
}

#[tokio::test]
async fn cancel_stops_the_gateway_and_its_tunnels() {
    let mut f = fixture(Setup::default()).await;
    let mut client = f.connect().await;
    client
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_n(&mut client, ESTABLISHED.len()).await, ESTABLISHED);
    f.cancel.cancel();
    assert_eq!(read_all(&mut client).await, "");
    let served = f.served.take().unwrap();
    tokio::time::timeout(PATIENCE, served)
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(f.addr).await.is_err(), "still listening");
}
