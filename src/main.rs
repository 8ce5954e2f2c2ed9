use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use master_controller::auth::vault::{self, MasterKey};
use master_controller::cli::{self, Cli, Command, CommonArgs, NEW_KEY_ENV, VaultCommand};
use master_controller::config::{Config, LogFormat, Sources};
use master_controller::daemon::{self, DaemonError};
use master_controller::doctor::{self, Level};
use master_controller::model::now_ms;
use master_controller::store::{Store, StoreError};
use master_controller::tokens::TokenSigner;
use zeroize::Zeroizing;

/// Exit status for a bad setting, so scripts can tell it from a runtime failure.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("master-controller {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            let config = match load(args.common.config.as_deref(), args.flags()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            init_tracing(config.log_format);
            report(serve(config))
        }
        Command::Token(args) => {
            let config = match load_operator(&args.common) {
                Ok((config, _)) => config,
                Err(code) => return code,
            };
            report(mint(&config, &args.user, args.ttl))
        }
        Command::GoldenSnapshot(args) => {
            let config = match load_operator(&args) {
                Ok((config, _)) => config,
                Err(code) => return code,
            };
            init_tracing(config.log_format);
            report(golden_snapshot(config))
        }
        Command::Vault(VaultCommand::RotateKey(args)) => {
            let config = match load_operator(&args.common) {
                Ok((config, _)) => config,
                Err(code) => return code,
            };
            report(rotate_key(&config, args.new_key_file.as_deref()))
        }
        Command::Doctor(args) => {
            let (config, sources) = match load_operator(&args.common) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            let mut checks = vec![doctor::sources(&sources)];
            checks.extend(doctor::run(&config));
            if args.json {
                println!("{}", doctor::render_json(&checks));
            } else {
                print!("{}", doctor::render(&checks));
            }
            if checks.iter().any(|c| c.level == Level::Fail) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Completions { shell } => {
            cli::completions(shell, &mut std::io::stdout().lock());
            ExitCode::SUCCESS
        }
        Command::Man => {
            report(cli::man(&mut std::io::stdout().lock()).context("cannot write the man page"))
        }
        Command::Openapi { output } => {
            let document = master_controller::api::openapi::document_json() + "\n";
            report(match output {
                Some(path) => std::fs::write(&path, document)
                    .with_context(|| format!("cannot write {}", path.display())),
                None => {
                    std::io::Write::write_all(&mut std::io::stdout().lock(), document.as_bytes())
                        .context("cannot write the document")
                }
            })
        }
    }
}

/// The configuration an operator command sees: the service's installed files under the flags
/// and the environment (`Config::for_operator`).
fn load_operator(args: &CommonArgs) -> Result<(Config, Sources), ExitCode> {
    Config::for_operator(
        args.config.as_deref(),
        &|name| std::env::var(name).ok(),
        args.flags(),
    )
    .map_err(|e| {
        eprintln!("master-controller: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Loads and validates the configuration; a bad setting is one line on stderr.
fn load(
    file: Option<&std::path::Path>,
    flags: master_controller::config::Settings,
) -> Result<Config, ExitCode> {
    Config::from_process(file, flags).map_err(|e| {
        eprintln!("master-controller: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(daemon::run(config)) {
        Err(DaemonError::Config(e)) => {
            eprintln!("master-controller: {e}");
            std::process::exit(i32::from(EXIT_CONFIG));
        }
        other => other.map_err(Into::into),
    }
}

fn golden_snapshot(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let meta = runtime.block_on(daemon::build_golden(&config))?;
    println!(
        "golden-snapshot: done: {} on {} with {} vCPU and {} MiB; set GOLDEN_SNAPSHOT{} for the daemon",
        config
            .golden_snapshot
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        meta.hypervisor,
        meta.vcpus,
        meta.memory_mib,
        if meta.memory_file.is_some() {
            " and GOLDEN_MEMORY"
        } else {
            ""
        }
    );
    Ok(())
}

fn mint(config: &Config, user: &str, ttl: Option<u64>) -> anyhow::Result<()> {
    anyhow::ensure!(!user.trim().is_empty(), "--user must not be empty");
    let signer = TokenSigner::load(config.api.token_signing_key.as_ref(), &config.data_dir)
        .context("minting a user token needs the daemon's signing key")?;
    let ttl = ttl.unwrap_or(config.api.limits.user_token_ttl_secs);
    anyhow::ensure!(ttl > 0, "--ttl must be greater than 0");
    // The store is the running daemon's, so the user's token epoch cannot be read here: the
    // token carries epoch 0, and is refused if the user's tokens were ever revoked (mint
    // through `POST /api/users/:id/tokens` then).
    println!("{}", signer.mint(user, 0, now_ms() / 1000, ttl));
    Ok(())
}

fn rotate_key(config: &Config, new_key_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let old = vault::load_master_key(config.encryption_master_key.as_ref())
        .context("the current master key")?;
    let new = read_new_key(new_key_file)?;
    let path = config.data_dir.join(Store::FILE_NAME);
    // Opening a missing file would create it, and a vault with it: nothing to rotate there.
    anyhow::ensure!(
        path.exists(),
        "no state file at {}; check --data-dir",
        path.display()
    );
    let store = Store::open_blocking(&config.data_dir).map_err(|e| match e {
        StoreError::AlreadyOpen { .. } => anyhow::anyhow!("{e}; stop the daemon first"),
        other => other.into(),
    })?;
    println!(
        "vault rotate-key: re-encrypting the credentials in {} under the new master key",
        path.display()
    );
    let done = vault::rotate(&store, &old, &new)?;
    println!(
        "vault rotate-key: done: {} credentials re-encrypted, {} already under the new key; vault key {} retired, {} active. Now set ENCRYPTION_MASTER_KEY (or the `encryption-master-key` credential file) to the new key before starting the daemon",
        done.re_encrypted, done.already_done, done.key_id_old, done.key_id_new
    );
    Ok(())
}

/// The new key from its file or, without one, the environment. Neither error names the value.
fn read_new_key(file: Option<&std::path::Path>) -> anyhow::Result<MasterKey> {
    let text = match file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --new-key-file {}", path.display()))?,
        ),
        None => Zeroizing::new(std::env::var(NEW_KEY_ENV).map_err(|_| {
            anyhow::anyhow!(
                "no new master key: pass --new-key-file PATH (a file holding 64 hex digits) or set {NEW_KEY_ENV}"
            )
        })?),
    };
    MasterKey::parse(&text).context("the new master key")
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("master-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    // netlink-packet-route warns on every link dump about kernel attributes newer than itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(
            "netlink_packet_route=error"
                .parse()
                .expect("a constant directive parses"),
        );
    // Colour only on a terminal: journald and log files would keep the escape codes as text.
    // The log goes to stderr, so stderr is the stream asked.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
