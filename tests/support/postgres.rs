//! A throwaway PostgreSQL 15 (Debian's packages, the major version Supabase runs) in a temporary
//! directory, reachable only through a Unix socket there, so that tests running side by side
//! never meet on a port. The schema of `supabase/migrations/` is applied to it as-is.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, chown};
use tokio_postgres::{Client, NoTls};

/// Where Debian's `postgresql-15` package puts the server binaries.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The port only names the socket file (`.s.PGSQL.<port>`): nothing listens on TCP.
const PORT: u16 = 5432;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PgServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Starts a fresh cluster, or says why it cannot (the binaries, or the `postgres` user that
    /// root needs to run them as, are missing). Anything else going wrong is a panic.
    pub async fn start() -> Result<PgServer, String> {
        let bin = Path::new(BIN_DIR);
        for tool in ["initdb", "postgres"] {
            if !bin.join(tool).is_file() {
                return Err(format!(
                    "no {}/{tool} (the Debian package postgresql-15)",
                    bin.display()
                ));
            }
        }
        // initdb and postgres refuse to run as root.
        let owner = if nix::unistd::geteuid().is_root() {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or("no `postgres` OS user to run PostgreSQL as (postgresql-15 creates it)")?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("mc-pg-")
            .tempdir_in(scratch())
            .expect("tempdir");
        if let Some((uid, gid)) = owner {
            chown(dir.path(), Some(uid.into()), Some(gid.into())).expect("chown the cluster dir");
        }
        let data = dir.path().join("data");
        copy_dir(&template(bin, owner)?, &data);
        // Opened here, so the server writes it through the descriptor whoever owns the file.
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        let child = as_owner(bin, "postgres", dir.path(), owner)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-p", &PORT.to_string()])
            // Durability buys a test nothing; UTC makes timestamps read back predictably.
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "timezone=UTC", "-c", "max_connections=20"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        let mut server = PgServer {
            child: Some(child),
            dir,
        };
        server.wait_ready().await;
        Ok(server)
    }

    /// [`PgServer::start`] under the suite's skip convention (as `harness::missing`): a missing
    /// PostgreSQL fails under `MC_REQUIRE_GUESTS=1` (scripts/test.sh installs it), and is
    /// otherwise a skip that says why.
    pub async fn start_or_skip(test: &str) -> Option<PgServer> {
        match PgServer::start().await {
            Ok(server) => Some(server),
            Err(reason) if std::env::var("MC_REQUIRE_GUESTS").as_deref() == Ok("1") => {
                panic!("{test}: cannot run: {reason}")
            }
            Err(reason) => {
                eprintln!("{test}: SKIPPED, {reason}");
                None
            }
        }
    }

    /// The directory of the server's socket (libpq's `host=`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A libpq connection string for the `postgres` database as the `postgres` superuser.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname=postgres",
            self.dir.path().display()
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A new connection, its driver spawned on the current runtime.
    pub async fn connect(&self) -> Client {
        let (client, connection) =
            self.config().connect(NoTls).await.unwrap_or_else(|e| {
                panic!("connect to the test PostgreSQL: {e}\n{}", self.log_tail())
            });
        tokio::spawn(async move {
            // Ends when the client is dropped or the server stops; either is the test's doing.
            let _ = connection.await;
        });
        client
    }

    /// Runs every file of `supabase/migrations/` in name order (the order Supabase applies them),
    /// each as one implicit transaction; returns the names applied.
    pub async fn apply_migrations(&self) -> Result<Vec<String>, String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("supabase/migrations");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .collect();
        files.sort();
        let client = self.connect().await;
        let mut applied = Vec::new();
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sql = std::fs::read_to_string(&file).map_err(|e| format!("{name}: {e}"))?;
            client.batch_execute(&sql).await.map_err(|e| {
                let detail = e.as_db_error().map_or(e.to_string(), |db| {
                    format!(
                        "{} {} ({:?})",
                        db.code().code(),
                        db.message(),
                        db.position()
                    )
                });
                format!("{name}: {detail}")
            })?;
            applied.push(name);
        }
        Ok(applied)
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path())
            .port(PORT)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    async fn wait_ready(&mut self) {
        let socket = self.dir.path().join(format!(".s.PGSQL.{PORT}"));
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited at start ({status}):\n{}", self.log_tail());
            }
            // The socket appears before recovery ends; a query proves the server answers.
            if socket.exists() && self.answers().await {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "postgres not ready in {READY_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn answers(&self) -> bool {
        match self.config().connect(NoTls).await {
            Ok((client, connection)) => {
                let driver = tokio::spawn(connection);
                let ok = client.simple_query("select 1").await.is_ok();
                drop(client);
                let _ = driver.await;
                ok
            }
            Err(_) => false,
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// An initialised, never started cluster, made once per target directory: initdb takes seconds
/// and every test wants a fresh cluster, which a copy gives in a fraction of that.
fn template(bin: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf, String> {
    // Per owner: another user could not copy a cluster that `postgres` owns.
    let uid = owner.map_or_else(|| nix::unistd::geteuid().as_raw(), |(uid, _)| uid);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("postgres15-cluster-{uid}"));
    // One initdb per process; the tests that start meanwhile wait for it.
    static MAKING: Mutex<()> = Mutex::new(());
    let _making = MAKING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if cache.join("PG_VERSION").is_file() {
        return Ok(cache);
    }
    let work = tempfile::Builder::new()
        .prefix("mc-initdb-")
        .tempdir_in(scratch())
        .map_err(|e| format!("tempdir: {e}"))?;
    if let Some((uid, gid)) = owner {
        chown(work.path(), Some(uid.into()), Some(gid.into())).expect("chown the initdb dir");
    }
    let output = as_owner(bin, "initdb", work.path(), owner)
        .arg("-D")
        .arg(work.path().join("data"))
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ])
        .args(["--no-sync", "--wal-segsize=1"])
        .output()
        .expect("run initdb");
    assert!(
        output.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Staged beside the cache and renamed into place, so that tests racing to make it (in
    // this binary or another) never see half a cluster; the loser's copy is dropped.
    let staging = tempfile::Builder::new()
        .prefix("postgres15-staging-")
        .tempdir_in(cache.parent().unwrap_or(Path::new("/tmp")))
        .map_err(|e| format!("staging dir: {e}"))?;
    copy_dir(&work.path().join("data"), &staging.path().join("data"));
    let _ = std::fs::rename(staging.path().join("data"), &cache);
    Ok(cache)
}

/// One of PostgreSQL's programs, run as the cluster's owner.
fn as_owner(bin: &Path, program: &str, cwd: &Path, owner: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(bin.join(program));
    command.current_dir(cwd).env_remove("PGDATA");
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}

/// A cluster is a thousand small files, which tmpfs creates many times faster than a disk.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// `cp -a`: keeps the owner and the 0700 mode PostgreSQL insists on.
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

impl Drop for PgServer {
    /// An immediate shutdown (what `pg_ctl stop -m immediate` sends): nothing in a test cluster
    /// is worth a checkpoint. The directory goes with the TempDir.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
