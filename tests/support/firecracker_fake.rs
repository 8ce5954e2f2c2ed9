//! A stand-in for the Firecracker process, for driving the backend's request sequences: it
//! serves the API on `--api-sock`, checks every body against the official spec, and enforces
//! the documented ordering rules:
//! - `snapshot/load` only on a fresh process (nothing configured but logger and metrics);
//! - pre-boot configuration only before `InstanceStart`, which happens once;
//! - `PATCH /vm` only on a started VM, and `snapshot/create` only while it is paused;
//! - a Diff snapshot only from a process with dirty page tracking on (`track_dirty_pages` in
//!   `machine-config` at boot, or in `snapshot/load`). Firecracker before 1.13 refuses one
//!   without it; from 1.13 it writes every page the process has resident instead, which for a
//!   restored guest is most of what it touched, read or written. The fake refuses, so a missing
//!   flag fails loudly.
//!
//! Its guest's memory (`firecracker_guest.rs`) is written the way Firecracker writes it: a Full
//! snapshot, every page; a Diff, a sparse file the memory's size with the pages dirtied since the
//! last boot, load or snapshot. A load checks the memory file it is given against the guest the
//! snapshot's state describes, and refuses a file that differs: the guest would not come back.
//! The test says what the guest writes with `PUT /fake/guest-writes {"pages": [...]}`, which is
//! not Firecracker's API (not validated, not logged), and only lands while the guest runs.
//!
//! Violations answer 400 with a `fault_message`, as Firecracker does. Each request is appended
//! to the log file at [`log_path`], as one JSON line; a `snapshot/create`'s line also says what
//! its memory file took (`memory_written`: bytes written, `memory_allocated`: blocks, `memory_len`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::firecracker_spec::ApiSpec;

#[path = "firecracker_guest.rs"]
pub mod guest;
use guest::GuestMemory;

/// Where the fakes started by the test process `pid` log their requests. Derived from the pid,
/// not passed in the environment: hypervisors are started with an empty one.
pub fn log_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/mc-fake-firecracker-{pid}.jsonl"))
}

#[derive(Default)]
struct State {
    configured: bool,
    machine_config: bool,
    boot_source: bool,
    started: bool,
    paused: bool,
    tracking: bool,
    memory: GuestMemory,
}

/// The memory file a `snapshot/load` names (`mem_backend`, or the deprecated `mem_file_path`).
fn load_memory_path(body: &Value) -> Option<&str> {
    body["mem_backend"]["backend_path"]
        .as_str()
        .or(body["mem_file_path"].as_str())
}

impl State {
    /// The test's say on what the guest does (not Firecracker's API).
    fn control(&mut self, path: &str, body: &Value) -> Result<Value, String> {
        match path {
            "/fake/guest-writes" => {
                if !self.started || self.paused {
                    return Err("a guest that is not running writes nothing".into());
                }
                let pages: Vec<u64> = serde_json::from_value(body["pages"].clone())
                    .map_err(|e| format!("pages: {e}"))?;
                self.memory.write(&pages)?;
                Ok(Value::Null)
            }
            _ => Err(format!("the fake has no control {path}")),
        }
    }

    fn snapshot_create(&mut self, body: &Value) -> Result<Value, String> {
        if !self.started || !self.paused {
            return Err("Cannot create a snapshot of a microVM that is not paused.".into());
        }
        let diff = body["snapshot_type"] == "Diff";
        if diff && !self.tracking {
            return Err(
                "Diff snapshots are not allowed on uVMs with dirty page tracking disabled.".into(),
            );
        }
        let state = body["snapshot_path"].as_str().unwrap_or_default();
        let memory = Path::new(body["mem_file_path"].as_str().unwrap_or_default());
        self.memory
            .save_state(Path::new(state))
            .map_err(|e| format!("{state}: {e}"))?;
        let written = if diff {
            self.memory.dump_diff(memory)
        } else {
            self.memory.dump_full(memory)
        }
        .map_err(|e| format!("{}: {e}", memory.display()))?;
        // Taking the snapshot consumes the dirty log.
        self.memory.dirty.clear();
        Ok(json!({
            "memory_written": written.bytes,
            "memory_allocated": written.allocated,
            "memory_len": written.len,
        }))
    }

    fn snapshot_load(&mut self, body: &Value) -> Result<(), String> {
        if self.configured || self.started {
            return Err(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .into(),
            );
        }
        let state = body["snapshot_path"].as_str().unwrap_or_default();
        let memory = GuestMemory::load_state(Path::new(state))?;
        let file = load_memory_path(body).ok_or("no memory file to load")?;
        memory.check(Path::new(file))?;
        self.memory = memory;
        self.tracking = body["track_dirty_pages"] == true || body["enable_diff_snapshots"] == true;
        self.started = true;
        self.paused = body["resume_vm"] != true;
        Ok(())
    }

    /// Applies a request, or says why Firecracker would refuse it. What it returns goes to the
    /// request's log line.
    fn apply(&mut self, method: &str, path: &str, body: &Value) -> Result<Value, String> {
        match (method, path) {
            ("PUT", "/snapshot/create") => self.snapshot_create(body),
            _ => self.apply_request(method, path, body).map(|()| Value::Null),
        }
    }

    fn apply_request(&mut self, method: &str, path: &str, body: &Value) -> Result<(), String> {
        let config_path = [
            "/machine-config",
            "/boot-source",
            "/drives/",
            "/network-interfaces/",
            "/vsock",
            "/entropy",
        ]
        .iter()
        .any(|prefix| path == *prefix || (prefix.ends_with('/') && path.starts_with(prefix)));
        match (method, path) {
            ("GET", _) => Ok(()),
            ("PUT", "/logger" | "/metrics") if self.started => {
                Err("logger and metrics are pre-boot only".into())
            }
            ("PUT", "/logger" | "/metrics") => Ok(()),
            ("PUT", "/snapshot/load") => self.snapshot_load(body),
            ("PUT", _) if config_path => {
                if self.started {
                    return Err(
                        "The requested operation is not supported after starting the microVM."
                            .into(),
                    );
                }
                self.configured = true;
                if path == "/machine-config" {
                    self.memory = GuestMemory::new(body["mem_size_mib"].as_u64().unwrap_or(0));
                    self.tracking = body["track_dirty_pages"] == true;
                }
                self.machine_config |= path == "/machine-config";
                self.boot_source |= path == "/boot-source";
                Ok(())
            }
            ("PUT", "/actions") if body["action_type"] == "InstanceStart" => {
                if self.started {
                    return Err("The microVM is already running.".into());
                }
                if !self.machine_config || !self.boot_source {
                    return Err("Cannot start microvm that was not configured.".into());
                }
                self.started = true;
                Ok(())
            }
            ("PATCH", "/vm") => {
                if !self.started {
                    return Err("The microVM has not been started.".into());
                }
                self.paused = body["state"] == "Paused";
                Ok(())
            }
            _ => Err(format!("the fake does not serve {method} {path}")),
        }
    }
}

/// Serves until killed. `args` are the process's arguments (`--api-sock PATH ...`).
pub async fn serve(args: &[String]) {
    let socket = args
        .iter()
        .position(|a| a == "--api-sock")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .expect("--api-sock");
    // The test process spawned this fake directly (no jailer).
    let log = log_path(nix::unistd::getppid().as_raw() as u32);
    let spec = Arc::new(ApiSpec::load("1.16.1"));
    let listener = UnixListener::bind(&socket).expect("bind API socket");
    let state = Arc::new(Mutex::new(State::default()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (spec, state, log) = (spec.clone(), state.clone(), log.clone());
        tokio::spawn(async move {
            let (reader, mut writer) = stream.into_split();
            let mut reader = BufReader::new(reader);
            while let Some((method, path, body)) = read_request(&mut reader).await {
                // One request at a time across connections, like Firecracker's API thread.
                let (verdict, started) = {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    let body_value = body.as_ref().unwrap_or(&Value::Null);
                    let verdict = if path.starts_with("/fake/") {
                        state.control(&path, body_value)
                    } else {
                        let verdict = spec
                            .validate(&method, &path, body.as_ref())
                            .and_then(|()| state.apply(&method, &path, body_value));
                        let mut entry = json!({ "method": method, "path": path, "body": body, "ok": verdict.is_ok() });
                        if let (Ok(Value::Object(extra)), Some(entry)) =
                            (&verdict, entry.as_object_mut())
                        {
                            entry.extend(extra.clone());
                        }
                        append(&log, &entry);
                        verdict
                    };
                    (verdict, state.started)
                };
                let response = match verdict {
                    Ok(_) if method == "GET" => {
                        http(200, &json!({ "id": "fake", "state": if started { "Running" } else { "Not started" } }).to_string())
                    }
                    Ok(_) => http(204, ""),
                    Err(fault) => http(400, &json!({ "fault_message": fault }).to_string()),
                };
                if writer.write_all(response.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn append(log: &Path, entry: &Value) {
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(file, "{entry}");
    }
}

fn http(status: u16, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        _ => "Bad Request",
    };
    if body.is_empty() {
        format!("HTTP/1.1 {status} {reason}\r\n\r\n")
    } else {
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

async fn read_request(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Option<(String, String, Option<Value>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.ok()?;
    let body = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    Some((method, path, body))
}

/// The requests the fake has logged, in order.
pub fn logged(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
