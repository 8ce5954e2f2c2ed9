//! Egress end to end with real guests: the test image on QEMU under TCG, in a network namespace
//! of this process's own, with the daemon binary's gateway proxy on the bridge. A real
//! upstream proxy (tinyproxy with basic auth, one instance per upstream port) and an echo
//! server stand in for Decodo and the internet, in a second namespace (`support::internet`).
//! The host rules come from the real `scripts/setup-network.sh`. Cases run in order on shared
//! state: TCG is CPU-heavy.

mod support;

#[path = "egress/cases.rs"]
mod cases;
#[path = "egress/spoofing.rs"]
mod spoofing;
#[path = "egress/world.rs"]
mod world;

use std::process::ExitCode;

use support::{harness, vmhost};
use world::World;

type Case = harness::Case<World>;

fn main() -> ExitCode {
    if let Some(reason) = vmhost::missing_prerequisite() {
        return harness::missing("egress", &reason);
    }
    if std::process::Command::new("tinyproxy")
        .arg("-v")
        .output()
        .is_err()
    {
        return harness::missing(
            "egress",
            "tinyproxy is not installed (apt-get install tinyproxy-bin)",
        );
    }
    vmhost::enter_private_namespace();
    let runtime = harness::runtime();
    let mut world = runtime.block_on(World::start());
    let cases: Vec<(&str, Case)> = vec![
        (
            "routing: each user's guest leaves through their own upstream port (CONNECT and plain HTTP)",
            |w| Box::pin(cases::each_user_leaves_through_their_port(w)),
        ),
        (
            "credentials: the upstream password reaches nothing in the guest",
            |w| Box::pin(cases::the_guest_never_sees_the_password(w)),
        ),
        ("refusal: an unknown source address is refused", |w| {
            Box::pin(cases::an_unknown_source_is_refused(w))
        }),
        (
            "spoofing: a guest with its neighbour's IPv4, ARP or MAC reaches neither the gateway nor the host",
            |w| Box::pin(spoofing::a_guest_cannot_use_its_neighbours_address(w)),
        ),
        ("bypass: a listed host goes direct", |w| {
            Box::pin(cases::a_bypassed_host_goes_direct(w))
        }),
        (
            "strict mode: a guest's direct connection fails, the gateway still works",
            |w| Box::pin(cases::strict_mode_leaves_only_the_gateway(w)),
        ),
        (
            "ports: kept across hibernate, resume and restart; exhausted pool 503; freed on delete",
            |w| Box::pin(cases::ports_belong_to_users(w)),
        ),
        (
            "health: a dead upstream port is unhealthy in the admin API and the metrics",
            |w| Box::pin(cases::a_dead_port_is_unhealthy(w)),
        ),
    ];
    let outcome = harness::run(&runtime, &mut world, cases, |world| {
        println!("{}", world.daemon.log_tail());
        true
    });
    world.daemon.kill_with_vms();
    outcome
}
