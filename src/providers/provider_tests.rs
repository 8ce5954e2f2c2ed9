//! The handle keeps the enum's names, order and stored bytes. The bytes and messages below were
//! taken from the derived `Provider` enum before it was replaced.

use super::*;

fn bincode_bytes(provider: Provider) -> Vec<u8> {
    bincode::serde::encode_to_vec(provider, bincode::config::standard()).unwrap()
}

fn from_bincode(bytes: &[u8]) -> Result<Provider, String> {
    bincode::serde::decode_from_slice::<Provider, _>(bytes, bincode::config::standard())
        .map(|(provider, _)| provider)
        .map_err(|e| e.to_string())
}

#[test]
fn stored_and_json_forms_are_the_enums() {
    for (provider, bytes, json) in [
        (CLAUDE_CODE, [0u8], "\"claude_code\""),
        (CODEX, [1], "\"codex\""),
        (GEMINI_CLI, [2], "\"gemini_cli\""),
    ] {
        assert_eq!(bincode_bytes(provider), bytes, "{provider}");
        assert_eq!(from_bincode(&bytes), Ok(provider));
        assert_eq!(serde_json::to_string(&provider).unwrap(), json);
        assert_eq!(serde_json::from_str::<Provider>(json).unwrap(), provider);
    }
    // A map key, as in the prompts-by-provider counts.
    let counts = std::collections::BTreeMap::from([(CODEX, 1)]);
    assert_eq!(serde_json::to_string(&counts).unwrap(), r#"{"codex":1}"#);
}

#[test]
fn unknown_values_fail_as_the_enums_did() {
    // With the three of every build first: `claude_code`, `codex`, `gemini_cli`.
    let expected: Vec<String> = names().iter().map(|n| format!("`{n}`")).collect();
    assert!(
        expected
            .join(", ")
            .starts_with("`claude_code`, `codex`, `gemini_cli`")
    );
    assert_eq!(
        serde_json::from_str::<Provider>("\"nope\"")
            .unwrap_err()
            .to_string(),
        format!(
            "unknown variant `nope`, expected one of {} at line 1 column 6",
            expected.join(", ")
        )
    );
    assert!(serde_json::from_str::<Provider>("1").is_err());
    assert_eq!(
        serde_json::from_str::<Provider>(r#"{"codex":null}"#).unwrap(),
        CODEX
    );
    assert_eq!(
        serde_json::from_str::<Provider>(r#"{"codex":1}"#)
            .unwrap_err()
            .to_string(),
        "invalid type: integer `1`, expected unit at line 1 column 10"
    );
    assert_eq!(
        from_bincode(&[7]).unwrap_err(),
        format!(
            "OtherString(\"invalid value: integer `7`, expected variant index 0 <= i < {}\")",
            all().len()
        )
    );
}

#[test]
fn names_order_and_parse_errors_are_the_enums() {
    let listed: Vec<&str> = all().map(Provider::as_str).collect();
    assert_eq!(listed[..3], ["claude_code", "codex", "gemini_cli"]);
    assert!(CLAUDE_CODE < CODEX && CODEX < GEMINI_CLI);
    for provider in all() {
        assert_eq!(provider.as_str().parse::<Provider>(), Ok(provider));
        assert_eq!(provider.to_string(), provider.as_str());
        assert_eq!(by_name(provider.as_str()), Some(provider));
    }
    assert_eq!(
        "nope".parse::<Provider>().unwrap_err().to_string(),
        format!(
            "unknown provider \"nope\"; expected one of: {}",
            listed.join(", ")
        )
    );
    assert!(
        listed
            .join(", ")
            .starts_with("claude_code, codex, gemini_cli")
    );
}

#[test]
fn short_names_are_for_the_bypass_list_only() {
    assert_eq!(named("claude"), Some(CLAUDE_CODE));
    assert_eq!(named("gemini"), Some(GEMINI_CLI));
    assert_eq!(named("codex"), Some(CODEX));
    assert_eq!(named("gemini_cli"), Some(GEMINI_CLI));
    assert_eq!(by_name("claude"), None);
    assert!("claude".parse::<Provider>().is_err());
}

#[test]
fn the_command_and_login_run_in_the_given_home() {
    let invocation = Invocation {
        prompt: "hi",
        model: None,
        home: "/home/u",
        cwd: "/home/u",
        resume: None,
        endpoint: None,
    };
    for provider in all() {
        assert_eq!(provider.command(&invocation).env["HOME"], "/home/u");
        assert_eq!(provider.login_command("/tmp/l").env["HOME"], "/tmp/l");
        let path = provider.credential_path("/home/u/");
        assert!(
            path.starts_with("/home/u/") && !path.contains("//"),
            "{path}"
        );
    }
}
