//! A real Prometheus (Debian's `prometheus` package) for `tests/monitoring.rs`.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// Prometheus, killed when dropped (also when the test fails).
pub struct Prometheus {
    child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Prometheus {
    /// Prometheus on a free port of 127.0.0.1 with its data in a temporary directory, scraping
    /// `target` as the job `master-controller` every second with `token`, and loading `rules`.
    pub fn start(binary: &Path, target: &str, token: &str, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: master-controller\n    \
                 authorization: {{type: Bearer, credentials: {token}}}\n    \
                 static_configs: [{{targets: [{target:?}]}}]\n",
                rules = rules.display().to_string(),
            ),
        )
        .expect("write the config");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            base: format!("http://{listen}"),
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant query's result, `None` while Prometheus does not answer.
    pub async fn query(&self, client: &reqwest::Client, expr: &str) -> Option<Vec<Value>> {
        let reply: Value = client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert_eq!(reply["status"], "success", "{expr}: {reply}");
        reply["data"]["result"].as_array().cloned()
    }
}
