//! Firecracker's official API spec (swagger 2.0, copied into `tests/support/firecracker-api/`) as a request
//! validator: each body is checked against the schema of its path and method, with unknown
//! fields refused as Firecracker itself refuses them.

use std::path::PathBuf;

use serde_json::{Value, json};

pub struct ApiSpec {
    version: String,
    paths: Value,
    definitions: Value,
}

pub fn reference(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/support/firecracker-api/firecracker-api-v{version}.yaml"
    ))
}

/// Forbids properties a definition does not list (swagger leaves `additionalProperties` open,
/// but Firecracker's deserialisers deny unknown fields).
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for value in map.values_mut() {
                close_objects(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

impl ApiSpec {
    pub fn load(version: &str) -> ApiSpec {
        let path = reference(version);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let yaml: Value = serde_yaml_ng::from_str(&text).expect("spec parses");
        let mut definitions = yaml["definitions"].clone();
        close_objects(&mut definitions);
        ApiSpec {
            version: version.to_string(),
            paths: yaml["paths"].clone(),
            definitions,
        }
    }

    /// The spec's path template for a concrete path (`/drives/rootfs` → `/drives/{drive_id}`).
    fn template(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        self.paths
            .as_object()?
            .keys()
            .find(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
            })
            .cloned()
    }

    /// Checks a request against the spec; the error says what is wrong.
    pub fn validate(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(), String> {
        let template = self
            .template(path)
            .ok_or_else(|| format!("v{}: no path {path}", self.version))?;
        let operation = &self.paths[&template][method.to_ascii_lowercase()];
        if operation.is_null() {
            return Err(format!("v{}: {template} takes no {method}", self.version));
        }
        let body_parameter = operation["parameters"]
            .as_array()
            .and_then(|params| params.iter().find(|p| p["in"] == "body"));
        let (Some(parameter), Some(body)) = (body_parameter, body) else {
            return match (body_parameter, body) {
                (Some(p), None) if p["required"] == true => {
                    Err(format!("{method} {path} needs a body"))
                }
                (None, Some(_)) => Err(format!("{method} {path} takes no body")),
                _ => Ok(()),
            };
        };
        let mut schema = parameter["schema"].clone();
        close_objects(&mut schema);
        let document = json!({ "definitions": self.definitions, "allOf": [schema] });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .build(&document)
            .map_err(|e| format!("schema for {template}: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "v{} {method} {path}: {}",
                self.version,
                errors.join("; ")
            ))
        }
    }
}
