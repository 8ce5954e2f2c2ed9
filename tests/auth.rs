//! The OAuth login relay through the daemon's API and the real `vm-agent` (run as a host
//! process, `support::host_agent`), with the scripted login CLI of `tests/support/` standing in
//! for each provider's real login screen. A login in a real QEMU guest is in `vm_manager`.
//!
//! The process moves into network and UTS namespaces of its own first (the agent configures
//! `eth0` and sets the hostname), so it needs root; without it, it says so and skips, unless
//! `MC_REQUIRE_GUESTS=1`.

mod support;

#[path = "auth/cases.rs"]
mod cases;
#[path = "auth/world.rs"]
mod world;

use std::process::ExitCode;

use support::harness::{self, Case};
use support::host_agent;
use world::World;

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return harness::missing("auth", "needs root for network and UTS namespaces");
    }
    host_agent::enter_namespaces();
    let runtime = harness::runtime();
    let mut world = runtime.block_on(World::start());
    let cases: Vec<(&str, Case<World>)> = vec![
        (
            "each provider: start, awaiting_user, the right code, completed, sealed in the vault",
            |w| Box::pin(cases::each_provider_completes(w)),
        ),
        ("a wrong code ends failed with the CLI's own message", |w| {
            Box::pin(cases::a_wrong_code_fails(w))
        }),
        (
            "cancel kills each provider's login and removes its HOME",
            |w| Box::pin(cases::cancel_cleans_up(w)),
        ),
        (
            "each provider's session left idle past its timeout ends as timeout",
            |w| Box::pin(cases::idle_session_times_out(w)),
        ),
        (
            "a second start while one is active is refused, for each provider",
            |w| Box::pin(cases::second_start_is_refused(w)),
        ),
        (
            "credentials, validation (with live), rotation, and the WebSocket events",
            |w| Box::pin(cases::credentials_validation_and_rotation(w)),
        ),
        (
            "every auth route answers 403 to another user's token",
            |w| Box::pin(cases::other_users_are_refused(w)),
        ),
        ("bad input is refused clearly", |w| {
            Box::pin(cases::bad_input_is_refused(w))
        }),
    ];
    harness::run(&runtime, &mut world, cases, |_| true)
}
