//! Durability: the daemon is SIGKILLed while clients create users. Every user whose creation
//! was answered 201 must be in the store when it is reopened, and the file must open cleanly.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use master_controller::store::Store;
use master_controller::users::UserService;
use support::{ADMIN_TOKEN, SERVICE_TOKEN};

fn spawn_daemon(data_dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_master-controller"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env_clear()
        .env("MC_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("MC_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("MC_RATE_LIMIT_PER_SECOND", "100000")
        .env("MC_RATE_LIMIT_BURST", "100000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn daemon")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_user_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();

    for round in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let mut child = spawn_daemon(dir.path(), port);
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&client, &base).await;

        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let client = client.clone();
                let base = base.clone();
                let acknowledged = acknowledged.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        let body = format!(r#"{{"email":"r{round}w{writer}n{n}@example.com"}}"#);
                        let sent = client
                            .post(format!("{base}/api/users"))
                            .bearer_auth(SERVICE_TOKEN)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        let Ok(response) = sent else { break };
                        if response.status().as_u16() != 201 {
                            break;
                        }
                        let Ok(json) = response.json::<serde_json::Value>().await else {
                            break;
                        };
                        if let Some(id) = json["userId"].as_str() {
                            acknowledged.lock().expect("lock").push(id.to_string());
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        for writer in writers {
            writer.await.expect("writer task");
        }
    }

    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() > 30,
        "too few writes to prove anything: {}",
        acknowledged.len()
    );
    let store = Store::open(dir.path())
        .await
        .expect("state file reopens after SIGKILL");
    let users = UserService::new(store);
    let mut missing = Vec::new();
    for id in &acknowledged {
        if users.get(id).await.is_err() {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged users lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
    let listed = users.list(1, 200).await.expect("list");
    assert!(listed.total >= acknowledged.len() as u64);
    eprintln!(
        "{} acknowledged users, all present after 3 SIGKILLs",
        acknowledged.len()
    );
}
