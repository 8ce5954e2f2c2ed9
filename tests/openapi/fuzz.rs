//! schemathesis against a live daemon.

use std::path::PathBuf;

/// The pinned schemathesis (`MC_SCHEMATHESIS`, printed by scripts/install-schemathesis.sh), or
/// `None` after saying why the test skips (a failure under `MC_REQUIRE_GUESTS=1`, where
/// scripts/test.sh installed it).
pub fn schemathesis() -> Option<PathBuf> {
    let found = std::env::var_os("MC_SCHEMATHESIS")
        .map(PathBuf::from)
        .filter(|path| path.is_file());
    if found.is_none() {
        let reason = "MC_SCHEMATHESIS does not name schemathesis's `st` \
            (MC_SCHEMATHESIS=$(scripts/install-schemathesis.sh); scripts/test.sh does)";
        assert!(
            std::env::var("MC_REQUIRE_GUESTS").as_deref() != Ok("1"),
            "MC_REQUIRE_GUESTS=1 but {reason}"
        );
        eprintln!("SKIPPED: {reason}");
    }
    found
}
