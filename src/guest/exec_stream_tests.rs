//! `collect_output` against a hostile agent: one that floods an exec's output, and one that
//! ignores the cancel and never sends the exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixListener;
use tokio_util::codec::Framed;

use super::*;
use crate::guest::client::{AgentClient, AgentEndpoint};
use crate::guest::messages::{ExecRequest, Hello, HelloOk, Response};
use crate::guest::{Frame, FrameCodec, FrameKind};

#[derive(Clone, Copy)]
enum Hostile {
    /// 64 KiB stdout chunks as fast as the host takes them, up to 64 MiB (so that a host
    /// without the cap fails by waiting, not by exhausting the test machine's memory), then
    /// silence without an exit.
    Flood,
    /// A few bytes every 50 ms, for ever.
    Trickle,
}

/// Serves one connection: the handshake, the exec's start, then output without end; any
/// further request (a cancel) is counted and otherwise ignored.
async fn hostile_agent(listener: UnixListener, how: Hostile, requests: Arc<AtomicUsize>) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    let mut framed = Framed::new(stream, FrameCodec::default());
    let Some(Ok(hello)) = framed.next().await else {
        return;
    };
    let Ok(hello) = hello.parse::<Hello>() else {
        return;
    };
    let ok = HelloOk {
        nonce: hello.nonce,
        agent_version: "hostile".into(),
        boot_id: "b".into(),
        interrupted: Vec::new(),
        health: None,
        clock_error: None,
    };
    if framed
        .send(Frame::json(FrameKind::HelloOk, 0, &ok))
        .await
        .is_err()
    {
        return;
    }
    let Some(Ok(exec)) = framed.next().await else {
        return;
    };
    let id = exec.request_id;
    let started = Response::ExecStarted { pid: 1 };
    if framed
        .send(Frame::json(FrameKind::Response, id, &started))
        .await
        .is_err()
    {
        return;
    }
    let (mut sink, mut source) = framed.split();
    tokio::spawn(async move {
        while let Some(Ok(_)) = source.next().await {
            requests.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut sent = 0usize;
    loop {
        let chunk = match how {
            Hostile::Flood if sent >= 64 << 20 => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                continue;
            }
            Hostile::Flood => vec![b'y'; 64 * 1024],
            Hostile::Trickle => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                b"tick\n".to_vec()
            }
        };
        sent += chunk.len();
        if sink
            .send(Frame::new(FrameKind::Stdout, id, chunk))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn exec_on(how: Hostile) -> (ExecStream, Arc<AtomicUsize>, AgentClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let requests = Arc::new(AtomicUsize::new(0));
    tokio::spawn(hostile_agent(listener, how, requests.clone()));
    let client = AgentClient::connect(&AgentEndpoint::Unix(path), "t", Duration::from_secs(10))
        .await
        .expect("connect");
    let stream = client
        .exec(ExecRequest {
            argv: vec!["yes".into()],
            ..ExecRequest::default()
        })
        .await
        .expect("exec");
    (stream, requests, client, dir)
}

#[tokio::test]
async fn a_flood_is_cut_at_the_cap_and_cancelled() {
    let (stream, requests, _client, _dir) = exec_on(Hostile::Flood).await;
    let bounds = OutputBounds {
        max_bytes: 1 << 20,
        deadline: Duration::from_secs(600),
        grace: Duration::from_secs(5),
    };
    let output = tokio::time::timeout(Duration::from_secs(120), stream.collect_output(bounds))
        .await
        .expect("collect_output returned")
        .expect("output");
    assert!(output.truncated);
    assert_eq!(output.stdout.len(), 1 << 20);
    assert!(output.status.is_none());
    // The cancel went out, without waiting for an answer that would never come.
    for _ in 0..100 {
        if requests.load(Ordering::SeqCst) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no cancel reached the agent");
}

#[tokio::test]
async fn an_ignored_cancel_ends_the_wait_after_the_grace() {
    let (stream, requests, _client, _dir) = exec_on(Hostile::Trickle).await;
    let bounds = OutputBounds {
        max_bytes: 1 << 20,
        deadline: Duration::from_millis(500),
        grace: Duration::from_millis(500),
    };
    let output = tokio::time::timeout(Duration::from_secs(120), stream.collect_output(bounds))
        .await
        .expect("collect_output returned after its deadline")
        .expect("output");
    assert!(output.timed_out);
    assert!(!output.truncated);
    assert!(output.status.is_none());
    assert!(output.stdout.starts_with(b"tick\n"));
    assert!(requests.load(Ordering::SeqCst) >= 1, "a cancel was sent");
}
