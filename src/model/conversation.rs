use serde::{Deserialize, Serialize};

use crate::providers::Provider;
use crate::store::Record;

/// The most characters of the first prompt a conversation keeps as its title.
pub const TITLE_CHARS: usize = 80;

/// A conversation: the turns one user has with one CLI, carried from turn to turn by the CLI's
/// own session (`cli_session_id`), which lives on one VM and is found there by its directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub user_id: String,
    pub provider: Provider,
    /// The CLI's own session id, learned after the first turn ran.
    pub cli_session_id: Option<String>,
    /// Relative to the workspace root ("" is the root). Every turn runs here: Claude Code and
    /// Gemini CLI find a session by the directory it was started in.
    pub cwd: String,
    /// The VM the CLI session lives on; on another VM the session is gone.
    pub vm_id: Option<String>,
    /// The start of the first prompt (see [`title_of`]).
    pub title: String,
    pub turns: u32,
    pub created_at_ms: i64,
    pub last_activity_ms: i64,
    /// The CLI session is known to be gone; the next turn starts a new one.
    pub expired: bool,
    pub version: u64,
}

impl Record for Conversation {
    const KIND: &'static str = "conversation";
    const VERSION: u16 = 1;
}

/// A conversation's title: the first prompt with its runs of whitespace made single spaces,
/// cut at [`TITLE_CHARS`] characters (on a character boundary, ending in `…` when cut).
pub fn title_of(prompt: &str) -> String {
    let words = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.chars().count() <= TITLE_CHARS {
        return words;
    }
    let mut title: String = words.chars().take(TITLE_CHARS - 1).collect();
    title.push('…');
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_is_cut_on_a_character_boundary() {
        assert_eq!(title_of("  fix\n the   build "), "fix the build");
        let long = "é".repeat(200);
        let title = title_of(&long);
        assert_eq!(title.chars().count(), TITLE_CHARS);
        assert!(title.ends_with('…'));
        assert_eq!(title_of(&"x".repeat(TITLE_CHARS)).len(), TITLE_CHARS);
    }
}
