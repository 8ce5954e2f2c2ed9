//! The ledger's rules against a real store: limits, the pool, reclaim, and release.

use super::*;
use crate::model::User;
use crate::store::Store;

struct Fixture {
    store: Store,
    limits: Limits,
    _dir: tempfile::TempDir,
}

async fn fixture(max_running: u32, pool_limit: Option<u32>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    Fixture {
        store,
        limits: Limits {
            max_running,
            subnet: Subnet::parse("10.1.0.1/24").unwrap(),
            pool_limit,
            ports: None,
        },
        _dir: dir,
    }
}

use crate::model::fixtures::vm;

impl Fixture {
    async fn user(&self, id: &str) {
        let user = crate::model::fixtures::user(id);
        self.store
            .write(move |tx| {
                store::put(&mut tx.open_table(tables::USERS)?, &user.id, &user)?;
                Ok::<_, VmError>(())
            })
            .await
            .unwrap();
    }

    async fn create(&self, id: &str, user: &str) -> Result<Reserved, VmError> {
        let limits = self.limits;
        let vm = vm(id, user);
        self.store
            .write(move |tx| reserve_create(tx, vm, "/dir", &limits))
            .await
    }

    /// Creates and finishes as running.
    async fn running(&self, id: &str, user: &str) -> Vm {
        self.user(user).await;
        self.create(id, user).await.unwrap();
        self.finish(id, |vm| {
            vm.set_status(VmStatus::Running).map_err(Into::into)
        })
        .await
    }

    async fn finish(
        &self,
        id: &str,
        change: impl FnOnce(&mut Vm) -> Result<(), VmError> + Send + 'static,
    ) -> Vm {
        let id = id.to_string();
        self.store
            .write(move |tx| finish(tx, &id, change))
            .await
            .unwrap()
    }

    async fn hibernate_at(&self, id: &str, at: i64) {
        self.finish(id, move |vm| {
            vm.set_status(VmStatus::Hibernated)?;
            vm.hibernated_at_ms = Some(at);
            Ok(())
        })
        .await;
    }

    async fn leases(&self) -> Vec<IpLease> {
        self.store
            .read(|tx| Ok::<_, VmError>(store::all(&tx.open_table(tables::IP_LEASES)?)?))
            .await
            .unwrap()
    }

    async fn vm(&self, id: &str) -> Vm {
        let id = id.to_string();
        self.store
            .read(move |tx| Ok::<_, VmError>(store::get(&tx.open_table(tables::VMS)?, &id)?))
            .await
            .unwrap()
            .unwrap()
    }
}

#[tokio::test]
async fn create_leases_the_lowest_free_address_with_its_intent() {
    let f = fixture(10, None).await;
    f.user("u1").await;
    let reserved = f.create("vm1", "u1").await.unwrap();
    assert_eq!(reserved.vm.ip_address.as_deref(), Some("10.1.0.2"));
    assert_eq!(
        reserved.vm.mac_address.as_deref(),
        Some("06:00:0a:01:00:02")
    );
    assert_eq!(reserved.intent.op, VmOp::Create);
    assert_eq!(reserved.intent.ip.as_deref(), Some("10.1.0.2"));
    assert_eq!(reserved.intent.tap, "tap-vm1");
    let leases = f.leases().await;
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].vm_id, "vm1");
    let intents = f.store.read(intents).await.unwrap();
    assert_eq!(intents.len(), 1);
}

#[tokio::test]
async fn limits_are_checked_before_anything_is_written() {
    let f = fixture(1, None).await;
    assert!(matches!(
        f.create("vm0", "nobody").await,
        Err(VmError::UserNotFound(_))
    ));
    f.running("vm1", "u1").await;
    assert!(matches!(
        f.create("vm2", "u1").await,
        Err(VmError::AlreadyHasVm {
            status: VmStatus::Running,
            ..
        })
    ));
    f.user("u2").await;
    let err = f.create("vm3", "u2").await.unwrap_err();
    assert!(matches!(err, VmError::TooManyVms { max: 1 }), "{err}");
    assert!(err.to_string().contains("MC_MAX_VMS"));
    assert_eq!(f.leases().await.len(), 1, "refusals reserve nothing");
}

#[tokio::test]
async fn a_full_pool_takes_the_longest_hibernated_address() {
    let f = fixture(10, Some(2)).await;
    f.running("vm1", "u1").await;
    f.running("vm2", "u2").await;
    f.user("u3").await;
    let err = f.create("vm3", "u3").await.unwrap_err();
    assert!(matches!(err, VmError::PoolExhausted { size: 2 }), "{err}");

    f.hibernate_at("vm2", 100).await;
    f.hibernate_at("vm1", 200).await;
    let reserved = f.create("vm3", "u3").await.unwrap();
    let reclaimed = reserved.reclaimed.expect("an address was reclaimed");
    assert_eq!(reclaimed.vm.id, "vm2", "the longest-hibernated one");
    assert_eq!(reserved.vm.ip_address.as_deref(), Some("10.1.0.3"));
    let victim = f.vm("vm2").await;
    assert!(victim.ip_address.is_none() && victim.needs_readdress);
    assert_eq!(victim.status, VmStatus::Hibernated);

    // Its resume needs an address again: the pool is full and vm1 is the only donor.
    let limits = f.limits;
    let resumed = f
        .store
        .write(move |tx| {
            begin(
                tx,
                "vm2",
                VmOp::Resume,
                &[VmStatus::Hibernated],
                "/d",
                &limits,
            )
        })
        .await
        .unwrap();
    assert_eq!(resumed.vm.ip_address.as_deref(), Some("10.1.0.2"));
    assert_eq!(resumed.reclaimed.map(|r| r.vm.id).as_deref(), Some("vm1"));
    let owners: Vec<String> = f.leases().await.into_iter().map(|l| l.vm_id).collect();
    assert_eq!(owners, ["vm2", "vm3"]);
}

#[tokio::test]
async fn an_operation_in_flight_makes_the_vm_busy() {
    let f = fixture(10, None).await;
    f.running("vm1", "u1").await;
    let limits = f.limits;
    let begin_op = |op: VmOp, from: Vec<VmStatus>| {
        let store = f.store.clone();
        async move {
            store
                .write(move |tx| begin(tx, "vm1", op, &from, "/d", &limits))
                .await
        }
    };
    let err = begin_op(VmOp::Resume, vec![VmStatus::Hibernated])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("it is running"), "{err}");
    begin_op(VmOp::Hibernate, vec![VmStatus::Running])
        .await
        .unwrap();
    let err = begin_op(VmOp::Destroy, vec![VmStatus::Running])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Busy {
                op: VmOp::Hibernate,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn stripping_a_vm_releases_its_lease_and_strays_are_swept() {
    let f = fixture(10, None).await;
    f.running("vm1", "u1").await;
    f.running("vm2", "u2").await;
    f.finish("vm1", |vm| {
        vm.set_status(VmStatus::Failed)?;
        strip(vm);
        Ok(())
    })
    .await;
    let owners: Vec<String> = f.leases().await.into_iter().map(|l| l.vm_id).collect();
    assert_eq!(owners, ["vm2"]);
    // A lease whose VM no longer holds the address (as a crash could leave) is swept.
    f.store
        .write(|tx| {
            let lease = IpLease {
                ip: "10.1.0.9".into(),
                vm_id: "vm1".into(),
                leased_at_ms: 0,
            };
            store::put(&mut tx.open_table(tables::IP_LEASES)?, &lease.ip, &lease)?;
            Ok::<_, VmError>(())
        })
        .await
        .unwrap();
    let swept = f.store.write(stray_leases).await.unwrap();
    assert_eq!(swept, ["10.1.0.9"]);
    assert_eq!(f.leases().await.len(), 1);
}

#[tokio::test]
async fn a_first_vm_leases_its_users_port_for_life_and_an_empty_pool_refuses_cleanly() {
    let mut f = fixture(10, None).await;
    f.limits.ports = Some(PortRange {
        start: 20001,
        end: 20002,
    });
    for user in ["u1", "u2", "u3"] {
        f.user(user).await;
    }
    let first = f.create("vm1", "u1").await.unwrap();
    assert!(first.vm.ip_address.is_some());
    f.create("vm2", "u2").await.unwrap();
    let user_port = |id: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .read(move |tx| {
                    let user: User = store::get(&tx.open_table(tables::USERS)?, id)?.unwrap();
                    Ok::<_, VmError>(user.decodo_port)
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(user_port("u1").await, Some(20001));
    assert_eq!(user_port("u2").await, Some(20002));
    match f.create("vm3", "u3").await {
        Err(VmError::Egress(crate::net::egress::EgressError::PoolExhausted { range })) => {
            assert_eq!((range.start, range.end), (20001, 20002));
        }
        other => panic!("expected an exhausted port pool, got {other:?}"),
    }
    // Refused as a whole: no VM, no address and no port for the third user.
    assert_eq!(f.leases().await.len(), 2);
    assert_eq!(user_port("u3").await, None);
    let vm3 = f
        .store
        .read(|tx| Ok::<_, VmError>(store::get::<Vm, _>(&tx.open_table(tables::VMS)?, "vm3")?))
        .await
        .unwrap();
    assert!(vm3.is_none());
    // Hibernate and resume keep the port: it belongs to the user, not the VM.
    f.finish("vm1", |vm| {
        vm.set_status(VmStatus::Running).map_err(Into::into)
    })
    .await;
    f.hibernate_at("vm1", 1).await;
    let limits = f.limits;
    f.store
        .write(move |tx| {
            begin(
                tx,
                "vm1",
                VmOp::Resume,
                &[VmStatus::Hibernated],
                "/dir",
                &limits,
            )
        })
        .await
        .unwrap();
    assert_eq!(user_port("u1").await, Some(20001));
}

async fn indexed_vm_ids(store: &Store, user: &str) -> Vec<String> {
    let user = user.to_string();
    store
        .read(move |tx| {
            let vms = super::super::by_user::of_user(
                &tx.open_table(tables::VMS_BY_USER)?,
                &tx.open_table(tables::VMS)?,
                &user,
            )?;
            Ok::<_, VmError>(vms.into_iter().map(|vm| vm.id).collect())
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_create_indexes_its_vm_by_user_and_an_older_store_is_indexed_once() {
    let f = fixture(10, None).await;
    f.running("vm-a1", "ann").await;
    f.hibernate_at("vm-a1", 5).await;
    f.running("vm-b1", "bob").await;
    assert_eq!(indexed_vm_ids(&f.store, "ann").await, ["vm-a1"]);
    assert_eq!(indexed_vm_ids(&f.store, "bob").await, ["vm-b1"]);
    assert!(
        indexed_vm_ids(&f.store, "an").await.is_empty(),
        "a prefix is not a user"
    );

    // As an older binary left it: VM records, no index, no mark.
    f.store
        .write(|tx| {
            tx.open_table(tables::VMS_BY_USER)?.retain(|_, _| false)?;
            tx.open_table(crate::store::META)?
                .remove("vms_by_user_complete")?;
            Ok::<_, VmError>(())
        })
        .await
        .unwrap();
    assert!(indexed_vm_ids(&f.store, "ann").await.is_empty());
    assert!(super::super::by_user::ensure(&f.store).await.unwrap());
    assert!(!super::super::by_user::ensure(&f.store).await.unwrap());
    assert_eq!(indexed_vm_ids(&f.store, "ann").await, ["vm-a1"]);
    assert_eq!(indexed_vm_ids(&f.store, "bob").await, ["vm-b1"]);
}
