//! The VMs' records as every part sees them: reads, the ledger's transactions (an intent begun,
//! finished or closed, a create's reservations), and the status events a recorded change
//! publishes. The only part that holds the store.

use std::sync::Arc;

use super::ledger::{self, Reclaimed};
use super::{VmError, VmFilter, VmPage, VmSettings};
use crate::events::{Channel, EventHub, HubEvent};
use crate::model::tables;
use crate::model::{AgentInfo, Status, Vm, VmIntent, VmOp, VmStatus, now_ms};
use crate::store::{self, Store};
use crate::sync::{put_mirrored, update_mirrored};

pub(super) struct Records {
    store: Store,
    events: EventHub,
    /// Intents name the VM's directory and reservations are checked against its limits.
    settings: Arc<VmSettings>,
}

impl Records {
    pub(super) fn new(store: Store, events: EventHub, settings: Arc<VmSettings>) -> Records {
        Records {
            store,
            events,
            settings,
        }
    }

    pub(super) async fn list(&self, filter: VmFilter) -> Result<Vec<Vm>, VmError> {
        self.store
            .read(move |tx| {
                let vms = store::all(&tx.open_table(tables::VMS)?)?;
                Ok(vms.into_iter().filter(|vm| filter.matches(vm)).collect())
            })
            .await
    }

    /// Up to `limit` matches of `filter` after the VM id `cursor`, in id order; the number of
    /// all matches; and the cursor of the next page, if there is one. Counting every match
    /// reads the whole table, which on one node is a few thousand records at most.
    pub(super) async fn list_page(
        &self,
        filter: VmFilter,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<VmPage, VmError> {
        self.store
            .read(move |tx| {
                let table = tx.open_table(tables::VMS)?;
                let mut page = VmPage::default();
                let mut more = false;
                for entry in redb::ReadableTable::iter(&table)? {
                    let (key, value) = entry.map_err(store::StoreError::from)?;
                    let vm: Vm = value.value().decode()?;
                    if !filter.matches(&vm) {
                        continue;
                    }
                    page.total += 1;
                    if cursor.as_deref().is_some_and(|c| key.value() <= c) {
                        continue;
                    }
                    if page.vms.len() < limit {
                        page.vms.push(vm);
                    } else {
                        more = true;
                    }
                }
                if more {
                    page.next_cursor = page.vms.last().map(|vm| vm.id.clone());
                }
                Ok(page)
            })
            .await
    }

    pub(super) async fn get(&self, id: &str) -> Result<Vm, VmError> {
        let id = id.to_string();
        self.store
            .read(move |tx| {
                store::get(&tx.open_table(tables::VMS)?, &id)?.ok_or(VmError::NotFound(id))
            })
            .await
    }

    /// The user's current VM: the live one, else the most recently created.
    pub(super) async fn user_vm(&self, user_id: &str) -> Result<Vm, VmError> {
        let id = user_id.to_string();
        let vms = self
            .store
            .read(move |tx| {
                let index = tx.open_table(tables::VMS_BY_USER)?;
                Ok::<_, VmError>(super::by_user::of_user(
                    &index,
                    &tx.open_table(tables::VMS)?,
                    &id,
                )?)
            })
            .await?;
        let live = vms.iter().find(|vm| vm.is_live()).cloned();
        live.or_else(|| {
            vms.into_iter()
                .filter(|vm| vm.status != VmStatus::Destroyed)
                .max_by_key(|vm| vm.created_at_ms)
        })
        .ok_or_else(|| VmError::NoVm(user_id.to_string()))
    }

    /// Records that the VM (or the web backend on its behalf) saw it alive.
    pub(super) async fn heartbeat(&self, id: &str) -> Result<Vm, VmError> {
        let id = id.to_string();
        self.store
            .write(move |tx| {
                let changed = update_mirrored(tx, tables::VMS, &id, |vm: &mut Vm| {
                    if !matches!(vm.status, VmStatus::Running | VmStatus::Creating) {
                        return Err(VmError::NotAlive {
                            id: vm.id.clone(),
                            status: vm.status,
                        });
                    }
                    vm.last_heartbeat_ms = Some(now_ms());
                    // `update_mirrored` raises the version (`touch` would raise it twice).
                    vm.updated_at_ms = now_ms();
                    Ok(())
                })?;
                Ok(changed.ok_or_else(|| VmError::NotFound(id.clone()))?.new)
            })
            .await
    }

    /// Writes a VM record as it is; tests and the benchmark use it to set up VMs.
    pub(super) async fn insert(&self, vm: Vm) -> Result<(), VmError> {
        self.store
            .write(move |tx| {
                put_mirrored(tx, tables::VMS, &vm.id, &vm)?;
                super::by_user::add(tx, &vm)?;
                Ok(())
            })
            .await
    }

    /// Reserves a new VM's address, port and tap with its create intent, and announces it.
    pub(super) async fn reserve_create(&self, vm: Vm) -> Result<Vm, VmError> {
        let dir = self.settings.dir_of(&vm.id).display().to_string();
        let limits = self.settings.limits;
        let reserved = self
            .store
            .write(move |tx| ledger::reserve_create(tx, vm, &dir, &limits))
            .await?;
        let vm = reserved.vm;
        self.publish_reclaimed(&reserved.reclaimed);
        self.announce_status(&vm, None);
        Ok(vm)
    }

    /// Records `op`'s intent (with a new address for a resume that needs one).
    pub(super) async fn begin(
        &self,
        vm_id: &str,
        op: VmOp,
        from: &[VmStatus],
    ) -> Result<Vm, VmError> {
        let id = vm_id.to_string();
        let from = from.to_vec();
        let dir = self.settings.dir_of(vm_id).display().to_string();
        let limits = self.settings.limits;
        let reserved = self
            .store
            .write(move |tx| ledger::begin(tx, &id, op, &from, &dir, &limits))
            .await?;
        self.publish_reclaimed(&reserved.reclaimed);
        Ok(reserved.vm)
    }

    /// Ends a create or a resume: the VM runs as process `pid`, whose agent answered.
    pub(super) async fn running(
        &self,
        vm_id: &str,
        pid: u32,
        agent: AgentInfo,
    ) -> Result<Vm, VmError> {
        let finished = self.finish(vm_id, move |vm| {
            vm.set_status(VmStatus::Running)?;
            vm.pid = Some(pid);
            vm.agent = Some(agent);
            vm.last_heartbeat_ms = Some(now_ms());
            vm.needs_readdress = false;
            vm.error = None;
            Ok(())
        });
        Ok(finished.await?.0)
    }

    pub(super) async fn hibernated(&self, vm_id: &str) -> Result<Vm, VmError> {
        let finished = self.finish(vm_id, |vm| {
            vm.set_status(VmStatus::Hibernated)?;
            vm.pid = None;
            vm.hibernated_at_ms = Some(now_ms());
            Ok(())
        });
        Ok(finished.await?.0)
    }

    /// Ends a destroy, from whatever status it began in; the VM holds nothing any more.
    pub(super) async fn destroyed(&self, vm_id: &str) -> Result<Vm, VmError> {
        let finished = self.finish(vm_id, |vm| {
            if !vm.status.can_transition_to(VmStatus::Destroyed) {
                vm.status.transition(VmStatus::Stopping)?;
            }
            vm.set_status(VmStatus::Destroyed)?;
            ledger::strip(vm);
            Ok(())
        });
        Ok(finished.await?.0)
    }

    /// Records the VM failed for `reason`, holding nothing any more. Returns it with its status
    /// before.
    pub(super) async fn failed(
        &self,
        vm_id: &str,
        reason: &str,
    ) -> Result<(Vm, VmStatus), VmError> {
        let reason = reason.to_string();
        self.finish(vm_id, |vm| {
            vm.set_status(VmStatus::Failed)?;
            ledger::strip(vm);
            vm.error = Some(reason);
            Ok(())
        })
        .await
    }

    /// Applies `change` and clears the VM's intent in one transaction (see
    /// [`ledger::finish`]). Returns the VM as written and its status before.
    async fn finish(
        &self,
        vm_id: &str,
        change: impl FnOnce(&mut Vm) -> Result<(), VmError> + Send + 'static,
    ) -> Result<(Vm, VmStatus), VmError> {
        let id = vm_id.to_string();
        self.store
            .write(move |tx| {
                let mut previous = VmStatus::Failed;
                let vm = ledger::finish(tx, &id, |vm| {
                    previous = vm.status;
                    change(vm)
                })?;
                Ok::<_, VmError>((vm, previous))
            })
            .await
    }

    /// Drops the VM's intent, changing nothing else: the operation was rolled back.
    pub(super) async fn close_intent(&self, vm_id: &str) -> Result<Vm, VmError> {
        Ok(self.finish(vm_id, |_| Ok(())).await?.0)
    }

    /// Records what a running VM's agent last reported; a VM no longer running is left as it is.
    pub(super) async fn record_agent(&self, vm_id: &str, info: AgentInfo) -> Result<(), VmError> {
        let id = vm_id.to_string();
        self.store
            .write(move |tx| {
                update_mirrored(tx, tables::VMS, &id, |vm: &mut Vm| {
                    if vm.status == VmStatus::Running {
                        vm.agent = Some(info);
                        vm.last_heartbeat_ms = Some(now_ms());
                        vm.updated_at_ms = now_ms();
                    }
                    Ok::<_, VmError>(())
                })?;
                Ok::<_, VmError>(())
            })
            .await
    }

    pub(super) async fn intents(&self) -> Result<Vec<VmIntent>, VmError> {
        self.store.read(ledger::intents).await
    }

    /// Releases the leases no VM holds any more.
    pub(super) async fn stray_leases(&self) -> Result<Vec<String>, VmError> {
        self.store.write(ledger::stray_leases).await
    }

    pub(super) fn publish_status(&self, vm: &Vm, previous: VmStatus) {
        if vm.status != previous {
            self.announce_status(vm, Some(previous));
        }
    }

    /// `vm_status_changed`; a new VM has no previous status.
    fn announce_status(&self, vm: &Vm, previous: Option<VmStatus>) {
        self.events.publish(
            &Channel::user(&vm.user_id),
            HubEvent::VmStatusChanged {
                vm_id: vm.id.clone(),
                user_id: vm.user_id.clone(),
                status: vm.status,
                previous_status: previous,
            },
        );
    }

    fn publish_reclaimed(&self, reclaimed: &Option<Reclaimed>) {
        if let Some(r) = reclaimed {
            tracing::info!(vm = %r.vm.id, ip = %r.ip, "reclaimed the address of a hibernated VM");
            self.events.publish(
                &Channel::user(&r.vm.user_id),
                HubEvent::VmIpReclaimed {
                    vm_id: r.vm.id.clone(),
                    ip: r.ip.clone(),
                },
            );
        }
    }
}
