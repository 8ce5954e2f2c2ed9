//! Each provider's credential file: where it lives, when it counts as written, and when it
//! expires. The fields differ per provider; the shapes are those the real CLIs write (see
//! `login/recorded/*-credentials.json` and friends).

use base64::Engine;
use serde_json::Value;

use crate::model::{Provider, now_ms};

/// The most a credential file may weigh; real ones are a few KiB.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The file's path relative to the CLI's HOME.
pub fn relative_path(provider: Provider) -> &'static str {
    match provider {
        Provider::ClaudeCode => ".claude/.credentials.json",
        Provider::Codex => ".codex/auth.json",
        Provider::GeminiCli => ".gemini/oauth_creds.json",
    }
}

pub fn path_in(provider: Provider, home: &str) -> String {
    format!("{}/{}", home.trim_end_matches('/'), relative_path(provider))
}

/// What a complete credential file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub expires_at_ms: Option<i64>,
    pub refreshable: bool,
}

/// Checks that the file parses and holds the fields the CLI needs. The error says which field
/// is missing, never a value.
pub fn inspect(provider: Provider, bytes: &[u8]) -> Result<Facts, String> {
    let json: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON (line {})", e.line()))?;
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .is_some()
    };
    match provider {
        Provider::ClaudeCode => {
            let oauth = json.get("claudeAiOauth").ok_or("no claudeAiOauth object")?;
            if !text(oauth, "accessToken") {
                return Err("claudeAiOauth.accessToken is missing".into());
            }
            Ok(Facts {
                // Milliseconds since the epoch, nested under claudeAiOauth.
                expires_at_ms: oauth.get("expiresAt").and_then(Value::as_i64),
                refreshable: text(oauth, "refreshToken"),
            })
        }
        Provider::Codex => {
            if text(&json, "OPENAI_API_KEY") {
                return Ok(Facts {
                    expires_at_ms: None,
                    refreshable: false,
                });
            }
            let tokens = json.get("tokens").ok_or("no tokens object")?;
            if !text(tokens, "access_token") {
                return Err("tokens.access_token is missing".into());
            }
            Ok(Facts {
                // The access token is a JWT; its `exp` claim is in seconds.
                expires_at_ms: tokens
                    .get("access_token")
                    .and_then(Value::as_str)
                    .and_then(jwt_expiry_ms),
                refreshable: text(tokens, "refresh_token"),
            })
        }
        Provider::GeminiCli => {
            if !text(&json, "access_token") && !text(&json, "refresh_token") {
                return Err("neither access_token nor refresh_token is present".into());
            }
            Ok(Facts {
                // Google's `expiry_date`, milliseconds since the epoch.
                expires_at_ms: json.get("expiry_date").and_then(Value::as_i64),
                refreshable: text(&json, "refresh_token"),
            })
        }
    }
}

fn jwt_expiry_ms(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()?.checked_mul(1000)
}

/// Whether a credential can be used, and why not.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub valid: bool,
    pub reason: &'static str,
    pub expires_at_ms: Option<i64>,
}

pub fn judge(provider: Provider, bytes: &[u8]) -> Verdict {
    match inspect(provider, bytes) {
        Err(_) => Verdict {
            valid: false,
            reason: "unreadable",
            expires_at_ms: None,
        },
        Ok(facts) => {
            let expired = facts.expires_at_ms.is_some_and(|at| at <= now_ms());
            let (valid, reason) = match (expired, facts.refreshable) {
                (false, _) => (true, "ok"),
                // The CLI refreshes on its next run, and the refresh is captured back.
                (true, true) => (true, "access_token_expired_refreshable"),
                (true, false) => (false, "expired"),
            };
            Verdict {
                valid,
                reason,
                expires_at_ms: facts.expires_at_ms,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_files_are_complete_with_their_expiry() {
        let claude = inspect(
            Provider::ClaudeCode,
            include_bytes!("login/recorded/claude-credentials.json"),
        )
        .unwrap();
        assert_eq!(claude.expires_at_ms, Some(1_795_786_056_788));
        assert!(claude.refreshable);
        let codex = inspect(
            Provider::Codex,
            include_bytes!("login/recorded/codex-auth.json"),
        )
        .unwrap();
        // The recorded id/access token carries exp = 4102444800 (2100-01-01).
        assert_eq!(codex.expires_at_ms, Some(4_102_444_800_000));
        assert!(codex.refreshable);
        let gemini = inspect(
            Provider::GeminiCli,
            include_bytes!("login/recorded/gemini-oauth-creds.json"),
        )
        .unwrap();
        assert_eq!(gemini.expires_at_ms, Some(1_795_760_645_065));
    }

    #[test]
    fn incomplete_files_do_not_count_as_written() {
        assert!(inspect(Provider::ClaudeCode, b"{\"claudeAiOauth\":{").is_err());
        assert!(
            inspect(
                Provider::ClaudeCode,
                b"{\"claudeAiOauth\":{\"accessToken\":\"\"}}"
            )
            .is_err()
        );
        assert!(
            inspect(
                Provider::Codex,
                b"{\"auth_mode\":\"chatgpt\",\"tokens\":{}}"
            )
            .is_err()
        );
        assert!(inspect(Provider::GeminiCli, b"{\"token_type\":\"Bearer\"}").is_err());
        let error = inspect(
            Provider::ClaudeCode,
            b"{\"claudeAiOauth\":{\"refreshToken\":\"secret-x\"}}",
        )
        .unwrap_err();
        assert!(!error.contains("secret-x"));
    }

    #[test]
    fn expiry_decides_validity_unless_a_refresh_token_is_there() {
        let past = now_ms() - 1000;
        let future = now_ms() + 3_600_000;
        let claude = |expires: i64, refresh: &str| {
            format!(
                r#"{{"claudeAiOauth":{{"accessToken":"a","refreshToken":"{refresh}","expiresAt":{expires}}}}}"#
            )
        };
        let ok = judge(Provider::ClaudeCode, claude(future, "r").as_bytes());
        assert_eq!((ok.valid, ok.reason), (true, "ok"));
        let refreshable = judge(Provider::ClaudeCode, claude(past, "r").as_bytes());
        assert_eq!(
            (refreshable.valid, refreshable.reason),
            (true, "access_token_expired_refreshable")
        );
        let expired = judge(Provider::ClaudeCode, claude(past, "").as_bytes());
        assert_eq!((expired.valid, expired.reason), (false, "expired"));
        assert_eq!(expired.expires_at_ms, Some(past));
        let gemini = judge(
            Provider::GeminiCli,
            format!(r#"{{"access_token":"a","expiry_date":{past}}}"#).as_bytes(),
        );
        assert_eq!((gemini.valid, gemini.reason), (false, "expired"));
        assert!(!judge(Provider::Codex, b"garbage").valid);
    }
}
