//! The VM manager end to end, through the daemon binary's HTTP API, with real guests: the test
//! image on QEMU under TCG, inside a network namespace this process creates for itself (the
//! daemon creates its bridge there). The daemon is a child process, so the cases can SIGKILL
//! and restart it. Cases run one after another: TCG is CPU-heavy.
//!
//! Without QEMU, the image or root, the binary says what is missing and skips; with
//! `MC_REQUIRE_GUESTS=1` (set by scripts/test.sh) a missing prerequisite is a failure instead.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use master_controller::guest::client::{AgentClient, AgentEndpoint, GuestError};
use serde_json::{Value, json};
use support::daemon_proc::{
    ADMIN_TOKEN, DaemonProc, LISTEN, SERVICE_TOKEN, link_exists, processes_naming,
};
use support::vmhost;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BRIDGE: &str = "mcbr1";
const GATEWAY: &str = "10.215.0.1";
const POOL_SIZE: u64 = 253;

struct World {
    daemon: DaemonProc,
    users: u32,
    /// VMs one case leaves running for the next: `(user id, VM JSON)`.
    kept: Vec<(String, Value)>,
    _dir: tempfile::TempDir,
}

impl World {
    fn vm_dir(&self, vm_id: &str) -> String {
        format!("{}/vms/{vm_id}/", self.daemon.data_dir.display())
    }

    async fn new_user(&mut self) -> String {
        self.users += 1;
        let reply = self
            .daemon
            .call(
                "POST",
                "/api/users",
                SERVICE_TOKEN,
                Some(json!({"email": format!("vm-user-{}@example.com", self.users)})),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.json);
        reply.json["userId"].as_str().expect("userId").to_string()
    }

    async fn create_vm(&self, user: &str) -> Value {
        let reply = self
            .daemon
            .call(
                "POST",
                &format!("/api/users/{user}/vm"),
                SERVICE_TOKEN,
                None,
            )
            .await;
        assert_eq!(
            reply.status,
            201,
            "{:?}\n{}",
            reply.json,
            self.daemon.log_tail()
        );
        assert_eq!(reply.json["status"], "running", "{:?}", reply.json);
        reply.json
    }

    async fn user_vm(&self, user: &str, action: &str, method: &str) -> (u16, Value) {
        let path = if action.is_empty() {
            format!("/api/users/{user}/vm")
        } else {
            format!("/api/users/{user}/vm/{action}")
        };
        let reply = self.daemon.call(method, &path, SERVICE_TOKEN, None).await;
        (reply.status, reply.json)
    }

    async fn exec(&self, vm_id: &str, script: &str) -> (i64, String) {
        let reply = self
            .daemon
            .call(
                "POST",
                &format!("/api/admin/vms/{vm_id}/exec"),
                ADMIN_TOKEN,
                Some(json!({"argv": ["/bin/sh", "-c", script], "timeoutSec": 60})),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        (
            reply.json["exitCode"].as_i64().unwrap_or(-1),
            reply.json["stdout"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    async fn pool_available(&self) -> u64 {
        let reply = self
            .daemon
            .call("GET", "/api/vms/statistics/summary", SERVICE_TOKEN, None)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json["ipPoolAvailable"]
            .as_u64()
            .expect("ipPoolAvailable")
    }

    async fn metrics(&self) -> String {
        let reply = self.daemon.call("GET", "/metrics", ADMIN_TOKEN, None).await;
        assert_eq!(reply.status, 200);
        reply.json.as_str().unwrap_or_default().to_string()
    }

    /// After destroy: no tap, no process, no directory. `vm` is the VM as it was created.
    fn assert_gone(&self, vm: &Value) {
        let id = vm["vmId"].as_str().expect("vmId");
        if let Some(tap) = vm["tapDevice"].as_str() {
            assert!(!link_exists(tap), "tap {tap} left behind");
        }
        assert!(
            processes_naming(&self.vm_dir(id)).is_empty(),
            "process left"
        );
        assert!(
            !std::path::Path::new(&self.vm_dir(id)).exists(),
            "VM directory left"
        );
    }
}

/// The links attached to the test's bridge.
fn bridge_ports() -> Vec<String> {
    let output = Command::new("ip")
        .args(["-j", "link", "show", "master", BRIDGE])
        .output()
        .expect("ip");
    let links: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    links
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

fn id_of(vm: &Value) -> String {
    vm["vmId"].as_str().expect("vmId").to_string()
}

async fn destroy(world: &World, user: &str) -> Value {
    let (status, vm) = world.user_vm(user, "", "DELETE").await;
    assert_eq!(status, 200, "{vm:?}");
    assert_eq!(vm["status"], "destroyed");
    vm
}

async fn whole_api_path(world: &mut World) {
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

async fn guests_are_isolated(world: &mut World) {
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

async fn daemon_crash_adopts_the_vm(world: &mut World) {
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
    world.daemon.start(&[]).await;
    let (status, adopted) = world.user_vm(&user, "", "GET").await;
    assert_eq!(status, 200);
    assert_eq!(adopted["status"], "running", "{adopted:?}");
    let (code, out) = world.exec(&id, "echo adopted").await;
    assert_eq!((code, out.trim()), (0, "adopted"));
    assert_eq!(
        processes_naming(&world.vm_dir(&id)),
        before,
        "no second hypervisor was started"
    );
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn admin_socket() -> Socket {
    let mut request = format!("ws://{LISTEN}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket");
    let subscribe = json!({"type": "subscribe", "payload": {"channel": "admin"}});
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .expect("subscribe");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an answer to subscribe")
            .expect("open")
            .expect("message");
        if let Message::Text(text) = message
            && text.contains("\"subscribed\"")
        {
            return socket;
        }
    }
}

/// The first event named `name` (any event, for "") within `deadline`.
async fn wait_event(socket: &mut Socket, name: &str, deadline: Duration) -> Option<Value> {
    let started = Instant::now();
    while let Some(left) = deadline.checked_sub(started.elapsed()) {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(left, socket.next()).await
        else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        let event = value["data"]["event"].as_str().unwrap_or_default();
        if !event.is_empty() && (name.is_empty() || event == name) {
            return Some(value);
        }
    }
    None
}

async fn vm_crash_is_seen(world: &mut World) {
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

async fn interrupted_intents_are_settled(world: &mut World) {
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

async fn reconcile_removes_orphans(world: &mut World) {
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
    let orphan_dir = world
        .daemon
        .data_dir
        .join("vms/0199aaaa-0000-7000-8000-000000000000");
    std::fs::create_dir_all(&orphan_dir).expect("orphan dir");
    std::fs::write(orphan_dir.join("console.log"), "left behind").expect("orphan file");
    world.daemon.start(&[]).await;
    assert!(!link_exists(orphan_tap), "the orphan tap is removed");
    assert!(!orphan_dir.exists(), "the orphan directory is removed");
    assert!(link_exists(BRIDGE), "the bridge stays");
}

async fn pool_pressure(world: &mut World) {
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

async fn golden_snapshot_clones(world: &mut World) {
    world.daemon.stop().await;
    let golden_dir = world.daemon.data_dir.join("golden");
    let snapshot = golden_dir.join("state");
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-golden-snapshot.sh"
    ))
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .envs(&world.daemon.env)
    .env("MC_ENV_FILE", "/nonexistent")
    .env("MC_BIN", env!("CARGO_BIN_EXE_master-controller"))
    .env("GOLDEN_SNAPSHOT", &snapshot)
    .output()
    .expect("run build-golden-snapshot.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!(
        "{}",
        stdout
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    assert!(stdout.contains("waiting for the guest agent") && stdout.contains("done:"));
    let meta_file = golden_dir.join("state.json");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(&meta_file).expect("golden description"))
            .expect("JSON");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&meta_file)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the description holds a token: root only");
    assert!(!link_exists("mcgolden"), "the build tap is removed");

    let golden = snapshot.display().to_string();
    world
        .daemon
        .start(&[("GOLDEN_SNAPSHOT", golden.as_str())])
        .await;
    let mut clones = Vec::new();
    for _ in 0..2 {
        let user = world.new_user().await;
        let started = Instant::now();
        let vm = world.create_vm(&user).await;
        eprintln!(
            "    create from the golden snapshot: {:.2} s",
            started.elapsed().as_secs_f64()
        );
        clones.push((user, vm));
    }
    let (a, b) = (&clones[0].1, &clones[1].1);
    assert_ne!(a["ipAddress"], b["ipAddress"]);
    let mut hostnames = BTreeSet::new();
    for (_, vm) in &clones {
        let id = id_of(vm);
        let ip = vm["ipAddress"].as_str().expect("ip");
        let (code, out) = world
            .exec(
                &id,
                "ip -4 -o addr show dev eth0; cat /sys/class/net/eth0/address; hostname",
            )
            .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("{ip}/24")), "its own address: {out}");
        assert!(
            out.contains(vm["macAddress"].as_str().expect("mac")),
            "its own MAC: {out}"
        );
        hostnames.insert(out.lines().last().unwrap_or_default().to_string());
        let (code, out) = world.exec(&id, &format!("ping -c 1 -W 2 {GATEWAY}")).await;
        assert_eq!(code, 0, "usable: {out}");
    }
    assert_eq!(hostnames.len(), 2, "distinct hostnames: {hostnames:?}");

    // The agent serves one host connection at a time: with the daemon stopped, the golden
    // token must be refused; after the restart the daemon's own per-VM token still works.
    world.daemon.stop().await;
    let old_token = meta["agentToken"].as_str().expect("golden token");
    for (_, vm) in &clones {
        let socket = world
            .daemon
            .data_dir
            .join(format!("vms/{}/agent.sock", id_of(vm)));
        let refused = AgentClient::connect(
            &AgentEndpoint::Unix(socket),
            old_token,
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(refused, Err(GuestError::Refused(_))),
            "the golden token no longer opens a clone"
        );
    }
    world
        .daemon
        .start(&[("GOLDEN_SNAPSHOT", golden.as_str())])
        .await;
    for (_, vm) in &clones {
        let (code, out) = world.exec(&id_of(vm), "echo own-token").await;
        assert_eq!((code, out.trim()), (0, "own-token"));
    }
    for (user, vm) in &clones {
        destroy(world, user).await;
        world.assert_gone(vm);
    }
    world.daemon.stop().await;
    world.daemon.start(&[]).await;
}

type Case = for<'a> fn(&'a mut World) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

fn main() -> ExitCode {
    if let Some(reason) = vmhost::missing_prerequisite() {
        if std::env::var("MC_REQUIRE_GUESTS").as_deref() == Ok("1") {
            eprintln!("vm_manager: cannot run real guests: {reason}");
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
        eprintln!("vm_manager: SKIPPED, {reason}");
        println!("0 passed, 0 failed, 1 skipped");
        return ExitCode::SUCCESS;
    }
    vmhost::enter_private_namespace();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::Builder::new()
        .prefix("mcv")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let image = vmhost::image_dir();
    let daemon = DaemonProc::new(
        dir.path(),
        &[
            ("MC_HYPERVISOR", "qemu".into()),
            ("MC_QEMU_ACCEL", "tcg".into()),
            ("GOLDEN_KERNEL", image.join("vmlinux").display().to_string()),
            (
                "MC_INITRD",
                image.join("initramfs.cpio.gz").display().to_string(),
            ),
            ("MC_BRIDGE", BRIDGE.into()),
            ("MC_BRIDGE_CIDR", format!("{GATEWAY}/24")),
            ("MC_VM_VCPUS", "1".into()),
            ("MC_VM_MEMORY_MIB", "256".into()),
            ("MC_VM_DATA_DISK_MIB", "64".into()),
            ("MC_VM_AGENT_TIMEOUT_SECS", "120".into()),
            ("MC_VM_HEALTH_INTERVAL_SECS", "2".into()),
        ],
    );
    let mut world = World {
        daemon,
        users: 0,
        kept: Vec::new(),
        _dir: dir,
    };
    runtime.block_on(world.daemon.start(&[]));
    assert_eq!(runtime.block_on(world.pool_available()), POOL_SIZE);
    let cases: Vec<(&str, Case)> = vec![
        (
            "create, hibernate, resume (same boot), destroy through the API; nothing left",
            |w| Box::pin(whole_api_path(w)),
        ),
        (
            "two users' guests cannot reach each other, only the gateway",
            |w| Box::pin(guests_are_isolated(w)),
        ),
        (
            "SIGKILL of the daemon: the VM is adopted, no second process",
            |w| Box::pin(daemon_crash_adopts_the_vm(w)),
        ),
        (
            "SIGKILL of QEMU: failed, vm_crashed within 2 s, IP back",
            |w| Box::pin(vm_crash_is_seen(w)),
        ),
        (
            "interrupted hibernate and create are settled at restart",
            |w| Box::pin(interrupted_intents_are_settled(w)),
        ),
        (
            "an orphan tap and VM directory are removed at restart",
            |w| Box::pin(reconcile_removes_orphans(w)),
        ),
        (
            "pool of 3: a 4th create is refused, a hibernated IP is reclaimed",
            |w| Box::pin(pool_pressure(w)),
        ),
        (
            "two VMs from a golden snapshot: own address, MAC, hostname, token",
            |w| Box::pin(golden_snapshot_clones(w)),
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        let started = Instant::now();
        let outcome = runtime.block_on(AssertUnwindSafe(case(&mut world)).catch_unwind());
        match outcome {
            Ok(()) => {
                println!(
                    "test {name} ... ok ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED\n{}", world.daemon.log_tail());
                failed += 1;
            }
        }
    }
    world.daemon.kill();
    for pid in processes_naming(&format!("{}/vms/", world.daemon.data_dir.display())) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
