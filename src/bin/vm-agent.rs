//! The guest agent. In a guest it reads its token and channel from the kernel command line;
//! `vm-agent --channel unix:/path --token T` serves a Unix socket instead (for tests on a host).
//! `vm-agent files ...` is the workspace file helper the agent runs for the host
//! (`agent::workspace`); it is synchronous, and no runtime is started for it.

use std::process::ExitCode;

use master_controller::agent::{self, AgentConfig, ChannelSpec};

fn config_from_args() -> Result<AgentConfig, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        let cmdline =
            std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
        return AgentConfig::from_cmdline(&cmdline).map_err(|e| e.to_string());
    }
    let mut channel = None;
    let mut token = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--channel" => channel = args.next(),
            "--token" => token = args.next(),
            "--version" => return Err(format!("vm-agent {}", env!("CARGO_PKG_VERSION"))),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: vm-agent [--channel SPEC --token TOKEN]"
                ));
            }
        }
    }
    let channel = ChannelSpec::parse(&channel.ok_or("--channel is required with flags")?)
        .map_err(|e| e.to_string())?;
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or("--token is required with flags")?;
    Ok(AgentConfig { token, channel })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some((first, rest)) = args.split_first()
        && first == master_controller::guest::workspace::FILES_SUBCOMMAND
    {
        return agent::workspace::main(rest);
    }
    let config = match config_from_args() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("vm-agent: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vm-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vm-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
