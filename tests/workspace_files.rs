//! A user's workspace files through the real `vm-agent` on this host and the host's API
//! (`guest::workspace`) over the real agent channel: the file helper runs as an exec of the
//! agent's own binary, as an unprivileged user (nobody, 65534) who owns the workspace root.
//!
//! Needs root (to run the helper as another user). The agent runs in mount and UTS namespaces
//! of its own, so nothing it might write reaches the host; the workspace and the binary's copy
//! (which the unprivileged user must be able to execute, as in a guest) live in a temporary
//! directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use master_controller::guest::client::{AgentClient, AgentEndpoint};
use master_controller::guest::workspace::{self, Download, EntryKind, Workspace, WorkspaceError};
use sha2::{Digest, Sha256};

const TOKEN: &str = "workspace-test-token";
const NOBODY: u32 = 65534;

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// A copy of the agent in a directory anyone may enter, serving a socket beside it.
    fn start() -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let binary = dir.path().join("vm-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_vm-agent"), &binary).expect("copy vm-agent");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let socket = dir.path().join("agent.sock");
        let mut command = Command::new(&binary);
        command
            .args(["--channel", &format!("unix:{}", socket.display())])
            .args(["--token", TOKEN])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: between fork and exec only unshare(2) and mount(2) are called, with
        // arguments built before the fork.
        unsafe {
            command.pre_exec(|| {
                use nix::mount::{MsFlags, mount};
                use nix::sched::{CloneFlags, unshare};
                unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn vm-agent");
        Agent { child, dir }
    }

    async fn connect(&self) -> AgentClient {
        let endpoint = AgentEndpoint::Unix(self.dir.path().join("agent.sock"));
        AgentClient::connect(&endpoint, TOKEN, Duration::from_secs(10))
            .await
            .expect("agent answers")
    }

    /// A workspace root owned by nobody, and a directory beside it that is root's.
    fn workspace(&self) -> (Workspace, PathBuf, PathBuf) {
        let root = self.dir.path().join("ws");
        let outside = self.dir.path().join("outside");
        std::fs::create_dir(&root).expect("root");
        std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).expect("chown");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("secret"), b"root's").expect("secret");
        let ws = Workspace {
            root: root.display().to_string(),
            uid: NOBODY,
            gid: NOBODY,
        };
        (ws, root, outside)
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    getrandom::fill(&mut data).expect("random");
    data
}

/// `data` as an HTTP body would arrive: in uneven chunks.
fn chunked(data: &[u8]) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin {
    let chunks: Vec<Result<Bytes, String>> = data
        .chunks(100_003)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks)
}

fn code<T>(result: Result<T, WorkspaceError>) -> &'static str {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.code(),
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn helpers_running(root: &Path) -> bool {
    let found = Command::new("pgrep")
        .args(["-f", &format!("files get {}", root.display())])
        .output()
        .expect("pgrep");
    !found.stdout.is_empty()
}

#[tokio::test]
async fn files_round_trip_as_the_workspace_owner_and_stay_inside() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("MC_REQUIRE_GUESTS").as_deref() != Ok("1"),
            "needs root to run the file helper as another user"
        );
        eprintln!("SKIPPED: needs root to run the file helper as another user");
        return;
    }
    let agent = Agent::start();
    let client = agent.connect().await;
    let (ws, root, outside) = agent.workspace();

    let cwd = workspace::resolve_dir(&client, &ws, "proj/src", true)
        .await
        .expect("resolve");
    assert_eq!(PathBuf::from(&cwd), root.join("proj/src"));
    assert_eq!(std::fs::metadata(&cwd).expect("made").uid(), NOBODY);

    // Eight MiB up and down, hashed on the way down chunk by chunk.
    let data = random_bytes(8 << 20);
    let expected = Sha256::digest(&data);
    let size = workspace::upload(
        &client,
        &ws,
        "proj/data.bin",
        0o640,
        100 << 20,
        chunked(&data),
    )
    .await
    .expect("upload");
    assert_eq!(size, data.len() as u64);
    let meta = std::fs::metadata(root.join("proj/data.bin")).expect("uploaded");
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
    assert_eq!(meta.mode() & 0o777, 0o640);
    let Download::File { size, mut body } = workspace::download(&client, &ws, "proj/data.bin")
        .await
        .expect("download")
    else {
        panic!("expected a file");
    };
    assert_eq!(size, data.len() as u64);
    let (mut hasher, mut received, mut chunks) = (Sha256::new(), 0usize, 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        received += chunk.len();
        chunks += 1;
        hasher.update(&chunk);
    }
    assert_eq!(received, data.len());
    assert_eq!(hasher.finalize(), expected);
    assert!(chunks > 8, "the body came in {chunks} chunks");

    let Download::Directory { entries, truncated } = workspace::download(&client, &ws, "proj")
        .await
        .expect("listing")
    else {
        panic!("expected a listing");
    };
    assert!(!truncated);
    let summary: Vec<(&str, EntryKind, u64)> = entries
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.kind,
                if e.kind == EntryKind::File { e.size } else { 0 },
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("data.bin", EntryKind::File, 8 << 20),
            ("src", EntryKind::Dir, 0)
        ]
    );

    // Past the cap nothing is kept and the old file stands; a body that breaks off leaves
    // nothing either (the helper is cancelled and cleans up).
    let small = random_bytes(5000);
    assert_eq!(
        code(workspace::upload(&client, &ws, "proj/data.bin", 0o600, 4999, chunked(&small)).await),
        "too_large"
    );
    let broken = futures_util::stream::iter(vec![
        Ok(Bytes::from(random_bytes(70_000))),
        Err("client went away".to_string()),
    ]);
    assert_eq!(
        code(workspace::upload(&client, &ws, "proj/broken", 0o600, 1 << 20, broken).await),
        "io"
    );
    assert_eq!(names_in(&root.join("proj")), ["data.bin", "src"]);
    assert_eq!(
        std::fs::metadata(root.join("proj/data.bin"))
            .expect("kept")
            .len(),
        8 << 20
    );

    // A download abandoned half-way stops its helper.
    let Download::File { mut body, .. } = workspace::download(&client, &ws, "proj/data.bin")
        .await
        .expect("download")
    else {
        panic!("expected a file");
    };
    body.next().await.expect("a chunk").expect("chunk");
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while helpers_running(&root) {
        assert!(
            Instant::now() < deadline,
            "the abandoned download's helper still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The helper is nobody: a root-owned directory in the workspace is closed to it.
    std::fs::create_dir(root.join("roots")).expect("mkdir");
    assert_eq!(
        code(workspace::upload(&client, &ws, "roots/x", 0o644, 10, chunked(b"x")).await),
        "permission_denied"
    );

    // A symlink the user made that leads out is refused by every op; the link itself can go.
    symlink(&outside, root.join("escape")).expect("symlink");
    symlink("/etc", root.join("etc")).expect("symlink");
    assert_eq!(
        code(workspace::download(&client, &ws, "escape/secret").await),
        "path_escapes"
    );
    assert_eq!(
        code(workspace::download(&client, &ws, "etc/hostname").await),
        "path_escapes"
    );
    assert_eq!(
        code(workspace::upload(&client, &ws, "escape/new", 0o644, 10, chunked(b"x")).await),
        "path_escapes"
    );
    assert_eq!(
        code(workspace::remove(&client, &ws, "escape/secret").await),
        "path_escapes"
    );
    assert_eq!(
        code(workspace::resolve_dir(&client, &ws, "escape/d", true).await),
        "path_escapes"
    );
    assert_eq!(
        code(workspace::download(&client, &ws, "../outside/secret").await),
        "bad_path"
    );
    workspace::remove(&client, &ws, "escape")
        .await
        .expect("rm the link");
    assert_eq!(names_in(&outside), ["secret"]);

    workspace::remove(&client, &ws, "proj")
        .await
        .expect("rm proj");
    assert_eq!(code(workspace::remove(&client, &ws, "").await), "bad_path");
    assert_eq!(names_in(&root), ["etc", "roots"]);
    assert_eq!(
        code(workspace::download(&client, &ws, "proj").await),
        "not_found"
    );
}
