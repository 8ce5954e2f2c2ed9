//! Egress gateway benchmark (not a timed test): what the gateway adds to a guest's request, each
//! row against the same operation without the gateway, measured in the same run.
//!
//! - a plain GET through the upstream, against the same GET sent to the upstream directly;
//! - a `CONNECT` tunnel with one request inside it, likewise;
//! - a plain GET to a bypassed host, against the GET sent to the host directly;
//! - 32 MiB down a tunnel, against the same through the upstream alone.
//!
//! The upstream is a real tinyproxy with basic auth (Debian's `tinyproxy-bin`), and the site a
//! small server in this process, all on loopback, so the guest's address is 127.0.0.1 and the
//! store says a running VM holds it. No root needed.
//!
//! `cargo bench --bench egress_gateway` (`MC_BENCH_REQUESTS`, default 300 per row).

#[path = "../tests/support/stats.rs"]
mod stats;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use master_controller::metrics::Metrics;
use master_controller::model::tables;
use master_controller::model::{IpLease, Plan, User, UserStatus, Vm, VmStatus, VmType};
use master_controller::net::egress::{Bypass, Gateway, GatewayLimits, Upstream};
use master_controller::store::{self, Store};
use secrecy::{ExposeSecret, SecretString};
use stats::{ms, percentile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const UPSTREAM_USER: &str = "bench";
/// A throwaway password for a proxy that lives only as long as this run, on 127.0.0.1.
const UPSTREAM_PASSWORD: &str = "bench-only-password";
const BULK: usize = 32 * 1024 * 1024;

#[tokio::main]
async fn main() {
    if Command::new("tinyproxy").arg("-v").output().is_err() {
        println!("skipped: tinyproxy is not installed (apt-get install tinyproxy-bin)");
        return;
    }
    let requests: usize = std::env::var("MC_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().expect("temp dir");
    // Two addresses of the site: the upstream's route, and the bypassed host.
    let site = serve_site("127.0.0.1").await;
    let bypassed = serve_site("127.0.0.2").await;
    let mut tinyproxy = Tinyproxy::start(dir.path());
    let gateway = gateway(dir.path(), tinyproxy.port).await;
    let upstream = format!("127.0.0.1:{}", tinyproxy.port);
    let auth = format!(
        "Proxy-Authorization: {}\r\n",
        upstream_settings().authorization().expose_secret()
    );
    let get = |site: &str| format!("GET http://{site}/hello HTTP/1.1\r\nHost: {site}\r\n\r\n");
    let with_auth = |head: &str| head.replacen("\r\n\r\n", &format!("\r\n{auth}\r\n"), 1);
    let proxied = get(&site);
    let tunnel = format!("CONNECT {site} HTTP/1.1\r\nHost: {site}\r\n\r\n");
    let inner = format!("GET /hello HTTP/1.0\r\nHost: {site}\r\n\r\n");
    let bypassed_get = get(&bypassed);
    let origin_form = format!("GET /hello HTTP/1.1\r\nHost: {bypassed}\r\n\r\n");
    let (proxied_with_auth, tunnel_with_auth) = (with_auth(&proxied), with_auth(&tunnel));

    println!("\n### Egress gateway ({requests} requests per row, one connection each)\n");
    println!("| operation | n | p50 ms | p95 ms | p99 ms | p50 ÷ raw p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let rows = [
        (
            "plain GET, upstream",
            sample(requests, || exchange(&upstream, &proxied_with_auth, None)).await,
            sample(requests, || exchange(&gateway, &proxied, None)).await,
        ),
        (
            "CONNECT + GET inside",
            sample(requests, || {
                exchange(&upstream, &tunnel_with_auth, Some(&inner))
            })
            .await,
            sample(requests, || exchange(&gateway, &tunnel, Some(&inner))).await,
        ),
        (
            "plain GET, bypassed host",
            sample(requests, || exchange(&bypassed, &origin_form, None)).await,
            sample(requests, || exchange(&gateway, &bypassed_get, None)).await,
        ),
    ];
    for (name, raw, through) in &rows {
        print_row(&format!("{name}: raw"), raw, None);
        print_row(
            &format!("{name}: gateway"),
            through,
            Some(percentile(raw, 0.5)),
        );
    }

    let bulk_inner = format!("GET /bulk HTTP/1.0\r\nHost: {site}\r\n\r\n");
    println!("\n| 32 MiB down a tunnel | MiB/s (best of 3) | ÷ raw |");
    println!("|---|---:|---:|");
    let raw = throughput(&upstream, &tunnel_with_auth, &bulk_inner).await;
    let through = throughput(&gateway, &tunnel, &bulk_inner).await;
    println!("| raw (tinyproxy alone) | {raw:.0} | — |");
    println!("| gateway | {through:.0} | {:.2}× |", through / raw);
    tinyproxy.stop();
}

fn print_row(name: &str, samples: &[Duration], raw_p50: Option<Duration>) {
    let ratio = raw_p50
        .map(|raw| {
            format!(
                "{:.1}×",
                percentile(samples, 0.5).as_secs_f64() / raw.as_secs_f64().max(1e-9)
            )
        })
        .unwrap_or_else(|| "—".into());
    println!(
        "| {name} | {} | {} | {} | {} | {ratio} |",
        samples.len(),
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.95)),
        ms(percentile(samples, 0.99)),
    );
}

async fn sample<F, Fut>(n: usize, op: F) -> Vec<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<u8>>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let answer = op().await;
        samples.push(started.elapsed());
        assert!(
            answer.ends_with(b"hello"),
            "unexpected answer: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    samples
}

/// One connection: `head`, then (for a tunnel, after its 200) `inner`; the whole answer.
async fn exchange(addr: &str, head: &str, inner: Option<&str>) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    if let Some(inner) = inner {
        answer = read_head(&mut stream).await;
        assert!(
            answer.starts_with(b"HTTP/1.") && answer.windows(5).any(|w| w == b" 200 "),
            "tunnel refused: {}",
            String::from_utf8_lossy(&answer)
        );
        stream.write_all(inner.as_bytes()).await.expect("send");
    }
    stream.read_to_end(&mut answer).await.expect("answer");
    answer
}

/// MiB/s for the bulk answer down a tunnel, best of three.
async fn throughput(addr: &str, head: &str, inner: &str) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("send");
        read_head(&mut stream).await;
        let started = Instant::now();
        stream.write_all(inner.as_bytes()).await.expect("send");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        assert!(got >= BULK, "only {got} bytes arrived");
        best = best.max(got as f64 / 1_048_576.0 / started.elapsed().as_secs_f64());
    }
    best
}

async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    head
}

/// The site on `ip`: `/bulk` gets `BULK` bytes, anything else `hello`; one request per
/// connection. Its address as `host:port`.
async fn serve_site(ip: &str) -> String {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind site");
    let addr = listener.local_addr().expect("site addr").to_string();
    tokio::spawn(async move {
        let bulk: Arc<[u8]> = vec![b'x'; BULK].into();
        while let Ok((mut stream, _)) = listener.accept().await {
            let bulk = bulk.clone();
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let body: &[u8] = if head.starts_with(b"GET /bulk ") {
                    &bulk
                } else {
                    b"hello"
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(body).await;
            });
        }
    });
    addr
}

fn upstream_settings() -> Upstream {
    Upstream {
        host: "127.0.0.1".into(),
        user: UPSTREAM_USER.into(),
        password: SecretString::from(UPSTREAM_PASSWORD),
    }
}

/// The gateway, with 127.0.0.2 (the site's second address) bypassed and a running VM at 127.0.0.1
/// whose user holds the upstream's port. Its address as `host:port`.
async fn gateway(dir: &Path, upstream_port: u16) -> String {
    let store = Store::open(dir).await.expect("store");
    seed(&store, upstream_port).await;
    let gateway = Gateway::bind(
        "127.0.0.1:0".parse().expect("addr"),
        upstream_settings(),
        Bypass::parse("127.0.0.2").expect("bypass"),
        GatewayLimits::default(),
        store,
        Arc::new(Metrics::new()),
    )
    .await
    .expect("bind gateway");
    let addr = gateway.local_addr().expect("gateway addr").to_string();
    // Lives as long as the benchmark's runtime.
    tokio::spawn(gateway.serve(CancellationToken::new()));
    addr
}

async fn seed(store: &Store, port: u16) {
    let user = User {
        id: "bench-user".into(),
        email: "bench@example.com".into(),
        supabase_auth_id: None,
        plan: Plan::Free,
        status: UserStatus::Active,
        decodo_port: Some(port),
        prompt_count: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
        last_active_at_ms: None,
        version: 1,
    };
    let vm = Vm {
        id: "bench-vm".into(),
        user_id: user.id.clone(),
        vm_type: VmType::Cli,
        status: VmStatus::Running,
        ip_address: Some("127.0.0.1".into()),
        tap_device: None,
        vcpus: 1,
        memory_mib: 256,
        created_at_ms: 0,
        updated_at_ms: 0,
        last_heartbeat_ms: None,
        hibernated_at_ms: None,
        version: 1,
        mac_address: None,
        pid: None,
        agent_token: "bench".into(),
        agent: None,
        needs_readdress: false,
        error: None,
        image: None,
        golden: None,
    };
    let lease = IpLease {
        ip: "127.0.0.1".into(),
        vm_id: vm.id.clone(),
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
        .expect("seed the store");
}

/// A real tinyproxy with basic auth on a free port of 127.0.0.1, killed when dropped.
struct Tinyproxy {
    child: Child,
    port: u16,
}

impl Tinyproxy {
    fn start(dir: &Path) -> Tinyproxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let conf = dir.join("tinyproxy.conf");
        let log = dir.join("tinyproxy.log");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 100\nLogLevel Warning\n\
                 LogFile \"{}\"\nBasicAuth {UPSTREAM_USER} {UPSTREAM_PASSWORD}\nAllow 127.0.0.1\n",
                log.display()
            ),
        )
        .expect("write tinyproxy.conf");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "tinyproxy did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Tinyproxy { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
    }
}
