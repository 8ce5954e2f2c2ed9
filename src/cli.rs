//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::io::Write;

use clap::{Args, CommandFactory, Parser, Subcommand};
pub use clap_complete::Shell;

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "master-controller",
    version,
    about = "A private microVM per user, running the AI coding CLIs",
    long_about = "A private microVM per user, running the AI coding CLIs.\n\n\
        Run as root without --config, the operator commands (doctor, token, vault rotate-key, \
        golden-snapshot) read what the installed service reads: /etc/master-controller/config.toml, \
        the environment file /etc/master-controller/env and the credentials in \
        /etc/master-controller/credentials/. Flags and the process environment win over them."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Print the version.
    Version,
    /// Mint a user-scoped API token.
    Token(TokenArgs),
    /// Report what this host has and lacks.
    Doctor(DoctorArgs),
    /// Boot one VM as configured, wait for its agent, and save it as the golden snapshot at
    /// GOLDEN_SNAPSHOT (and GOLDEN_MEMORY).
    GoldenSnapshot(CommonArgs),
    /// Manage the credential vault.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Print a shell completion script (e.g. to /usr/share/bash-completion/completions/).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff), e.g. `master-controller man > master-controller.1`.
    Man,
    /// Write the API's OpenAPI 3.1 document (what `/openapi.json` serves).
    Openapi {
        /// Write it to this file instead of standard output (e.g. appliance/openapi.json).
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the checks as one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// Writes `shell`'s completion script for the whole command line.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "master-controller", out);
}

/// Writes the man page in roff.
pub fn man(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Re-encrypt every stored credential under a new master key. Stop the daemon first. The
    /// current key comes from ENCRYPTION_MASTER_KEY or the `encryption-master-key` credential;
    /// an interrupted run is finished by running it again with the same keys.
    RotateKey(RotateKeyArgs),
}

/// Where `vault rotate-key` reads the new key when `--new-key-file` is absent.
pub const NEW_KEY_ENV: &str = "MC_NEW_ENCRYPTION_MASTER_KEY";

#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// File holding the new master key, 64 hex digits (`openssl rand -hex 32`)
    /// [default: the MC_NEW_ENCRYPTION_MASTER_KEY environment variable].
    #[arg(long, value_name = "PATH")]
    pub new_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML configuration file [default for the operator commands: the installed
    /// /etc/master-controller/config.toml, when there is one].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// State directory [default: /var/lib/master-controller].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl CommonArgs {
    pub fn flags(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            ..Settings::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// API listen address [default: 0.0.0.0:4000].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve /metrics (and the probes) without a token on this address instead of the main one.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

impl ServeArgs {
    pub fn flags(&self) -> Settings {
        Settings {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            ..self.common.flags()
        }
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user the token is scoped to.
    #[arg(long, value_name = "USER_ID")]
    pub user: String,
    /// Lifetime in seconds [default: MC_USER_TOKEN_TTL_SECS, 86400].
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_the_man_page_generate() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).expect("utf-8");
            assert!(
                text.contains("doctor") && text.contains("rotate-key"),
                "{shell}"
            );
        }
        let mut out = Vec::new();
        man(&mut out).expect("man page");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{text}");
        assert!(text.contains("golden\\-snapshot") || text.contains("golden-snapshot"));
    }
}
