use super::*;

#[test]
fn sane_ids_are_kept_and_others_refused() {
    assert!(sane_id("abc-123"));
    assert!(sane_id("0190b8c4-7a1e-7c3d-9f00-1234567890ab"));
    assert!(sane_id("svc.web:req_42"));
    assert!(sane_id(&"a".repeat(128)));
    assert!(!sane_id(""));
    assert!(!sane_id(&"a".repeat(129)));
    assert!(!sane_id("has space"));
    assert!(!sane_id("a\nforged=1"));
    assert!(!sane_id("quote\"d"));
    assert!(!sane_id("é"));
}

#[test]
fn an_id_is_echoed_or_made_and_set_on_the_response() {
    let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut sent = hyper::Request::get("/api/vms?token=secret")
        .header("x-request-id", "client-1")
        .body(())
        .expect("request");
    let (access, _span) = Access::begin(&mut sent, peer);
    assert_eq!(
        sent.extensions().get::<RequestId>().map(|r| r.0.as_str()),
        Some("client-1")
    );
    assert_eq!(access.path, "/api/vms");
    let response = access.finish(Response::new(Default::default()));
    assert_eq!(response.headers()[&REQUEST_ID], "client-1");

    let mut bad = hyper::Request::get("/")
        .header("x-request-id", "no spaces allowed")
        .body(())
        .expect("request");
    let (access, _span) = Access::begin(&mut bad, peer);
    let made = access.id.clone();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    let response = access.finish(Response::new(Default::default()));
    assert_eq!(response.headers()[&REQUEST_ID], made.as_str());
}
