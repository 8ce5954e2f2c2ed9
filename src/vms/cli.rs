//! How the AI CLIs run inside a user's VM: their HOME, PATH and egress, shared by prompts and
//! logins. (Making sure the user's VM runs before either starts is `activity`'s.)

use std::collections::BTreeMap;

use crate::guest::workspace::Workspace;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where and how the CLIs run in the guest.
#[derive(Debug, Clone)]
pub struct CliEnvironment {
    /// The CLIs' HOME, where their configuration and credentials live.
    pub home: String,
    /// Prepended to the guest's PATH.
    pub path: Option<String>,
    /// The proxy the CLIs' traffic leaves through.
    pub egress_proxy: Option<String>,
    /// The guest user (uid, gid) the CLIs run as and that owns their files; `None` is root.
    pub owner: Option<(u32, u32)>,
    /// The user's workspace: prompts' `cwd`, exec and the files API are relative to it.
    pub workspace_root: String,
    /// A directory on a tmpfs in the guest (mounted there if it is not) where credentials
    /// and login HOMEs live, so none reaches the data disk.
    pub secrets_dir: String,
}

impl CliEnvironment {
    /// The workspace as the guest side sees it: its root and the user that works in it (root
    /// when the CLIs run as root).
    pub fn workspace(&self) -> Workspace {
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        Workspace {
            root: self.workspace_root.clone(),
            uid,
            gid,
        }
    }

    /// The environment every CLI process gets, before its provider's own variables.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let path = match &self.path {
            Some(extra) => format!("{extra}:{DEFAULT_PATH}"),
            None => DEFAULT_PATH.to_string(),
        };
        env.insert("PATH".into(), path);
        env.insert("HOME".into(), self.home.clone());
        if let Some(proxy) = &self.egress_proxy {
            for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.insert(name.into(), proxy.clone());
            }
            env.insert("NO_PROXY".into(), "localhost,127.0.0.1".into());
        }
        env
    }
}
