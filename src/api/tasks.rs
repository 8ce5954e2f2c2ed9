//! `/api/admin/tasks` and `/api/admin/metrics/recent`: the background jobs and the metrics
//! ring. Admin token only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;
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
    #[openapi(paths())]
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
#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
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

async fn list_tasks(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let jobs = call.ctx.tasks.list().await?;
        let views: Vec<TaskView> = jobs.iter().map(|j| task_view(j, &call.ctx)).collect();
        Ok(json!({ "enabled": call.ctx.tasks.enabled(), "tasks": views }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn run_task(name: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let run = call.ctx.tasks.run_now(&name).await?;
        Ok(json!({ "name": run.name, "run": RunView::from(&run) }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// One sample of the metrics ring as the API shows it.
#[derive(Debug, Serialize)]
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
        Ok(json!({ "count": views.len(), "samples": views }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}
