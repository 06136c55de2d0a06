//! Byte streams to and from the server: addresses, TCP and Unix sockets, TLS, and the
//! binding of the handshake to a TLS session.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;

use super::protocol::TLS_EXPORTER_LABEL;

/// Any connection's byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection's byte stream, whatever carries it.
pub(crate) type Stream = Box<dyn Io>;

/// Connects to `addr` (`host:port` or `unix:/path`), with TLS if `tls` is given. Returns
/// the stream and the handshake binding (empty without TLS).
pub(crate) async fn connect(
    addr: &str,
    tls: Option<&(Arc<rustls::ClientConfig>, String)>,
) -> io::Result<(Stream, Vec<u8>)> {
    if let Some(path) = addr.strip_prefix("unix:") {
        let stream = tokio::net::UnixStream::connect(path).await?;
        over(stream, tls).await
    } else {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        over(stream, tls).await
    }
}

async fn over<S: Io>(
    stream: S,
    tls: Option<&(Arc<rustls::ClientConfig>, String)>,
) -> io::Result<(Stream, Vec<u8>)> {
    let Some((config, name)) = tls else {
        return Ok((Box::new(stream), Vec::new()));
    };
    let name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, buffered(stream))
        .await?;
    let binding = export(stream.get_ref().1.export_keying_material(
        [0u8; 32],
        TLS_EXPORTER_LABEL,
        None,
    ))?;
    Ok((Box::new(stream), binding))
}

/// The server's side of TLS on an accepted stream, if configured.
pub(crate) async fn accept<S: Io>(
    stream: S,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> io::Result<(Stream, Vec<u8>)> {
    let Some(config) = tls else {
        return Ok((Box::new(stream), Vec::new()));
    };
    let stream = tokio_rustls::TlsAcceptor::from(config.clone())
        .accept(buffered(stream))
        .await?;
    let binding = export(stream.get_ref().1.export_keying_material(
        [0u8; 32],
        TLS_EXPORTER_LABEL,
        None,
    ))?;
    Ok((Box::new(stream), binding))
}

/// The socket under TLS, read through a buffer: rustls reads at most 4 KiB at a time once
/// its own buffer is empty, so a 16 KiB record took four system calls.
fn buffered<S: Io>(stream: S) -> tokio::io::BufReader<S> {
    tokio::io::BufReader::with_capacity(64 * 1024, stream)
}

fn export(material: Result<[u8; 32], rustls::Error>) -> io::Result<Vec<u8>> {
    material
        .map(|m| m.to_vec())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A second descriptor for an accepted socket, to notice the peer hanging up while the
/// server is not reading from it.
pub(crate) enum Probe {
    Tcp(OwnedFd),
    Unix(OwnedFd),
}

impl Probe {
    pub(crate) fn tcp(socket: &tokio::net::TcpStream) -> Option<Probe> {
        socket.as_fd().try_clone_to_owned().ok().map(Probe::Tcp)
    }

    pub(crate) fn unix(socket: &tokio::net::UnixStream) -> Option<Probe> {
        socket.as_fd().try_clone_to_owned().ok().map(Probe::Unix)
    }

    /// Waits until the peer has hung up (read side closed), even while unread data sits
    /// in the socket: the kernel reports the hang-up (`EPOLLRDHUP`) apart from the data.
    pub(crate) async fn hung_up(&self) -> io::Result<()> {
        match self {
            Probe::Tcp(fd) => {
                let socket = std::net::TcpStream::from(fd.try_clone()?);
                socket.set_nonblocking(true)?;
                let socket = tokio::net::TcpStream::from_std(socket)?;
                loop {
                    if socket
                        .ready(tokio::io::Interest::READABLE)
                        .await?
                        .is_read_closed()
                    {
                        return Ok(());
                    }
                    // Forget this readiness without reading: wait for the next event.
                    let _ = socket.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
            }
            Probe::Unix(fd) => {
                let socket = std::os::unix::net::UnixStream::from(fd.try_clone()?);
                socket.set_nonblocking(true)?;
                let socket = tokio::net::UnixStream::from_std(socket)?;
                loop {
                    if socket
                        .ready(tokio::io::Interest::READABLE)
                        .await?
                        .is_read_closed()
                    {
                        return Ok(());
                    }
                    let _ = socket.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
            }
        }
    }
}

/// Binds a Unix-socket listener at `path`. A file already there is removed only if it is
/// a socket nobody listens on (a stale one); a live socket is [`io::ErrorKind::AddrInUse`],
/// and anything else (a regular file, a directory) is [`io::ErrorKind::AlreadyExists`].
pub fn bind_unix(path: impl AsRef<Path>) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let path = path.as_ref();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{}: a server is listening there", path.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::net::UnixListener::bind(path)
}
