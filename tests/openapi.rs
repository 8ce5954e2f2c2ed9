//! The OpenAPI document against the daemon: every route built has a document entry and every
//! entry a route; `/openapi.json` is what `master-controller openapi` writes and what
//! `appliance/openapi.json` holds, and it validates as OpenAPI 3.1; and schemathesis (from
//! PyPI, pinned by scripts/install-schemathesis.sh) fuzzes a live daemon with it
//! (`tests/openapi/fuzz.rs`).

mod support;

#[path = "openapi/fuzz.rs"]
mod fuzz;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

/// `(path, method)` of every operation in `doc`, the path in OpenAPI's `{name}` style.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (path.clone(), m.to_string()))
        })
        .collect()
}

/// The route template `/api/vms/:vmId` in OpenAPI's style, `/api/vms/{vmId}`; a tail
/// (`/files/*path`) is a parameter too, its `/` percent-encoded.
fn openapi_path(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment.strip_prefix([':', '*']) {
            Some(name) => format!("{{{name}}}"),
            None => segment.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_has_a_document_entry_and_every_entry_a_route() {
    let d = TestDaemon::start().await;
    let built: BTreeSet<(String, String)> = d
        .ctx
        .routes
        .entries()
        .into_iter()
        .map(|(template, method)| (openapi_path(template), method.to_lowercase()))
        .collect();
    let doc: Value = serde_json::from_str(&master_controller::api::openapi::document_json())
        .expect("the document is JSON");
    let documented = documented(&doc);
    let undocumented: Vec<_> = built.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&built).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes without a document entry: {undocumented:#?}\n\
         document entries without a route: {unrouted:#?}"
    );
    assert!(
        built.len() > 50,
        "only {} routes were recorded",
        built.len()
    );
    support::report(&format!(
        "openapi: {} operations, each routed and documented",
        built.len()
    ));

    // Operation ids name operations for clients' generated code: unique, and present.
    let mut ids = BTreeSet::new();
    for (path, method) in &documented {
        let id = doc["paths"][path][method]["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
    }
    d.shutdown().await;
}

#[tokio::test]
async fn openapi_json_is_served_to_the_admin_and_service_tokens_only() {
    let d = TestDaemon::start().await;
    let user = d.create_user("openapi@example.com").await;
    let minted = d
        .call(
            "POST",
            &format!("/api/users/{user}/tokens"),
            Some(ADMIN_TOKEN),
            Some("{}"),
        )
        .await;
    let user_token = minted.json["token"]
        .as_str()
        .expect("a user token")
        .to_string();
    for (token, status) in [
        (None, 401),
        (Some(user_token.as_str()), 403),
        (Some(SERVICE_TOKEN), 200),
        (Some(ADMIN_TOKEN), 200),
    ] {
        let reply = d.call("GET", "/openapi.json", token, None).await;
        assert_eq!(reply.status, status, "{token:?}: {:?}", reply.json);
        if status == 200 {
            let expected: Value =
                serde_json::from_str(&master_controller::api::openapi::document_json())
                    .expect("the document is JSON");
            assert_eq!(reply.json, expected);
        }
    }
    d.shutdown().await;
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_shipped_document_is_the_generated_one() {
    let shipped = std::fs::read_to_string(repo("appliance/openapi.json"))
        .expect("appliance/openapi.json is in the repository");
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_master-controller"))
        .arg("openapi")
        .output()
        .expect("run master-controller openapi");
    assert!(generated.status.success(), "{generated:?}");
    assert!(
        shipped == String::from_utf8_lossy(&generated.stdout),
        "appliance/openapi.json is stale: run \
         `cargo run -- openapi --output appliance/openapi.json`"
    );
}

#[test]
fn the_document_validates_as_openapi_3_1() {
    let doc: Value = serde_json::from_str(&master_controller::api::openapi::document_json())
        .expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // Every schema is a JSON Schema 2020-12 schema, the dialect of OpenAPI 3.1.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(!schemas.is_empty());
    for (name, schema) in schemas {
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            panic!("components.schemas.{name} is not JSON Schema 2020-12: {e}");
        }
    }
    // The document against the OpenAPI 3.1 schema (spec.openapis.org/oas/3.1/schema/2022-10-07),
    // as the pinned schemathesis carries it.
    let Some(st) = fuzz::schemathesis() else {
        return;
    };
    let python = st.with_file_name("python3");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), doc.to_string()).expect("write the document");
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(
            "import json, sys\n\
             from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR\n\
             errors = list(OPENAPI_31_VALIDATOR.iter_errors(json.load(open(sys.argv[1]))))\n\
             for e in errors: print(list(e.absolute_path), e.message)\n\
             print(f'{len(errors)} errors')\n\
             sys.exit(1 if errors else 0)",
        )
        .arg(file.path())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the document is not valid OpenAPI 3.1:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    support::report(&format!("openapi: OpenAPI 3.1 schema: {}", stdout.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_nonconforming_response() {
    let Some(st) = fuzz::schemathesis() else {
        return;
    };
    fuzz::fuzz_a_live_daemon(&st).await;
}
