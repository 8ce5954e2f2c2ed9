//! Recovery and pressure: interrupted intents, orphans at restart, a small IP pool.

use std::process::Command;
use std::time::Duration;

use crate::support::daemon_proc::{link_exists, processes_naming};
use crate::support::vmhost;
use crate::world::{BRIDGE, GATEWAY, World, bridge_ports, destroy, id_of};

pub async fn interrupted_intents_are_settled(world: &mut World) {
    let available = world.pool_available().await;
    // A hibernation that crashed after its snapshot was complete is finished.
    let (user, vm) = world.kept.first().cloned().expect("a kept VM");
    let id = id_of(&vm);
    world.daemon.stop().await;
    world
        .daemon
        .start(&[("MC_FAILPOINT", "vm.hibernate.after_snapshot")])
        .await;
    world
        .daemon
        .call_expecting_crash("POST", &format!("/api/users/{user}/vm/hibernate"))
        .await;
    world.daemon.wait_exit(Duration::from_secs(30)).await;
    world.daemon.start(&[]).await;
    let (_, settled) = world.user_vm(&user, "", "GET").await;
    assert_eq!(settled["status"], "hibernated", "{settled:?}");
    assert!(processes_naming(&world.vm_dir(&id)).is_empty());
    let (status, resumed) = world.user_vm(&user, "resume", "POST").await;
    assert_eq!(status, 200, "{resumed:?}");
    assert_eq!(resumed["agent"]["bootId"], vm["agent"]["bootId"]);
    destroy(world, &user).await;
    world.assert_gone(&vm);
    world.kept.clear();

    // A create that crashed between its tap and its boot is rolled back.
    let user = world.new_user().await;
    world.daemon.stop().await;
    world
        .daemon
        .start(&[("MC_FAILPOINT", "vm.create.after_tap")])
        .await;
    world
        .daemon
        .call_expecting_crash("POST", &format!("/api/users/{user}/vm"))
        .await;
    world.daemon.wait_exit(Duration::from_secs(30)).await;
    world.daemon.start(&[]).await;
    let (_, failed) = world.user_vm(&user, "", "GET").await;
    assert_eq!(failed["status"], "failed", "{failed:?}");
    assert!(failed["ipAddress"].is_null());
    world.assert_gone(&failed);
    assert_eq!(bridge_ports(), Vec::<String>::new(), "the tap is removed");
    assert_eq!(
        world.pool_available().await,
        available + 1,
        "no lease leaked"
    );
    let vm = world.create_vm(&user).await;
    destroy(world, &user).await;
    world.assert_gone(&vm);
}

pub async fn reconcile_removes_orphans(world: &mut World) {
    world.daemon.stop().await;
    let orphan_tap = "mc0123456789abc";
    let ip = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    };
    ip(&["tuntap", "add", "dev", orphan_tap, "mode", "tap"]);
    ip(&["link", "set", orphan_tap, "master", BRIDGE]);
    // A binding left behind with it, and one whose tap is already gone (kernels since 6.16 keep
    // a netdev chain whose device went; `add` declares the table for the first run).
    let gone_tap = "mc0123456789abd";
    for tap in [orphan_tap, gone_tap] {
        vmhost::nft(&format!(
            "add table netdev master_controller_taps\n\
             add chain netdev master_controller_taps {tap} {{ type filter hook ingress \
             device \"{tap}\" priority -500; policy drop; }}\n"
        ));
        assert!(!vmhost::tap_binding(tap).is_empty());
    }
    let orphan_dir = world
        .daemon
        .data_dir
        .join("vms/0199aaaa-0000-7000-8000-000000000000");
    std::fs::create_dir_all(&orphan_dir).expect("orphan dir");
    std::fs::write(orphan_dir.join("console.log"), "left behind").expect("orphan file");
    world.daemon.start(&[]).await;
    assert!(!link_exists(orphan_tap), "the orphan tap is removed");
    for tap in [orphan_tap, gone_tap] {
        assert!(
            vmhost::tap_binding(tap).is_empty(),
            "the orphan binding of {tap} is removed"
        );
    }
    assert!(!orphan_dir.exists(), "the orphan directory is removed");
    assert!(link_exists(BRIDGE), "the bridge stays");
}

pub async fn pool_pressure(world: &mut World) {
    world.daemon.stop().await;
    world.daemon.start(&[("MC_IP_POOL_LIMIT", "3")]).await;
    assert_eq!(world.pool_available().await, 3);
    let mut users = Vec::new();
    let mut vms = Vec::new();
    for _ in 0..3 {
        let user = world.new_user().await;
        vms.push(world.create_vm(&user).await);
        users.push(user);
    }
    let fourth = world.new_user().await;
    let (status, refused) = world.user_vm(&fourth, "", "POST").await;
    assert_eq!(status, 503, "{refused:?}");
    assert_eq!(refused["error"]["code"], "ip_pool_exhausted");
    assert!(processes_naming(&format!("{}/vms/", world.daemon.data_dir.display())).len() == 3);

    let (status, _) = world.user_vm(&users[0], "hibernate", "POST").await;
    assert_eq!(status, 200);
    let reclaimed_ip = vms[0]["ipAddress"].clone();
    let vm4 = world.create_vm(&fourth).await;
    assert_eq!(
        vm4["ipAddress"], reclaimed_ip,
        "the hibernated VM's address was reclaimed"
    );
    let (_, first) = world.user_vm(&users[0], "", "GET").await;
    assert!(first["ipAddress"].is_null(), "{first:?}");

    let (status, refused) = world.user_vm(&users[0], "resume", "POST").await;
    assert_eq!(status, 503, "no address for the resume yet: {refused:?}");
    assert_eq!(refused["error"]["code"], "ip_pool_exhausted");
    let (_, still) = world.user_vm(&users[0], "", "GET").await;
    assert_eq!(
        still["status"], "hibernated",
        "a refused resume changes nothing"
    );

    destroy(world, &users[1]).await;
    let (status, resumed) = world.user_vm(&users[0], "resume", "POST").await;
    assert_eq!(status, 200, "{resumed:?}");
    let new_ip = resumed["ipAddress"]
        .as_str()
        .expect("new address")
        .to_string();
    assert_eq!(
        resumed["ipAddress"], vms[1]["ipAddress"],
        "the freed address"
    );
    let id = id_of(&resumed);
    let (code, out) = world.exec(&id, "ip -4 -o addr show dev eth0").await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{new_ip}/24")),
        "re-addressed in the guest: {out}"
    );
    let (code, out) = world.exec(&id, &format!("ping -c 1 -W 2 {GATEWAY}")).await;
    assert_eq!(code, 0, "the re-addressed guest reaches its gateway: {out}");

    for user in [&users[0], &users[2], &fourth] {
        destroy(world, user).await;
    }
    assert_eq!(world.pool_available().await, 3, "no lease leaked");
}
