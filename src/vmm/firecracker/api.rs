//! Firecracker's API: the requests the backend sends (built here, so tests can check each body
//! against the official spec) and their transport over the API socket with hyperlocal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde_json::{Value, json};

use super::super::{VmSpec, VmmError};

pub const NET_IFACE: &str = "eth0";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One API call: method, path and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

impl ApiRequest {
    fn put(path: impl Into<String>, body: Value) -> ApiRequest {
        ApiRequest {
            method: Method::PUT,
            path: path.into(),
            body: Some(body),
        }
    }
}

/// Files a Firecracker VM uses under its directory.
pub struct Layout {
    pub api_socket: PathBuf,
    pub vsock_socket: PathBuf,
    pub log: PathBuf,
    pub metrics: PathBuf,
    pub snapshot_state: PathBuf,
    pub snapshot_memory: PathBuf,
    /// Where Firecracker writes a diff snapshot's memory (under its `.partial` name; the backend
    /// then moves it to the VM's memory base, see `base.rs`).
    pub snapshot_diff: PathBuf,
}

impl Layout {
    /// The files under `root`: the VM directory, or `/` as Firecracker sees it inside a jail.
    pub fn at(root: &Path) -> Layout {
        Layout {
            api_socket: root.join("firecracker.sock"),
            vsock_socket: root.join("vsock.sock"),
            log: root.join("firecracker.log"),
            metrics: root.join("firecracker.metrics"),
            snapshot_state: root.join("snapshot/vmstate"),
            snapshot_memory: root.join("snapshot/memory"),
            snapshot_diff: root.join("snapshot/memory.diff"),
        }
    }

    pub fn of(spec: &VmSpec) -> Layout {
        Layout::at(&spec.dir)
    }

    /// The same files, with the snapshot's under the fresh names a new snapshot is written to
    /// before it is renamed into place (see [`crate::vmm::private`]).
    pub fn partial(&self) -> Layout {
        let partial = |path: &Path| {
            let mut text = path.as_os_str().to_os_string();
            text.push(".partial");
            PathBuf::from(text)
        };
        Layout {
            api_socket: self.api_socket.clone(),
            vsock_socket: self.vsock_socket.clone(),
            log: self.log.clone(),
            metrics: self.metrics.clone(),
            snapshot_state: partial(&self.snapshot_state),
            snapshot_memory: partial(&self.snapshot_memory),
            snapshot_diff: partial(&self.snapshot_diff),
        }
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.snapshot_state
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// Logger and metrics: the only configuration allowed before `snapshot/load`, so both boot and
/// resume start with them.
pub fn observability_requests(layout: &Layout) -> Vec<ApiRequest> {
    vec![
        ApiRequest::put(
            "/logger",
            json!({ "log_path": path_text(&layout.log), "level": "Info", "show_level": true, "show_log_origin": false }),
        ),
        ApiRequest::put(
            "/metrics",
            json!({ "metrics_path": path_text(&layout.metrics) }),
        ),
    ]
}

/// Everything a cold boot configures, ending with `InstanceStart`.
pub fn boot_requests(
    spec: &VmSpec,
    layout: &Layout,
    guest_cid: u32,
    boot_args: &str,
) -> Vec<ApiRequest> {
    let mut requests = observability_requests(layout);
    requests.push(ApiRequest::put(
        "/machine-config",
        // Dirty page tracking on every process the backend runs, booted as restored: a Diff
        // snapshot needs it (Firecracker refuses one without it, or from 1.13 takes every
        // resident page instead). A booted VM's first hibernation is Full all the same, having
        // no base to merge onto.
        json!({ "vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib, "smt": false, "track_dirty_pages": true }),
    ));
    let mut boot_source =
        json!({ "kernel_image_path": path_text(&spec.kernel), "boot_args": boot_args });
    if let Some(initrd) = &spec.initrd {
        boot_source["initrd_path"] = json!(path_text(initrd));
    }
    requests.push(ApiRequest::put("/boot-source", boot_source));
    for disk in &spec.disks {
        requests.push(ApiRequest::put(
            format!("/drives/{}", disk.id),
            json!({
                "drive_id": disk.id,
                "path_on_host": path_text(&disk.path),
                "is_root_device": disk.root,
                "is_read_only": disk.read_only,
            }),
        ));
    }
    if let Some(net) = &spec.net {
        requests.push(ApiRequest::put(
            format!("/network-interfaces/{NET_IFACE}"),
            json!({ "iface_id": NET_IFACE, "host_dev_name": net.tap, "guest_mac": net.mac }),
        ));
    }
    requests.push(ApiRequest::put(
        "/vsock",
        json!({ "guest_cid": guest_cid, "uds_path": path_text(&layout.vsock_socket) }),
    ));
    requests.push(ApiRequest::put("/entropy", json!({})));
    requests.push(instance_start());
    requests
}

pub fn instance_start() -> ApiRequest {
    ApiRequest::put("/actions", json!({ "action_type": "InstanceStart" }))
}

pub fn set_state(state: &str) -> ApiRequest {
    ApiRequest {
        method: Method::PATCH,
        path: "/vm".into(),
        body: Some(json!({ "state": state })),
    }
}

/// A Full snapshot holds the whole guest memory; a Diff only the pages dirtied since the process
/// was restored (or booted), which needs dirty page tracking on that process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotType {
    Full,
    Diff,
}

/// The state to `snapshot_state`, the memory to `snapshot_memory` (Full) or `snapshot_diff`
/// (Diff).
pub fn snapshot_create(layout: &Layout, kind: SnapshotType) -> ApiRequest {
    let (kind, memory) = match kind {
        SnapshotType::Full => ("Full", &layout.snapshot_memory),
        SnapshotType::Diff => ("Diff", &layout.snapshot_diff),
    };
    ApiRequest::put(
        "/snapshot/create",
        json!({
            "snapshot_type": kind,
            "snapshot_path": path_text(&layout.snapshot_state),
            "mem_file_path": path_text(memory),
        }),
    )
}

/// Loads the snapshot and resumes the VM, with dirty page tracking on so its next hibernation
/// can be a Diff. The tap is overridden when it differs from the one the snapshot was taken with.
pub fn snapshot_load(layout: &Layout, new_tap: Option<&str>) -> ApiRequest {
    let mut body = json!({
        "snapshot_path": path_text(&layout.snapshot_state),
        "mem_backend": { "backend_type": "File", "backend_path": path_text(&layout.snapshot_memory) },
        "track_dirty_pages": true,
        "resume_vm": true,
    });
    if let Some(tap) = new_tap {
        body["network_overrides"] = json!([{ "iface_id": NET_IFACE, "host_dev_name": tap }]);
    }
    ApiRequest::put("/snapshot/load", body)
}

/// A client bound to one API socket.
pub struct FirecrackerApi {
    socket: PathBuf,
    client: Client<UnixConnector, Full<Bytes>>,
}

impl FirecrackerApi {
    pub fn new(socket: &Path) -> FirecrackerApi {
        FirecrackerApi {
            socket: socket.to_path_buf(),
            client: Client::unix(),
        }
    }

    /// Waits until the API answers `GET /`.
    pub async fn wait_ready(&self, deadline: Duration) -> Result<(), VmmError> {
        let started = Instant::now();
        loop {
            let probe = ApiRequest {
                method: Method::GET,
                path: "/".into(),
                body: None,
            };
            match self.send(&probe).await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() >= deadline => {
                    return Err(VmmError::Startup("firecracker API", e.to_string()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Sends one request; a fault becomes `VmmError::Firecracker` with its `fault_message`.
    pub async fn send(&self, request: &ApiRequest) -> Result<Value, VmmError> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, &request.path).into();
        let body = request
            .body
            .as_ref()
            .map(|b| Bytes::from(b.to_string()))
            .unwrap_or_default();
        let http = Request::builder()
            .method(request.method.clone())
            .uri(uri)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(body))
            .map_err(|e| VmmError::Control(e.to_string()))?;
        let label = format!("{} {}", request.method, request.path);
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(http))
            .await
            .map_err(|_| VmmError::Control(format!("{label}: no answer in {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| VmmError::Control(format!("{label}: {e}")))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| VmmError::Control(format!("{label}: {e}")))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).to_string()))
        };
        if status.is_success() || status == StatusCode::NO_CONTENT {
            return Ok(value);
        }
        Err(VmmError::Firecracker {
            request: label,
            status: status.as_u16(),
            fault: value["fault_message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string()),
        })
    }

    pub async fn send_all(&self, requests: &[ApiRequest]) -> Result<(), VmmError> {
        for request in requests {
            self.send(request).await?;
        }
        Ok(())
    }
}
