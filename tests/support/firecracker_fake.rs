//! A stand-in for the Firecracker process, for driving the backend's request sequences: it
//! serves the API on `--api-sock`, checks every body against the official spec, and enforces
//! the documented ordering rules:
//! - `snapshot/load` only on a fresh process (nothing configured but logger and metrics);
//! - pre-boot configuration only before `InstanceStart`, which happens once;
//! - `PATCH /vm` only on a started VM, and `snapshot/create` only while it is paused.
//!
//! Violations answer 400 with a `fault_message`, as Firecracker does. Each request is appended
//! to the log file named by `MC_FAKE_FIRECRACKER_LOG`, as one JSON line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::firecracker_spec::ApiSpec;

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
}

impl State {
    /// Applies a request, or says why Firecracker would refuse it.
    fn apply(&mut self, method: &str, path: &str, body: &Value) -> Result<(), String> {
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
            ("PUT", "/snapshot/load") => {
                if self.configured || self.started {
                    return Err("Loading a microVM snapshot not allowed after configuring boot-specific resources.".into());
                }
                self.started = true;
                self.paused = body["resume_vm"] != true;
                Ok(())
            }
            ("PUT", _) if config_path => {
                if self.started {
                    return Err(
                        "The requested operation is not supported after starting the microVM."
                            .into(),
                    );
                }
                self.configured = true;
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
            ("PUT", "/snapshot/create") => {
                if !self.started || !self.paused {
                    return Err("Cannot create a snapshot of a microVM that is not paused.".into());
                }
                for key in ["snapshot_path", "mem_file_path"] {
                    let path = body[key].as_str().unwrap_or_default();
                    std::fs::write(path, format!("fake {key}"))
                        .map_err(|e| format!("{path}: {e}"))?;
                }
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
                    let verdict = spec.validate(&method, &path, body.as_ref()).and_then(|()| {
                        state.apply(&method, &path, body.as_ref().unwrap_or(&Value::Null))
                    });
                    append(
                        &log,
                        &json!({ "method": method, "path": path, "body": body, "ok": verdict.is_ok() }),
                    );
                    (verdict, state.started)
                };
                let response = match verdict {
                    Ok(()) if method == "GET" => {
                        http(200, &json!({ "id": "fake", "state": if started { "Running" } else { "Not started" } }).to_string())
                    }
                    Ok(()) => http(204, ""),
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
