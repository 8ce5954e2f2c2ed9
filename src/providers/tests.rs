//! What the registry as a whole must keep: distinct names, and short names and credential
//! paths that no two CLIs share.

use std::collections::BTreeSet;

use super::*;

#[test]
fn names_short_names_and_files_are_distinct() {
    let mut names = BTreeSet::new();
    let mut files = BTreeSet::new();
    for provider in all() {
        let cli = provider.cli();
        for name in std::iter::once(cli.name()).chain(cli.aliases().iter().copied()) {
            assert!(names.insert(name), "{name} names two CLIs");
        }
        assert!(files.insert(cli.credential_file()), "{provider}");
        assert!(!cli.endpoints().is_empty(), "{provider}");
    }
}

#[test]
fn the_named_constants_are_their_registry_entries() {
    assert_eq!(CLAUDE_CODE.as_str(), "claude_code");
    assert_eq!(CODEX.as_str(), "codex");
    assert_eq!(GEMINI_CLI.as_str(), "gemini_cli");
    assert_eq!(
        all().take(3).collect::<Vec<_>>(),
        [CLAUDE_CODE, CODEX, GEMINI_CLI]
    );
}

#[test]
fn every_cli_keeps_its_sessions_and_resumes_by_id() {
    for provider in all() {
        let invocation = |resume| Invocation {
            prompt: "hi",
            model: None,
            home: "/home/u",
            cwd: "/work/p",
            resume,
            endpoint: None,
        };
        let new = provider.command(&invocation(None)).argv;
        for throwaway in ["--no-session-persistence", "--ephemeral"] {
            assert!(!new.iter().any(|a| a == throwaway), "{provider}: {new:?}");
        }
        assert!(!new.iter().any(|a| a == "S-1"), "{provider}: {new:?}");
        let resumed = provider.command(&invocation(Some("S-1"))).argv;
        assert!(
            resumed.iter().any(|a| a == "S-1"),
            "{provider}: {resumed:?}"
        );
        // Nothing said yet: no session.
        assert_eq!(provider.cli().translator(Some("S-1")).session_id(), None);
    }
}
