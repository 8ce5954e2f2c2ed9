//! Request heads: what a guest asks the gateway for (CONNECT or one absolute-form HTTP request),
//! the heads the gateway sends on in its place, and the short answers it gives itself.

use std::fmt;
use std::net::Ipv6Addr;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// More headers than any real client sends; more are answered like an oversized head.
const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HeadError {
    /// The head is not complete yet.
    Partial,
    TooLarge,
    /// Why, for a 400 body (never echoes the client's bytes).
    Bad(&'static str),
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// Lowercase, IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    /// The authority as a Host header or absolute URI writes it: no port when it is 80.
    fn host_header(&self) -> String {
        match (self.port, self.host.contains(':')) {
            (80, true) => format!("[{}]", self.host),
            (80, false) => self.host.clone(),
            _ => self.to_string(),
        }
    }
}

pub(super) enum Kind {
    Connect,
    /// One plain HTTP request, forwarded with a rewritten head.
    Http {
        method: String,
        /// Origin-form: path and query.
        path: String,
        /// The minor version: HTTP/1.0 or HTTP/1.1.
        version: u8,
        headers: Vec<(String, Vec<u8>)>,
    },
}

pub(super) struct Request {
    pub target: Target,
    pub kind: Kind,
    /// The head's length in the bytes it was parsed from; what follows is body or tunnel data.
    pub head_len: usize,
}

// By hand, so header values (the guest's own credentials, cookies) can never reach a log.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Connect => "CONNECT",
            Kind::Http { method, .. } => method.as_str(),
        };
        f.debug_struct("Request")
            .field("kind", &kind)
            .field("target", &self.target.to_string())
            .field("head_len", &self.head_len)
            .finish_non_exhaustive()
    }
}

/// Parses a request head from the start of `buf`, which holds at most `max` bytes.
pub(super) fn parse(buf: &[u8], max: usize) -> Result<Request, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max => n,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) if buf.len() >= max => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Err(HeadError::Partial),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    let (Some(method), Some(uri), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Bad("malformed request head"));
    };
    if !uri.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(HeadError::Bad(
            "control or non-ASCII characters in the request target",
        ));
    }
    let mut kept = Vec::with_capacity(req.headers.len());
    for header in req.headers.iter() {
        if header
            .value
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(HeadError::Bad("control characters in a header value"));
        }
        kept.push((header.name.to_string(), header.value.to_vec()));
    }
    // The upstream could answer TRACE itself, echoing our credentials (RFC 9110 §9.3.8).
    if method.eq_ignore_ascii_case("TRACE") || method.eq_ignore_ascii_case("TRACK") {
        return Err(HeadError::Bad("TRACE is not proxied"));
    }
    if method == "CONNECT" {
        let target = authority(uri, None)?;
        return Ok(Request {
            target,
            kind: Kind::Connect,
            head_len,
        });
    }
    let (target, path) = absolute_uri(uri)?;
    Ok(Request {
        target,
        kind: Kind::Http {
            method: method.to_string(),
            path,
            version,
            headers: kept,
        },
        head_len,
    })
}

/// Splits `http://authority/path?query` into its target and origin-form.
fn absolute_uri(uri: &str) -> Result<(Target, String), HeadError> {
    if uri.starts_with('/') {
        return Err(HeadError::Bad(
            "origin-form request: this is a proxy, send the absolute URI",
        ));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(HeadError::Bad(
            "only http:// targets or CONNECT are proxied",
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => return Err(HeadError::Bad("https:// targets need CONNECT")),
        _ => {
            return Err(HeadError::Bad(
                "only http:// targets or CONNECT are proxied",
            ));
        }
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, path) = rest.split_at(split);
    if auth.contains('@') {
        return Err(HeadError::Bad("credentials in the request target"));
    }
    let path = match path.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_string(),
    };
    Ok((authority(auth, Some(80))?, path))
}

/// Parses `host:port`, `[v6]:port`, or without the port when there is a default.
fn authority(text: &str, default_port: Option<u16>) -> Result<Target, HeadError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or(HeadError::Bad("unclosed [ in the target"))?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| HeadError::Bad("bad IPv6 address in the target"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(HeadError::Bad("bad target after the IPv6 address"))?,
            ),
        };
        (v6, port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let valid_name = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !host.contains(':') && !valid_name(host) {
        return Err(HeadError::Bad("bad host in the target"));
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or(HeadError::Bad("bad port in the target"))?,
        Some(_) => return Err(HeadError::Bad("bad port in the target")),
        None => default_port.ok_or(HeadError::Bad("CONNECT needs host:port"))?,
    };
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Hop-by-hop and proxy headers a guest sent for us, never passed on.
fn dropped(name: &str, connection_named: &[String]) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("proxy-")
        // Max-Forwards could make the upstream answer itself (RFC 9110 §7.6.2).
        || matches!(name.as_str(), "connection" | "keep-alive" | "host" | "max-forwards")
        || connection_named.contains(&name)
}

impl Request {
    /// The head to send on for a plain HTTP request: absolute-form with our credentials to the
    /// upstream (`Some`), origin-form to a bypassed host (`None`). Either way one request per
    /// connection, so the answer's end is the connection's end and splicing needs no framing.
    pub fn forward_head(&self, upstream_auth: Option<&SecretString>) -> Zeroizing<Vec<u8>> {
        let mut head = Vec::with_capacity(self.head_len + 128);
        let Kind::Http {
            method,
            path,
            version,
            headers,
        } = &self.kind
        else {
            return Zeroizing::new(head);
        };
        let host = self.target.host_header();
        let line = match upstream_auth {
            Some(_) => format!("{method} http://{host}{path} HTTP/1.{version}\r\n"),
            None => format!("{method} {path} HTTP/1.{version}\r\n"),
        };
        head.extend_from_slice(line.as_bytes());
        // The absolute URI wins over any Host the guest sent (RFC 9112 §3.2.2).
        head.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
        let connection_named: Vec<String> = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| {
                String::from_utf8_lossy(value)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect();
        for (name, value) in headers {
            if !dropped(name, &connection_named) {
                head.extend_from_slice(name.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(value);
                head.extend_from_slice(b"\r\n");
            }
        }
        match upstream_auth {
            Some(auth) => with_credentials(&head, auth, b"Connection: close\r\n\r\n"),
            None => {
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                Zeroizing::new(head)
            }
        }
    }
}

/// The CONNECT the gateway sends the upstream, with the credentials.
pub(super) fn upstream_connect(target: &Target, auth: &SecretString) -> Zeroizing<Vec<u8>> {
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    with_credentials(head.as_bytes(), auth, b"\r\n")
}

/// `head`, our `Proxy-Authorization` line, then `tail`, in a buffer allocated once at its final
/// size: a buffer that grew would leave copies of the credentials behind, unzeroed.
fn with_credentials(head: &[u8], auth: &SecretString, tail: &[u8]) -> Zeroizing<Vec<u8>> {
    const NAME: &[u8] = b"Proxy-Authorization: ";
    let auth = auth.expose_secret().as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(
        head.len() + NAME.len() + auth.len() + 2 + tail.len(),
    ));
    for part in [head, NAME, auth, b"\r\n", tail] {
        out.extend_from_slice(part);
    }
    out
}

/// The upstream's status code and head length from its answer to CONNECT.
pub(super) fn parse_response(buf: &[u8], max: usize) -> Result<(u16, usize), HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => match response.code {
            Some(code) => Ok((code, n)),
            None => Err(HeadError::Bad("no status code")),
        },
        Ok(httparse::Status::Partial) if buf.len() >= max => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Err(HeadError::Partial),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Bad("malformed answer")),
    }
}

/// A complete short answer from the gateway itself; the connection closes after it.
pub(super) fn answer(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "Connection established",
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    if status == 200 {
        return format!("HTTP/1.1 200 {reason}\r\n\r\n").into_bytes();
    }
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
