//! What the daemon makes of a credential file, whichever CLI wrote it: how much of it is read,
//! and whether it can still be used. Where each CLI keeps its file and which fields count are
//! the CLI's own (`providers`).

use crate::model::{Provider, now_ms};

/// The most a credential file may weigh; real ones are a few KiB.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Whether a credential can be used, and why not.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub valid: bool,
    pub reason: &'static str,
    pub expires_at_ms: Option<i64>,
}

pub fn judge(provider: Provider, bytes: &[u8]) -> Verdict {
    match provider.cli().inspect_credential(bytes) {
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
    use crate::providers::{CLAUDE_CODE, CODEX, GEMINI_CLI};

    #[test]
    fn expiry_decides_validity_unless_a_refresh_token_is_there() {
        let past = now_ms() - 1000;
        let future = now_ms() + 3_600_000;
        let claude = |expires: i64, refresh: &str| {
            format!(
                r#"{{"claudeAiOauth":{{"accessToken":"a","refreshToken":"{refresh}","expiresAt":{expires}}}}}"#
            )
        };
        let ok = judge(CLAUDE_CODE, claude(future, "r").as_bytes());
        assert_eq!((ok.valid, ok.reason), (true, "ok"));
        let refreshable = judge(CLAUDE_CODE, claude(past, "r").as_bytes());
        assert_eq!(
            (refreshable.valid, refreshable.reason),
            (true, "access_token_expired_refreshable")
        );
        let expired = judge(CLAUDE_CODE, claude(past, "").as_bytes());
        assert_eq!((expired.valid, expired.reason), (false, "expired"));
        assert_eq!(expired.expires_at_ms, Some(past));
        let gemini = judge(
            GEMINI_CLI,
            format!(r#"{{"access_token":"a","expiry_date":{past}}}"#).as_bytes(),
        );
        assert_eq!((gemini.valid, gemini.reason), (false, "expired"));
        assert!(!judge(CODEX, b"garbage").valid);
    }
}
