//! `AF_UNIX` / `SOCK_SEQPACKET` sockets: the pairs channels run on, datagrams (with
//! descriptors attached), and the blocking waits used by code that has no runtime.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// Creates a connected `AF_UNIX` / `SOCK_SEQPACKET` pair, nonblocking and close-on-exec.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Raises the socket's send buffer towards `bytes`: the forced variant works for root, the
/// plain one is capped by `net.core.wmem_max`. Failure is harmless (the default stays).
pub(crate) fn raise_send_buffer(fd: BorrowedFd<'_>, bytes: usize) {
    if rustix::net::sockopt::set_socket_send_buffer_size_force(fd, bytes).is_err() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes);
    }
}

/// The send buffer size the kernel actually granted.
pub(crate) fn send_buffer_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::net::sockopt::socket_send_buffer_size(fd)?)
}

/// Is `fd` an open `SOCK_SEQPACKET` socket?
pub(crate) fn is_seqpacket(fd: BorrowedFd<'_>) -> bool {
    matches!(rustix::net::sockopt::socket_type(fd), Ok(t) if t == SocketType::SEQPACKET)
}

/// The most descriptors procq attaches to one datagram, and accepts on one. The kernel's
/// own limit is 253 (`SCM_MAX_FD`); a datagram from a hostile sender with more has the
/// rest closed by the kernel and is reported as truncated control data.
pub(crate) const MAX_DATAGRAM_FDS: usize = 253;

/// Sends one datagram made of `parts`, with `fds` attached as `SCM_RIGHTS`. Never raises
/// SIGPIPE (`MSG_NOSIGNAL`) and never blocks (`MSG_DONTWAIT`): a full socket is
/// `WouldBlock`.
pub(crate) fn send_datagram(
    fd: BorrowedFd<'_>,
    parts: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    if fds.is_empty() {
        let mut control = SendAncillaryBuffer::default();
        return Ok(rustix::net::sendmsg(fd, parts, &mut control, flags)?);
    }
    if fds.len() > MAX_DATAGRAM_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one datagram",
        ));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_DATAGRAM_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    Ok(rustix::net::sendmsg(fd, parts, &mut control, flags)?)
}

/// The most datagrams [`send_datagrams`] writes in one system call.
pub(crate) const MAX_DATAGRAMS_PER_CALL: usize = 64;

/// Sends several datagrams (without descriptors), each made of its parts, in one system
/// call (`sendmmsg`), without blocking. Returns how many the kernel took, in order (at
/// least one), or `WouldBlock` when it took none.
pub(crate) fn send_datagrams(
    fd: BorrowedFd<'_>,
    datagrams: &[&[IoSlice<'_>]],
) -> io::Result<usize> {
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = datagrams
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<rustix::net::MMsgHdr<'_>> = datagrams
        .iter()
        .zip(controls.iter_mut())
        .map(|(parts, control)| rustix::net::MMsgHdr::new(parts, control))
        .collect();
    let sent = rustix::net::sendmmsg(fd, &mut msgs, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)?;
    Ok(sent)
}

/// What one `recvmsg` delivered.
pub(crate) struct Received {
    /// Bytes written into the caller's buffer.
    pub len: usize,
    /// The datagram was longer than the buffer; the kernel dropped the rest.
    pub truncated: bool,
    /// The control data was cut short (more descriptors than we accept); the kernel closed
    /// those that did not fit.
    pub control_truncated: bool,
}

/// Receives one datagram into `buf` without blocking. Descriptors that came with it are
/// pushed to `fds` (close-on-exec), so they are owned (and closed) whatever the caller
/// decides. A zero-length result with no descriptors is either an empty datagram or the
/// end of the channel: see [`peer_hung_up`].
pub(crate) fn recv_datagram(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_DATAGRAM_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(
        fd,
        &mut iov,
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(Received {
        len: msg.bytes.min(buf.len()),
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        control_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// Has every peer of this socket gone? For a receiving end: every sender closed (the end of
/// the channel). For a sending end: every receiver closed (nothing can be delivered).
pub(crate) fn peer_hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN | PollFlags::RDHUP)];
    match rustix::event::poll(&mut fds, Some(&Timespec::default())) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::RDHUP),
        Err(_) => true,
    }
}

/// Does this write error mean no process holds the other end any more?
pub(crate) fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET | rustix::io::Errno::NOTCONN)
    )
}

/// Would a read on `fd` return at once (data, end-of-file or an error)?
pub(crate) fn has_input(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    matches!(rustix::event::poll(&mut fds, Some(&Timespec::default())), Ok(n) if n > 0)
}

/// Blocks the calling thread until `fd` is writable (or hung up, or in error), or `stop`
/// is readable, or until `deadline`. Returns `false` on the deadline. For code that has no
/// runtime: the `blocking_*` methods.
pub(crate) fn wait_writable(
    fd: BorrowedFd<'_>,
    stop: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    loop {
        let Ok(timeout) = super::time_left(deadline) else {
            return Ok(false);
        };
        let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
        let mut both;
        let polled: &mut [PollFd<'_>] = match &stop {
            None => &mut fds,
            Some(stop) => {
                both = [
                    PollFd::new(&fd, PollFlags::OUT),
                    PollFd::new(stop, PollFlags::IN),
                ];
                &mut both
            }
        };
        match rustix::event::poll(polled, timeout.as_ref()) {
            Ok(0) => continue, // timed out: the deadline check above decides
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Blocks the calling thread until one of `fds` is readable (or hung up, or in error), or
/// until `deadline`. Returns `false` on the deadline.
pub(crate) fn wait_any_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<bool> {
    loop {
        let Ok(timeout) = super::time_left(deadline) else {
            return Ok(false);
        };
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut polled, timeout.as_ref()) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Is a datagram (even an empty one) queued on `fd`? Peeks without consuming.
pub(crate) fn has_queued_datagram(fd: BorrowedFd<'_>) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::TRUNC;
    matches!(rustix::net::recv(fd, &mut byte, flags), Ok((_, n)) if n > 0)
}

/// Duplicates `fd` (close-on-exec) at a number of 3 or more, so it can never land on a
/// child's stdin, stdout or stderr.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?)
}
