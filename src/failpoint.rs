//! Crash points for the tests of durable intents. `MC_FAILPOINT=<name>` makes the process
//! SIGKILL itself when it reaches the named step, so a test can leave an operation half-done on
//! the host and check what reconcile (or a rerun) makes of it.
//! `MC_FAILPOINT=<name>@<n>` kills it at the n-th hit instead, so a loop can be stopped part-way.
//!
//! Hand-written rather than the `fail` crate: that crate compiles its points in only under a
//! cargo feature, so the binary under test would differ from the shipped one.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const ENV: &str = "MC_FAILPOINT";

struct Armed {
    name: String,
    at_hit: u64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var(ENV)
                .ok()
                .filter(|spec| !spec.is_empty())
                .map(|spec| parse(&spec))
        })
        .as_ref()
}

/// A suffix that is not a positive count stays part of the name, so such a point never fires
/// rather than firing at an unintended hit.
fn parse(spec: &str) -> Armed {
    if let Some((name, count)) = spec.rsplit_once('@')
        && let Ok(at_hit) = count.parse::<u64>()
        && at_hit > 0
    {
        return Armed {
            name: name.to_string(),
            at_hit,
        };
    }
    Armed {
        name: spec.to_string(),
        at_hit: 1,
    }
}

/// Aborts the process if `name` is the armed failpoint and this is the armed hit.
pub fn hit(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some(armed) = armed() else { return };
    if armed.name != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 >= armed.at_hit {
        tracing::error!(failpoint = name, "failpoint reached; killing this process");
        // SIGKILL itself, not abort(): exactly what the tests stand for, with no core dump and
        // no chance for any handler to tidy up.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_an_optional_hit_count() {
        let plain = parse("vms.create.after_intent");
        assert_eq!(
            (plain.name.as_str(), plain.at_hit),
            ("vms.create.after_intent", 1)
        );
        let counted = parse("vault.rotate.after_record@5");
        assert_eq!(
            (counted.name.as_str(), counted.at_hit),
            ("vault.rotate.after_record", 5)
        );
        let odd = parse("a@b");
        assert_eq!((odd.name.as_str(), odd.at_hit), ("a@b", 1));
    }
}
