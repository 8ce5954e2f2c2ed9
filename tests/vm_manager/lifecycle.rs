//! The main job and its failures: the API path, isolation, a daemon crash, a VM crash.

use std::time::{Duration, Instant};

use crate::support::daemon_proc::{SERVICE_TOKEN, link_exists, processes_naming};
use crate::support::vmhost;
use crate::world::{GATEWAY, World, admin_socket, destroy, id_of, wait_event};

pub async fn whole_api_path(world: &mut World) {
    let available = world.pool_available().await;
    let user = world.new_user().await;
    let vm = world.create_vm(&user).await;
    let id = id_of(&vm);
    let tap = vm["tapDevice"].as_str().expect("tap").to_string();
    assert!(tap.len() <= 15 && link_exists(&tap), "{vm:?}");
    assert!(
        vm["ipAddress"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.215.0."))
    );
    let boot_id = vm["agent"]["bootId"].as_str().expect("bootId").to_string();
    assert_eq!(processes_naming(&world.vm_dir(&id)).len(), 1);
    assert_eq!(world.pool_available().await, available - 1);
    let (code, out) = world.exec(&id, "cat /proc/sys/kernel/random/boot_id").await;
    assert_eq!((code, out.trim()), (0, boot_id.as_str()));
    crate::confinement::assert_confined(world, &id).await;

    // The agent's health is polled (every 2 s here): heartbeat, agent info and usage metrics.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, polled) = world.user_vm(&user, "", "GET").await;
    assert!(
        polled["lastHeartbeat"].as_str() > vm["lastHeartbeat"].as_str(),
        "{polled:?}"
    );
    assert!(polled["agent"]["checkedAt"].as_str() > vm["agent"]["checkedAt"].as_str());
    let metrics = world.metrics().await;
    let usage =
        format!("polydev_vm_resource_usage{{vm_id=\"{id}\",resource=\"memory_used_bytes\"}}");
    assert!(metrics.contains(&usage), "{usage} missing");
    assert!(metrics.contains("polydev_vm_create_duration_seconds_count 1"));
    assert!(metrics.contains("polydev_active_vms 1"));

    let (status, hibernated) = world.user_vm(&user, "hibernate", "POST").await;
    assert_eq!(status, 200, "{hibernated:?}");
    assert_eq!(hibernated["status"], "hibernated");
    assert!(!link_exists(&tap), "a hibernated VM keeps no tap");
    assert!(processes_naming(&world.vm_dir(&id)).is_empty());
    let (status, again) = world.user_vm(&user, "hibernate", "POST").await;
    assert_eq!(status, 409, "{again:?}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("hibernated")
    );

    let (status, resumed) = world.user_vm(&user, "resume", "POST").await;
    assert_eq!(status, 200, "{resumed:?}");
    assert_eq!(resumed["status"], "running");
    assert_eq!(
        resumed["agent"]["bootId"],
        boot_id.as_str(),
        "same boot after resume"
    );
    assert_eq!(resumed["ipAddress"], vm["ipAddress"]);
    let (code, out) = world.exec(&id, "echo resumed").await;
    assert_eq!((code, out.trim()), (0, "resumed"));
    // The resumed QEMU loaded its state through a descriptor, under the same sandbox.
    crate::confinement::assert_confined(world, &id).await;
    let (status, again) = world.user_vm(&user, "resume", "POST").await;
    assert_eq!(status, 409, "{again:?}");

    let diagnostics = world
        .daemon
        .call(
            "GET",
            &format!("/api/vms/{id}/diagnostics?lines=5"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(diagnostics.status, 200, "{:?}", diagnostics.json);
    let console = diagnostics.json["consoleLog"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!console.is_empty() && console.len() <= 5, "{console:?}");
    for bad in ["0", "100000", "5;rm%20-rf", "x"] {
        let reply = world
            .daemon
            .call(
                "GET",
                &format!("/api/vms/{id}/diagnostics?lines={bad}"),
                SERVICE_TOKEN,
                None,
            )
            .await;
        assert_eq!(reply.status, 400, "lines={bad}: {:?}", reply.json);
    }

    let gone = destroy(world, &user).await;
    assert!(gone["ipAddress"].is_null() && gone["tapDevice"].is_null());
    world.assert_gone(&vm);
    assert_eq!(
        world.pool_available().await,
        available,
        "the lease is released"
    );
    let (status, body) = world.user_vm(&user, "hibernate", "POST").await;
    assert_eq!(
        status, 404,
        "a destroyed VM is no longer the user's: {body:?}"
    );
}

pub async fn guests_are_isolated(world: &mut World) {
    let (user_a, user_b) = (world.new_user().await, world.new_user().await);
    let vm_a = world.create_vm(&user_a).await;
    let vm_b = world.create_vm(&user_b).await;
    let (ip_a, ip_b) = (
        vm_a["ipAddress"].as_str().expect("ip").to_string(),
        vm_b["ipAddress"].as_str().expect("ip").to_string(),
    );
    assert_ne!(ip_a, ip_b);
    for (vm, other) in [(&vm_a, &ip_b), (&vm_b, &ip_a)] {
        let id = id_of(vm);
        let (code, out) = world.exec(&id, &format!("ping -c 1 -W 2 {GATEWAY}")).await;
        assert_eq!(code, 0, "the gateway must answer: {out}");
        let (code, out) = world.exec(&id, &format!("ping -c 2 -W 2 {other}")).await;
        assert_ne!(code, 0, "a guest reached another guest: {out}");
    }
    world.kept = vec![(user_a, vm_a), (user_b, vm_b)];
}

pub async fn daemon_crash_adopts_the_vm(world: &mut World) {
    let (user, vm) = world.kept.first().cloned().expect("a kept VM");
    let id = id_of(&vm);
    let before = processes_naming(&world.vm_dir(&id));
    assert_eq!(before.len(), 1, "{before:?}");
    world.daemon.kill();
    assert_eq!(
        processes_naming(&world.vm_dir(&id)),
        before,
        "the VM outlives the daemon"
    );
    // The tap's binding gone while the daemon was down (a firewall reload flushing the
    // ruleset): adopting the VM lays it again.
    let tap = master_controller::net::tap_name(&id);
    let ip = vm["ipAddress"].as_str().expect("address").to_string();
    assert!(vmhost::tap_binding(&tap).contains(&format!("ip saddr {ip} accept")));
    vmhost::nft(&format!(
        "delete chain netdev master_controller_taps {tap}\n"
    ));
    assert!(vmhost::tap_binding(&tap).is_empty());
    world.daemon.start(&[]).await;
    let (status, adopted) = world.user_vm(&user, "", "GET").await;
    assert_eq!(status, 200);
    assert_eq!(adopted["status"], "running", "{adopted:?}");
    assert!(
        vmhost::tap_binding(&tap).contains(&format!("ip saddr {ip} accept")),
        "adopted without its binding: {}",
        vmhost::tap_binding(&tap)
    );
    let (code, out) = world.exec(&id, "echo adopted").await;
    assert_eq!((code, out.trim()), (0, "adopted"));
    assert_eq!(
        processes_naming(&world.vm_dir(&id)),
        before,
        "no second hypervisor was started"
    );
}

pub async fn vm_crash_is_seen(world: &mut World) {
    let (user, vm) = world.kept.get(1).cloned().expect("a second kept VM");
    let id = id_of(&vm);
    let available = world.pool_available().await;
    let mut socket = admin_socket().await;
    let pids = processes_naming(&world.vm_dir(&id));
    assert_eq!(pids.len(), 1);
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill QEMU");
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let left = Duration::from_secs(2).saturating_sub(killed.elapsed());
        let Some(event) = wait_event(&mut socket, "", left).await else {
            panic!("within 2 s only {:?}", seen.keys().collect::<Vec<_>>());
        };
        seen.insert(
            event["data"]["event"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            event,
        );
    }
    let event = seen.remove("vm_crashed").expect("vm_crashed within 2 s");
    let changed = seen.remove("vm_status_changed").expect("vm_status_changed");
    assert_eq!(changed["data"]["status"], "failed");
    eprintln!("    vm_crashed after {:?}", killed.elapsed());
    assert_eq!(event["data"]["vmId"], id.as_str());
    assert_eq!(event["channel"], format!("user:{user}"));
    let (_, failed) = world.user_vm(&user, "", "GET").await;
    assert_eq!(failed["status"], "failed", "{failed:?}");
    assert!(failed["ipAddress"].is_null());
    assert_eq!(
        world.pool_available().await,
        available + 1,
        "the IP is back"
    );
    let tap = vm["tapDevice"].as_str().expect("tap");
    assert!(!link_exists(tap));
    destroy(world, &user).await;
    world.assert_gone(&vm);
    world.kept.truncate(1);
}
