//! Splicing a guest's connection to its server both ways, closed when neither side has moved a
//! byte for the idle timeout.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Per direction, so a tunnel's memory is fixed whatever it carries.
const BUFFER: usize = 16 * 1024;
/// Held before the client sees anything, when the server's status is checked.
const STATUS_LINE_MAX: usize = 1024;

/// How the ends of the two sides relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exchange {
    /// A CONNECT tunnel: bytes both ways, and a side's half-close is passed on.
    Tunnel,
    /// One plain request, sent with `Connection: close`, so the server's close ends it. The
    /// client's half-close is not passed on: proxies such as tinyproxy (and Squid by default)
    /// take it as an abort and drop the rest of the answer.
    ///
    /// With `refuse_status`, the server's status line is held back until it is complete, and an
    /// answer with that status ends the splice before any of it reaches the client.
    Request { refuse_status: Option<u16> },
}

/// The byte counters a splice moves as bytes pass, so a long tunnel shows in the metrics while
/// it runs (and a tunnel cut at shutdown is counted too).
#[derive(Debug, Clone, Default)]
pub(super) struct Meters {
    pub from_client: Counter,
    pub to_client: Counter,
}

/// What a splice carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spliced {
    pub from_client: u64,
    pub to_client: u64,
    /// It ended because nothing moved for the idle timeout.
    pub idled_out: bool,
    /// The server answered the refused status; the client has been sent nothing.
    pub refused: Option<u16>,
}

/// Copies client→server and server→client until both directions have ended, either fails, or
/// nothing moves either way for `idle`. When one side finishes sending, the other direction
/// keeps going (HTTP clients half-close); see [`Exchange`] for whether the half-close is passed on.
pub(super) async fn splice<CR, CW, SR, SW>(
    (client_read, client_write): (CR, CW),
    (server_read, server_write): (SR, SW),
    idle: Duration,
    exchange: Exchange,
    meters: &Meters,
) -> Spliced
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last progress either way.
    let last = AtomicU64::new(0);
    let from_client = Tally::new(&meters.from_client);
    let to_client = Tally::new(&meters.to_client);
    let refused = AtomicU16::new(0);
    let (pass_client_eof, refuse_status) = match exchange {
        Exchange::Tunnel => (true, None),
        Exchange::Request { refuse_status } => (false, refuse_status),
    };
    let both = async {
        tokio::try_join!(
            copy(
                client_read,
                server_write,
                pass_client_eof,
                &from_client,
                &last,
                start
            ),
            async {
                let mut server_read = server_read;
                let mut client_write = client_write;
                if let Some(status) = refuse_status {
                    let ended = gate(
                        &mut server_read,
                        &mut client_write,
                        status,
                        &to_client,
                        &last,
                        start,
                    )
                    .await;
                    if let Err(e) = ended {
                        if e.kind() == std::io::ErrorKind::PermissionDenied {
                            refused.store(status, Ordering::Relaxed);
                        }
                        return Err(e);
                    }
                }
                copy(server_read, client_write, true, &to_client, &last, start).await
            },
        )
    };
    let idled_out = tokio::select! {
        _ = both => false,
        () = watchdog(&last, start, idle) => true,
    };
    Spliced {
        from_client: from_client.total(),
        to_client: to_client.total(),
        idled_out,
        refused: Some(refused.load(Ordering::Relaxed)).filter(|&s| s != 0),
    }
}

/// Reads the server's first line; forwards it unless its status is `refuse` (then fails with
/// `PermissionDenied`, having written nothing).
async fn gate<R, W>(
    from: &mut R,
    to: &mut W,
    refuse: u16,
    count: &Tally<'_>,
    last: &AtomicU64,
    start: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut held = Vec::with_capacity(STATUS_LINE_MAX);
    while held.len() < STATUS_LINE_MAX && !held.contains(&b'\n') {
        let mut chunk = [0u8; STATUS_LINE_MAX];
        let n = from
            .read(&mut chunk[..STATUS_LINE_MAX - held.len()])
            .await?;
        if n == 0 {
            break;
        }
        last.store(elapsed_ms(start), Ordering::Relaxed);
        held.extend_from_slice(&chunk[..n]);
    }
    let status = held
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|code| std::str::from_utf8(code).ok()?.parse::<u16>().ok());
    if status == Some(refuse) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "refused status",
        ));
    }
    to.write_all(&held).await?;
    count.add(held.len());
    Ok(())
}

/// One direction's bytes: this splice's total, and the shared metric.
struct Tally<'a> {
    total: AtomicU64,
    meter: &'a Counter,
}

impl<'a> Tally<'a> {
    fn new(meter: &'a Counter) -> Self {
        Self {
            total: AtomicU64::new(0),
            meter,
        }
    }

    fn add(&self, n: usize) {
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        self.meter.inc_by(n as u64);
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One direction; on EOF, with `pass_eof`, it shuts down the writer so the peer sees the
/// half-close.
async fn copy<R, W>(
    mut from: R,
    mut to: W,
    pass_eof: bool,
    count: &Tally<'_>,
    last: &AtomicU64,
    start: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            if pass_eof {
                // The peer may already be gone; the other direction still decides the end.
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        last.store(elapsed_ms(start), Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
        count.add(n);
        // A slow reader on the far side is still progress.
        last.store(elapsed_ms(start), Ordering::Relaxed);
    }
}

/// Returns once nothing has moved for `idle`.
async fn watchdog(last: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{DuplexStream, duplex, split};
    use tokio::task::JoinHandle;

    /// A splice between two in-memory pipes: the client's end, the server's end, and the task.
    fn spliced(
        idle: Duration,
        exchange: Exchange,
        meters: &Meters,
    ) -> (DuplexStream, DuplexStream, JoinHandle<Spliced>) {
        let (client, gateway_client) = duplex(64);
        let (gateway_server, server) = duplex(64);
        let meters = meters.clone();
        let task = tokio::spawn(async move {
            splice(
                split(gateway_client),
                split(gateway_server),
                idle,
                exchange,
                &meters,
            )
            .await
        });
        (client, server, task)
    }

    #[tokio::test]
    async fn copies_both_ways_and_half_closes() {
        let meters = Meters::default();
        let (client, server, task) = spliced(Duration::from_secs(5), Exchange::Tunnel, &meters);
        let (mut client_r, mut client_w) = split(client);
        let (mut server_r, mut server_w) = split(server);
        let big = vec![7u8; 100_000];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client_w.write_all(&sent).await.unwrap();
            client_w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        server_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        writer.await.unwrap();
        // Counted as it passed, before the splice ends.
        assert_eq!(meters.from_client.get(), 100_000);
        assert!(!task.is_finished());
        // The client half-closed; the server can still answer.
        server_w.write_all(b"answer").await.unwrap();
        server_w.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_r.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
        let spliced = task.await.unwrap();
        assert_eq!(
            spliced,
            Spliced {
                from_client: 100_000,
                to_client: 6,
                idled_out: false,
                refused: None,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_plain_requests_half_close_stays_with_the_gateway() {
        let (client, server, task) = spliced(
            Duration::from_secs(60),
            Exchange::Request {
                refuse_status: None,
            },
            &Meters::default(),
        );
        let (mut client_r, mut client_w) = split(client);
        let (mut server_r, mut server_w) = split(server);
        client_w.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        client_w.shutdown().await.unwrap();
        let mut request = [0u8; 18];
        server_r.read_exact(&mut request).await.unwrap();
        // The server must not see the client's EOF: a proxy would take it as an abort.
        let mut more = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_secs(30), server_r.read(&mut more)).await;
        assert!(waited.is_err(), "the server saw {waited:?}");
        server_w
            .write_all(b"HTTP/1.1 200 OK\r\n\r\nanswer")
            .await
            .unwrap();
        server_w.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_r.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\nanswer");
        let spliced = task.await.unwrap();
        assert!(!spliced.idled_out);
        assert_eq!(spliced.from_client, 18);
    }

    #[tokio::test(start_paused = true)]
    async fn idles_out_only_when_nothing_moves() {
        let (client, _server, task) = spliced(
            Duration::from_secs(10),
            Exchange::Tunnel,
            &Meters::default(),
        );
        let (_client_r, mut client_w) = split(client);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_w.write_all(b"x").await.unwrap();
        }
        assert!(!task.is_finished());
        let spliced = task.await.unwrap();
        assert!(spliced.idled_out);
        assert_eq!(spliced.from_client, 5);
    }

    #[tokio::test]
    async fn a_refused_status_reaches_the_client_as_nothing() {
        for (answer, refused) in [
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\nX: secret\r\n\r\n"[..],
                Some(407),
            ),
            (b"HTTP/1.1 200 OK\r\n\r\nbody", None),
            (b"HTTP/1.1 4", None),
        ] {
            let (client, server, task) = spliced(
                Duration::from_secs(5),
                Exchange::Request {
                    refuse_status: Some(407),
                },
                &Meters::default(),
            );
            let (mut client_r, mut client_w) = split(client);
            let (_server_r, mut server_w) = split(server);
            // Split across writes, so the status line has to be held. A refusal ends the splice
            // early, so the rest may find the gateway gone.
            for piece in answer.chunks(5) {
                let _ = server_w.write_all(piece).await;
                tokio::task::yield_now().await;
            }
            let _ = server_w.shutdown().await;
            client_w.shutdown().await.unwrap();
            let spliced = task.await.unwrap();
            assert_eq!(spliced.refused, refused);
            let mut got = Vec::new();
            client_r.read_to_end(&mut got).await.unwrap();
            let expected: &[u8] = if refused.is_some() { b"" } else { answer };
            assert_eq!(got, expected);
        }
    }
}
