//! What the installed service reads, for the operator commands (`doctor`, `token`,
//! `vault rotate-key`, `golden-snapshot`): `install.sh` leaves `/etc/master-controller` with
//! `config.toml`, the unit's `EnvironmentFile` `env`, and the unit's `LoadCredential=` sources in
//! `credentials/`. Run by hand, these commands get neither the environment file nor
//! `$CREDENTIALS_DIRECTORY` from systemd, so they read the same files themselves, below whatever
//! the command line and the process environment say.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Settings};

/// Where the installed configuration lives.
pub const ETC_DIR: &str = "/etc/master-controller";
/// A root that `etc/master-controller` is looked up under instead of `/`, so the tests can lay
/// out an installation in a temporary directory.
pub const INSTALL_ROOT_ENV: &str = "MC_INSTALL_ROOT";
const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Where an operator command's configuration came from, for `doctor` to show.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The installed directory looked in.
    pub etc_dir: PathBuf,
    pub config_file: Option<PathBuf>,
    pub env_file: Option<PathBuf>,
    pub credentials_dir: Option<PathBuf>,
    /// Installed files that exist but could not be read (typically: not run as root).
    pub unreadable: Vec<String>,
    /// Secrets set in the env file, which should be credentials instead (their names only).
    pub env_file_secrets: Vec<&'static str>,
}

impl Config {
    /// The configuration an operator command sees: `config` (else the installed
    /// `config.toml`), the process environment over the installed env file, and
    /// `$CREDENTIALS_DIRECTORY` (else the installed credentials); then `flags`.
    pub fn for_operator(
        config: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
        flags: Settings,
    ) -> Result<(Config, Sources), ConfigError> {
        let etc_dir = match lookup(INSTALL_ROOT_ENV) {
            Some(root) => Path::new(&root).join(ETC_DIR.trim_start_matches('/')),
            None => PathBuf::from(ETC_DIR),
        };
        let mut sources = Sources {
            etc_dir: etc_dir.clone(),
            ..Sources::default()
        };
        sources.config_file = match config {
            Some(path) => Some(path.to_path_buf()),
            None => Some(etc_dir.join("config.toml")).filter(|p| p.is_file()),
        };

        let env_path = etc_dir.join("env");
        let env_file = if env_path.is_file() {
            match std::fs::read_to_string(&env_path) {
                Ok(text) => {
                    sources.env_file = Some(env_path);
                    let vars = parse_env_file(&text);
                    sources.env_file_secrets = secrets_in(&vars);
                    vars
                }
                Err(e) => {
                    sources
                        .unreadable
                        .push(format!("{}: {e}", env_path.display()));
                    HashMap::new()
                }
            }
        } else {
            HashMap::new()
        };

        let installed_credentials = etc_dir.join("credentials");
        sources.credentials_dir = match lookup(CREDENTIALS_ENV) {
            Some(dir) => Some(PathBuf::from(dir)),
            None if installed_credentials.is_dir() => {
                match std::fs::read_dir(&installed_credentials) {
                    Ok(_) => Some(installed_credentials),
                    Err(e) => {
                        sources
                            .unreadable
                            .push(format!("{}: {e}", installed_credentials.display()));
                        None
                    }
                }
            }
            None => None,
        };

        let credentials = sources
            .credentials_dir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        let layered = |name: &str| {
            if name == CREDENTIALS_ENV {
                return credentials.clone();
            }
            lookup(name).or_else(|| env_file.get(name).cloned())
        };
        let config = Config::load(sources.config_file.as_deref(), &layered, flags)?;
        Ok((config, sources))
    }
}

/// The environment names of the secrets set (non-empty) in `vars`.
fn secrets_in(vars: &HashMap<String, String>) -> Vec<&'static str> {
    super::SECRETS
        .iter()
        .map(|secret| Settings::env_name(secret.setting))
        .filter(|name| {
            let seed = name.strip_prefix("MC_").unwrap_or(name);
            [*name, seed]
                .iter()
                .any(|n| vars.get(*n).is_some_and(|v| !v.is_empty()))
        })
        .collect()
}

/// A systemd `EnvironmentFile`: `NAME=value` lines; blank lines and lines starting with `#` or
/// `;` are skipped; a value in matching single or double quotes loses them (a double-quoted one
/// its backslash escapes too). Lines that are not assignments are skipped, as systemd does.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            continue;
        }
        vars.insert(name.to_string(), unquote(value.trim()));
    }
    vars
}

fn unquote(value: &str) -> String {
    let quoted = |q: char| value.len() >= 2 && value.starts_with(q) && value.ends_with(q);
    if quoted('\'') {
        return value[1..value.len() - 1].to_string();
    }
    if quoted('"') {
        let mut out = String::new();
        let mut chars = value[1..value.len() - 1].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        return out;
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn env_files_parse_as_systemd_reads_them() {
        let vars = parse_env_file(
            "# comment\n; another\n\nA=1\n B = two \nC=\"quoted \\\"x\\\"\"\nD='single'\nnot an assignment\nE=\n",
        );
        assert_eq!(vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(vars.get("B").map(String::as_str), Some("two"));
        assert_eq!(vars.get("C").map(String::as_str), Some("quoted \"x\""));
        assert_eq!(vars.get("D").map(String::as_str), Some("single"));
        assert_eq!(vars.get("E").map(String::as_str), Some(""));
        assert_eq!(vars.len(), 5);
    }

    fn install(root: &Path) -> PathBuf {
        let etc = root.join("etc/master-controller");
        std::fs::create_dir_all(etc.join("credentials")).expect("dirs");
        std::fs::write(etc.join("config.toml"), "max_vms = 7\n").expect("config");
        std::fs::write(etc.join("env"), "MC_MAX_VMS=9\nMC_BRIDGE=envbr0\n").expect("env");
        std::fs::write(
            etc.join("credentials/admin-token"),
            "installed-admin-token-0123\n",
        )
        .expect("token");
        // The unit's empty default for an optional credential: unset.
        std::fs::write(etc.join("credentials/service-token"), "\n").expect("token");
        etc
    }

    #[test]
    fn operator_commands_read_the_installed_files_below_the_environment() {
        let root = tempfile::tempdir().expect("tempdir");
        let etc = install(root.path());
        let root_text = root.path().to_string_lossy().into_owned();
        let lookup = |name: &str| match name {
            INSTALL_ROOT_ENV => Some(root_text.clone()),
            "MC_BRIDGE" => Some("processbr0".into()),
            _ => None,
        };
        let (config, sources) =
            Config::for_operator(None, &lookup, Settings::default()).expect("config");
        assert_eq!(sources.config_file, Some(etc.join("config.toml")));
        assert_eq!(sources.env_file, Some(etc.join("env")));
        assert_eq!(sources.credentials_dir, Some(etc.join("credentials")));
        // The env file wins over config.toml, as systemd's environment does for the service;
        // the process environment wins over both.
        assert_eq!(config.vms.limits.max_running, 9);
        assert_eq!(config.vms.bridge, "processbr0");
        let token = config.api.admin_token.as_ref().expect("admin token");
        assert_eq!(token.expose_secret(), "installed-admin-token-0123");
        assert!(config.api.service_token.is_none());
        assert!(sources.env_file_secrets.is_empty());
    }

    #[test]
    fn secrets_left_in_the_env_file_are_named() {
        let vars = parse_env_file("SUPABASE_SERVICE_KEY=abc\nMC_SERVICE_TOKEN=x\nDECODO_USER=\n");
        assert_eq!(
            secrets_in(&vars),
            ["MC_SERVICE_TOKEN", "MC_SUPABASE_SERVICE_KEY"]
        );
    }

    #[test]
    fn explicit_settings_win_over_the_installed_ones() {
        let root = tempfile::tempdir().expect("tempdir");
        install(root.path());
        let other = root.path().join("other.toml");
        std::fs::write(&other, "max_vms = 3\n").expect("config");
        let creds = root.path().join("creds");
        std::fs::create_dir(&creds).expect("creds");
        let root_text = root.path().to_string_lossy().into_owned();
        let creds_text = creds.to_string_lossy().into_owned();
        let lookup = |name: &str| match name {
            INSTALL_ROOT_ENV => Some(root_text.clone()),
            "MC_ADMIN_TOKEN" => Some("explicit-admin-token-0123".into()),
            CREDENTIALS_ENV => Some(creds_text.clone()),
            _ => None,
        };
        let flags = Settings {
            max_vms: Some(2),
            ..Settings::default()
        };
        let (config, sources) = Config::for_operator(Some(&other), &lookup, flags).expect("config");
        assert_eq!(sources.config_file, Some(other));
        assert_eq!(sources.credentials_dir, Some(creds));
        assert_eq!(config.vms.limits.max_running, 2);
        let token = config.api.admin_token.as_ref().expect("admin token");
        assert_eq!(token.expose_secret(), "explicit-admin-token-0123");
    }
}
