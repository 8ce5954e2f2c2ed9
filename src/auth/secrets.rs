//! Where a credential lives in the guest while a CLI needs it: on a tmpfs, never on the data
//! disk, since `data.ext4` is not encrypted and outlives the prompt (a stolen disk, a
//! hibernated VM's files). The CLI's own path in its HOME becomes a symlink to the file on the
//! tmpfs, and both are removed when the prompt or login ends, after the refresh is captured.
//!
//! A CLI that rewrites its file in place writes through the symlink onto the tmpfs. One that
//! writes a new file and renames it over the path replaces the symlink with a file on the
//! disk: that file is overwritten with zeros in place and synced before it is unlinked, so its
//! blocks are zeros when they are freed.
//!
//! Everything here runs as root through the agent's exec with `sh`, so it works with any agent
//! and in both images (busybox and Debian); no secret is ever on its command line.

use std::time::Duration;

use super::AuthError;
use crate::guest::client::{AgentClient, GuestError, OutputBounds};
use crate::guest::messages::ExecRequest;
use crate::model::Provider;
use crate::vms::CliEnvironment;

/// Prepares the tmpfs and links the CLI's path to the staged file. Arguments: `stage` or
/// `clear`, the secrets directory, the provider's subdirectory, the staged file's name, the
/// path in the HOME, the owner `uid:gid` (empty: root).
const SCRIPT: &str = r#"set -eu
action=$1 dir=$2 sub=$3 name=$4 link=$5 owner=$6
staged=$dir/$sub/$name
scrub() {
  for p in "$@"; do
    if [ -f "$p" ]; then
      n=$(wc -c <"$p")
      if [ "$n" -gt 0 ]; then
        dd if=/dev/zero of="$p" bs="$n" count=1 conv=notrunc 2>/dev/null
      fi
    fi
  done
  sync
  rm -f "$@"
}
ensure_tmpfs() {
  mkdir -p "$dir"
  if [ "$(stat -f -c %T "$dir")" != tmpfs ]; then
    mount -t tmpfs -o mode=0711,size=16m,nosuid,nodev mc-secrets "$dir"
  fi
  [ "$(stat -f -c %T "$dir")" = tmpfs ] || { echo "$dir is not on a tmpfs" >&2; exit 1; }
  chmod 0711 "$dir"
}
case $action in
stage)
  ensure_tmpfs
  mkdir -p "$dir/$sub"
  [ -z "$owner" ] || chown "$owner" "$dir/$sub"
  chmod 0700 "$dir/$sub"
  # A file left on the disk by an older daemon, or by a CLI that wrote by rename.
  [ -L "$link" ] || scrub "$link"
  # The CLI's own directory (~/.claude) must be the CLI user's: Claude Code writes no session
  # into one it cannot write, and says nothing.
  home_dir=$(dirname "$link")
  if [ ! -d "$home_dir" ]; then
    mkdir -p "$home_dir"
    [ -z "$owner" ] || chown "$owner" "$home_dir"
  fi
  ln -sfn "$staged" "$link"
  ;;
clear)
  scrub "$link" "$staged"
  ;;
login)
  ensure_tmpfs
  ;;
esac
"#;

/// The provider's directory under the secrets directory.
fn subdir(provider: Provider) -> String {
    provider.to_string()
}

fn file_name(provider: Provider) -> &'static str {
    let relative = provider.cli().credential_file();
    relative.rsplit('/').next().unwrap_or(relative)
}

/// Where the credential of `provider` is staged in the guest.
pub fn staged_path(cli: &CliEnvironment, provider: Provider) -> String {
    format!(
        "{}/{}/{}",
        cli.secrets_dir.trim_end_matches('/'),
        subdir(provider),
        file_name(provider)
    )
}

/// Runs the script's `action`; `provider` names the credential that `stage` and `clear` act on
/// (`login` acts on none, and its arguments are left empty).
async fn run(
    agent: &AgentClient,
    cli: &CliEnvironment,
    action: &str,
    provider: Option<Provider>,
) -> Result<(), AuthError> {
    let owner = cli
        .owner
        .map(|(uid, gid)| format!("{uid}:{gid}"))
        .unwrap_or_default();
    let (sub, name, link) = match provider {
        Some(provider) => (
            subdir(provider),
            file_name(provider),
            provider.credential_path(&cli.home),
        ),
        None => (String::new(), "", String::new()),
    };
    let argv = [
        "/bin/sh",
        "-c",
        SCRIPT,
        "mc-secrets",
        action,
        cli.secrets_dir.trim_end_matches('/'),
        &sub,
        name,
        &link,
        &owner,
    ];
    run_quietly(agent, argv.iter().map(|a| a.to_string()).collect()).await
}

/// Writes `plaintext` to the tmpfs and links the CLI's path in its HOME to it.
pub async fn stage(
    agent: &AgentClient,
    cli: &CliEnvironment,
    provider: Provider,
    plaintext: &[u8],
) -> Result<(), AuthError> {
    run(agent, cli, "stage", Some(provider)).await?;
    // The agent writes a temporary file beside the target and renames it: both on the tmpfs.
    agent
        .write_file_owned(&staged_path(cli, provider), plaintext, 0o600, cli.owner)
        .await?;
    Ok(())
}

/// Removes the credential from the guest: the staged file, and whatever is at the CLI's path
/// (the symlink, or the file a CLI renamed over it, zeroed first).
pub async fn clear(
    agent: &AgentClient,
    cli: &CliEnvironment,
    provider: Provider,
) -> Result<(), AuthError> {
    run(agent, cli, "clear", Some(provider)).await
}

/// Makes sure the secrets directory is on a tmpfs, for a login's HOME under it.
pub async fn prepare(agent: &AgentClient, cli: &CliEnvironment) -> Result<(), AuthError> {
    run(agent, cli, "login", None).await
}

/// A login's HOME: on the tmpfs, since the CLI writes its new credential there.
pub fn login_home(cli: &CliEnvironment, session_id: &str) -> String {
    format!(
        "{}/login-{session_id}",
        cli.secrets_dir.trim_end_matches('/')
    )
}

/// The longest a housekeeping command in the guest may take.
const QUIET_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a short command in the guest; a non-zero exit (or none, cut by the host's bounds) is
/// an error.
pub(super) async fn run_quietly(agent: &AgentClient, argv: Vec<String>) -> Result<(), AuthError> {
    let what = argv.first().cloned().unwrap_or_default();
    let output = agent
        .exec(ExecRequest {
            argv,
            timeout_sec: Some(QUIET_TIMEOUT.as_secs()),
            ..ExecRequest::default()
        })
        .await?
        .collect_output(OutputBounds::new(QUIET_TIMEOUT))
        .await?;
    match output.status {
        Some(status) if status.code == Some(0) => Ok(()),
        other => Err(AuthError::Guest(GuestError::Protocol(format!(
            "{what} in the guest failed ({other:?}): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::SCRIPT;

    /// Runs the script's `stage` for a CLI user, on /dev/shm (a tmpfs, so nothing is mounted).
    #[test]
    fn staging_for_a_cli_user_gives_it_the_clis_directory() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let secrets = tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm");
        let home = tempfile::tempdir().expect("a HOME");
        let link = home.path().join(".claude/.credentials.json");
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", SCRIPT, "mc-secrets", "stage"])
            .arg(secrets.path())
            .args(["claude_code", ".credentials.json"])
            .arg(&link)
            .arg("65534:65534")
            .status()
            .expect("sh");
        assert!(status.success());
        let dir = std::fs::metadata(home.path().join(".claude")).expect("~/.claude");
        assert_eq!((dir.uid(), dir.gid()), (65534, 65534));
        let staged = std::fs::metadata(secrets.path().join("claude_code")).expect("staged dir");
        assert_eq!(staged.uid(), 65534);
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("the link")
                .is_symlink()
        );
    }
}
