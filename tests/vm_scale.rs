//! The control plane at the appliance's size: 180 VMs created concurrently through the API,
//! then hibernated, resumed and destroyed all at once, with the fake hypervisor and fake links
//! from `tests/support` (real guests are covered by `tests/vm_manager.rs`). Afterwards no lease,
//! tap, intent or directory is left, and every record agrees with the host.

mod support;

use std::collections::BTreeSet;
use std::time::Instant;

use futures_util::future::join_all;
use master_controller::model::tables;
use master_controller::model::{Vm, VmStatus};
use master_controller::store;
use redb::ReadableTableMetadata;
use serde_json::Value;
use support::fake_vmm::daemon_with_fake_vms;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

const VMS: usize = 180;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `action` on every user's VM at once; every answer must be `status` with the VM in
/// `expect`.
async fn all_at_once(
    d: &TestDaemon,
    users: &[String],
    method: &str,
    action: &str,
    status: u16,
    expect: &str,
) -> Vec<Value> {
    let started = Instant::now();
    let replies = join_all(users.iter().map(|user| {
        let path = format!("/api/users/{user}/vm{action}");
        async move { d.call(method, &path, Some(SERVICE_TOKEN), None).await }
    }))
    .await;
    let vms: Vec<Value> = replies
        .into_iter()
        .map(|reply| {
            assert_eq!(
                reply.status, status,
                "{method} vm{action}: {:?}",
                reply.json
            );
            assert_eq!(reply.json["status"], expect, "{:?}", reply.json);
            reply.json
        })
        .collect();
    eprintln!(
        "    {method} /vm{action} x{}: {:.2} s, RSS {} MiB",
        users.len(),
        started.elapsed().as_secs_f64(),
        rss_kib("VmRSS:") / 1024
    );
    vms
}

/// Every VM's tap is bound to exactly its own address and MAC, and no other tap is bound.
fn assert_bound(netlink: &support::fake_vmm::FakeNetlink, vms: &[Value]) {
    let bindings = netlink.bindings.lock().expect("bindings");
    assert_eq!(bindings.len(), vms.len());
    for vm in vms {
        let tap = vm["tapDevice"].as_str().expect("tap");
        let ip = vm["ipAddress"].as_str().expect("address");
        let binding = bindings
            .get(tap)
            .unwrap_or_else(|| panic!("{tap} is not bound"));
        let mac = master_controller::net::mac_for(binding.ip);
        assert_eq!(binding.ip.to_string(), ip, "{tap}");
        assert_eq!(
            master_controller::net::TapBinding::parse(&mac, ip).expect("binding"),
            *binding,
            "{tap}: bound to the MAC of its address"
        );
    }
}

fn distinct(vms: &[Value], field: &str) -> usize {
    vms.iter()
        .filter_map(|vm| vm[field].as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_at_scale_through_the_api() {
    let (d, hypervisor, netlink) = daemon_with_fake_vms(&[
        ("MC_MAX_VMS", "180"),
        ("MC_RATE_LIMIT_PER_SECOND", "100000"),
        ("MC_RATE_LIMIT_BURST", "100000"),
    ])
    .await;
    let rss_at_start = rss_kib("VmRSS:");
    let mut users = Vec::new();
    for n in 0..=VMS {
        users.push(d.create_user(&format!("scale-{n}@example.com")).await);
    }
    let extra = users.pop().expect("one more user");

    let created = all_at_once(&d, &users, "POST", "", 201, "running").await;
    assert_eq!(distinct(&created, "ipAddress"), VMS, "distinct addresses");
    assert_eq!(distinct(&created, "tapDevice"), VMS, "distinct taps");
    assert_eq!(hypervisor.running(), VMS);
    assert_eq!(netlink.taps.lock().expect("taps").len(), VMS);
    assert_bound(&netlink, &created);

    let refused = d
        .call(
            "POST",
            &format!("/api/users/{extra}/vm"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(refused.status, 503, "{:?}", refused.json);
    assert_eq!(refused.json["error"]["code"], "vm_limit_reached");
    assert!(
        refused.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("MC_MAX_VMS")),
        "{:?}",
        refused.json
    );

    all_at_once(&d, &users, "POST", "/hibernate", 200, "hibernated").await;
    assert_eq!(hypervisor.running(), 0);
    assert!(netlink.taps.lock().expect("taps").is_empty());
    assert!(netlink.bindings.lock().expect("bindings").is_empty());

    let resumed = all_at_once(&d, &users, "POST", "/resume", 200, "running").await;
    for (before, after) in created.iter().zip(&resumed) {
        assert_eq!(before["vmId"], after["vmId"]);
        assert_eq!(before["ipAddress"], after["ipAddress"], "kept its address");
        assert_eq!(
            before["agent"]["bootId"], after["agent"]["bootId"],
            "same boot"
        );
    }
    assert_eq!(hypervisor.running(), VMS);
    assert_bound(&netlink, &resumed);

    all_at_once(&d, &users, "DELETE", "", 200, "destroyed").await;
    assert_eq!(hypervisor.running(), 0);
    assert!(netlink.taps.lock().expect("taps").is_empty(), "no tap left");
    let dirs = std::fs::read_dir(d.data_dir.path().join("vms"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(dirs, 0, "no VM directory left");

    let (records, leases, intents) = d
        .ctx
        .store
        .read(|tx| {
            let vms: Vec<Vm> = store::all(&tx.open_table(tables::VMS)?)?;
            let leases = tx.open_table(tables::IP_LEASES)?.len()?;
            let intents = tx.open_table(tables::VM_INTENTS)?.len()?;
            Ok::<_, store::StoreError>((vms, leases, intents))
        })
        .await
        .expect("read the store");
    assert_eq!(records.len(), VMS);
    for vm in &records {
        assert_eq!(vm.status, VmStatus::Destroyed, "{vm:?}");
        assert!(vm.ip_address.is_none() && vm.pid.is_none(), "{vm:?}");
    }
    assert_eq!((leases, intents), (0, 0), "no lease or intent leaked");
    let summary = d
        .call(
            "GET",
            "/api/vms/statistics/summary",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(summary.json["ipPoolAvailable"], 253);
    assert_eq!(summary.json["byStatus"]["destroyed"], VMS as u64);

    eprintln!(
        "    process RSS: {} MiB at start, {} MiB now, {} MiB peak (daemon and test client in one process)",
        rss_at_start / 1024,
        rss_kib("VmRSS:") / 1024,
        rss_kib("VmHWM:") / 1024
    );
    d.shutdown().await;
}
