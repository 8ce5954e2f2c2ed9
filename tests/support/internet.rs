//! A stand-in for the internet, for the egress tests: a named network namespace joined to the
//! test's own by a veth pair, holding an echo HTTP server (the "sites") and real tinyproxy
//! instances with basic auth (the upstream, one instance per upstream port, each with its own
//! log). Everything is removed when the value is dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The test namespace's end of the link.
pub const HOST_SIDE: &str = "10.218.0.254";
/// A site reached through the upstream.
pub const SITE: &str = "10.218.0.1";
/// A site on the bypass list.
pub const BYPASSED_SITE: &str = "10.218.0.2";
/// Where the upstream proxies listen.
pub const UPSTREAM_HOST: &str = "10.218.0.10";
pub const SITE_PORT: u16 = 8080;
pub const UPSTREAM_USER: &str = "mc-upstream";

pub struct Internet {
    pub ns: String,
    dir: PathBuf,
    password: String,
    upstreams: BTreeMap<u16, Child>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {} failed", args.join(" "));
}

impl Internet {
    /// Creates the namespace, the link and the echo server. Call from the test's own network
    /// namespace (the veth's near end stays there).
    pub fn create(dir: PathBuf, password: &str) -> Internet {
        let ns = format!("mcinet{}", std::process::id());
        ip(&["netns", "add", &ns]);
        let internet = Internet {
            ns: ns.clone(),
            dir,
            password: password.to_string(),
            upstreams: BTreeMap::new(),
        };
        ip(&[
            "link", "add", "mcinet0", "type", "veth", "peer", "name", "mcinet1",
        ]);
        ip(&["link", "set", "mcinet1", "netns", &ns]);
        ip(&["addr", "add", &format!("{HOST_SIDE}/24"), "dev", "mcinet0"]);
        ip(&["link", "set", "mcinet0", "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["link", "set", "lo", "up"]);
        for addr in [SITE, BYPASSED_SITE, UPSTREAM_HOST] {
            inside(&["addr", "add", &format!("{addr}/24"), "dev", "mcinet1"]);
        }
        inside(&["link", "set", "mcinet1", "up"]);
        inside(&["route", "add", "default", "via", HOST_SIDE]);
        internet.start_sites();
        internet
    }

    /// The echo server, on a thread that has joined the namespace: it answers every request
    /// with the address it came from and the request head it received (`/ip`: just the address,
    /// as JSON, like an echo service).
    fn start_sites(&self) {
        let path = format!("/run/netns/{}", self.ns);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = TcpListener::bind(("0.0.0.0", SITE_PORT)).expect("bind the echo server");
            ready_tx.send(()).expect("ready");
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || echo(stream));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("echo server ready");
    }

    /// Starts the upstream proxy for `port`.
    pub fn start_upstream(&mut self, port: u16) {
        let conf = self.dir.join(format!("tinyproxy-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen {UPSTREAM_HOST}\nBind {UPSTREAM_HOST}\nTimeout 30\nMaxClients 50\n\
                 LogFile \"{}\"\nLogLevel Info\nBasicAuth {UPSTREAM_USER} {}\n\
                 Allow 10.218.0.0/24\n",
                self.log_path(port).display(),
                self.password
            ),
        )
        .expect("write tinyproxy.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "tinyproxy", "-d", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy (apt-get install tinyproxy-bin)");
        self.upstreams.insert(port, child);
        let started = Instant::now();
        while !self.upstream_log(port).contains("Accepting connections") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "tinyproxy on {port} did not start: {}",
                self.upstream_log(port)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the upstream proxy for `port`: the port is dead.
    pub fn stop_upstream(&mut self, port: u16) {
        if let Some(mut child) = self.upstreams.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self, port: u16) -> PathBuf {
        self.dir.join(format!("tinyproxy-{port}.log"))
    }

    pub fn upstream_log(&self, port: u16) -> String {
        std::fs::read_to_string(self.log_path(port)).unwrap_or_default()
    }

    /// The requests the upstream on `port` received, as its log names them.
    pub fn upstream_requests(&self, port: u16) -> Vec<String> {
        self.upstream_log(port)
            .lines()
            .filter_map(|l| l.split_once("]: Request (file descriptor "))
            .filter_map(|(_, rest)| rest.split_once("): "))
            .map(|(_, request)| request.to_string())
            .collect()
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for port in self.upstreams.keys().copied().collect::<Vec<_>>() {
            self.stop_upstream(port);
        }
        let _ = Command::new("ip").args(["link", "del", "mcinet0"]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let peer = stream
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let body = if path.ends_with("/ip") {
        format!("{{\"ip\":\"{peer}\"}}")
    } else {
        format!("peer={peer}\n{head}")
    };
    let _ = write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // The body comes late, as from a real site: a proxy that takes the guest's half-close as an
    // abort (tinyproxy does) would drop it, so the gateway must not pass that half-close on.
    std::thread::sleep(Duration::from_millis(200));
    let _ = stream.write_all(body.as_bytes());
}
