//! Where sessions come from: a virtio-serial port (QEMU), a vsock listener (Firecracker's
//! hybrid vsock), or a Unix socket (tests on the host).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::AgentError;

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

#[derive(Debug, Clone)]
pub enum ChannelSpec {
    VirtioSerial(String),
    Vsock(u32),
    Unix(PathBuf),
}

impl ChannelSpec {
    pub fn parse(spec: &str) -> Result<ChannelSpec, AgentError> {
        let bad = || AgentError::BadChannel(spec.to_string());
        match spec.split_once(':').ok_or_else(bad)? {
            ("virtio-serial", name) if !name.is_empty() => {
                Ok(ChannelSpec::VirtioSerial(name.into()))
            }
            ("vsock", port) => port.parse().map(ChannelSpec::Vsock).map_err(|_| bad()),
            ("unix", path) if !path.is_empty() => Ok(ChannelSpec::Unix(path.into())),
            _ => Err(bad()),
        }
    }
}

pub enum Channel {
    /// One long-lived port; a session ends when the host disconnects (reads return EOF) or a
    /// frame is malformed, and the next begins when the host speaks again.
    Serial {
        port: OwnedFd,
        first: bool,
    },
    Vsock(tokio_vsock::VsockListener),
    Unix(tokio::net::UnixListener),
}

/// While no host is connected a virtio-serial read returns EOF at once; this paces the retry.
const SERIAL_IDLE_POLL: Duration = Duration::from_millis(50);

/// What a read of nothing (EOF) means on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEof {
    /// The host has gone (a socket connection closed).
    EndSession,
    /// Perhaps nothing: a virtio-serial port reads EOF while the guest has not yet seen that a
    /// host is connected, and after a resume the new host's `Hello` can arrive before that news
    /// does (data and port events travel on different queues). So an authenticated session is
    /// kept, and the port read again after this pause, until a new `Hello` says another host is
    /// there.
    Poll(Duration),
}

pub async fn open(spec: &ChannelSpec) -> Result<Channel, AgentError> {
    Ok(match spec {
        ChannelSpec::VirtioSerial(name) => {
            let path = find_serial_port(name).await?;
            let port = tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
            })
            .await
            .map_err(std::io::Error::other)??;
            Channel::Serial {
                port: port.into(),
                first: true,
            }
        }
        ChannelSpec::Vsock(port) => Channel::Vsock(tokio_vsock::VsockListener::bind(
            tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port),
        )?),
        ChannelSpec::Unix(path) => {
            let _ = std::fs::remove_file(path);
            Channel::Unix(tokio::net::UnixListener::bind(path)?)
        }
    })
}

/// The port is the `/sys/class/virtio-ports/<dev>` whose `name` is `name`; its device is
/// `/dev/<dev>`. The driver may still be probing at boot, so look for a while.
async fn find_serial_port(name: &str) -> Result<PathBuf, AgentError> {
    for _ in 0..100 {
        if let Ok(mut entries) = tokio::fs::read_dir("/sys/class/virtio-ports").await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let port_name = tokio::fs::read_to_string(entry.path().join("name"))
                    .await
                    .unwrap_or_default();
                if port_name.trim() == name {
                    return Ok(PathBuf::from("/dev").join(entry.file_name()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(AgentError::Channel(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no virtio-serial port named {name:?}"),
    )))
}

impl Channel {
    pub async fn next_session(&mut self) -> Result<(Reader, Writer, OnEof), AgentError> {
        match self {
            Channel::Serial { port, first } => {
                if !*first {
                    tokio::time::sleep(SERIAL_IDLE_POLL).await;
                }
                *first = false;
                // Separate descriptors for the two directions: a tokio File runs one operation
                // at a time, and a read blocks until the host writes.
                let reader = tokio::fs::File::from_std(port.try_clone()?.into());
                let writer = tokio::fs::File::from_std(port.try_clone()?.into());
                Ok((
                    Box::new(reader),
                    Box::new(writer),
                    OnEof::Poll(SERIAL_IDLE_POLL),
                ))
            }
            Channel::Vsock(listener) => {
                let (stream, _) = listener.accept().await?;
                let (r, w) = stream.into_split();
                Ok((Box::new(r), Box::new(w), OnEof::EndSession))
            }
            Channel::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                let (r, w) = stream.into_split();
                Ok((Box::new(r), Box::new(w), OnEof::EndSession))
            }
        }
    }
}
