//! The secrets the daemon reads, and where each comes from: its setting (the environment or the
//! TOML file), for the two tokens a `*_file` setting, else the systemd credential of its name.
//!
//! The unit (`systemd/master-controller.service`) loads every credential in [`SECRETS`] from
//! `/etc/master-controller/credentials/<name>`. The optional ones also get an empty default
//! (`SetCredential=<name>:\n`): on systemd 252 (Debian 12) a `LoadCredential=` whose file is
//! missing fails the start unless a `SetCredential=` of the same name stands in, and an empty
//! value is rejected there as bad syntax. So an empty (or all-whitespace) credential means unset.

use std::path::Path;

use super::{ConfigError, Settings, invalid};

/// One secret: its setting and its credential name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    pub setting: &'static str,
    pub credential: &'static str,
    /// `install.sh` generates it, so the unit may require its file.
    pub generated: bool,
}

const fn secret(setting: &'static str, credential: &'static str, generated: bool) -> Secret {
    Secret {
        setting,
        credential,
        generated,
    }
}

/// Every secret the daemon reads. The unit, `install.sh` and the README follow this list (a test
/// compares the unit with it).
pub const SECRETS: &[Secret] = &[
    secret("admin_token", "admin-token", true),
    secret("encryption_master_key", "encryption-master-key", true),
    secret("service_token", "service-token", false),
    secret("token_signing_key", "token-signing-key", false),
    secret("supabase_service_key", "supabase-service-key", false),
    secret("model_api_key", "model-api-key", false),
    secret("decodo_user", "decodo-user", false),
    secret("decodo_password", "decodo-password", false),
];

/// Fills every secret that no setting gave from its `*_file` setting, else from the credential
/// in `credentials_dir`.
pub(super) fn fill(s: &mut Settings, credentials_dir: Option<&Path>) -> Result<(), ConfigError> {
    let admin_file = s.admin_token_file.clone();
    let service_file = s.service_token_file.clone();
    let slots: [(&mut Option<String>, Option<&Path>); 8] = [
        (&mut s.admin_token, admin_file.as_deref()),
        (&mut s.encryption_master_key, None),
        (&mut s.service_token, service_file.as_deref()),
        (&mut s.token_signing_key, None),
        (&mut s.supabase_service_key, None),
        (&mut s.model_api_key, None),
        (&mut s.decodo_user, None),
        (&mut s.decodo_password, None),
    ];
    for (secret, (slot, file)) in SECRETS.iter().zip(slots) {
        if slot.is_some() {
            continue;
        }
        if let Some(file) = file {
            *slot = Some(read(secret, file)?);
            continue;
        }
        let Some(dir) = credentials_dir else { continue };
        let path = dir.join(secret.credential);
        // `exists` is false too where the directory cannot be searched (not root): then the
        // credential is simply not there for this process, as for any other unset secret.
        if path.exists() {
            let text = read(secret, &path)?;
            if !text.is_empty() {
                *slot = Some(text);
            }
        }
    }
    Ok(())
}

/// The file's text, trimmed; the error names the file, never its content.
fn read(secret: &Secret, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            secret.setting,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_is_a_setting() {
        for secret in SECRETS {
            assert!(
                !Settings::env_name(secret.setting).is_empty(),
                "{} is no setting",
                secret.setting
            );
        }
    }

    /// The unit loads every credential, and only a generated one may go without a default.
    #[test]
    fn the_unit_loads_every_secret() {
        let unit = include_str!("../../systemd/master-controller.service");
        let lines: Vec<&str> = unit.lines().map(str::trim).collect();
        for secret in SECRETS {
            let load = format!(
                "LoadCredential={0}:/etc/master-controller/credentials/{0}",
                secret.credential
            );
            assert!(lines.contains(&load.as_str()), "the unit lacks {load}");
            let default = format!("SetCredential={}:\\n", secret.credential);
            assert_eq!(
                lines.contains(&default.as_str()),
                !secret.generated,
                "{default} must be there exactly when install.sh does not generate it"
            );
        }
        let loaded = lines
            .iter()
            .filter(|l| l.starts_with("LoadCredential="))
            .count();
        assert_eq!(
            loaded,
            SECRETS.len(),
            "the unit loads a credential no secret names"
        );
    }

    /// The env file is for settings; a secret there would bypass the credentials.
    #[test]
    fn the_env_example_suggests_no_secret() {
        let example = include_str!("../../appliance/env.example");
        for secret in SECRETS {
            let name = Settings::env_name(secret.setting);
            let seed = name.strip_prefix("MC_").unwrap_or(name);
            for line in example.lines() {
                let line = line.trim_start_matches(['#', ' ']);
                assert!(
                    !line.starts_with(&format!("{name}="))
                        && !line.starts_with(&format!("{seed}=")),
                    "appliance/env.example suggests the secret {name}: use the credential {}",
                    secret.credential
                );
            }
        }
    }
}
