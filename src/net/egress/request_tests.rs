//! Tests of `request`.
use super::*;

fn parse_ok(head: &str) -> Request {
    parse(head.as_bytes(), 16 * 1024).unwrap()
}

fn parse_err(head: &str) -> HeadError {
    parse(head.as_bytes(), 16 * 1024).unwrap_err()
}

fn forwarded(head: &str, auth: Option<&SecretString>) -> String {
    String::from_utf8(parse_ok(head).forward_head(auth).to_vec()).unwrap()
}

#[test]
fn connect_targets() {
    let req = parse_ok("CONNECT api.Example.com:443 HTTP/1.1\r\nHost: x\r\n\r\ntail");
    assert!(matches!(req.kind, Kind::Connect));
    assert_eq!(req.target.to_string(), "api.example.com:443");
    assert_eq!(
        req.head_len,
        "CONNECT api.Example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n".len()
    );
    let v6 = parse_ok("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n");
    assert_eq!((v6.target.host.as_str(), v6.target.port), ("::1", 8443));
    assert_eq!(v6.target.to_string(), "[::1]:8443");
    let v4 = parse_ok("CONNECT 10.0.0.7:22 HTTP/1.1\r\n\r\n");
    assert_eq!(v4.target.to_string(), "10.0.0.7:22");
    for bad in [
        "CONNECT example.com HTTP/1.1\r\n\r\n",
        "CONNECT example.com:0 HTTP/1.1\r\n\r\n",
        "CONNECT example.com:+80 HTTP/1.1\r\n\r\n",
        "CONNECT example.com:70000 HTTP/1.1\r\n\r\n",
        "CONNECT [::1 HTTP/1.1\r\n\r\n",
        "CONNECT [nope]:1 HTTP/1.1\r\n\r\n",
        "CONNECT ex%41mple.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT :443 HTTP/1.1\r\n\r\n",
    ] {
        assert!(matches!(parse_err(bad), HeadError::Bad(_)), "{bad:?}");
    }
}

#[test]
fn absolute_form_targets() {
    let req = parse_ok("GET HTTP://Example.com:8080/a/b?c=d#frag HTTP/1.1\r\n\r\n");
    let Kind::Http { method, path, .. } = &req.kind else {
        panic!("not http");
    };
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/a/b?c=d"));
    assert_eq!(req.target.to_string(), "example.com:8080");
    let bare = parse_ok("GET http://example.com HTTP/1.1\r\n\r\n");
    assert_eq!(bare.target.port, 80);
    assert!(matches!(&bare.kind, Kind::Http { path, .. } if path == "/"));
    let query = parse_ok("GET http://example.com?x=1 HTTP/1.1\r\n\r\n");
    assert!(matches!(&query.kind, Kind::Http { path, .. } if path == "/?x=1"));
    let v6 = parse_ok("GET http://[fe80::1]/ HTTP/1.0\r\n\r\n");
    assert_eq!(v6.target.host, "fe80::1");
}

#[test]
fn refused_heads() {
    for bad in [
        "GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "GET https://example.com/ HTTP/1.1\r\n\r\n",
        "GET ftp://example.com/ HTTP/1.1\r\n\r\n",
        "GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
        "GET http://exa mple.com/ HTTP/1.1\r\n\r\n",
        "GET http://example.com/ HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        "GET http://example.com/ HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
        "GET http://example.com/\x7f HTTP/1.1\r\n\r\n",
        "TRACE http://example.com/ HTTP/1.1\r\n\r\n",
        "\x00\x01\x02\r\n\r\n",
    ] {
        assert!(matches!(parse_err(bad), HeadError::Bad(_)), "{bad:?}");
    }
    assert_eq!(
        parse_err("GET http://example.com/ HTTP/1.1\r\nHost"),
        HeadError::Partial
    );
    let big = format!("GET http://x/ HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
    assert_eq!(parse(big.as_bytes(), 100).unwrap_err(), HeadError::TooLarge);
    assert_eq!(
        parse(&big.as_bytes()[..100], 100).unwrap_err(),
        HeadError::TooLarge
    );
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: y\r\n")).collect();
    let many = format!("GET http://x/ HTTP/1.1\r\n{many}\r\n");
    assert_eq!(parse_err(&many), HeadError::TooLarge);
    // A tab is legal inside a header value.
    parse_ok("GET http://example.com/ HTTP/1.1\r\nX: a\tb\r\n\r\n");
}

#[test]
fn head_for_the_upstream() {
    let auth = SecretString::from("Basic b3VyczpzZWNyZXQ=");
    let head = forwarded(
        "POST http://example.com/p?q HTTP/1.1\r\nHost: other\r\nProxy-Authorization: Basic Z3Vlc3Q=\r\nproxy-connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: 5\r\nX-Hop: 1\r\nMax-Forwards: 0\r\nContent-Length: 3\r\nAccept: */*\r\n\r\nabc",
        Some(&auth),
    );
    assert_eq!(
        head,
        "POST http://example.com/p?q HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nAccept: */*\r\nProxy-Authorization: Basic b3VyczpzZWNyZXQ=\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn head_for_a_bypassed_host() {
    let head = forwarded(
        "GET http://[::1]:8080/x HTTP/1.0\r\nProxy-Authorization: Basic Z3Vlc3Q=\r\nUser-Agent: t\r\n\r\n",
        None,
    );
    assert_eq!(
        head,
        "GET /x HTTP/1.0\r\nHost: [::1]:8080\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn connect_head_and_upstream_answers() {
    let auth = SecretString::from("Basic abc=");
    let target = Target {
        host: "example.com".into(),
        port: 443,
    };
    assert_eq!(
        upstream_connect(&target, &auth).as_slice(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic abc=\r\n\r\n"
    );
    let ok = b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nearly";
    assert_eq!(parse_response(ok, 1024), Ok((200, ok.len() - 5)));
    assert_eq!(
        parse_response(b"HTTP/1.1 407 ", 1024),
        Err(HeadError::Partial)
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 407 ", 5),
        Err(HeadError::TooLarge)
    );
    assert!(matches!(
        parse_response(b"SSH-2.0\r\n\r\n", 1024),
        Err(HeadError::Bad(_))
    ));
}

#[test]
fn answers_are_complete_responses() {
    let text = String::from_utf8(answer(429, "too many")).unwrap();
    assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
    assert!(text.ends_with("\r\n\r\ntoo many\n"));
    assert!(text.contains("Content-Length: 9\r\n"));
    assert_eq!(
        answer(200, ""),
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    );
}
