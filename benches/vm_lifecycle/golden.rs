//! The golden image's rows: a create from the golden snapshot, hibernate and resume through the
//! API of a daemon in this process, and the first content of a real Claude Code prompt after a
//! resume, each against the raw operation in the same run:
//! - create: QEMU started `-incoming` from the golden state with a copy of its data disk, then
//!   `cont`;
//! - hibernate and resume: raw QMP on that guest, as for the test image;
//! - first content after a resume: the same CLI, with the same command and environment, run
//!   through the agent on the raw guest, until its first line carrying the answer.
//!
//! Skipped, with a message, when no golden image is built (`image/build-golden.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use master_controller::guest::client::{AgentClient, ExecEvent};
use master_controller::guest::messages::{ExecRequest, NetworkConfig};
use master_controller::providers::{self, Endpoint, Invocation};
use master_controller::vmm::qemu::QemuBackend;
use master_controller::vmm::{DiskSpec, NetSpec, VmSpec};

use crate::raw::{raw_hibernate, raw_resume};
use crate::support::model_server::ModelServer;
use crate::support::sse::SseStream;
use crate::support::{SERVICE_TOKEN, TestDaemon, vmhost};

const BRIDGE: &str = "mcbench1";
const GATEWAY: &str = "10.218.0.1";
const RAW_TAP: &str = "mcbenchraw";
const RAW_ADDRESS: &str = "10.218.0.250/24";
const MODEL_KEY: &str = "bench-model-key";
const WORDS: [&str; 3] = ["Golden", " bench", " answer."];

#[derive(Default)]
pub struct Samples {
    pub create: Vec<Duration>,
    pub hibernate: Vec<Duration>,
    pub resume: Vec<Duration>,
    pub first_content: Vec<Duration>,
}

fn image_dir() -> PathBuf {
    std::env::var_os("MC_BENCH_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("image/out/golden/current"))
}

fn daemon_env(image: &Path, model_url: &str) -> Vec<(&'static str, String)> {
    let mut env = vmhost::golden_daemon_env(image, BRIDGE, GATEWAY);
    env.extend([
        ("MC_MODEL_BASE_URL", model_url.to_string()),
        ("MC_MODEL_API_KEY", MODEL_KEY.into()),
    ]);
    env
}

fn build_snapshot(env: &[(&'static str, String)], data: &Path, snapshot: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_master-controller"))
        .arg("golden-snapshot")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("MC_DATA_DIR", data)
        .env("MC_ADMIN_TOKEN", crate::support::ADMIN_TOKEN)
        .env("GOLDEN_SNAPSHOT", snapshot)
        .output()
        .expect("run master-controller golden-snapshot");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// From `POST /api/prompts/execute` to the first `content` frame.
async fn first_content(daemon: &TestDaemon, user: &str) -> Duration {
    let started = Instant::now();
    let response = daemon
        .client
        .post(daemon.url("/api/prompts/execute"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&serde_json::json!({"userId": user, "provider": "claude_code", "prompt": "hi"}))
        .send()
        .await
        .expect("execute");
    let mut stream = SseStream::new(response);
    let mut took = None;
    while let Some(frame) = stream.next().await {
        if frame.kind() == "content" && took.is_none() {
            took = Some(started.elapsed());
        }
        assert_ne!(frame.kind(), "error", "{frame:?}");
    }
    took.expect("a content frame")
}

/// The same CLI run straight through the agent: from the exec request to its first line that
/// carries the answer.
async fn raw_first_content(agent: &AgentClient, model_url: &str) -> Duration {
    let endpoint = Endpoint {
        base_url: model_url.to_string(),
        api_key: MODEL_KEY.to_string(),
    };
    let command = providers::CLAUDE_CODE.command(&Invocation {
        prompt: "hi",
        model: None,
        home: "/root",
        cwd: "/root",
        resume: None,
        endpoint: Some(&endpoint),
    });
    for file in &command.files {
        agent
            .write_file(&file.path, file.contents.as_bytes(), file.mode)
            .await
            .expect("config file");
    }
    let started = Instant::now();
    let mut stream = agent
        .exec(ExecRequest {
            argv: command.argv.clone(),
            env: command.env.clone(),
            timeout_sec: Some(300),
            ..ExecRequest::default()
        })
        .await
        .expect("exec");
    let mut took = None;
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        match event.expect("exec event") {
            ExecEvent::Stdout(chunk) => {
                out.extend_from_slice(&chunk);
                if took.is_none() && String::from_utf8_lossy(&out).contains(WORDS[0]) {
                    took = Some(started.elapsed());
                }
            }
            ExecEvent::Exit(_) => break,
            _ => {}
        }
    }
    took.unwrap_or_else(|| panic!("no answer: {}", String::from_utf8_lossy(&out)))
}

/// The guest from the golden snapshot, started directly: `-incoming` from its state with a
/// fresh copy of its data disk, then `cont`.
fn raw_spec(image: &Path, dir: &Path, token: &str) -> VmSpec {
    VmSpec {
        vm_id: "bench-raw".into(),
        dir: dir.to_path_buf(),
        vcpus: 2,
        memory_mib: 1024,
        kernel: image.join("vmlinux"),
        initrd: Some(image.join("initramfs.cpio.gz")),
        boot_args: String::new(),
        disks: vec![
            DiskSpec {
                id: "rootfs".into(),
                path: image.join("rootfs.ext4"),
                read_only: true,
                root: true,
            },
            DiskSpec {
                id: "data".into(),
                path: dir.join("data.ext4"),
                read_only: false,
                root: false,
            },
        ],
        net: Some(NetSpec {
            tap: RAW_TAP.into(),
            mac: "06:00:0a:da:00:fa".into(),
        }),
        agent_token: token.to_string(),
    }
}

fn copy_sparse(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

pub async fn bench(cycles: usize, backend: &QemuBackend) -> Option<(Samples, Samples)> {
    let image = image_dir();
    if !image.join("rootfs.ext4").is_file() {
        eprintln!(
            "vm_lifecycle: no golden image in {} (image/build-golden.sh): golden rows skipped",
            image.display()
        );
        return None;
    }
    let image = std::fs::canonicalize(&image).expect("the golden image");
    let dir = tempfile::Builder::new()
        .prefix("mcbg")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let server = ModelServer::start_on("0.0.0.0:0", &WORDS, Duration::from_millis(5)).await;
    let model_url = format!("http://{GATEWAY}:{}", server.addr.port());
    let env = daemon_env(&image, &model_url);
    let snapshot = dir.path().join("golden/state");
    eprintln!(
        "vm_lifecycle: building the golden snapshot of {}",
        image.display()
    );
    build_snapshot(&env, &dir.path().join("snapshot-data"), &snapshot);
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(snapshot.with_file_name("state.json")).expect("meta"),
    )
    .expect("meta JSON");
    let golden_token = meta["agentToken"].as_str().expect("agentToken").to_string();

    let mut daemon_vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let snapshot_text = snapshot.display().to_string();
    daemon_vars.push(("GOLDEN_SNAPSHOT", snapshot_text.as_str()));
    let daemon = TestDaemon::start_with(&daemon_vars).await;
    ip(&["tuntap", "add", "dev", RAW_TAP, "mode", "tap"]);
    ip(&["link", "set", RAW_TAP, "master", BRIDGE, "up"]);

    let (mut ours, mut raw) = (Samples::default(), Samples::default());
    for cycle in 0..cycles {
        eprintln!("vm_lifecycle: golden cycle {}/{cycles}", cycle + 1);
        let user = daemon
            .create_user(&format!("golden-bench-{cycle}@example.com"))
            .await;
        let vm = format!("/api/users/{user}/vm");
        ours.create
            .push(crate::timed(&daemon, "POST", &vm, 201, "running").await);
        ours.hibernate.push(
            crate::timed(
                &daemon,
                "POST",
                &format!("{vm}/hibernate"),
                200,
                "hibernated",
            )
            .await,
        );
        ours.resume
            .push(crate::timed(&daemon, "POST", &format!("{vm}/resume"), 200, "running").await);
        ours.first_content.push(first_content(&daemon, &user).await);
        crate::timed(&daemon, "DELETE", &vm, 200, "destroyed").await;

        let vm_dir = dir.path().join(format!("raw-{cycle}"));
        std::fs::create_dir_all(&vm_dir).expect("raw dir");
        let spec = raw_spec(&image, &vm_dir, &golden_token);
        copy_sparse(
            &snapshot.with_file_name("state.data.ext4"),
            &vm_dir.join("data.ext4"),
        );
        let (child, took) = raw_resume(backend, &spec, &snapshot);
        raw.create.push(took);
        let state = vm_dir.join("state");
        raw.hibernate.push(raw_hibernate(&spec, child, &state));
        let (mut child, took) = raw_resume(backend, &spec, &state);
        raw.resume.push(took);
        let endpoint =
            master_controller::guest::client::AgentEndpoint::Unix(QemuBackend::agent_socket(&spec));
        let agent = AgentClient::connect(&endpoint, &golden_token, Duration::from_secs(120))
            .await
            .expect("raw agent");
        agent
            .configure_network(NetworkConfig {
                interface: "eth0".into(),
                address: RAW_ADDRESS.into(),
                gateway: Some(GATEWAY.into()),
                dns: vec![GATEWAY.into()],
                hostname: None,
                mac: Some("06:00:0a:da:00:fa".into()),
            })
            .await
            .expect("raw network");
        raw.first_content
            .push(raw_first_content(&agent, &model_url).await);
        drop(agent);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&vm_dir);
    }
    ip(&["link", "del", RAW_TAP]);
    daemon.shutdown().await;
    Some((ours, raw))
}
