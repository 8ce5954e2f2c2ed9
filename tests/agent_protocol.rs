//! The agent and the host client over a Unix socket on the host: the protocol's behaviour
//! without a VM. The same operations run inside real guests in `tests/guests.rs`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use master_controller::guest::client::{AgentClient, AgentEndpoint, ExecEvent, GuestError};
use master_controller::guest::messages::ExecRequest;
use master_controller::guest::{Frame, FrameKind};
use support::local_agent::LocalAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start_agent() -> LocalAgent {
    LocalAgent::start()
}

async fn connect(agent: &LocalAgent) -> AgentClient {
    agent.connect().await
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..ExecRequest::default()
    }
}

#[tokio::test]
async fn health_exec_and_files() {
    let agent = start_agent();
    let client = connect(&agent).await;
    let health = client.health().await.expect("health");
    assert!(!health.boot_id.is_empty());
    assert_eq!(health.boot_id, client.hello().boot_id);
    // The greeting carries the health, so a resume needs no second round trip.
    let greeted = client
        .hello()
        .health
        .as_ref()
        .expect("health with the HelloOk");
    assert_eq!(greeted.boot_id, health.boot_id);
    assert_eq!(client.hello().clock_error, None);
    assert!(health.uptime_sec > 0.0);

    let mut stream = client
        .exec(sh("echo out; echo err >&2; exit 3"))
        .await
        .expect("exec");
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.expect("event"));
    }
    assert!(
        events.contains(&ExecEvent::Stdout(Bytes::from_static(b"out\n"))),
        "{events:?}"
    );
    assert!(
        events.contains(&ExecEvent::Stderr(Bytes::from_static(b"err\n"))),
        "{events:?}"
    );
    match events.last() {
        Some(ExecEvent::Exit(status)) => assert_eq!(status.code, Some(3)),
        other => panic!("last event {other:?}"),
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/file.txt");
    let path = path.to_str().expect("utf-8");
    client
        .write_file(path, b"hello \x00 world", 0o640)
        .await
        .expect("write");
    assert_eq!(
        client.read_file(path, 1024).await.expect("read"),
        b"hello \x00 world"
    );
    let mode = std::fs::metadata(path).expect("meta").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o640
    );
    match client.read_file(path, 4).await {
        Err(GuestError::Agent(body)) => assert_eq!(body.code, "too_large"),
        other => panic!("expected too_large, got {other:?}"),
    }
    match client.read_file("/no/such/file", 10).await {
        Err(GuestError::Agent(body)) => assert_eq!(body.code, "not_found"),
        other => panic!("expected not_found, got {other:?}"),
    }
}

#[tokio::test]
async fn large_output_stdin_pty_and_timeout() {
    let agent = start_agent();
    let client = connect(&agent).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("10m");
    let output = client
        .exec(sh(&format!(
            "head -c 10485760 /dev/urandom | tee {0} | sha256sum >&2; cat {0}",
            file.display()
        )))
        .await
        .expect("exec")
        .collect_output(roomy())
        .await
        .expect("output");
    assert_eq!(output.stdout.len(), 10 * 1024 * 1024);
    let expected = String::from_utf8_lossy(&output.stderr)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let actual = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(&output.stdout)?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    assert_eq!(
        String::from_utf8_lossy(&actual.stdout)
            .split_whitespace()
            .next(),
        Some(expected.as_str())
    );

    let stream = client
        .exec(ExecRequest {
            stdin: true,
            ..sh("tr a-z A-Z")
        })
        .await
        .expect("exec");
    stream
        .write_stdin(Bytes::from_static(b"shout\n"))
        .await
        .expect("stdin");
    stream.write_stdin(Bytes::new()).await.expect("close stdin");
    assert_eq!(
        stream.collect_output(roomy()).await.expect("output").stdout,
        b"SHOUT\n"
    );

    let tty = client
        .exec(ExecRequest {
            pty: Some(master_controller::guest::messages::PtySize { rows: 24, cols: 80 }),
            ..sh("tty; stty size")
        })
        .await
        .expect("exec")
        .collect_output(roomy())
        .await
        .expect("output");
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("24 80"), "{text}");

    let started = Instant::now();
    let timed = client
        .exec(ExecRequest {
            timeout_sec: Some(1),
            ..sh("sleep 1000")
        })
        .await
        .expect("exec")
        .collect_output(roomy())
        .await
        .expect("output");
    assert!(timed.status.expect("status").timed_out);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn cancel_kills_the_process_group() {
    let agent = start_agent();
    let client = connect(&agent).await;
    let marker = format!("/tmp/mc-cancel-{}", std::process::id());
    let mut stream = client
        .exec(sh(&format!("(sleep 1000; touch {marker}) & sleep 1000")))
        .await
        .expect("exec");
    let cancelled_at = Instant::now();
    client.cancel(stream.id).await.expect("cancel");
    let mut status = None;
    while let Some(event) = stream.next().await {
        if let ExecEvent::Exit(s) = event.expect("event") {
            status = Some(s);
        }
    }
    let status = status.expect("exit");
    assert!(status.cancelled);
    eprintln!("cancel took {:?}", cancelled_at.elapsed());
    // The background sleep was in the group too: nothing of it may remain.
    let survivors = Command::new("pgrep")
        .args(["-f", &format!("touch {marker}")])
        .output()
        .expect("pgrep");
    assert!(survivors.stdout.is_empty(), "process group survived cancel");
}

#[tokio::test]
async fn wrong_token_and_bad_frames_do_not_crash_the_agent() {
    let agent = start_agent();
    match AgentClient::connect(&agent.endpoint, "wrong-token", Duration::from_secs(5)).await {
        Err(GuestError::Refused(body)) => assert_eq!(body.code, "unauthenticated"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }

    let AgentEndpoint::Unix(path) = &agent.endpoint else {
        unreachable!()
    };
    // Garbage before any Hello: an error frame, then the connection closes.
    let mut raw = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
        .await
        .expect("agent closes the connection")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answer).contains("bad_frame"),
        "{answer:?}"
    );

    // A request frame before Hello is refused.
    let mut raw = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    let mut encoded = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut master_controller::guest::FrameCodec::default(),
        Frame::new(FrameKind::Request, 5, &br#"{"op":"health"}"#[..]),
        &mut encoded,
    )
    .expect("encode");
    raw.write_all(&encoded).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
        .await
        .expect("closed")
        .expect("read");
    assert!(String::from_utf8_lossy(&answer).contains("unauthenticated"));

    // After authentication: an unknown op is an error for that request only; a host-only frame
    // kind is refused; the connection still works.
    let client = connect(&agent).await;
    client
        .send_raw(Frame::new(
            FrameKind::Request,
            999,
            &br#"{"op":"format_disk"}"#[..],
        ))
        .await
        .expect("send");
    client
        .send_raw(Frame::new(FrameKind::Exit, 998, Bytes::new()))
        .await
        .expect("send");
    client.health().await.expect("still healthy");
    assert!(agent_alive(&agent));
}

#[tokio::test]
async fn work_in_flight_when_the_host_leaves_is_reported_as_interrupted() {
    let agent = start_agent();
    let client = connect(&agent).await;
    let stream = client.exec(sh("sleep 1000")).await.expect("exec");
    let id = stream.id;
    drop(stream);
    drop(client);
    let client = loop {
        let client = connect(&agent).await;
        if !client.hello().interrupted.is_empty() {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let interrupted = &client.hello().interrupted;
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    assert_eq!(interrupted[0].request_id, id);
    assert_eq!(interrupted[0].op, "exec");
    client.health().await.expect("health");
}

fn agent_alive(agent: &LocalAgent) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.child.id() as i32), None).is_ok()
}

/// Bounds no test command comes near (the 10 MiB round trip included).
fn roomy() -> master_controller::guest::client::OutputBounds {
    master_controller::guest::client::OutputBounds {
        max_bytes: 64 << 20,
        deadline: std::time::Duration::from_secs(300),
        grace: std::time::Duration::from_secs(5),
    }
}
