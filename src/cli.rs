//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "master-controller",
    about = "A private microVM per user, running the AI coding CLIs"
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
    Doctor(CommonArgs),
    /// Boot one VM as configured, wait for its agent, and save it as the golden snapshot at
    /// GOLDEN_SNAPSHOT (and GOLDEN_MEMORY).
    GoldenSnapshot(CommonArgs),
    /// Manage the credential vault.
    #[command(subcommand)]
    Vault(VaultCommand),
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
    /// TOML configuration file.
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
