//! The JSON payloads of control frames.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The kernel command-line keys the agent reads at boot.
pub const CMDLINE_TOKEN: &str = "mc.token";
/// `virtio-serial:<port name>` or `vsock:<port>`.
pub const CMDLINE_CHANNEL: &str = "mc.agent";
pub const DEFAULT_SERIAL_PORT_NAME: &str = "agent";
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// An exec whose `argv[0]` is this runs the agent's own binary with the remaining arguments
/// (under the exec's uid, gid, cwd and env like any other): the workspace file helper
/// (`vm-agent files ...`, see `guest::workspace`).
pub const AGENT_SELF: &str = "@vm-agent";

/// Host → agent, first frame of every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hello {
    pub token: String,
    /// Echoed in `HelloOk`, so a stale answer from before a resume is never mistaken for this one.
    pub nonce: u64,
    /// The host's clock; the agent sets its own from it (after a resume it has drifted).
    pub host_time_ms: Option<i64>,
}

/// Agent → host, when the token is right.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloOk {
    pub nonce: u64,
    pub agent_version: String,
    pub boot_id: String,
    /// Requests that were running when the previous connection ended (a disconnect, or a
    /// hibernation); they were stopped and their results are lost.
    pub interrupted: Vec<InterruptedWork>,
    /// The agent's health as it answers, so that a resume is ready after this one round trip
    /// (absent from agents before it: the host then asks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthReport>,
    /// Why the clock could not be set from the Hello's `host_time_ms`, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterruptedWork {
    pub request_id: u64,
    pub op: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "op",
    rename_all = "snake_case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Request {
    Health,
    Exec(ExecRequest),
    WriteFile(WriteFileRequest),
    ReadFile(ReadFileRequest),
    ConfigureNetwork(NetworkConfig),
    SetClock {
        unix_ms: i64,
    },
    /// Stops the exec started by request `request_id` (its whole process group).
    Cancel {
        request_id: u64,
    },
    /// Makes a clone of a golden snapshot its own VM: later connections must present `token`,
    /// and `seed` (base64) is mixed into the kernel's entropy pool so clones do not share
    /// their random state.
    SetIdentity {
        token: String,
        seed_base64: String,
    },
    /// Answers with the file once it exists with a stamp other than `since`, or `timed_out`.
    WatchFile(WatchFileRequest),
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::Health => "health",
            Request::Exec(_) => "exec",
            Request::WriteFile(_) => "write_file",
            Request::ReadFile(_) => "read_file",
            Request::ConfigureNetwork(_) => "configure_network",
            Request::SetClock { .. } => "set_clock",
            Request::Cancel { .. } => "cancel",
            Request::SetIdentity { .. } => "set_identity",
            Request::WatchFile(_) => "watch_file",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Run under a PTY of this size; stdout then carries the terminal's output.
    pub pty: Option<PtySize>,
    /// The host will send stdin frames; otherwise stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    pub timeout_sec: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WriteFileRequest {
    pub path: String,
    pub data_base64: String,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadFileRequest {
    pub path: String,
    /// Larger files are refused with `too_large`.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchFileRequest {
    pub path: String,
    /// Larger files are refused with `too_large`.
    pub max_bytes: u64,
    /// The version already seen; `None` answers as soon as the file exists.
    pub since: Option<FileStamp>,
    /// Capped by the agent at `WATCH_MAX_MS`.
    pub timeout_ms: u64,
}

/// Identifies one version of a file: a rewrite (even by rename) changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileStamp {
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

/// The longest a `watch_file` request waits before answering `timed_out`.
pub const WATCH_MAX_MS: u64 = 60_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    pub interface: String,
    /// `a.b.c.d/prefix`.
    pub address: String,
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub hostname: Option<String>,
    /// A new MAC for the interface (when the host moved the guest to another address).
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Response {
    Health(HealthReport),
    ExecStarted {
        pid: u32,
    },
    File {
        data_base64: String,
        size: u64,
    },
    WatchedFile {
        data_base64: String,
        stamp: FileStamp,
    },
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub agent_version: String,
    pub boot_id: String,
    pub hostname: String,
    pub uptime_sec: f64,
    pub load: [f64; 3],
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Reads `key=value` from a kernel command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let request: Request =
            serde_json::from_str(r#"{"op":"exec","argv":["uname","-a"]}"#).unwrap();
        assert_eq!(request.name(), "exec");
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        let json = serde_json::to_string(&Request::SetClock { unix_ms: 5 }).unwrap();
        assert_eq!(json, r#"{"op":"set_clock","unixMs":5}"#);
    }

    #[test]
    fn reads_cmdline_values() {
        let line = "console=ttyS0 mc.token=abc123 mc.agent=virtio-serial:agent quiet";
        assert_eq!(cmdline_value(line, CMDLINE_TOKEN), Some("abc123"));
        assert_eq!(
            cmdline_value(line, CMDLINE_CHANNEL),
            Some("virtio-serial:agent")
        );
        assert_eq!(cmdline_value(line, "mc.tok"), None);
    }
}
