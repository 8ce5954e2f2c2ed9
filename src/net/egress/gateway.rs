//! The gateway proxy guests' HTTP_PROXY/HTTPS_PROXY point at. A connection's source address
//! names its VM and so its user and upstream port; the gateway reads one request head and
//! tunnels (CONNECT) or forwards one plain HTTP request, through that port with the upstream
//! credentials added, or direct for bypassed hosts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::{Answer, Failure, send_answer, unknown_source, upstream_refused};
use super::ports::{self, Owner};
use super::request::{self, Kind, Target};
use super::splice::{Exchange, Meters, Spliced, splice};
use super::wire::{open, read_head, upstream_answer};
use super::{Bypass, EgressError, GatewayLimits, Upstream};
use crate::metrics::Metrics;
use crate::metrics::egress::{EgressBytesLabels, EgressConnectionLabels};
use crate::store::Store;

/// An accept error (EMFILE and the like) is retried after this, not in a tight loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections refused for the limits are answered by at most this many tasks at once; past
/// that they are just closed, so a flood cannot grow the task count.
const REFUSAL_TASKS: usize = 64;
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: Upstream,
    /// The `Proxy-Authorization` value, only ever written to the upstream.
    authorization: SecretString,
    bypass: Bypass,
    limits: GatewayLimits,
    store: Store,
    metrics: Arc<Metrics>,
    open: Mutex<Open>,
    refusals: Arc<Semaphore>,
}

/// Open connections, in all and per source address (entries at zero are removed).
#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place in the bounds and the active gauge, given back however it ends.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    counted: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.metrics.egress.active_connections.dec();
        if !self.counted {
            return;
        }
        let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Gateway {
    pub async fn bind(
        addr: SocketAddr,
        upstream: Upstream,
        bypass: Bypass,
        limits: GatewayLimits,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, EgressError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EgressError::Bind { addr, source })?;
        let authorization = upstream.authorization();
        Ok(Gateway {
            listener,
            shared: Arc::new(Shared {
                upstream,
                authorization,
                bypass,
                limits,
                store,
                metrics,
                open: Mutex::default(),
                refusals: Arc::new(Semaphore::new(REFUSAL_TASKS)),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `cancel`, then stops listening and ends every open connection.
    pub async fn serve(self, cancel: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => self.dispatch(&tracker, &cancel, stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "egress gateway cannot accept; backing off");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
    }

    fn dispatch(
        &self,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let shared = &self.shared;
        shared.metrics.egress.active_connections.inc();
        let ip = peer.ip().to_canonical();
        let mut slot = Slot {
            shared: shared.clone(),
            ip,
            counted: false,
        };
        let cancel = cancel.clone();
        match admit(shared, ip) {
            Ok(()) => {
                slot.counted = true;
                let shared = shared.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = connection(&shared, stream, ip) => {}
                    }
                    drop(slot);
                });
            }
            Err(answer) => {
                if let Some(reason) = answer.refusal {
                    shared.metrics.egress.refuse(reason);
                }
                // Without a free refusal task the connection is just closed.
                if let Ok(permit) = shared.refusals.clone().try_acquire_owned() {
                    tracker.spawn(async move {
                        tokio::select! {
                            () = cancel.cancelled() => {}
                            () = send_answer(stream, &answer) => {}
                        }
                        drop((permit, slot));
                    });
                }
            }
        }
    }
}

/// Takes a place in the bounds for a new connection from `ip`.
fn admit(shared: &Shared, ip: IpAddr) -> Result<(), Answer> {
    let limits = &shared.limits;
    let mut open = shared.open.lock().unwrap_or_else(|e| e.into_inner());
    if open.total >= limits.connections {
        return Err(Answer::refused(
            503,
            "connection_limit",
            "the egress gateway is at its connection limit",
        ));
    }
    let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
    if from_ip >= limits.connections_per_vm {
        return Err(Answer::refused(
            429,
            "vm_connection_limit",
            format!(
                "this VM has {from_ip} open connections through the egress gateway, the most allowed"
            ),
        ));
    }
    open.total += 1;
    open.per_ip.insert(ip, from_ip + 1);
    Ok(())
}

/// One accepted connection, start to end.
async fn connection(shared: &Shared, mut client: TcpStream, ip: IpAddr) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let mut context = Context::default();
    match route(shared, &mut client, ip, &mut context).await {
        Ok(spliced) => tracing::debug!(
            user_id = %context.user_id,
            route = context.route,
            target = %context.target,
            from_guest = spliced.from_client,
            to_guest = spliced.to_client,
            idled_out = spliced.idled_out,
            duration_ms = started.elapsed().as_millis() as u64,
            "egress connection closed"
        ),
        Err(failure) => {
            let status = match &failure {
                Failure::Answer(answer) => answer.status,
                Failure::Gone => 0,
            };
            tracing::debug!(
                %ip,
                user_id = %context.user_id,
                route = context.route,
                target = %context.target,
                status,
                duration_ms = started.elapsed().as_millis() as u64,
                "egress connection ended without a tunnel"
            );
            if let Failure::Answer(answer) = failure {
                if let Some(reason) = answer.refusal {
                    shared.metrics.egress.refuse(reason);
                }
                send_answer(client, &answer).await;
            }
        }
    }
}

/// What the debug log says about a connection, filled in as it becomes known.
#[derive(Default)]
struct Context {
    user_id: String,
    route: &'static str,
    target: String,
}

async fn route(
    shared: &Shared,
    client: &mut TcpStream,
    ip: IpAddr,
    context: &mut Context,
) -> Result<Spliced, Failure> {
    let owner = owner(shared, ip).await?;
    context.user_id.clone_from(&owner.user_id);
    let Some(port) = owner.port else {
        return Err(Answer::refused(
            503,
            "no_port",
            "this VM's user has no upstream port yet; restart the VM",
        )
        .into());
    };
    let (request, mut buf) = read_head(&shared.limits, client).await?;
    let early = buf.split_off(request.head_len);
    let direct = shared.bypass.matches(&request.target.host);
    context.route = if direct { "direct" } else { "upstream" };
    context.target = request.target.to_string();
    let egress = &shared.metrics.egress;
    egress
        .connections
        .get_or_create(&EgressConnectionLabels {
            user_id: owner.user_id.clone(),
            route: context.route.to_string(),
        })
        .inc();
    let meter = |direction: &str| {
        egress
            .bytes
            .get_or_create(&EgressBytesLabels {
                user_id: owner.user_id.clone(),
                direction: direction.to_string(),
            })
            .clone()
    };
    let meters = Meters {
        from_client: meter("from_guest"),
        to_client: meter("to_guest"),
    };
    meters.from_client.inc_by(buf.len() as u64);

    let limits = &shared.limits;
    let (mut server, server_early) = timeout(limits.connect_timeout, async {
        if direct {
            open(&request.target, &request.target)
                .await
                .map(|s| (s, Vec::new()))
        } else {
            let upstream = Target {
                host: shared.upstream.host.clone(),
                port,
            };
            let mut server = open(&upstream, &request.target).await?;
            match request.kind {
                Kind::Connect => {
                    let head = request::upstream_connect(&request.target, &shared.authorization);
                    let early = upstream_answer(&mut server, &head, &upstream).await?;
                    Ok((server, early))
                }
                Kind::Http { .. } => Ok((server, Vec::new())),
            }
        }
    })
    .await
    .map_err(|_| Answer::new(504, format!("timed out connecting to {}", request.target)))??;

    let mut to_client = server_early;
    match &request.kind {
        Kind::Connect => {
            let mut reply = request::answer(200, "");
            reply.append(&mut to_client);
            to_client = reply;
        }
        Kind::Http { .. } => {
            let auth = (!direct).then_some(&shared.authorization);
            let head = request.forward_head(auth);
            server.write_all(&head).await.map_err(|_| Failure::Gone)?;
        }
    }
    server.write_all(&early).await.map_err(|_| Failure::Gone)?;
    client
        .write_all(&to_client)
        .await
        .map_err(|_| Failure::Gone)?;
    meters.to_client.inc_by(to_client.len() as u64);
    // The upstream's own 407 to a plain request could echo what it was sent; the guest gets
    // only its status, as for CONNECT.
    let exchange = match request.kind {
        Kind::Connect => Exchange::Tunnel,
        Kind::Http { .. } => Exchange::Request {
            refuse_status: (!direct).then_some(407),
        },
    };
    let spliced = splice(
        client.split(),
        server.split(),
        limits.idle_timeout,
        exchange,
        &meters,
    )
    .await;
    if let Some(code) = spliced.refused {
        return Err(upstream_refused(code).into());
    }
    Ok(spliced)
}

async fn owner(shared: &Shared, ip: IpAddr) -> Result<Owner, Answer> {
    let IpAddr::V4(v4) = ip else {
        return Err(unknown_source());
    };
    match shared.store.read(move |tx| ports::owner_of(tx, v4)).await {
        Ok(Some(owner)) => Ok(owner),
        Ok(None) => Err(unknown_source()),
        Err(e) => {
            tracing::error!(error = %e, %ip, "egress gateway cannot look up a connection's VM");
            Err(Answer::new(
                503,
                "the egress gateway cannot look up this VM right now",
            ))
        }
    }
}

#[cfg(test)]
#[path = "gateway_tests.rs"]
mod tests;
