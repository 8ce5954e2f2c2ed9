//! Real guests: the test image booted by the QEMU backend under TCG, driven through the agent
//! over the real virtio-serial channel. The cases run one after another on one VM (TCG is
//! CPU-heavy), inside a network namespace this process creates for itself and that vanishes with
//! it.
//!
//! Without QEMU, the image or root, the binary says what is missing and skips; with
//! `MC_REQUIRE_GUESTS=1` (set by scripts/test.sh) a missing prerequisite is a failure instead.

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use master_controller::guest::client::{AgentClient, AgentEndpoint, ExecEvent, GuestError};
use master_controller::guest::messages::{ExecRequest, NetworkConfig, PtySize};
use master_controller::guest::{Frame, FrameKind};
use master_controller::vmm::qemu::{self, QemuBackend, QemuConfig};
use master_controller::vmm::{Hypervisor, VmHandle, VmSpec, disks};
use support::{harness, vmhost};

const AGENT_DEADLINE: Duration = Duration::from_secs(90);

struct Guest {
    backend: QemuBackend,
    spec: VmSpec,
    vm: Option<VmHandle>,
    client: Option<AgentClient>,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn vm(&mut self) -> &mut VmHandle {
        self.vm.as_mut().expect("VM running")
    }

    fn client(&self) -> &AgentClient {
        self.client.as_ref().expect("agent connected")
    }

    async fn connect(&mut self) {
        let endpoint = self.vm().agent.clone();
        let client = AgentClient::connect(&endpoint, &self.spec.agent_token, AGENT_DEADLINE)
            .await
            .expect("agent answers");
        self.client = Some(client);
    }
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..ExecRequest::default()
    }
}

async fn run_sh(client: &AgentClient, script: &str) -> (String, i32) {
    let output = client
        .exec(sh(script))
        .await
        .expect("exec")
        .collect_output(roomy())
        .await
        .expect("output");
    let code = output.status.and_then(|s| s.code).unwrap_or(-1);
    (String::from_utf8_lossy(&output.stdout).to_string(), code)
}

type Case = harness::Case<Guest>;

async fn boot(guest: &mut Guest) {
    let started = Instant::now();
    guest.vm = Some(guest.backend.boot(&guest.spec).await.expect("boot"));
    guest.connect().await;
    let health = guest.client().health().await.expect("health");
    eprintln!(
        "    boot to agent health: {:?} (boot id {})",
        started.elapsed(),
        health.boot_id
    );
    assert_eq!(health.hostname, "guest-one");
    assert!(health.mem_total_kib > 100_000, "{health:?}");
}

async fn exec_streams_uname(guest: &mut Guest) {
    let mut stream = guest
        .client()
        .exec(ExecRequest {
            argv: vec!["uname".into(), "-a".into()],
            ..ExecRequest::default()
        })
        .await
        .expect("exec");
    let mut chunks = 0;
    let mut text = String::new();
    let mut exit = None;
    while let Some(event) = stream.next().await {
        match event.expect("event") {
            ExecEvent::Stdout(chunk) => {
                chunks += 1;
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exit(status) => exit = Some(status),
        }
    }
    assert!(chunks >= 1);
    assert!(text.starts_with("Linux guest-one 6.1"), "{text}");
    assert_eq!(exit.expect("exit").code, Some(0));
}

async fn ten_megabytes_arrive_intact(guest: &mut Guest) {
    let client = guest.client();
    let (sum, code) = run_sh(
        client,
        "head -c 10485760 /dev/urandom > /tmp/big && sha256sum /tmp/big",
    )
    .await;
    assert_eq!(code, 0);
    let expected = sum.split_whitespace().next().expect("sum").to_string();
    let started = Instant::now();
    let output = client
        .exec(sh("cat /tmp/big"))
        .await
        .expect("exec")
        .collect_output(roomy())
        .await
        .expect("output");
    eprintln!("    10 MB through the agent in {:?}", started.elapsed());
    assert_eq!(output.stdout.len(), 10 * 1024 * 1024);
    let mut hasher = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    std::io::Write::write_all(&mut hasher.stdin.take().expect("stdin"), &output.stdout)
        .expect("hash input");
    let actual = hasher.wait_with_output().expect("hash");
    assert_eq!(
        String::from_utf8_lossy(&actual.stdout)
            .split_whitespace()
            .next(),
        Some(expected.as_str())
    );
}

async fn files_round_trip(guest: &mut Guest) {
    let client = guest.client();
    let content: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    client
        .write_file("/data/dir/blob.bin", &content, 0o600)
        .await
        .expect("write");
    assert_eq!(
        client
            .read_file("/data/dir/blob.bin", 1 << 20)
            .await
            .expect("read"),
        content
    );
    let (mode, _) = run_sh(client, "stat -c %a /data/dir/blob.bin").await;
    assert_eq!(mode.trim(), "600");
}

async fn cancel_stops_sleep(guest: &mut Guest) {
    let client = guest.client();
    let mut stream = client.exec(sh("sleep 1000")).await.expect("exec");
    let started = Instant::now();
    client.cancel(stream.id).await.expect("cancel");
    let mut status = None;
    while let Some(event) = stream.next().await {
        if let ExecEvent::Exit(s) = event.expect("event") {
            status = Some(s);
        }
    }
    let took = started.elapsed();
    eprintln!("    cancel of sleep 1000 took effect in {took:?}");
    assert!(status.expect("exit").cancelled);
    let (left, _) = run_sh(client, "pgrep -x sleep || true").await;
    assert!(left.trim().is_empty(), "sleep survived: {left}");
}

async fn pty_and_network(guest: &mut Guest) {
    let client = guest.client();
    let output = client
        .exec(ExecRequest {
            pty: Some(PtySize {
                rows: 30,
                cols: 100,
            }),
            ..sh("tty && stty size")
        })
        .await
        .expect("exec")
        .collect_output(roomy())
        .await
        .expect("output");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("/dev/pts/") && text.contains("30 100"),
        "{text}"
    );
    client
        .configure_network(NetworkConfig {
            interface: "eth0".into(),
            address: "10.213.0.2/24".into(),
            gateway: Some(vmhost::BRIDGE_ADDR.into()),
            dns: vec![vmhost::BRIDGE_ADDR.into()],
            hostname: None,
            mac: None,
        })
        .await
        .expect("configure network");
    let (out, code) = run_sh(client, &format!("ping -c 1 -W 5 {}", vmhost::BRIDGE_ADDR)).await;
    assert_eq!(code, 0, "guest cannot reach the gateway: {out}");
}

async fn hibernate_and_resume(guest: &mut Guest) {
    let client = guest.client();
    let before = client.health().await.expect("health");
    client
        .write_file("/data/before-hibernate", b"kept on disk", 0o644)
        .await
        .expect("write");
    client
        .write_file("/tmp/in-memory", b"kept in RAM", 0o644)
        .await
        .expect("write");
    // Left running across the snapshot: the agent must report it as interrupted.
    let in_flight = client.exec(sh("sleep 1000")).await.expect("exec");
    let in_flight_id = in_flight.id;
    guest.client = None;
    drop(in_flight);
    let vm = guest.vm.take().expect("vm");
    let started = Instant::now();
    let image = guest
        .backend
        .hibernate(&guest.spec, vm)
        .await
        .expect("hibernate");
    eprintln!(
        "    hibernate: {:?}, {} MB image",
        started.elapsed(),
        image.state_bytes >> 20
    );

    // Resume on a different tap, as after a restart that reallocated it.
    vmhost::add_tap("mctap1");
    let tap0 = guest
        .spec
        .net
        .as_ref()
        .map(|n| n.tap.clone())
        .unwrap_or_default();
    vmhost::remove_tap(&tap0);
    if let Some(net) = guest.spec.net.as_mut() {
        net.tap = "mctap1".into();
    }
    let started = Instant::now();
    guest.vm = Some(guest.backend.resume(&guest.spec).await.expect("resume"));
    guest.connect().await;
    let after = guest.client().health().await.expect("health");
    eprintln!("    resume to agent health: {:?}", started.elapsed());
    assert_eq!(
        after.boot_id, before.boot_id,
        "the resumed guest is the same boot"
    );
    let interrupted = &guest.client().hello().interrupted;
    assert!(
        interrupted
            .iter()
            .any(|w| w.request_id == in_flight_id && w.op == "exec"),
        "the exec running across the snapshot is not reported: {interrupted:?}"
    );
    assert!(
        after.uptime_sec >= before.uptime_sec,
        "uptime went back: {} < {}",
        after.uptime_sec,
        before.uptime_sec
    );
    let client = guest.client();
    assert_eq!(
        client
            .read_file("/data/before-hibernate", 100)
            .await
            .expect("read"),
        b"kept on disk"
    );
    assert_eq!(
        client.read_file("/tmp/in-memory", 100).await.expect("read"),
        b"kept in RAM"
    );
    let (out, code) = run_sh(client, &format!("ping -c 1 -W 5 {}", vmhost::BRIDGE_ADDR)).await;
    assert_eq!(code, 0, "network after resume: {out}");
}

async fn bad_frames_and_wrong_token(guest: &mut Guest) {
    let endpoint = guest.vm().agent.clone();
    let (pid_before, _) = run_sh(guest.client(), "pidof vm-agent").await;
    guest.client = None;
    match AgentClient::connect(&endpoint, "wrongtoken", Duration::from_secs(20)).await {
        Err(GuestError::Refused(body)) => assert_eq!(body.code, "unauthenticated"),
        other => panic!("wrong token not refused: {:?}", other.map(|_| ())),
    }
    let AgentEndpoint::Unix(path) = &endpoint else {
        unreachable!()
    };
    {
        use tokio::io::AsyncWriteExt;
        let mut raw = tokio::net::UnixStream::connect(path)
            .await
            .expect("connect");
        raw.write_all(b"\x00\xffnot a frame at all, just noise\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    guest.connect().await;
    let client = guest.client();
    client
        .send_raw(Frame::new(FrameKind::Request, 77, &b"{not json"[..]))
        .await
        .expect("send");
    client.health().await.expect("agent still answers");
    let (pid_after, _) = run_sh(client, "pidof vm-agent").await;
    assert_eq!(pid_before.trim(), pid_after.trim(), "the agent restarted");
    assert!(!pid_after.trim().is_empty());
}

async fn adopt_after_a_restart(guest: &mut Guest) {
    let before = guest.client().health().await.expect("health");
    guest.client = None;
    let old = guest.vm.take().expect("vm");
    // A new backend, as after a daemon restart, that knows the VM only by its spec and pid.
    let restarted = QemuBackend::new(QemuConfig {
        binary: "qemu-system-x86_64".into(),
        accel: qemu::Accel::Tcg,
        user: Some(vmhost::TEST_QEMU_USER.into()),
    });
    assert!(
        restarted
            .adopt(&guest.spec, std::process::id())
            .await
            .is_err(),
        "a process that is not this VM's hypervisor was adopted"
    );
    let adopted = restarted.adopt(&guest.spec, old.pid).await.expect("adopt");
    drop(old);
    guest.vm = Some(adopted);
    guest.connect().await;
    let after = guest.client().health().await.expect("health");
    assert_eq!(after.boot_id, before.boot_id);
}

async fn exit_watch_sees_a_killed_qemu(guest: &mut Guest) {
    guest.client = None;
    let vm = guest.vm.as_mut().expect("vm");
    let mut exited = vm.exited.clone();
    let pid = nix::unistd::Pid::from_raw(vm.pid as i32);
    let started = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill qemu");
    while exited.borrow().is_none() {
        exited.changed().await.expect("watch");
    }
    let took = started.elapsed();
    eprintln!(
        "    exit watch saw SIGKILL after {took:?}: {}",
        exited.borrow().clone().expect("info")
    );
    assert!(exited.borrow().is_some());
    guest.vm = None;
}

fn main() -> ExitCode {
    if let Some(reason) = vmhost::missing_prerequisite() {
        return harness::missing("guests", &reason);
    }
    vmhost::enter_private_network();
    vmhost::add_tap("mctap0");
    let runtime = harness::runtime();
    let dir = tempfile::Builder::new()
        .prefix("mcg")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let data_disk = dir.path().join("data.img");
    runtime
        .block_on(disks::create_data_disk(&data_disk, 64))
        .expect("data disk");
    let mut probe = vmhost::test_spec(&dir.path().join("probe"), "unused", &data_disk);
    probe.disks.clear();
    probe.net = None;
    let accel = runtime.block_on(qemu::probe_accel(
        "qemu-system-x86_64",
        Some(vmhost::TEST_QEMU_USER.into()),
        &probe,
        Duration::from_secs(20),
    ));
    println!("guests: the KVM probe chose {accel:?}");
    let mut guest = Guest {
        backend: QemuBackend::new(QemuConfig {
            binary: "qemu-system-x86_64".into(),
            accel,
            user: Some(vmhost::TEST_QEMU_USER.into()),
        }),
        spec: vmhost::test_spec(&dir.path().join("vm"), "mctap0", &data_disk),
        vm: None,
        client: None,
        _dir: dir,
    };
    let cases: Vec<(&str, Case)> = vec![
        ("boot the test image and wait for agent health", |g| {
            Box::pin(boot(g))
        }),
        ("exec of uname -a, streamed", |g| {
            Box::pin(exec_streams_uname(g))
        }),
        ("an exec writing 10 MB to stdout arrives intact", |g| {
            Box::pin(ten_megabytes_arrive_intact(g))
        }),
        ("write-file then read-file", |g| {
            Box::pin(files_round_trip(g))
        }),
        ("cancel of sleep 1000", |g| Box::pin(cancel_stops_sleep(g))),
        ("PTY exec and configure-network", |g| {
            Box::pin(pty_and_network(g))
        }),
        (
            "hibernate then resume: same boot, uptime on, files kept",
            |g| Box::pin(hibernate_and_resume(g)),
        ),
        (
            "bad frames and a wrong token leave the agent running",
            |g| Box::pin(bad_frames_and_wrong_token(g)),
        ),
        ("a running VM is adopted after a restart", |g| {
            Box::pin(adopt_after_a_restart(g))
        }),
        ("killing QEMU is seen by the exit watch", |g| {
            Box::pin(exit_watch_sees_a_killed_qemu(g))
        }),
    ];
    let outcome = harness::run(&runtime, &mut guest, cases, |guest| {
        guest.vm.as_ref().is_some_and(|vm| !vm.has_exited())
    });
    if let Some(mut vm) = guest.vm.take() {
        let _ = runtime.block_on(guest.backend.kill(&mut vm));
    }
    outcome
}

/// Bounds no test command comes near (the 10 MiB round trip included).
fn roomy() -> master_controller::guest::client::OutputBounds {
    master_controller::guest::client::OutputBounds {
        max_bytes: 64 << 20,
        deadline: std::time::Duration::from_secs(300),
        grace: std::time::Duration::from_secs(5),
    }
}
