//! A hostile guest that crashes itself over and over: each failed VM gives back its disk and
//! everything else but the end of its console log, and past the crash limit the user gets no
//! new VM for a while (429 `crash_loop`) instead of a fresh disk per crash.

use std::time::{Duration, Instant};

use crate::support::daemon_proc::{SERVICE_TOKEN, processes_naming};
use crate::world::{CRASH_LIMIT, World, destroy, id_of};

/// The kernel panics (and the hypervisor exits) a second after the exec that asks for it has
/// answered; `setsid` keeps the trigger alive after the exec's process group ends.
const CRASH_SELF: &str =
    "setsid sh -c 'sleep 1; echo c > /proc/sysrq-trigger' </dev/null >/dev/null 2>&1 &";
/// What a failed VM keeps of its console (the daemon's `FAILED_CONSOLE_TAIL_BYTES`).
const CONSOLE_TAIL_BYTES: u64 = 64 * 1024;

pub async fn a_guest_that_keeps_crashing_itself_is_refused(world: &mut World) {
    let user = world.new_user().await;
    for crash in 1..=CRASH_LIMIT + 1 {
        let vm = world.create_vm(&user).await;
        let id = id_of(&vm);
        // A console larger than the tail the failed VM keeps.
        let (code, _) = world
            .exec(&id, "head -c 200000 /dev/zero | tr '\\0' x > /dev/console")
            .await;
        assert_eq!(code, 0);
        let (code, _) = world.exec(&id, CRASH_SELF).await;
        assert_eq!(code, 0);
        let failed = wait_for_status(world, &user, "failed").await;
        assert_eq!(failed["vmId"], id.as_str(), "crash {crash}: {failed:?}");
        let dir = world.vm_dir(&id);
        assert!(
            processes_naming(&dir).is_empty(),
            "crash {crash}: a process"
        );
        let left: Vec<String> = std::fs::read_dir(&dir)
            .expect("the failed VM's directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            left,
            ["console.log"],
            "crash {crash}: only the console tail"
        );
        let kept = std::fs::metadata(format!("{dir}console.log"))
            .expect("console.log")
            .len();
        assert!(
            kept > 0 && kept <= CONSOLE_TAIL_BYTES,
            "crash {crash}: console.log is {kept} bytes"
        );
        // The tail is what an operator reads to see why: the panic the guest asked for.
        let console = world.console_tail(&id).await;
        assert!(console.contains("sysrq"), "crash {crash}: {console}");
        eprintln!("    crash {crash}: failed, only a {kept} byte console tail left");
    }
    let refused = world
        .daemon
        .call(
            "POST",
            &format!("/api/users/{user}/vm"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(refused.status, 429, "{:?}", refused.json);
    assert_eq!(
        refused.json["error"]["code"], "crash_loop",
        "{:?}",
        refused.json
    );
    eprintln!("    then: {}", refused.json["error"]["message"]);
    destroy(world, &user).await;
}

async fn wait_for_status(world: &World, user: &str, status: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (_, vm) = world.user_vm(user, "", "GET").await;
        if vm["status"] == status {
            return vm;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the VM never became {status}: {vm:?}\n{}",
            world.daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
