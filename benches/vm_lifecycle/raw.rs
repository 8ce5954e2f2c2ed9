//! The raw operations the benchmark sets its figures against: QEMU started with the backend's
//! exact arguments, driven over raw QMP, with no agent client.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use master_controller::vmm::VmSpec;
use master_controller::vmm::qemu::{DiskFds, QemuBackend};

/// Raw QMP, blocking: just enough to time QEMU itself.
pub struct RawQmp(BufReader<UnixStream>);

impl RawQmp {
    pub fn connect(path: &Path) -> RawQmp {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("QMP {}: {e}", path.display()),
            }
        };
        let mut qmp = RawQmp(BufReader::new(stream));
        qmp.line();
        qmp.run(r#"{"execute":"qmp_capabilities"}"#);
        qmp
    }

    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).expect("QMP JSON")
    }

    /// Runs `getfd`, the descriptor `fd` riding along as SCM_RIGHTS: the sandboxed QEMU
    /// cannot exec `cat`, and may not be allowed to open the file itself.
    pub fn send_fd(&mut self, name: &str, fd: std::os::fd::BorrowedFd<'_>) {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        let line = format!("{{\"execute\":\"getfd\",\"arguments\":{{\"fdname\":\"{name}\"}}}}\n");
        let fds = [fd.as_raw_fd()];
        let sent = sendmsg::<()>(
            self.0.get_ref().as_raw_fd(),
            &[std::io::IoSlice::new(line.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("QMP sendmsg");
        assert_eq!(sent, line.len(), "short QMP sendmsg");
        loop {
            let reply = self.line();
            if reply.get("return").is_some() {
                return;
            }
            assert!(reply.get("error").is_none(), "getfd: {reply}");
        }
    }

    pub fn run(&mut self, command: &str) -> serde_json::Value {
        self.0
            .get_mut()
            .write_all(format!("{command}\n").as_bytes())
            .expect("QMP write");
        loop {
            let reply = self.line();
            if reply.get("return").is_some() || reply.get("error").is_some() {
                return reply;
            }
        }
    }
}

pub fn spawn_raw(backend: &QemuBackend, spec: &VmSpec, incoming: bool) -> Child {
    let _ = std::fs::remove_file(QemuBackend::qmp_socket(spec));
    let _ = std::fs::remove_file(QemuBackend::agent_socket(spec));
    let _ = std::fs::remove_file(spec.console_log());
    backend.write_boot_config(spec).expect("boot config");
    let disks = DiskFds::open(spec).expect("disks");
    let mut command = Command::new(backend.binary());
    command
        .args(backend.args(spec, incoming, &disks).expect("args"))
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    disks.inherit(&mut command);
    command.spawn().expect("spawn qemu")
}

/// Raw cold boot: until `/init` announces the agent on the console.
pub fn raw_boot(backend: &QemuBackend, spec: &VmSpec) -> (Child, Duration) {
    let started = Instant::now();
    let mut child = spawn_raw(backend, spec, false);
    while started.elapsed() < Duration::from_secs(120) {
        let console = std::fs::read_to_string(spec.console_log()).unwrap_or_default();
        if console.contains("mc-init: starting vm-agent") {
            return (child, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("raw boot hung");
}

pub fn raw_hibernate(spec: &VmSpec, mut child: Child, state: &Path) -> Duration {
    let mut qmp = RawQmp::connect(&QemuBackend::qmp_socket(spec));
    let started = Instant::now();
    qmp.run(r#"{"execute":"stop"}"#);
    qmp.run(r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":10737418240}}"#);
    let file = std::fs::File::create(state).expect("state file");
    qmp.send_fd("raw", std::os::fd::AsFd::as_fd(&file));
    qmp.run(r#"{"execute":"migrate","arguments":{"uri":"fd:raw"}}"#);
    while qmp.run(r#"{"execute":"query-migrate"}"#)["return"]["status"] != "completed" {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = qmp.0.get_mut().write_all(b"{\"execute\":\"quit\"}\n");
    let _ = child.wait();
    started.elapsed()
}

/// One echo through the agent channel, as raw as the protocol allows: connect to the channel's
/// socket, send a `Hello` with the VM's token (the agent answers nothing before it), and read
/// until its `HelloOk`. No agent client, no further request.
pub fn raw_echo(spec: &VmSpec) {
    use bytes::BytesMut;
    use master_controller::guest::frame::{Frame, FrameCodec, FrameKind};
    use master_controller::guest::messages::{Hello, HelloOk};
    use std::io::Read;
    use tokio_util::codec::{Decoder, Encoder};

    let path = QemuBackend::agent_socket(spec);
    let started = Instant::now();
    let mut stream = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("agent channel {}: {e}", path.display()),
        }
    };
    let nonce = 0x5eed_u64;
    let hello = Hello {
        token: spec.agent_token.clone(),
        nonce,
        // As every host's Hello: the clock rides along, and a resumed guest sets it.
        host_time_ms: Some(master_controller::model::now_ms()),
    };
    let mut codec = FrameCodec { resync: true };
    let mut out = BytesMut::new();
    codec
        .encode(Frame::json(FrameKind::Hello, 0, &hello), &mut out)
        .expect("encode Hello");
    stream.write_all(&out).expect("send Hello");
    let mut input = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(frame) = codec.decode(&mut input).expect("agent frame") {
            if frame.kind == FrameKind::HelloOk
                && frame.parse::<HelloOk>().expect("HelloOk").nonce == nonce
            {
                return;
            }
        }
        let n = stream.read(&mut chunk).expect("agent read");
        assert!(n > 0, "the agent channel closed before HelloOk");
        input.extend_from_slice(&chunk[..n]);
    }
}

/// Raw resume: QEMU `-incoming` from the image, `cont`, and one echo through the agent channel
/// (the least a resumed guest must do to be of use).
pub fn raw_resume(backend: &QemuBackend, spec: &VmSpec, state: &Path) -> (Child, Duration) {
    let started = Instant::now();
    let file = std::fs::File::open(state).expect("state file");
    let child = spawn_raw(backend, spec, true);
    let mut qmp = RawQmp::connect(&QemuBackend::qmp_socket(spec));
    qmp.send_fd("raw", std::os::fd::AsFd::as_fd(&file));
    qmp.run(r#"{"execute":"migrate-incoming","arguments":{"uri":"fd:raw"}}"#);
    while qmp.run(r#"{"execute":"query-status"}"#)["return"]["status"] != "paused" {
        std::thread::sleep(Duration::from_millis(2));
    }
    qmp.run(r#"{"execute":"cont"}"#);
    raw_echo(spec);
    (child, started.elapsed())
}
