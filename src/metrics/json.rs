//! `/metrics/json`: the same figures as the text exposition, parsed from it so the two can
//! never disagree.

use serde_json::{Map, Value, json};

/// Turns Prometheus text into `{"metrics": [{"name", "type", "help", "samples": [{"name",
/// "labels", "value"}]}]}`.
pub fn text_to_json(text: &str) -> Value {
    let mut families: Vec<Map<String, Value>> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let mut family = Map::new();
            family.insert("name".into(), json!(name));
            family.insert("help".into(), json!(help));
            family.insert("samples".into(), json!([]));
            families.push(family);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let (Some(family), Some((_, kind))) = (families.last_mut(), rest.split_once(' ')) {
                family.insert("type".into(), json!(kind));
            }
        } else if !line.starts_with('#')
            && !line.trim().is_empty()
            && let Some(sample) = parse_sample(line)
            && let Some(Value::Array(samples)) =
                families.last_mut().and_then(|f| f.get_mut("samples"))
        {
            samples.push(sample);
        }
    }
    json!({ "metrics": families })
}

fn parse_sample(line: &str) -> Option<Value> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Map::new(), rest)
        }
    };
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => json!("+Inf"),
        "-Inf" => json!("-Inf"),
        "NaN" => json!("NaN"),
        number => json!(number.parse::<f64>().ok()?),
    };
    Some(json!({ "name": name, "labels": labels, "value": value }))
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after the closing brace.
fn parse_labels(text: &str) -> Option<(Map<String, Value>, &str)> {
    let mut labels = Map::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key.to_string(), Value::String(value));
        rest = &after_key[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_families_labels_and_escapes() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"uote\"} 3\n# HELP b Gauge.\n# TYPE b gauge\nb 2.5\n# EOF\n";
        let value = text_to_json(text);
        let metrics = value["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0]["type"], "counter");
        assert_eq!(metrics[0]["samples"][0]["labels"]["y"], "q\"uote");
        assert_eq!(metrics[0]["samples"][0]["value"], 3.0);
        assert_eq!(metrics[1]["samples"][0]["value"], 2.5);
    }

    #[test]
    fn real_registry_round_trips() {
        let metrics = super::super::Metrics::new();
        metrics.seed_prompt_series();
        metrics.observe_http(
            "GET",
            "/api/users/:userId",
            200,
            std::time::Duration::from_millis(3),
        );
        let value = text_to_json(&metrics.render_text());
        let names: Vec<&str> = value["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        for expected in [
            "polydev_total_users",
            "polydev_prompts",
            "mc_http_request_duration_seconds",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
    }
}
