//! The API's OpenAPI 3.1 document, generated from the route modules' annotated handlers and
//! the view types they answer with. Served at `/openapi.json` (admin or service token) and
//! written by `master-controller openapi`. `tests/openapi.rs` holds it to the routes actually
//! built (both ways) and fuzzes a live daemon against it.

use std::sync::{Arc, LazyLock};

use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Ref, RefOr, ResponseBuilder, Schema as SchemaObject,
    schema::{ObjectBuilder, SchemaType, Type},
};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode, header};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};

/// The statuses any route may answer with through the shared plumbing (a token refused, the
/// rate limit, a body too large, a store failure, the host below failing), each with the
/// error body. A route lists its own successes.
const ERROR_STATUSES: [(&str, &str); 10] = [
    (
        "400",
        "The request is malformed: its body, a field, or a query parameter",
    ),
    ("401", "No token, or one that is not valid"),
    ("403", "The token may not do this"),
    ("404", "No such resource"),
    ("409", "The resource is not in a state that allows this"),
    ("413", "The body is larger than the configured limit"),
    (
        "429",
        "Too many requests from this token or address; see Retry-After",
    ),
    (
        "500",
        "The daemon failed; the cause is in its log under the request id",
    ),
    ("502", "The hypervisor or the guest failed the operation"),
    (
        "503",
        "A limit is reached or something the operation needs is missing",
    ),
];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "master-controller",
        description = "A private microVM per user, running the AI coding CLIs. Every error \
            answers `{\"error\":{\"code\":\"...\",\"message\":\"...\"}}`; every response carries \
            `X-Request-Id`. List routes page with `?limit=&cursor=` and answer `nextCursor`.",
        license(name = "see the repository's LICENSE"),
    ),
    paths(openapi_json),
    tags(
        (name = "users", description = "Users, their statistics and their tokens"),
        (name = "vms", description = "A user's VM, and every VM"),
        (name = "prompts", description = "Prompts to the CLIs, streamed over SSE, and their history"),
        (name = "conversations", description = "Conversations: turns that resume one CLI session"),
        (name = "workspace", description = "The user's files in the VM, and commands run there"),
        (name = "logins", description = "OAuth logins of the CLIs through the relay, and stored credentials"),
        (name = "egress", description = "Upstream proxy ports"),
        (name = "outbox", description = "The Supabase mirror's outbox"),
        (name = "tasks", description = "Scheduled maintenance tasks"),
        (name = "admin", description = "Operator routes"),
        (name = "probes", description = "Liveness, readiness, metrics and this document"),
        (name = "websocket", description = "Live events over a WebSocket"),
    )
)]
struct Base;

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    for part in [
        super::users::openapi(),
        super::user_vm::openapi(),
        super::vms::openapi(),
        super::prompts::openapi(),
        super::conversations::openapi(),
        super::files::openapi(),
        super::exec::openapi(),
        super::logins::openapi(),
        super::egress::openapi(),
        super::outbox::openapi(),
        super::tasks::openapi(),
        super::admin::openapi(),
        super::system_stats::openapi(),
        super::probes::openapi(),
        super::ws::openapi(),
    ] {
        doc.merge(part);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The admin token, the service token, or a user token minted by \
                     `POST /api/users/{userId}/tokens`",
                ))
                .build(),
        ),
    );
    components.schemas.insert("Error".into(), error_schema());
    error_responses(components);
    doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    for item in doc.paths.paths.values_mut() {
        for operation in operations(item) {
            add_error_responses(operation);
            drop_null_body(operation);
        }
    }
    doc
}

/// The document as the pretty JSON that `/openapi.json` serves and `appliance/openapi.json`
/// holds.
pub fn document_json() -> String {
    // Serialising a tree of strings and maps cannot fail.
    document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// utoipa makes an `Option<T>` body "`T` or `null`"; but an optional body is one that may be
/// empty (which means the defaults), and a `null` body is refused like any other non-object.
/// Leaves `T`, not required.
fn drop_null_body(operation: &mut Operation) {
    let Some(RefOr::T(body)) = operation.request_body.as_mut() else {
        return;
    };
    let is_null = |schema: &RefOr<SchemaObject>| matches!(schema, RefOr::T(SchemaObject::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else { continue };
        let Some(RefOr::T(SchemaObject::OneOf(one_of))) = &mut content.schema else {
            continue;
        };
        one_of.items.retain(|s| !is_null(s));
        if one_of.items.len() == 1 {
            content.schema = one_of.items.pop();
        }
    }
}

/// The name of the shared response for an error `status` in `components.responses`.
fn error_response_name(status: &str) -> String {
    format!("Error{status}")
}

fn add_error_responses(operation: &mut Operation) {
    for (status, _) in ERROR_STATUSES {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(error_response_name(status))));
    }
}

fn error_responses(components: &mut utoipa::openapi::Components) {
    for (status, description) in ERROR_STATUSES {
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            )
            .build();
        components
            .responses
            .insert(error_response_name(status), RefOr::T(response));
    }
}

/// `{"error":{"code","message"}}`; a conflict may add a top-level field (the existing user on
/// a duplicate), so other properties are allowed.
fn error_schema() -> RefOr<SchemaObject> {
    let detail = ObjectBuilder::new()
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("Stable, snake_case")),
        )
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("code")
        .required("message");
    RefOr::T(SchemaObject::Object(
        ObjectBuilder::new()
            .property("error", detail)
            .required("error")
            .build(),
    ))
}

/// `GET /openapi.json`.
pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    warp::path!("openapi.json")
        .and(endpoint(ctx.clone(), Method::GET, "/openapi.json"))
        .map(openapi_json)
        .boxed()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "probes",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
fn openapi_json(call: Call) -> Response {
    static DOCUMENT: LazyLock<String> = LazyLock::new(document_json);
    let result = call.principal().and_then(|p| p.require_service());
    let response = result.map(|()| {
        let mut response = Response::new(DOCUMENT.as_str().into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        *response.status_mut() = StatusCode::OK;
        response
    });
    call.respond_with(response)
}
