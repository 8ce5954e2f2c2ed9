//! A prompt in a real guest: the test image's scripted `claude` (the real CLIs are too heavy for
//! it; they are tested with the agent on the host) runs through the daemon's whole path.

use serde_json::json;

use crate::support::daemon_proc::SERVICE_TOKEN;
use crate::world::{World, destroy};

pub async fn a_prompt_resumes_the_vm_and_streams(world: &mut World) {
    let user = world.new_user().await;
    let vm = world.create_vm(&user).await;
    let (status, _) = world.user_vm(&user, "hibernate", "POST").await;
    assert_eq!(status, 200);

    let frames = world
        .daemon
        .execute_prompt(json!({"userId": user, "provider": "claude_code", "prompt": "hi"}))
        .await;
    let kinds: Vec<String> = frames
        .iter()
        .map(|f| match f.data["kind"].as_str() {
            Some(kind) => format!("{}:{kind}", f.kind()),
            None => f.kind().to_string(),
        })
        .collect();
    assert!(
        frames
            .iter()
            .any(|f| f.data["kind"] == "progress" && f.data["stage"] == "resuming_vm"),
        "{kinds:?}"
    );
    let text: String = frames
        .iter()
        .filter(|f| f.kind() == "content")
        .filter_map(|f| f.data["text"].as_str())
        .collect();
    assert_eq!(text, "Hello from a real guest.", "{kinds:?}");
    let contents = frames.iter().filter(|f| f.kind() == "content").count();
    assert_eq!(contents, 5, "streamed word by word");
    let done = frames.last().expect("frames");
    assert_eq!(done.kind(), "done", "{done:?}");
    assert_eq!(done.data["exitCode"], 0);
    let (_, resumed) = world.user_vm(&user, "", "GET").await;
    assert_eq!(resumed["status"], "running");
    assert_eq!(
        resumed["agent"]["bootId"], vm["agent"]["bootId"],
        "the same guest"
    );

    // Codex is not in the test image: a clear error, and the record says so.
    let frames = world
        .daemon
        .execute_prompt(json!({"userId": user, "provider": "codex", "prompt": "hi"}))
        .await;
    let last = frames.last().expect("frames");
    assert_eq!(last.kind(), "error", "{last:?}");
    assert_eq!(last.data["code"], "cli_not_found");
    let id = frames[0].data["promptId"].as_str().expect("promptId");
    let reply = world
        .daemon
        .call(
            "GET",
            &format!("/api/prompts/{id}/status"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(reply.json["status"], "failed");
    assert!(
        reply.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("codex")),
        "{:?}",
        reply.json
    );
    destroy(world, &user).await;
    world.assert_gone(&vm);
}
