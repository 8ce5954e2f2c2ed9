//! The egress cases, in order: each builds on the VMs and users the earlier ones left.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::daemon_proc::{SERVICE_TOKEN, processes_naming};
use crate::support::internet::{BYPASSED_SITE, HOST_SIDE, SITE, SITE_PORT};
use crate::support::vmhost::tap_binding;
use crate::world::{GATEWAY, GATEWAY_PORT, PORTS, World, assert_no_secret, metric};

fn site(path: &str) -> String {
    format!("http://{SITE}:{SITE_PORT}{path}")
}

/// Requests in the upstream's log on `port` that mention `needle`.
fn logged(world: &World, port: u16, needle: &str) -> usize {
    world
        .internet
        .upstream_requests(port)
        .iter()
        .filter(|r| r.contains(needle))
        .count()
}

pub async fn each_user_leaves_through_their_port(world: &mut World) {
    world.new_user("a").await;
    world.new_user("b").await;
    for name in ["a", "b"] {
        let (status, vm) = world.create_vm(name).await;
        assert_eq!(status, 201, "{vm:?}\n{}", world.daemon.log_tail());
    }
    let port_a = world.port_of("a").await.expect("a's port");
    let port_b = world.port_of("b").await.expect("b's port");
    assert_eq!((port_a, port_b), (PORTS[0], PORTS[1]), "leased in order");

    for (name, port, other) in [("a", port_a, port_b), ("b", port_b, port_a)] {
        let user = world.user(name);
        let path = format!("/plain/{user}");
        let (code, body) = world.get_via_gateway(name, &site(&path)).await;
        assert_eq!(code, 0, "{body}");
        assert!(body.contains(&format!("GET {path} ")), "{body}");
        assert_eq!(logged(world, port, &path), 1, "{name}: not on its port");
        assert_eq!(logged(world, other, &path), 0, "{name}: on another port");

        let path = format!("/tunnel/{user}");
        let target = format!("{SITE}:{SITE_PORT}");
        let before = logged(world, port, &format!("CONNECT {target}"));
        let (_, body) = world.tunnel_via_gateway(name, &target, &path).await;
        assert!(body.contains("200 Connection established"), "{body}");
        assert!(body.contains(&format!("GET {path} HTTP/1.0")), "{body}");
        assert_eq!(
            logged(world, port, &format!("CONNECT {target}")),
            before + 1,
            "{name}'s tunnel not on its port"
        );
    }
    for name in ["a", "b"] {
        let (_, body) = world
            .tunnel_via_gateway(name, &format!("{SITE}:{SITE_PORT}"), "/count")
            .await;
        assert!(body.contains("200"), "{body}");
    }
    assert_eq!(
        logged(world, port_a, "CONNECT") + logged(world, port_b, "CONNECT"),
        4,
        "every tunnel went upstream once"
    );
    let metrics = world.metrics().await;
    assert_eq!(metric(&metrics, "polydev_decodo_ports_used "), Some(2.0));
    for name in ["a", "b"] {
        let series = format!(
            "polydev_egress_connections_total{{user_id=\"{}\",route=\"upstream\"}}",
            world.user(name)
        );
        assert_eq!(metric(&metrics, &series), Some(3.0), "{series}\n{metrics}");
        let series = format!(
            "polydev_egress_bytes_total{{user_id=\"{}\",direction=\"to_guest\"}}",
            world.user(name)
        );
        assert!(metric(&metrics, &series).unwrap_or(0.0) > 100.0, "{series}");
    }
}

pub async fn the_guest_never_sees_the_password(world: &mut World) {
    // The CLIs' own environment: a prompt runs the image's scripted claude, which writes its
    // environment down.
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/api/prompts/execute",
            crate::support::daemon_proc::LISTEN
        ))
        .bearer_auth(SERVICE_TOKEN)
        .json(&serde_json::json!({"userId": world.user("a"), "provider": "claude_code", "prompt": "hi"}))
        .send()
        .await
        .expect("execute");
    let frames = crate::support::sse::SseStream::new(response)
        .collect()
        .await;
    assert_eq!(frames.last().map(|f| f.kind()), Some("done"), "{frames:?}");
    let (code, env) = world.sh("a", "cat /tmp/scripted-claude.env").await;
    assert_eq!(code, 0, "{env}");
    let proxy = format!("http://{GATEWAY}:{GATEWAY_PORT}");
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        assert!(env.contains(&format!("{name}={proxy}\n")), "{name}: {env}");
    }
    assert!(env.contains("NO_PROXY="), "{env}");
    assert_no_secret("the CLI's environment", &env);

    // Every process's environment, and every file the agent can read outside /proc and /sys.
    let (_, environs) = world
        .sh("a", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'")
        .await;
    assert!(environs.contains("PATH="), "the environments were read");
    assert_no_secret("a guest process environment", &environs);
    for secret in crate::world::secret_forms() {
        let (code, found) = world
            .sh(
                "a",
                &format!(
                    "grep -rlF '{secret}' / --exclude-dir=proc --exclude-dir=sys \
                     --exclude-dir=dev 2>/dev/null; echo done"
                ),
            )
            .await;
        assert_eq!(code, 0);
        assert_eq!(
            found.trim(),
            "done",
            "files holding the credentials: {found}"
        );
    }

    // Answers: the site echoes every header it received, through the upstream and direct;
    // a dead upstream port's error page reaches the guest too.
    let (_, upstream) = world.get_via_gateway("a", &site("/headers")).await;
    assert!(upstream.contains("GET /headers"), "{upstream}");
    assert_no_secret("an answer through the upstream", &upstream);
    let (_, direct) = world
        .get_via_gateway("a", &format!("http://{BYPASSED_SITE}:{SITE_PORT}/headers"))
        .await;
    assert!(direct.contains("GET /headers"), "{direct}");
    assert_no_secret("a direct answer", &direct);
    let (_, tunnel) = world
        .tunnel_via_gateway("a", &format!("{SITE}:{SITE_PORT}"), "/headers")
        .await;
    assert!(tunnel.contains("GET /headers"), "{tunnel}");
    assert_no_secret("a tunnel's answer", &tunnel);
    world.internet.stop_upstream(PORTS[1]);
    let (code, refused) = world
        .sh(
            "b",
            &format!(
                "printf 'GET {} HTTP/1.1\\r\\nHost: {SITE}\\r\\n\\r\\n' | nc {GATEWAY} {GATEWAY_PORT}",
                site("/dead")
            ),
        )
        .await;
    assert_eq!(code, 0, "{refused}");
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    assert_no_secret("the gateway's error answer", &refused);
    world.internet.start_upstream(PORTS[1]);

    let log = std::fs::read_to_string(world.daemon.data_dir.join("daemon.log")).unwrap_or_default();
    assert!(!log.is_empty());
    assert_no_secret("the daemon's log", &log);
}

pub async fn an_unknown_source_is_refused(world: &mut World) {
    // This namespace's own address on the bridge is no VM's.
    let gateway: SocketAddr = format!("{GATEWAY}:{GATEWAY_PORT}").parse().expect("addr");
    let request = format!("GET {} HTTP/1.1\r\nHost: {SITE}\r\n\r\n", site("/stranger"));
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&gateway, Duration::from_secs(5))
            .expect("connect to the gateway");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    for port in PORTS {
        assert_eq!(logged(world, port, "/stranger"), 0);
    }
    let metrics = world.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "polydev_egress_refused_total{reason=\"unknown_source\"}"
        ),
        Some(1.0)
    );
}

pub async fn a_bypassed_host_goes_direct(world: &mut World) {
    let user = world.user("a");
    let path = format!("/bypass/{user}");
    let (code, body) = world
        .get_via_gateway("a", &format!("http://{BYPASSED_SITE}:{SITE_PORT}{path}"))
        .await;
    assert_eq!(code, 0, "{body}");
    // The site saw the host's own address: the gateway connected itself, not the upstream.
    assert!(
        body.contains(&format!("\r\n\r\npeer={HOST_SIDE}\n")),
        "{body}"
    );
    assert!(
        body.contains(&format!("GET {path} HTTP/1.1")),
        "origin-form: {body}"
    );
    let target = format!("{BYPASSED_SITE}:{SITE_PORT}");
    let (_, tunnel) = world.tunnel_via_gateway("a", &target, &path).await;
    assert!(tunnel.contains(&format!("peer={HOST_SIDE}")), "{tunnel}");
    for port in PORTS {
        assert_eq!(logged(world, port, BYPASSED_SITE), 0, "port {port} saw it");
    }
    let series = format!("polydev_egress_connections_total{{user_id=\"{user}\",route=\"direct\"}}");
    assert!(metric(&world.metrics().await, &series).unwrap_or(0.0) >= 2.0);
}

pub async fn strict_mode_leaves_only_the_gateway(world: &mut World) {
    // Without strict mode a guest may also leave directly (NAT): the strict check below can fail.
    let answer = world.get_direct("a", SITE, SITE_PORT, "/direct").await;
    assert!(
        answer.contains(&format!("peer={HOST_SIDE}\n")),
        "a direct request should work without strict mode: {answer}"
    );

    world.setup_network(true);
    let answer = world.get_direct("a", SITE, SITE_PORT, "/direct").await;
    assert!(
        !answer.contains("200 OK"),
        "strict mode let a direct request out: {answer}"
    );
    let (code, body) = world.get_via_gateway("a", &site("/strict")).await;
    assert_eq!(code, 0, "the gateway must still work: {body}");
    assert!(body.contains("GET /strict "), "{body}");
    assert_eq!(logged(world, PORTS[0], "/strict"), 1);

    // Nothing else on the host: a service on the bridge address that the host itself reaches.
    let listener = std::net::TcpListener::bind((GATEWAY, 8099)).expect("bind a host service");
    let serve = std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost service\n");
        }
    });
    let from_host = tokio::task::spawn_blocking(|| {
        let mut stream = TcpStream::connect((GATEWAY, 8099)).expect("the host reaches it");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("join");
    assert!(from_host.contains("host service"), "{from_host}");
    serve.join().expect("join");
    let listener = std::net::TcpListener::bind((GATEWAY, 8099)).expect("bind again");
    listener.set_nonblocking(true).expect("nonblocking");
    let answer = world.get_direct("a", GATEWAY, 8099, "/").await;
    assert!(!answer.contains("host service"), "{answer}");
    assert!(
        listener.accept().is_err(),
        "a guest connection reached the host service"
    );
}

pub async fn ports_belong_to_users(world: &mut World) {
    let port_a = world.port_of("a").await.expect("a's port");
    // The taps' bindings (`spoofing`) follow them: gone with the tap, laid again before the
    // guest runs, kept across a restart.
    let tap_a = master_controller::net::tap_name(&world.vms["a"]);
    let bound_to_a =
        |ip: std::net::Ipv4Addr| tap_binding(&tap_a).contains(&format!("ip saddr {ip} accept"));
    let ip_a = world.ip_of("a").await;
    assert!(bound_to_a(ip_a), "{}", tap_binding(&tap_a));
    world.vm_action("a", "hibernate").await;
    assert!(
        tap_binding(&tap_a).is_empty(),
        "the binding outlived the tap"
    );
    world.vm_action("a", "resume").await;
    assert_eq!(world.port_of("a").await, Some(port_a), "after resume");
    assert!(bound_to_a(world.ip_of("a").await), "after resume");
    let (code, body) = world.get_via_gateway("a", &site("/resumed")).await;
    assert_eq!(code, 0, "{body}");
    assert_eq!(logged(world, port_a, "/resumed"), 1);

    world.daemon.stop().await;
    world.daemon.start(&[]).await;
    assert_eq!(world.port_of("a").await, Some(port_a), "after a restart");
    assert!(bound_to_a(world.ip_of("a").await), "after a restart");
    let (code, body) = world.get_via_gateway("a", &site("/restarted")).await;
    assert_eq!(code, 0, "{body}");
    assert_eq!(logged(world, port_a, "/restarted"), 1);

    // Two ports, both leased: a third user's first VM is refused before anything is made.
    world.new_user("c").await;
    let (status, error) = world.create_vm("c").await;
    assert_eq!(status, 503, "{error:?}");
    assert_eq!(error["error"]["code"], "proxy_port_pool_exhausted");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{}–{}", PORTS[0], PORTS[1])),
        "{message}"
    );
    assert_eq!(world.port_of("c").await, None);

    // Deleting b frees b's port, and c's VM gets it.
    let port_b = world.port_of("b").await.expect("b's port");
    let vm_b = world.vms["b"].clone();
    let reply = world
        .daemon
        .call(
            "DELETE",
            &format!("/api/users/{}", world.user("b")),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(
        processes_naming(&format!("/vms/{vm_b}/")).is_empty(),
        "b's VM left running"
    );
    assert!(tap_binding(&master_controller::net::tap_name(&vm_b)).is_empty());
    let pool = world.proxy_ports().await;
    assert_eq!(pool["used"], 1, "{pool}");
    assert_eq!(pool["ports"][0]["port"], port_a, "{pool}");
    let (status, vm) = world.create_vm("c").await;
    assert_eq!(status, 201, "{vm:?}");
    assert_eq!(world.port_of("c").await, Some(port_b));
    let (code, body) = world.get_via_gateway("c", &site("/reused")).await;
    assert_eq!(code, 0, "{body}");
    assert_eq!(logged(world, port_b, "/reused"), 1);
}

/// Runs the health job now; answers its record.
async fn run_proxy_health(world: &World) -> crate::support::daemon_proc::Reply {
    world
        .daemon
        .call(
            "POST",
            "/api/admin/tasks/proxy_health/run",
            crate::support::daemon_proc::ADMIN_TOKEN,
            None,
        )
        .await
}

pub async fn a_dead_port_is_unhealthy(world: &mut World) {
    let run = run_proxy_health(world).await;
    assert_eq!(run.status, 200, "{:?}", run.json);
    assert_eq!(run.json["run"]["outcome"], "ok", "{:?}", run.json);
    let pool = world.proxy_ports().await;
    for port in pool["ports"].as_array().expect("ports") {
        assert_eq!(port["health"]["healthy"], true, "{port}");
        // The echo service saw the upstream's own address: the check went through the port.
        assert_eq!(
            port["health"]["externalIp"],
            crate::support::internet::UPSTREAM_HOST,
            "{port}"
        );
    }

    let dead = world.port_of("c").await.expect("c's port");
    world.internet.stop_upstream(dead);
    let run = run_proxy_health(world).await;
    assert_eq!(run.json["run"]["outcome"], "failed", "{:?}", run.json);
    let pool = world.proxy_ports().await;
    assert_eq!(pool["unhealthy"], 1, "{pool}");
    for port in pool["ports"].as_array().expect("ports") {
        let healthy = port["port"] != dead;
        assert_eq!(port["health"]["healthy"], healthy, "{port}");
        if !healthy {
            let error = port["health"]["error"].as_str().unwrap_or_default();
            assert!(error.contains("cannot connect"), "{error}");
            assert_no_secret("a health error", error);
        }
    }
    let metrics = world.metrics().await;
    for (port, healthy) in [(world.port_of("a").await.expect("a"), 1.0), (dead, 0.0)] {
        assert_eq!(
            metric(
                &metrics,
                &format!("polydev_decodo_port_healthy{{port=\"{port}\"}}")
            ),
            Some(healthy),
            "{metrics}"
        );
    }
}
