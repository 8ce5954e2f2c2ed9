//! `/metrics/json`: the same figures as the text exposition, parsed from it so the two can
//! never disagree.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// `{"metrics": [{"name", "type", "help", "samples": [{"name", "labels", "value"}]}]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricsJson {
    pub metrics: Vec<MetricFamily>,
}

/// A metric: its `# HELP` and `# TYPE` lines and its samples.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricFamily {
    pub name: String,
    pub help: String,
    /// `counter`, `gauge`, `histogram`, ...; absent when the text has no `# TYPE` line.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub kind: Option<String>,
    pub samples: Vec<MetricSample>,
}

/// One sample line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: SampleValue,
}

/// A number, or `+Inf`, `-Inf` or `NaN`, which JSON numbers cannot hold.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SampleValue {
    Number(f64),
    #[schema(value_type = String)]
    Special(&'static str),
}

/// Parses Prometheus text into [`MetricsJson`]. A sample before any `# HELP` line is left out.
pub fn parse_text(text: &str) -> MetricsJson {
    let mut families: Vec<MetricFamily> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.push(MetricFamily {
                name: name.to_string(),
                help: help.to_string(),
                kind: None,
                samples: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let (Some(family), Some((_, kind))) = (families.last_mut(), rest.split_once(' ')) {
                family.kind = Some(kind.to_string());
            }
        } else if !line.starts_with('#')
            && !line.trim().is_empty()
            && let Some(sample) = parse_sample(line)
            && let Some(family) = families.last_mut()
        {
            family.samples.push(sample);
        }
    }
    MetricsJson { metrics: families }
}

/// [`parse_text`] as a JSON value.
pub fn text_to_json(text: &str) -> Value {
    serde_json::to_value(parse_text(text)).unwrap_or(Value::Null)
}

fn parse_sample(line: &str) -> Option<MetricSample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => SampleValue::Special("+Inf"),
        "-Inf" => SampleValue::Special("-Inf"),
        "NaN" => SampleValue::Special("NaN"),
        number => match number.parse::<f64>().ok()? {
            n if n.is_finite() => SampleValue::Number(n),
            n if n.is_nan() => SampleValue::Special("NaN"),
            n if n > 0.0 => SampleValue::Special("+Inf"),
            _ => SampleValue::Special("-Inf"),
        },
    };
    Some(MetricSample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after the closing brace.
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
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
        labels.insert(key.to_string(), value);
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
