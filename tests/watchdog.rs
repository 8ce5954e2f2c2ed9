//! The binary under a fake systemd: READY=1, periodic WATCHDOG=1, then STOPPING=1 after
//! SIGTERM and exit code 0.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::ADMIN_TOKEN;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Collects notify messages until `until` matches one or the deadline passes.
fn collect(
    socket: &UnixDatagram,
    seen: &mut Vec<String>,
    until: impl Fn(&[String]) -> bool,
    deadline: Duration,
) {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while !until(seen) && started.elapsed() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                seen.push(line.to_string());
            }
        }
    }
}

#[test]
fn ready_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let mut child = Command::new(env!("CARGO_BIN_EXE_master-controller"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_clear()
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env("MC_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn daemon");

    let mut seen = Vec::new();
    let pings = |seen: &[String]| seen.iter().filter(|l| *l == "WATCHDOG=1").count();
    collect(
        &socket,
        &mut seen,
        |s| pings(s) >= 3,
        Duration::from_secs(30),
    );
    let ready_at = seen.iter().position(|l| l == "READY=1");
    let first_ping = seen.iter().position(|l| l == "WATCHDOG=1");
    assert!(ready_at.is_some(), "no READY=1 in {seen:?}");
    assert!(pings(&seen) >= 3, "fewer than 3 WATCHDOG=1 in {seen:?}");
    assert!(ready_at < first_ping, "WATCHDOG=1 before READY=1: {seen:?}");
    assert!(
        seen.iter().any(|l| l.starts_with("STATUS=serving on")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .position(|l| l.starts_with("EXTEND_TIMEOUT_USEC="))
            < ready_at,
        "start-up should extend the timeout before READY: {seen:?}"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    collect(
        &socket,
        &mut seen,
        |s| s.iter().any(|l| l == "STOPPING=1"),
        Duration::from_secs(30),
    );
    assert!(
        seen.iter().any(|l| l == "STOPPING=1"),
        "no STOPPING=1 in {seen:?}"
    );
    let status = child.wait().expect("daemon exits");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn bad_setting_exits_non_zero_with_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_master-controller"))
        .args(["serve", "--data-dir", "/tmp/unused"])
        .env_clear()
        .env("MC_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("MC_MAX_VMS", "lots")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("MC_MAX_VMS"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_master-controller"))
        .args(["serve", "--data-dir", "/tmp/unused"])
        .env_clear()
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MC_ADMIN_TOKEN"));
}

#[test]
fn cli_token_is_accepted_by_the_daemon_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_master-controller"))
        .args(["token", "--user", "user-42", "--ttl", "60", "--data-dir"])
        .arg(dir.path())
        .env_clear()
        // Not the host's installation, if it has one (its config, env and credentials).
        .env("MC_INSTALL_ROOT", dir.path())
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let signer = master_controller::tokens::TokenSigner::load(None, dir.path()).expect("key");
    let claims = signer
        .verify(&token, master_controller::model::now_ms() / 1000)
        .expect("valid token");
    assert_eq!(claims.sub, "user-42");
}
