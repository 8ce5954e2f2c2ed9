//! Crash points for the tests of durable intents. `MC_FAILPOINT=<name>` makes the daemon abort
//! (as a SIGKILL would stop it) when it reaches the named step, so a test can leave an
//! operation half-done on the host and check what reconcile makes of it.
//!
//! Hand-written rather than the `fail` crate: that crate compiles its points in only under a
//! cargo feature, so the binary under test would differ from the shipped one.

use std::sync::OnceLock;

pub const ENV: &str = "MC_FAILPOINT";

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|name| !name.is_empty()))
        .as_deref()
}

/// Aborts the process if `name` is the armed failpoint.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        tracing::error!(failpoint = name, "failpoint reached; aborting");
        std::process::abort();
    }
}
