//! Hosts whose traffic leaves directly instead of through the upstream (some upstreams block
//! some vendors' endpoints). Entries are host names (`api.example.com`), domain suffixes
//! (`.example.com`, which also matches `example.com`), IP literals, or a provider's name
//! (`claude`, `codex`, `gemini`, or the API's `claude_code`, `gemini_cli`) for that CLI's endpoints,
//! which each CLI lists in its file in `providers`.

use std::fmt;

use crate::providers;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Host(String),
    /// Stored without its leading dot.
    Suffix(String),
}

/// The configured bypass list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bypass {
    entries: Vec<Entry>,
    /// As configured, for display.
    text: Vec<String>,
}

const MAX_ENTRIES: usize = 256;

impl Bypass {
    /// Parses a comma- or whitespace-separated list.
    pub fn parse(text: &str) -> Result<Bypass, String> {
        let mut bypass = Bypass::default();
        for item in text.split([',', ' ', '\n', '\t']).filter(|s| !s.is_empty()) {
            let item = item.to_ascii_lowercase();
            // A provider's name or short name stands for its CLI's endpoints.
            if let Some(provider) = providers::named(&item) {
                for host in provider.cli().endpoints() {
                    bypass.entries.push(entry(host)?);
                }
            } else {
                bypass.entries.push(entry(&item)?);
            }
            bypass.text.push(item);
        }
        if bypass.entries.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        Ok(bypass)
    }

    /// Whether `host` (a name or an IP literal, without port) goes direct.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.entries.iter().any(|entry| match entry {
            Entry::Host(h) => h == host,
            Entry::Suffix(s) => {
                host == s
                    || host
                        .strip_suffix(s.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            }
        })
    }
}

impl fmt::Display for Bypass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text.join(","))
    }
}

fn entry(item: &str) -> Result<Entry, String> {
    let (suffix, name) = match item.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, item),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    if !valid {
        return Err(format!(
            "{item:?} is not a host name, a .domain suffix, an IP address or {}",
            short_names()
        ));
    }
    Ok(if suffix {
        Entry::Suffix(name.to_string())
    } else {
        Entry::Host(name.to_string())
    })
}

/// The providers' shortest names, for the error message: `claude/codex/gemini`.
fn short_names() -> String {
    providers::all()
        .map(|p| p.cli().aliases().first().copied().unwrap_or(p.as_str()))
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_suffixes_addresses_and_providers() {
        let bypass = Bypass::parse("claude, .example.org 10.0.0.7,exact.example.com").unwrap();
        for direct in [
            "api.anthropic.com",
            "API.Anthropic.com.",
            "claude.ai",
            "example.org",
            "a.b.example.org",
            "10.0.0.7",
            "exact.example.com",
        ] {
            assert!(bypass.matches(direct), "{direct}");
        }
        for upstream in [
            "anthropic.com.evil.net",
            "notexample.org",
            "10.0.0.70",
            "www.exact.example.com",
            "api.openai.com",
        ] {
            assert!(!bypass.matches(upstream), "{upstream}");
        }
        assert_eq!(
            bypass.to_string(),
            "claude,.example.org,10.0.0.7,exact.example.com"
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        assert_eq!(Bypass::parse("").unwrap(), Bypass::default());
        for bad in ["http://x.com", "a/b", ".", "x y\u{0}"] {
            assert!(Bypass::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_refusal_names_the_providers_short_names() {
        let error = Bypass::parse("a/b").unwrap_err();
        assert!(
            error.contains("an IP address or claude/codex/gemini"),
            "{error}"
        );
    }
}
