//! The Firecracker backend without Firecracker: every request body it produces is validated
//! against the official API spec, and its boot, hibernate and resume sequences run through a
//! fake (`tests/support/firecracker_fake.rs`) that enforces Firecracker's ordering rules. This
//! binary is also that fake: the backend starts it as its "firecracker" process.
//!
//! The VM validated is laid out as a golden-image VM is: a kernel, an initramfs, the shared base
//! rootfs read-only as the root device, and the VM's own data disk.
//!
//! With `MC_TEST_FIRECRACKER_BIN` set, the same lifecycle also runs against a real Firecracker
//! booting the golden image when one is built (`image/out/golden/current`), else the test image;
//! otherwise that case is skipped with a message.

#[path = "firecracker/diff.rs"]
mod diff;
mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::FutureExt;
use master_controller::guest::client::AgentClient;
use master_controller::vmm::firecracker::api::{
    self, ApiRequest, FirecrackerApi, Layout, SnapshotType,
};
use master_controller::vmm::firecracker::{FirecrackerBackend, FirecrackerConfig};
use master_controller::vmm::{DiskSpec, Hypervisor, NetSpec, VmHandle, VmSpec, VmmError, disks};
use master_controller::vms::golden::{Golden, GoldenMeta};
use support::firecracker_fake;
use support::firecracker_spec::ApiSpec;

fn spec(dir: &Path, tap: &str) -> VmSpec {
    VmSpec {
        vm_id: "fc-test".into(),
        dir: dir.to_path_buf(),
        vcpus: 2,
        memory_mib: 128,
        kernel: "/images/vmlinux".into(),
        initrd: Some("/images/initrd.gz".into()),
        boot_args: "mc.hostname=fc".into(),
        disks: vec![
            DiskSpec {
                id: "rootfs".into(),
                path: "/images/rootfs.ext4".into(),
                read_only: true,
                root: true,
            },
            DiskSpec {
                id: "data".into(),
                path: dir.join("data.img"),
                read_only: false,
                root: false,
            },
        ],
        net: Some(NetSpec {
            tap: tap.into(),
            mac: "06:00:c0:a8:64:02".into(),
        }),
        agent_token: "fctoken123".into(),
    }
}

/// Every kind of request the backend sends.
fn every_request(dir: &Path) -> Vec<ApiRequest> {
    let spec = spec(dir, "mc-tap-a");
    let layout = Layout::of(&spec);
    let mut requests = api::boot_requests(&spec, &layout, 3, &FirecrackerBackend::boot_args(&spec));
    requests.push(api::set_state("Paused"));
    requests.push(api::set_state("Resumed"));
    requests.push(api::snapshot_create(&layout, SnapshotType::Full));
    requests.push(api::snapshot_create(&layout, SnapshotType::Diff));
    requests.push(api::snapshot_load(&layout, None));
    requests.push(api::snapshot_load(&layout, Some("mc-tap-b")));
    requests
}

async fn bodies_validate_against_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    for version in ["1.16.1", "1.13.1"] {
        let spec = ApiSpec::load(version);
        let requests = every_request(dir.path());
        for request in &requests {
            spec.validate(
                request.method.as_str(),
                &request.path,
                request.body.as_ref(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        eprintln!("    {} requests valid against v{version}", requests.len());
    }
    // The validator can fail: a typo'd field and a wrong type are caught.
    let spec = ApiSpec::load("1.16.1");
    let typo = serde_json::json!({ "vcpu_count": 1, "mem_size_mb": 128 });
    assert!(
        spec.validate("PUT", "/machine-config", Some(&typo))
            .is_err()
    );
    let wrong_type = serde_json::json!({ "vcpu_count": "two", "mem_size_mib": 128 });
    assert!(
        spec.validate("PUT", "/machine-config", Some(&wrong_type))
            .is_err()
    );
    let bad_enum = serde_json::json!({ "state": "Sleeping" });
    assert!(spec.validate("PATCH", "/vm", Some(&bad_enum)).is_err());
}

struct FakeRun {
    backend: FirecrackerBackend,
    log: PathBuf,
    dir: tempfile::TempDir,
}

fn fake_backend() -> FakeRun {
    let dir = tempfile::Builder::new()
        .prefix("mcfc")
        .tempdir_in("/tmp")
        .expect("tempdir");
    // The fakes find it from their parent's pid (this process).
    let log = firecracker_fake::log_path(std::process::id());
    let _ = std::fs::remove_file(&log);
    let backend = FirecrackerBackend::new(FirecrackerConfig {
        binary: std::env::current_exe().expect("own path"),
        jailer: None,
    });
    FakeRun { backend, log, dir }
}

fn paths(log: &Path) -> Vec<String> {
    firecracker_fake::logged(log)
        .iter()
        .map(|entry| {
            format!(
                "{} {}",
                entry["method"].as_str().unwrap_or(""),
                entry["path"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The last `snapshot/create` the fake logged, with what its memory file took.
fn last_create(log: &Path) -> serde_json::Value {
    firecracker_fake::logged(log)
        .into_iter()
        .rev()
        .find(|e| e["path"] == "/snapshot/create")
        .expect("a snapshot/create was logged")
}

async fn lifecycle_through_the_fake() {
    let run = fake_backend();
    let vm_dir = run.dir.path().join("vm");
    let mut vm_spec = spec(&vm_dir, "mc-tap-a");
    let vm = run.backend.boot(&vm_spec).await.expect("boot");
    assert!(!vm.has_exited());
    let boot = paths(&run.log);
    let machine = firecracker_fake::logged(&run.log)
        .into_iter()
        .find(|e| e["path"] == "/machine-config")
        .expect("machine-config");
    assert_eq!(machine["body"]["track_dirty_pages"], true);
    assert_eq!(boot.first().map(String::as_str), Some("GET /"));
    assert_eq!(boot.last().map(String::as_str), Some("PUT /actions"));
    for expected in [
        "PUT /machine-config",
        "PUT /boot-source",
        "PUT /drives/rootfs",
        "PUT /drives/data",
        "PUT /network-interfaces/eth0",
        "PUT /vsock",
        "PUT /entropy",
    ] {
        assert!(
            boot.iter().any(|p| p == expected),
            "boot lacks {expected}: {boot:?}"
        );
    }
    assert!(
        firecracker_fake::logged(&run.log)
            .iter()
            .all(|e| e["ok"] == true),
        "fake refused part of boot"
    );

    let image = run
        .backend
        .hibernate(&vm_spec, vm)
        .await
        .expect("hibernate");
    assert!(image.state_bytes > 0);
    let after_hibernate = paths(&run.log);
    let tail: Vec<&str> = after_hibernate[boot.len()..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["PATCH /vm", "PUT /snapshot/create"]);
    // The first hibernation has no base to merge onto.
    let create = last_create(&run.log);
    assert_eq!(create["body"]["snapshot_type"], "Full");
    assert_eq!(
        create["memory_written"],
        u64::from(vm_spec.memory_mib) << 20
    );

    std::fs::remove_file(&run.log).expect("reset log");
    vm_spec.net.as_mut().expect("net").tap = "mc-tap-b".into();
    let mut resumed = run.backend.resume(&vm_spec).await.expect("resume");
    let entries = firecracker_fake::logged(&run.log);
    let resume: Vec<String> = paths(&run.log);
    assert_eq!(
        resume,
        ["GET /", "PUT /logger", "PUT /metrics", "PUT /snapshot/load"]
    );
    let load = &entries[3]["body"];
    assert_eq!(load["resume_vm"], true);
    assert_eq!(load["track_dirty_pages"], true);
    assert_eq!(load["mem_backend"]["backend_type"], "File");
    assert_eq!(load["network_overrides"][0]["host_dev_name"], "mc-tap-b");
    assert!(entries.iter().all(|e| e["ok"] == true));

    let exit = run.backend.kill(&mut resumed).await.expect("kill");
    assert_eq!(exit.signal, Some(9));
}

/// The golden snapshot's files linked into the VM's snapshot directory, as a create from it
/// stages them, and left there (a crash before they were removed). Firecracker creates its
/// snapshot files with O_TRUNC through any link, so a hibernation that named the staged paths
/// would overwrite the golden memory with this VM's.
async fn a_hibernation_over_staged_golden_links_leaves_them_intact() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| {
        std::fs::symlink_metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    let run = fake_backend();
    let golden_dir = run.dir.path().join("golden");
    std::fs::create_dir(&golden_dir).expect("golden dir");
    let snapshot = golden_dir.join("vmstate");
    let memory = golden_dir.join("memory");
    let files = [
        (snapshot.clone(), "golden state"),
        (memory.clone(), "golden memory"),
        (
            golden_dir.join("vmstate.meta.json"),
            r#"{"tap":"mcgolden"}"#,
        ),
    ];
    for (path, text) in &files {
        std::fs::write(path, text).expect("golden file");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    }
    let golden = Golden {
        snapshot: snapshot.clone(),
        memory: Some(memory.clone()),
        meta: GoldenMeta {
            hypervisor: "firecracker".into(),
            vcpus: 2,
            memory_mib: 128,
            agent_token: "goldentoken".into(),
            state_file: "vmstate".into(),
            memory_file: Some("memory".into()),
            sidecars: vec!["meta.json".into()],
            data_disk_mib: Some(64),
            image: None,
            created_at_ms: 1,
        },
    };
    let vm_dir = run.dir.path().join("vm");
    let vm_spec = spec(&vm_dir, "mc-tap-a");
    // An older, looser VM directory is tightened too.
    std::fs::create_dir(&vm_dir).expect("vm dir");
    std::fs::set_permissions(&vm_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    golden.stage(&vm_spec.snapshot_dir()).await.expect("stage");
    let vm = run.backend.boot(&vm_spec).await.expect("boot");
    run.backend
        .hibernate(&vm_spec, vm)
        .await
        .expect("hibernate");
    for (path, text) in &files {
        assert_eq!(
            std::fs::read_to_string(path).expect("golden file"),
            *text,
            "{} was written through a link",
            path.display()
        );
    }
    let own = vm_spec.snapshot_dir();
    for name in ["vmstate", "memory", "meta.json"] {
        let path = own.join(name);
        assert!(
            std::fs::symlink_metadata(&path)
                .expect("image file")
                .is_file(),
            "{name} is the VM's own file"
        );
        assert_eq!(mode(&path), 0o600, "{name}");
    }
    assert_eq!(mode(&own), 0o700);
    assert_eq!(mode(&vm_dir), 0o700);
    // And the VM's own image resumes.
    let mut resumed = run.backend.resume(&vm_spec).await.expect("resume");
    run.backend.kill(&mut resumed).await.expect("kill");
}

async fn the_fake_enforces_the_ordering_rules() {
    let run = fake_backend();
    let vm_dir = run.dir.path().join("vm");
    let vm_spec = spec(&vm_dir, "mc-tap-a");
    let mut vm = run.backend.boot(&vm_spec).await.expect("boot");
    let api = FirecrackerApi::new(&vm_dir.join("firecracker.sock"));
    let layout = Layout::of(&vm_spec);
    // Each of these breaks a rule, and the backend turns the fault into a typed error.
    let refusals = [
        (
            api::snapshot_create(&layout, SnapshotType::Full),
            "not paused",
        ),
        (api::instance_start(), "already running"),
        (
            api::snapshot_load(&layout, None),
            "not allowed after configuring",
        ),
    ];
    for (request, fault) in refusals {
        match api.send(&request).await {
            Err(VmmError::Firecracker {
                status: 400,
                fault: message,
                ..
            }) => {
                assert!(message.contains(fault), "{message}");
            }
            other => panic!(
                "{} {} was not refused: {other:?}",
                request.method, request.path
            ),
        }
    }
    let bad_body = ApiRequest {
        method: hyper::Method::PUT,
        path: "/machine-config".into(),
        body: Some(serde_json::json!({"vcpus": 1})),
    };
    assert!(matches!(
        api.send(&bad_body).await,
        Err(VmmError::Firecracker { status: 400, .. })
    ));
    run.backend.kill(&mut vm).await.expect("kill");
}

/// The resumed guest answers, and is the one that booted.
async fn same_guest(vm: &VmHandle, vm_spec: &VmSpec, boot_id: &str) {
    let client = AgentClient::connect(&vm.agent, &vm_spec.agent_token, Duration::from_secs(60))
        .await
        .expect("agent");
    assert_eq!(client.health().await.expect("health").boot_id, boot_id);
}

async fn real_firecracker_lifecycle() -> Option<()> {
    let binary = std::env::var_os("MC_TEST_FIRECRACKER_BIN").map(PathBuf::from)?;
    let image = support::vmhost::image_dir();
    let dir = tempfile::Builder::new()
        .prefix("mcfr")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let backend = FirecrackerBackend::new(FirecrackerConfig {
        binary,
        jailer: None,
    });
    // The production guest when one is built (image/build-golden.sh), else the test image.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("image/out/golden/current");
    let vm_spec = if golden.join("rootfs.ext4").is_file() {
        let data = dir.path().join("vm/data.ext4");
        disks::create_data_disk(&data, 1024)
            .await
            .expect("data disk");
        VmSpec {
            vm_id: "fc-real".into(),
            dir: dir.path().join("vm"),
            vcpus: 1,
            memory_mib: 1024,
            kernel: golden.join("vmlinux"),
            initrd: Some(golden.join("initramfs.cpio.gz")),
            boot_args: String::new(),
            disks: vec![
                DiskSpec {
                    id: "rootfs".into(),
                    path: golden.join("rootfs.ext4"),
                    read_only: true,
                    root: true,
                },
                DiskSpec {
                    id: "data".into(),
                    path: data,
                    read_only: false,
                    root: false,
                },
            ],
            net: None,
            agent_token: "fcrealtoken123".into(),
        }
    } else {
        VmSpec {
            vm_id: "fc-real".into(),
            dir: dir.path().join("vm"),
            vcpus: 1,
            memory_mib: 256,
            kernel: image.join("vmlinux"),
            initrd: Some(image.join("initramfs.cpio.gz")),
            boot_args: String::new(),
            disks: vec![],
            net: None,
            agent_token: "fcrealtoken123".into(),
        }
    };
    let vm = backend.boot(&vm_spec).await.expect("boot");
    let client = AgentClient::connect(&vm.agent, &vm_spec.agent_token, Duration::from_secs(60))
        .await
        .expect("agent");
    let before = client.health().await.expect("health");
    drop(client);
    let full = backend.hibernate(&vm_spec, vm).await.expect("hibernate");
    let vm = backend.resume(&vm_spec).await.expect("resume");
    same_guest(&vm, &vm_spec, &before.boot_id).await;
    // The second hibernation is a diff, merged before the next resume loads it.
    let diff = backend
        .hibernate(&vm_spec, vm)
        .await
        .expect("diff hibernate");
    let mut vm = backend.resume(&vm_spec).await.expect("resume");
    same_guest(&vm, &vm_spec, &before.boot_id).await;
    eprintln!(
        "    memory {} MiB: the full hibernation wrote {} bytes of memory, the diff {}",
        vm_spec.memory_mib, full.state_bytes, diff.state_bytes
    );
    backend.kill(&mut vm).await.expect("kill");
    Some(())
}

type Case = fn() -> Pin<Box<dyn Future<Output = Option<()>>>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--api-sock") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(firecracker_fake::serve(&args));
        return ExitCode::SUCCESS;
    }
    let log = firecracker_fake::log_path(std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cases: Vec<(&str, Case)> = vec![
        ("every request body validates against the spec", || {
            Box::pin(async {
                bodies_validate_against_the_spec().await;
                Some(())
            })
        }),
        ("boot, hibernate and resume through the fake", || {
            Box::pin(async {
                lifecycle_through_the_fake().await;
                Some(())
            })
        }),
        (
            "a hibernation over staged golden links leaves the golden files intact; 0600 in 0700",
            || {
                Box::pin(async {
                    a_hibernation_over_staged_golden_links_leaves_them_intact().await;
                    Some(())
                })
            },
        ),
        (
            "the fake refuses out-of-order requests with typed faults",
            || {
                Box::pin(async {
                    the_fake_enforces_the_ordering_rules().await;
                    Some(())
                })
            },
        ),
        (
            "the fake refuses a diff snapshot without dirty page tracking",
            || {
                Box::pin(async {
                    diff::a_diff_needs_dirty_page_tracking().await;
                    Some(())
                })
            },
        ),
        (
            "diff hibernations write the pages the guest dirtied, merged into one memory file",
            || {
                Box::pin(async {
                    diff::diff_hibernations_write_what_the_guest_dirtied().await;
                    Some(())
                })
            },
        ),
        ("a resume merges a diff a hibernation left pending", || {
            Box::pin(async {
                diff::a_resume_merges_a_diff_left_pending().await;
                Some(())
            })
        }),
        ("boot, hibernate and resume on a real Firecracker", || {
            Box::pin(real_firecracker_lifecycle())
        }),
    ];
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, case) in cases {
        match runtime.block_on(AssertUnwindSafe(case()).catch_unwind()) {
            Ok(Some(())) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Ok(None) => {
                println!(
                    "test {name} ... skipped: MC_TEST_FIRECRACKER_BIN is unset (no Firecracker on this host)"
                );
                skipped += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let _ = std::fs::remove_file(&log);
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
