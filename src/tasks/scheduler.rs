//! The scheduler: one loop per job under the daemon's cancellation token and task tracker,
//! manual runs, and the record of every run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use jiff::tz::TimeZone;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::schedule::{Clock, Schedule, jitter};
use super::{TaskError, runs};
use crate::metrics::Metrics;
use crate::model::{TaskOutcome, TaskRun};
use crate::store::Store;

/// Error messages kept in a run's record are cut here.
const MAX_ERROR_CHARS: usize = 1000;

/// One background job. `run` answers how many items it acted on; it should look at `cancel`
/// between items, so that shutdown does not wait for a long run.
#[async_trait::async_trait]
pub trait Job: Send + Sync + 'static {
    async fn run(&self, cancel: &CancellationToken) -> Result<u64, TaskError>;
}

struct Entry {
    name: String,
    schedule: Schedule,
    job: Arc<dyn Job>,
    /// Held for the length of a run: a second start meanwhile is refused.
    running: Arc<tokio::sync::Mutex<()>>,
    /// The next scheduled run (ms), 0 when none is planned.
    next_run_ms: AtomicI64,
}

/// A job as the API lists it.
#[derive(Debug, Clone)]
pub struct JobStatus {
    pub name: String,
    pub schedule: Schedule,
    pub running: bool,
    pub next_run_ms: Option<i64>,
    /// `None` until it has run once.
    pub last: Option<TaskRun>,
}

/// The scheduler's state in a few figures, for the system stats.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TasksSummary {
    pub enabled: bool,
    pub jobs: usize,
    pub running: Vec<String>,
    /// Jobs whose last run failed.
    pub failing: Vec<String>,
}

pub struct Scheduler {
    store: Store,
    clock: Clock,
    tz: TimeZone,
    enabled: bool,
    cancel: CancellationToken,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    /// Registered once at start (and by tests); bounded by what is registered.
    jobs: Mutex<BTreeMap<String, Arc<Entry>>>,
}

impl Scheduler {
    /// A scheduler whose loops stop on `cancel` and are tracked by `tracker`. With `enabled`
    /// false no job runs by itself.
    pub fn new(
        store: Store,
        tz: TimeZone,
        enabled: bool,
        cancel: CancellationToken,
        tracker: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            store,
            clock: Clock::start(),
            tz,
            enabled,
            cancel,
            tracker,
            metrics,
            jobs: Mutex::new(BTreeMap::new()),
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The scheduler's clock (wall time moved on by tokio's clock), in unix ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// Adds a job; when the scheduler is enabled its loop starts at once.
    pub fn register(
        self: &Arc<Self>,
        name: &str,
        schedule: Schedule,
        job: Arc<dyn Job>,
    ) -> Result<(), TaskError> {
        let entry = Arc::new(Entry {
            name: name.to_string(),
            schedule,
            job,
            running: Arc::new(tokio::sync::Mutex::new(())),
            next_run_ms: AtomicI64::new(0),
        });
        {
            let mut jobs = self.jobs();
            if jobs.contains_key(name) {
                return Err(TaskError::Duplicate(name.to_string()));
            }
            jobs.insert(name.to_string(), entry.clone());
        }
        self.metrics.ops.seed_task(name);
        if self.enabled {
            self.tracker.spawn(self.clone().run_loop(entry));
        }
        Ok(())
    }

    async fn run_loop(self: Arc<Self>, entry: Arc<Entry>) {
        loop {
            let due = entry.schedule.next_after(self.clock.now_ms(), &self.tz);
            let due = due.saturating_add(jitter(entry.schedule.max_jitter()).as_millis() as i64);
            entry.next_run_ms.store(due, Ordering::Relaxed);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(self.clock.until(due)) => {}
            }
            entry.next_run_ms.store(0, Ordering::Relaxed);
            match entry.running.clone().try_lock_owned() {
                Ok(guard) => {
                    // The outcome is in the record; a failed run waits for its next time.
                    let _ = self.clone().execute(entry.clone(), guard).await;
                }
                Err(_) => {
                    tracing::info!(job = %entry.name, "still running from a manual start; this run is skipped");
                }
            }
        }
    }

    /// Runs the job now and answers its record; refused while it runs. The run goes on even if
    /// the caller goes away, so that a job is never dropped half-way.
    pub async fn run_now(self: &Arc<Self>, name: &str) -> Result<TaskRun, TaskError> {
        let entry = self
            .jobs()
            .get(name)
            .cloned()
            .ok_or_else(|| TaskError::UnknownJob(name.to_string()))?;
        let guard = entry
            .running
            .clone()
            .try_lock_owned()
            .map_err(|_| TaskError::AlreadyRunning(name.to_string()))?;
        let task = self.tracker.spawn(self.clone().execute(entry, guard));
        task.await.map_err(|e| TaskError::Panicked(e.to_string()))?
    }

    /// One run: the job itself in a task of its own (a panic is a failed run, not a dead
    /// loop), then its record.
    async fn execute(
        self: Arc<Self>,
        entry: Arc<Entry>,
        _running: OwnedMutexGuard<()>,
    ) -> Result<TaskRun, TaskError> {
        let started_ms = self.clock.now_ms();
        let started = tokio::time::Instant::now();
        let job = entry.job.clone();
        let cancel = self.cancel.clone();
        let outcome = self
            .tracker
            .spawn(async move { job.run(&cancel).await })
            .await
            .unwrap_or_else(|e| Err(TaskError::Panicked(e.to_string())));
        let duration_ms = started.elapsed().as_millis() as u64;
        let finished_ms = self.clock.now_ms();
        let next = entry.next_run_ms.load(Ordering::Relaxed);
        let next_run_ms = match (next, self.enabled) {
            (0, true) => Some(entry.schedule.next_after(finished_ms, &self.tz)),
            (0, false) => None,
            (next, _) => Some(next),
        };
        self.metrics
            .ops
            .count_task_run(&entry.name, outcome.is_ok());
        match &outcome {
            Ok(items) => tracing::info!(job = %entry.name, items, duration_ms, "task ran"),
            Err(e) => tracing::warn!(job = %entry.name, error = %e, duration_ms, "task failed"),
        }
        let result = runs::update(&self.store, &entry.name, move |run| {
            run.last_started_ms = Some(started_ms);
            run.last_finished_ms = Some(finished_ms);
            run.last_duration_ms = Some(duration_ms);
            run.next_run_ms = next_run_ms;
            run.runs += 1;
            match &outcome {
                Ok(items) => {
                    run.last_outcome = Some(TaskOutcome::Ok);
                    run.last_error = None;
                    run.items_touched = *items;
                }
                Err(e) => {
                    run.last_outcome = Some(TaskOutcome::Failed);
                    run.last_error = Some(e.to_string().chars().take(MAX_ERROR_CHARS).collect());
                    run.items_touched = e.touched();
                    run.failures += 1;
                }
            }
        })
        .await;
        if let Err(e) = &result {
            tracing::error!(job = %entry.name, error = %e, "cannot record a task run");
        }
        result
    }

    /// Every job with its schedule, state and last run, by name.
    pub async fn list(&self) -> Result<Vec<JobStatus>, TaskError> {
        let mut recorded = runs::all(&self.store).await?;
        let entries: Vec<Arc<Entry>> = self.jobs().values().cloned().collect();
        Ok(entries
            .into_iter()
            .map(|entry| {
                let last = recorded.remove(&entry.name).filter(|r| r.runs > 0);
                let planned = entry.next_run_ms.load(Ordering::Relaxed);
                let next_run_ms = if !self.enabled {
                    None
                } else if planned > 0 {
                    Some(planned)
                } else {
                    last.as_ref().and_then(|r| r.next_run_ms)
                };
                JobStatus {
                    name: entry.name.clone(),
                    schedule: entry.schedule,
                    running: entry.running.try_lock().is_err(),
                    next_run_ms,
                    last,
                }
            })
            .collect())
    }

    /// The last run of one job (`None` until it has run).
    pub async fn last_run(&self, name: &str) -> Result<Option<TaskRun>, TaskError> {
        if !self.jobs().contains_key(name) {
            return Err(TaskError::UnknownJob(name.to_string()));
        }
        runs::get(&self.store, name).await
    }

    pub async fn summary(&self) -> Result<TasksSummary, TaskError> {
        let jobs = self.list().await?;
        Ok(TasksSummary {
            enabled: self.enabled,
            jobs: jobs.len(),
            running: jobs
                .iter()
                .filter(|j| j.running)
                .map(|j| j.name.clone())
                .collect(),
            failing: jobs
                .iter()
                .filter(|j| {
                    j.last
                        .as_ref()
                        .is_some_and(|r| r.last_outcome == Some(TaskOutcome::Failed))
                })
                .map(|j| j.name.clone())
                .collect(),
        })
    }
}
