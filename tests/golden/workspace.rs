//! The workspace of a golden VM: a 50 MiB file up and down through the files API, streamed
//! (the daemon's memory barely moves), paths that try to leave the workspace, another user's
//! token, exec of `ls` and `id -u` in a directory as the CLI user, and a prompt whose CLI runs
//! in that directory and reads the uploaded file through its own tool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::daemon_proc::{LISTEN, SERVICE_TOKEN};
use crate::support::model_server::READ_FILE_MARKER;
use crate::support::sse::{Frame, SseStream};
use crate::world::{World, id_of};

const BIG: usize = 50 << 20;
const CHUNK: usize = 64 << 10;
/// The workspace root of the golden image's CLI user.
const ROOT: &str = "/home/dev/work";

/// Deterministic bytes that do not compress: chunk `n` of the big file.
fn chunk(n: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (n as u64 + 1);
    (0..CHUNK / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples the daemon's RSS every 50 ms until dropped; `peak` holds the highest seen.
struct RssWatch {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                seen.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssWatch { peak, task }
    }

    fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn files_url(user: &str, path: &str) -> String {
    format!("http://{LISTEN}/api/users/{user}/files/{path}")
}

async fn put(
    world: &World,
    token: &str,
    user: &str,
    path: &str,
    body: reqwest::Body,
) -> (u16, Value) {
    let response = world
        .daemon
        .http()
        .put(files_url(user, path))
        .bearer_auth(token)
        .body(body)
        .timeout(Duration::from_secs(900))
        .send()
        .await
        .expect("PUT");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(world: &World, token: &str, user: &str, path: &str) -> reqwest::Response {
    world
        .daemon
        .http()
        .get(files_url(user, path))
        .bearer_auth(token)
        .timeout(Duration::from_secs(900))
        .send()
        .await
        .expect("GET")
}

/// `POST /api/users/:user/exec` of `command` in `cwd`; its frames.
async fn exec(world: &World, user: &str, command: &str, cwd: &str) -> Vec<Frame> {
    let response = world
        .daemon
        .http()
        .post(format!("http://{LISTEN}/api/users/{user}/exec"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&json!({ "command": command, "cwd": cwd, "timeoutSec": 120 }))
        .send()
        .await
        .expect("exec");
    let stream = SseStream::new(response);
    assert_eq!(stream.status, 200);
    stream.collect().await
}

fn stdout_of(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| f.kind() == "stdout")
        .filter_map(|f| f.data["text"].as_str())
        .collect()
}

fn exit_code(frames: &[Frame]) -> Option<i64> {
    let last = frames.last()?;
    assert_eq!(last.kind(), "exit", "{frames:?}");
    last.data["exitCode"].as_i64()
}

pub async fn files_round_trip_streamed_as_the_cli_user(world: &mut World) {
    let user = world
        .cli_user
        .clone()
        .expect("the VM of the previous cases");
    let vm = id_of(&world.user_vm(&user, "", "GET").await);
    let pid = world.daemon.pid();
    let baseline = rss_kib(pid);
    let watch = RssWatch::start(pid);

    let mut sent = Sha256::new();
    for n in 0..BIG / CHUNK {
        sent.update(chunk(n));
    }
    let sent = hex(&sent.finalize());
    let body = futures_util::stream::iter(0..BIG / CHUNK)
        .map(|n| Ok::<_, std::io::Error>(bytes::Bytes::from(chunk(n))));
    let started = Instant::now();
    let (status, reply) = put(
        world,
        SERVICE_TOKEN,
        &user,
        "proj/big.bin",
        reqwest::Body::wrap_stream(body),
    )
    .await;
    assert_eq!(status, 200, "{reply}\n{}", world.daemon.log_tail());
    assert_eq!(reply["size"], BIG as u64, "{reply}");
    let up = started.elapsed();

    let started = Instant::now();
    let response = get(world, SERVICE_TOKEN, &user, "proj/big.bin").await;
    assert_eq!(response.status().as_u16(), 200);
    let mut received = Sha256::new();
    let mut size = 0usize;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.expect("a chunk of the download");
        size += piece.len();
        received.update(&piece);
    }
    let down = started.elapsed();
    let growth_mib = watch.peak_kib().saturating_sub(baseline) as f64 / 1024.0;
    drop(watch);
    eprintln!(
        "    50 MiB up in {:.1} s, down in {:.1} s; daemon RSS {:.1} MiB, peak growth {growth_mib:.1} MiB",
        up.as_secs_f64(),
        down.as_secs_f64(),
        baseline as f64 / 1024.0
    );
    assert_eq!(size, BIG);
    assert_eq!(hex(&received.finalize()), sent, "byte-identical");
    assert!(
        growth_mib < 16.0,
        "the daemon's RSS grew by {growth_mib:.1} MiB moving 50 MiB"
    );

    let (code, out) = world
        .exec(
            &vm,
            &format!("stat -c '%u %g %a' {ROOT}/proj/big.bin {ROOT}/proj {ROOT}"),
        )
        .await;
    assert_eq!(code, 0, "{out}");
    for line in out.lines() {
        assert!(
            line.starts_with("1000 1000 "),
            "owned by the CLI user: {out}"
        );
    }
    let listing = get(world, SERVICE_TOKEN, &user, "proj").await;
    assert_eq!(listing.status().as_u16(), 200);
    let listing: Value = listing.json().await.expect("a listing");
    let entries = listing["entries"].as_array().expect("entries");
    assert!(
        entries
            .iter()
            .any(|e| e["name"] == "big.bin" && e["size"] == BIG as u64),
        "{listing}"
    );
    let removed = world
        .daemon
        .call(
            "DELETE",
            &format!("/api/users/{user}/files/proj/big.bin"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(removed.status, 200, "{:?}", removed.json);
    let gone = get(world, SERVICE_TOKEN, &user, "proj/big.bin").await;
    assert_eq!(gone.status().as_u16(), 404);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `..`, an absolute path, and a symlink made in the guest that points out of the workspace
/// are refused for every verb; another user's token gets 403.
pub async fn paths_that_leave_the_workspace_are_refused(world: &mut World) {
    let user = world
        .cli_user
        .clone()
        .expect("the user of the previous case");
    let frames = exec(
        world,
        &user,
        "ln -s /etc escape && ln -s /root rootlink && ls -l",
        "proj",
    )
    .await;
    assert_eq!(exit_code(&frames), Some(0), "{frames:?}");
    for path in [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "proj/..%2F..%2Fsecret",
        "%2Fetc%2Fpasswd",
        "proj/escape/passwd",
        "proj/rootlink/x",
    ] {
        let response = get(world, SERVICE_TOKEN, &user, path).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "GET {path}: {body}");
        let (status, body) = put(
            world,
            SERVICE_TOKEN,
            &user,
            path,
            reqwest::Body::from("nope"),
        )
        .await;
        assert_eq!(status, 400, "PUT {path}: {body}");
        let removed = world
            .daemon
            .call(
                "DELETE",
                &format!("/api/users/{user}/files/{path}"),
                SERVICE_TOKEN,
                None,
            )
            .await;
        assert_eq!(removed.status, 400, "DELETE {path}: {:?}", removed.json);
    }
    let escaped = get(world, SERVICE_TOKEN, &user, "proj/escape/passwd").await;
    let body: Value = escaped.json().await.unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], "path_escapes", "{body}");
    // The link itself may go: it is in the workspace.
    let removed = world
        .daemon
        .call(
            "DELETE",
            &format!("/api/users/{user}/files/proj/rootlink"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(removed.status, 200, "{:?}", removed.json);

    let other = world.new_user().await;
    let minted = world
        .daemon
        .call(
            "POST",
            &format!("/api/users/{other}/tokens"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(minted.status, 201, "{:?}", minted.json);
    let token = minted.json["token"].as_str().expect("token").to_string();
    let response = get(world, &token, &user, "proj").await;
    assert_eq!(response.status().as_u16(), 403);
    let (status, _) = put(world, &token, &user, "proj/x", reqwest::Body::from("x")).await;
    assert_eq!(status, 403);
    // Its own workspace: a VM is made for it, and the root, made on first use, is listed.
    let own = get(world, &token, &other, "").await;
    let status = own.status().as_u16();
    let listing: Value = own.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "a user token reaches its own files: {listing}");
    assert_eq!(listing["entries"], json!([]), "{listing}");
    let destroyed = world.user_vm(&other, "", "DELETE").await;
    assert_eq!(destroyed["status"], "destroyed", "{destroyed}");
}

/// An uploaded file is where exec and a prompt's CLI see it, both running as the CLI user in
/// the directory asked for.
pub async fn exec_and_a_prompt_work_in_the_directory_as_the_cli_user(world: &mut World) {
    let user = world
        .cli_user
        .clone()
        .expect("the user of the previous cases");
    let secret = "WORKSPACE-CONTENT-5d1c";
    let (status, reply) = put(
        world,
        SERVICE_TOKEN,
        &user,
        "proj/notes.txt",
        reqwest::Body::from(format!("{secret}\n")),
    )
    .await;
    assert_eq!(status, 200, "{reply}");

    let frames = exec(world, &user, "ls; id -u; pwd; stat -c %U notes.txt", "proj").await;
    assert_eq!(exit_code(&frames), Some(0), "{frames:?}");
    let out = stdout_of(&frames);
    assert!(out.lines().any(|l| l == "notes.txt"), "{out}");
    assert!(
        out.lines().any(|l| l == "1000"),
        "id -u is the CLI user's: {out}"
    );
    assert!(out.contains(&format!("{ROOT}/proj")), "{out}");
    assert!(out.lines().any(|l| l == "dev"), "{out}");
    assert_eq!(frames.first().map(Frame::kind), Some("started"));

    let file = format!("{ROOT}/proj/notes.txt");
    let frames = world
        .daemon
        .execute_prompt(json!({
            "userId": user, "provider": "claude_code", "cwd": "proj",
            "prompt": format!("Read the file. {READ_FILE_MARKER}{file}"),
        }))
        .await;
    assert_eq!(
        frames.last().map(Frame::kind),
        Some("done"),
        "{frames:?}\n{}",
        world.daemon.log_tail()
    );
    assert!(
        frames
            .iter()
            .any(|f| f.data["kind"] == "tool_use" && f.data["name"] == "Read"),
        "the CLI called its Read tool: {frames:?}"
    );
    let seen = world.server.seen();
    let answered = seen
        .iter()
        .rev()
        .find(|r| r.path.starts_with("/v1/messages") && r.body.contains("tool_result"))
        .expect("a request with the tool's result");
    assert!(
        answered.body.contains(secret),
        "the CLI read the uploaded file in its cwd: {}",
        &answered.body[..answered.body.len().min(3000)]
    );
    // Its session lives in the CLI user's HOME, owned by it.
    let vm = id_of(&world.user_vm(&user, "", "GET").await);
    let (code, out) = world
        .exec(
            &vm,
            "stat -c '%U' /home/dev/.claude /home/dev/.claude/projects/*proj/*.jsonl",
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().all(|l| l == "dev"), "{out}");
}
