//! The checks about the operator's installation rather than the host's devices: where the
//! configuration came from, and the room for hibernation images; and the checks as JSON.

use std::path::Path;

use super::{Check, Level, check};
use crate::config::{Config, Sources};

const MIB: u64 = 1 << 20;

/// Where the configuration came from, so an operator sees whether the installed files were read.
pub fn sources(sources: &Sources) -> Check {
    const NAME: &str = "config";
    let shown = |path: &Option<std::path::PathBuf>| match path {
        Some(path) => path.display().to_string(),
        None => "none".into(),
    };
    let detail = format!(
        "file {}, env file {}, credentials {}",
        shown(&sources.config_file),
        shown(&sources.env_file),
        shown(&sources.credentials_dir)
    );
    let mut problems = Vec::new();
    if !sources.unreadable.is_empty() {
        problems.push(format!(
            "cannot read {} (run as root to see what the service sees)",
            sources.unreadable.join(", ")
        ));
    }
    if !sources.env_file_secrets.is_empty() {
        problems.push(format!(
            "the env file sets the secrets {}: move each into a file in {}/credentials/",
            sources.env_file_secrets.join(", "),
            sources.etc_dir.display()
        ));
    }
    if problems.is_empty() {
        check(NAME, Level::Ok, detail)
    } else {
        check(
            NAME,
            Level::Warn,
            format!("{detail}; {}", problems.join("; ")),
        )
    }
}

/// A hibernated VM's memory is written to a file in the data dir, so every VM the host may run
/// needs that much room there: `max_vms` × the VM memory.
pub fn hibernation_room(config: &Config) -> Check {
    let memory = u64::from(config.vms.memory_mib) * MIB;
    let max = u64::from(config.vms.limits.max_running);
    let need = memory * max;
    // The data dir may not exist yet; the filesystem it will be on is its nearest ancestor's.
    let Some(probe) = config.data_dir.ancestors().find(|p| p.exists()) else {
        return check("disk", Level::Warn, "no existing directory to probe");
    };
    match nix::sys::statvfs::statvfs(probe) {
        Ok(stat) => {
            let free = stat.blocks_available() * stat.fragment_size();
            room_check(&config.data_dir, free, memory, max, need)
        }
        Err(e) => check(
            "disk",
            Level::Warn,
            format!("cannot probe {}: {e}", probe.display()),
        ),
    }
}

fn room_check(dir: &Path, free: u64, memory: u64, max: u64, need: u64) -> Check {
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let numbers = format!(
        "{:.1} GiB free in {}; hibernation images need up to {max} VMs × {} MiB = {:.1} GiB",
        gib(free),
        dir.display(),
        memory / MIB,
        gib(need)
    );
    let fit = free.checked_div(memory).unwrap_or(max);
    if free >= need {
        check("disk", Level::Ok, numbers)
    } else if fit == 0 {
        check(
            "disk",
            Level::Fail,
            format!("{numbers}: not even one VM can hibernate"),
        )
    } else {
        check(
            "disk",
            Level::Warn,
            format!("{numbers}: only {fit} can hibernate (free space, or lower max_vms)"),
        )
    }
}

/// The checks as one JSON object: `ok` is false when any check failed.
pub fn render_json(checks: &[Check]) -> String {
    let items: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "level": match c.level {
                    Level::Ok => "ok",
                    Level::Warn => "warn",
                    Level::Fail => "fail",
                },
                "detail": c.detail,
            })
        })
        .collect();
    let ok = checks.iter().all(|c| c.level != Level::Fail);
    serde_json::json!({ "ok": ok, "checks": items }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_for_hibernation_images_is_counted() {
        let dir = Path::new("/srv/mc");
        let gib = 1u64 << 30;
        let ok = room_check(dir, 100 * gib, 2 * gib, 10, 20 * gib);
        assert_eq!(ok.level, Level::Ok, "{}", ok.detail);
        assert!(
            ok.detail.contains("10 VMs × 2048 MiB = 20.0 GiB"),
            "{}",
            ok.detail
        );
        let warn = room_check(dir, 5 * gib, 2 * gib, 10, 20 * gib);
        assert_eq!(warn.level, Level::Warn);
        assert!(
            warn.detail.contains("only 2 can hibernate"),
            "{}",
            warn.detail
        );
        let fail = room_check(dir, gib, 2 * gib, 10, 20 * gib);
        assert_eq!(fail.level, Level::Fail, "{}", fail.detail);
    }

    #[test]
    fn json_says_whether_any_check_failed() {
        let checks = vec![
            check("a", Level::Ok, "fine"),
            check("b", Level::Warn, "hm \"quoted\""),
        ];
        let value: serde_json::Value = serde_json::from_str(&render_json(&checks)).expect("json");
        assert_eq!(value["ok"], true);
        assert_eq!(value["checks"][1]["level"], "warn");
        assert_eq!(value["checks"][1]["detail"], "hm \"quoted\"");
        let failed = render_json(&[check("c", Level::Fail, "no")]);
        assert!(failed.contains("\"ok\":false"), "{failed}");
    }
}
