//! `/api/admin/tasks` and `/api/admin/metrics/recent`: the background jobs and the metrics
//! ring. Admin token only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::error::ApiError;
use super::views::rfc3339;
use crate::model::{MetricsSample, TaskRun};
use crate::tasks::schedule::ScheduleView;
use crate::tasks::{JobStatus, samples};

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(list_tasks, run_task, recent_metrics))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let list = warp::path!("api" / "admin" / "tasks")
        .and(endpoint(ctx.clone(), Method::GET, "/api/admin/tasks"))
        .then(list_tasks);
    let run = warp::path!("api" / "admin" / "tasks" / String / "run")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/admin/tasks/:name/run",
        ))
        .then(run_task);
    let recent = warp::path!("api" / "admin" / "metrics" / "recent")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/admin/metrics/recent",
        ))
        .and(warp::query::<HashMap<String, String>>())
        .then(recent_metrics);
    list.or(run).unify().or(recent).unify().boxed()
}

/// A job's last run as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RunView {
    last_started_at: Option<String>,
    last_finished_at: Option<String>,
    last_duration_ms: Option<u64>,
    outcome: Option<String>,
    items_touched: u64,
    error: Option<String>,
    next_run_at: Option<String>,
    runs: u64,
    failures: u64,
}

impl From<&TaskRun> for RunView {
    fn from(r: &TaskRun) -> Self {
        RunView {
            last_started_at: r.last_started_ms.map(rfc3339),
            last_finished_at: r.last_finished_ms.map(rfc3339),
            last_duration_ms: r.last_duration_ms,
            outcome: r.last_outcome.map(|o| o.to_string()),
            items_touched: r.items_touched,
            error: r.last_error.clone(),
            next_run_at: r.next_run_ms.map(rfc3339),
            runs: r.runs,
            failures: r.failures,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct TaskView {
    name: String,
    schedule: ScheduleView,
    running: bool,
    #[serde(flatten)]
    last: RunView,
}

fn task_view(job: &JobStatus, ctx: &ApiContext) -> TaskView {
    let mut last = match &job.last {
        Some(run) => RunView::from(run),
        None => RunView::from(&TaskRun::new(&job.name)),
    };
    last.next_run_at = job.next_run_ms.map(rfc3339);
    TaskView {
        name: job.name.clone(),
        schedule: job.schedule.view(ctx.tasks.time_zone()),
        running: job.running,
        last,
    }
}

/// The answer to `GET /api/admin/tasks`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct TaskListView {
    /// Whether the scheduler runs jobs on their schedules (a job may still be run by hand).
    enabled: bool,
    tasks: Vec<TaskView>,
}

/// The answer to `POST /api/admin/tasks/:name/run`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct TaskRunView {
    name: String,
    run: RunView,
}

// The document's bound on `limit` is a literal.
const _: () = assert!(samples::MAX_READ == 2016);

/// The answer to `GET /api/admin/metrics/recent`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SamplesView {
    count: usize,
    /// Newest first.
    samples: Vec<SampleView>,
}

#[utoipa::path(
    get,
    path = "/api/admin/tasks",
    tag = "tasks",
    operation_id = "list_tasks",
    responses((status = 200, description = "Every background job, its schedule and its last run", body = TaskListView))
)]
async fn list_tasks(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let jobs = call.ctx.tasks.list().await?;
        let views: Vec<TaskView> = jobs.iter().map(|j| task_view(j, &call.ctx)).collect();
        Ok(TaskListView {
            enabled: call.ctx.tasks.enabled(),
            tasks: views,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    post,
    path = "/api/admin/tasks/{name}/run",
    tag = "tasks",
    operation_id = "run_task",
    params(("name" = String, Path, description = "The job's name, as `GET /api/admin/tasks` lists it")),
    responses((status = 200, description = "The job, run now to its end", body = TaskRunView))
)]
async fn run_task(name: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let run = call.ctx.tasks.run_now(&name).await?;
        Ok(TaskRunView {
            run: RunView::from(&run),
            name: run.name,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// One sample of the metrics ring as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SampleView {
    at: String,
    cpu_percent: f64,
    load1: f64,
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    disk_used_bytes: u64,
    disk_total_bytes: u64,
    vms_by_status: BTreeMap<String, u64>,
    prompts_running: u64,
    ip_pool_free: u64,
    outbox_depth: u64,
}

impl From<MetricsSample> for SampleView {
    fn from(s: MetricsSample) -> Self {
        SampleView {
            at: rfc3339(s.at_ms),
            cpu_percent: s.cpu_percent,
            load1: s.load1,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            disk_used_bytes: s.disk_used_bytes,
            disk_total_bytes: s.disk_total_bytes,
            vms_by_status: s.vms_by_status,
            prompts_running: s.prompts_running,
            ip_pool_free: s.ip_pool_free,
            outbox_depth: s.outbox_depth,
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/admin/metrics/recent",
    tag = "tasks",
    operation_id = "recent_metrics_samples",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 2016, description = "How many of the latest samples (one per sampling period); 144 when absent")),
    responses((status = 200, description = "The latest samples of the metrics ring", body = SamplesView))
)]
async fn recent_metrics(call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        if let Some(unknown) = query.keys().find(|k| k.as_str() != "limit") {
            return Err(ApiError::BadRequest {
                code: "unknown_query_parameter",
                message: format!("unknown query parameter {unknown:?}; expected limit"),
            });
        }
        let limit = match query.get("limit") {
            None => 144,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=samples::MAX_READ).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid_field(
                        "limit",
                        format!("must be an integer from 1 to {}", samples::MAX_READ),
                    ));
                }
            },
        };
        let samples = samples::recent(&call.ctx.store, limit).await?;
        let views: Vec<SampleView> = samples.into_iter().map(SampleView::from).collect();
        Ok(SamplesView {
            count: views.len(),
            samples: views,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
