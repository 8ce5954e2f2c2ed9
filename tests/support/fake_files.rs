//! The agent's file helper (`@vm-agent files put|get|rm`) for the fake VMs of `fake_vmm`: the
//! workspace is a map in memory, one per VM, so the files routes run their whole daemon path
//! (streamed stdin, the header and body on stdout, error lines on stderr) with no guest and
//! nothing written to disk. Directories are implied by the files beneath them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use master_controller::guest::messages::{AGENT_SELF, ExitStatus};
use master_controller::guest::{Frame, FrameKind};

/// The files of one fake VM, by normalised relative path.
pub type Tree = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// An upload in progress on one agent connection: its path, the bytes so far and its cap.
struct Upload {
    path: String,
    data: Vec<u8>,
    max: u64,
}

/// One agent connection's view: the VM's tree and the uploads it is receiving.
pub struct Helper {
    tree: Tree,
    uploads: HashMap<u64, Upload>,
}

fn exit(id: u64, code: i32) -> Frame {
    Frame::json(
        FrameKind::Exit,
        id,
        &ExitStatus {
            code: Some(code),
            signal: None,
            timed_out: false,
            cancelled: false,
        },
    )
}

fn fail(id: u64, code: &str, message: &str, max: Option<u64>) -> Vec<Frame> {
    let mut line = serde_json::json!({ "code": code, "message": message });
    if let Some(max) = max {
        line["max"] = max.into();
    }
    vec![
        Frame::new(FrameKind::Stderr, id, format!("{line}\n").into_bytes()),
        exit(id, 1),
    ]
}

/// `a/./b//c` → `a/b/c`; the root is `""`.
fn normalise(rel: &str) -> String {
    rel.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn under(dir: &str) -> String {
    if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    }
}

impl Helper {
    pub fn new(tree: Tree) -> Helper {
        Helper {
            tree,
            uploads: HashMap::new(),
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_dir(files: &BTreeMap<String, Vec<u8>>, path: &str) -> bool {
        path.is_empty() || files.keys().any(|k| k.starts_with(&under(path)))
    }

    /// The frames after `started` for an exec of the file helper, or `None` when `argv` is
    /// not one of its put, get or rm.
    pub fn exec(&mut self, id: u64, argv: &[String]) -> Option<Vec<Frame>> {
        let [agent, files, op, _root, rel, rest @ ..] = argv else {
            return None;
        };
        if agent != AGENT_SELF || files != "files" {
            return None;
        }
        let path = normalise(rel);
        match op.as_str() {
            "put" => {
                let max = rest.get(1).and_then(|m| m.parse().ok()).unwrap_or(u64::MAX);
                let files = self.files();
                if Self::is_dir(&files, &path) {
                    return Some(fail(id, "is_a_directory", "a directory is there", None));
                }
                // A file where a parent directory would be.
                let mut parent = path.as_str();
                while let Some((up, _)) = parent.rsplit_once('/') {
                    if files.contains_key(up) {
                        return Some(fail(id, "not_a_directory", "a parent is a file", None));
                    }
                    parent = up;
                }
                drop(files);
                self.uploads.insert(
                    id,
                    Upload {
                        path,
                        data: Vec::new(),
                        max,
                    },
                );
                Some(Vec::new())
            }
            "get" => Some(self.get(id, &path)),
            "rm" => Some(self.rm(id, &path)),
            _ => None,
        }
    }

    fn get(&self, id: u64, path: &str) -> Vec<Frame> {
        let files = self.files();
        if let Some(data) = files.get(path) {
            let header = format!("{{\"kind\":\"file\",\"size\":{}}}\n", data.len());
            let mut out = header.into_bytes();
            out.extend_from_slice(data);
            return vec![Frame::new(FrameKind::Stdout, id, out), exit(id, 0)];
        }
        if !Self::is_dir(&files, path) {
            return fail(id, "not_found", "no such file or directory", None);
        }
        let prefix = under(path);
        let mut entries: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (key, data) in files.range(prefix.clone()..) {
            let Some(rest) = key.strip_prefix(&prefix) else {
                break;
            };
            let (name, entry) = match rest.split_once('/') {
                Some((dir, _)) => (
                    dir,
                    serde_json::json!({"kind": "dir", "size": 0, "mode": 0o755}),
                ),
                None => (
                    rest,
                    serde_json::json!({"kind": "file", "size": data.len(), "mode": 0o644}),
                ),
            };
            let mut entry = entry;
            entry["name"] = name.into();
            entry["modifiedMs"] = 0.into();
            entries.entry(name.to_string()).or_insert(entry);
        }
        let header = serde_json::json!({
            "kind": "dir",
            "entries": entries.into_values().collect::<Vec<_>>(),
            "truncated": false,
        });
        vec![
            Frame::new(FrameKind::Stdout, id, format!("{header}\n").into_bytes()),
            exit(id, 0),
        ]
    }

    fn rm(&self, id: u64, path: &str) -> Vec<Frame> {
        let mut files = self.files();
        let prefix = under(path);
        let before = files.len();
        files.retain(|key, _| key != path && !key.starts_with(&prefix));
        if files.len() == before {
            return fail(id, "not_found", "no such file or directory", None);
        }
        vec![exit(id, 0)]
    }

    /// A stdin frame of an upload: its bytes, or (empty) its end, which writes the file.
    /// `None` when `id` is not an upload of this connection.
    pub fn stdin(&mut self, id: u64, payload: &[u8]) -> Option<Vec<Frame>> {
        let upload = self.uploads.get_mut(&id)?;
        if !payload.is_empty() {
            upload.data.extend_from_slice(payload);
            if upload.data.len() as u64 > upload.max {
                let max = upload.max;
                self.uploads.remove(&id);
                return Some(fail(id, "too_large", "the file is too large", Some(max)));
            }
            return Some(Vec::new());
        }
        let upload = self.uploads.remove(&id)?;
        let size = upload.data.len();
        self.files().insert(upload.path, upload.data);
        Some(vec![
            Frame::new(
                FrameKind::Stdout,
                id,
                format!("{{\"size\":{size}}}").into_bytes(),
            ),
            exit(id, 0),
        ])
    }

    /// A cancelled upload leaves nothing behind.
    pub fn cancel(&mut self, id: u64) -> bool {
        self.uploads.remove(&id).is_some()
    }
}
