//! Every system call procq makes, behind small safe wrappers.
//!
//! This is the only module with `unsafe` code; each block says why it is sound. The rest of
//! the crate handles descriptors as [`OwnedFd`] / [`BorrowedFd`], so who owns (and closes)
//! a descriptor is visible in the types.
//!
//! Linux-only pieces: `memfd_create` and file seals (out-of-line items), `SO_SNDBUFFORCE`,
//! `MSG_CMSG_CLOEXEC`, `/proc`-free descriptor checks. Other Unix systems compile the
//! socket code but not the out-of-line path.

use std::collections::HashSet;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::FdFlags;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// Creates a connected `AF_UNIX` / `SOCK_SEQPACKET` pair, nonblocking and close-on-exec.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((a, b))
}

/// A descriptor that is registered with the tokio reactor the first time a task waits on
/// it, not before.
///
/// Every process holding a queue holds both of its sockets and its eventfds, and the
/// kernel wakes every epoll that watches a socket each time a datagram arrives. Registering
/// only where someone actually waits (and only for the direction it waits on) keeps a
/// producer from being woken by every item it did not ask for: measured on a 1 → 1 queue,
/// eager registration of both directions everywhere cost 20× in throughput.
pub(crate) struct Waitable {
    // Declared before `fd`, so it is dropped (deregistered) before the descriptor closes.
    registration: std::sync::OnceLock<tokio::io::unix::AsyncFd<FdNumber>>,
    registering: Mutex<()>,
    interest: tokio::io::Interest,
    fd: OwnedFd,
}

/// A descriptor number the reactor may watch; the [`Waitable`] owning the descriptor
/// outlives it.
pub(crate) struct FdNumber(RawFd);

impl AsRawFd for FdNumber {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Waitable {
    pub(crate) fn new(fd: OwnedFd, interest: tokio::io::Interest) -> Waitable {
        Waitable {
            registration: std::sync::OnceLock::new(),
            registering: Mutex::new(()),
            interest,
            fd,
        }
    }

    pub(crate) fn get_ref(&self) -> &OwnedFd {
        &self.fd
    }

    /// The reactor registration, made now if this is the first wait. Needs the current
    /// tokio runtime (every wait happens in one).
    pub(crate) fn reactor(&self) -> io::Result<&tokio::io::unix::AsyncFd<FdNumber>> {
        if let Some(registered) = self.registration.get() {
            return Ok(registered);
        }
        let _one_at_a_time = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(registered) = self.registration.get() {
            return Ok(registered);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("procq: waiting outside a tokio runtime"));
        }
        let number = FdNumber(self.fd.as_raw_fd());
        // SAFETY: `number` names `self.fd`, which is open and is closed only after the
        // registration is dropped (field order), and FdNumber always reports that number.
        let registered =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(number, self.interest) }?;
        Ok(self.registration.get_or_init(|| registered))
    }
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

/// Sends one datagram made of `parts`, with `pass` attached as `SCM_RIGHTS` if given.
/// Never raises SIGPIPE (`MSG_NOSIGNAL`) and never blocks (`MSG_DONTWAIT`).
pub(crate) fn send_datagram(
    fd: BorrowedFd<'_>,
    parts: &[IoSlice<'_>],
    pass: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    match pass {
        None => {
            let mut control = SendAncillaryBuffer::default();
            Ok(rustix::net::sendmsg(fd, parts, &mut control, flags)?)
        }
        Some(passed) => {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [passed];
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("control buffer too small"));
            }
            Ok(rustix::net::sendmsg(fd, parts, &mut control, flags)?)
        }
    }
}

/// What one `recvmsg` delivered.
pub(crate) struct Datagram {
    /// Bytes written into the caller's buffer.
    pub len: usize,
    /// The datagram was longer than the buffer; the kernel dropped the rest.
    pub truncated: bool,
    /// The control data was cut short (more descriptors than we accept); the kernel closed
    /// those that did not fit.
    pub control_truncated: bool,
}

/// How many descriptors one datagram may carry. Ours carry at most one; the rest of the
/// space exists so a hostile sender's extra descriptors are received and closed rather
/// than counted against us.
const MAX_RECV_FDS: usize = 4;

/// Receives one datagram into `buf` without blocking. Descriptors that came with it are
/// pushed to `fds` (close-on-exec). A zero-length result with `fds` empty is either an
/// empty datagram or end-of-channel: see [`peer_hung_up`].
pub(crate) fn recv_datagram(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Datagram> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_RECV_FDS))];
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
    Ok(Datagram {
        len: msg.bytes.min(buf.len()),
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        control_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// Has every peer of this socket gone (end-of-channel)? Used to tell an empty datagram
/// from end-of-file, which `recvmsg` reports alike.
pub(crate) fn peer_hung_up(fd: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(&fd, PollFlags::IN | PollFlags::RDHUP)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
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
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

/// Duplicates `fd` (close-on-exec) at a number of 3 or more, so it can never land on a
/// child's stdin, stdout or stderr.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?)
}

// ----- out-of-line items: sealed memfds -------------------------------------------------

/// The seals an out-of-line item's memfd must carry before a reader maps it: with them the
/// contents and size can no longer change, so reading the mapping cannot fault (SIGBUS) or
/// observe a write.
#[cfg(target_os = "linux")]
const ITEM_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE)
    .union(SealFlags::SEAL);

/// A new, empty memfd that can be sealed: an out-of-line item is written into it, then
/// [`seal`]ed.
#[cfg(target_os = "linux")]
pub(crate) fn memfd() -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        "procq-item",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn memfd() -> io::Result<OwnedFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "items larger than one datagram need memfd (Linux only)",
    ))
}

/// Seals a memfd against every change, so a reader may map it.
#[cfg(target_os = "linux")]
pub(crate) fn seal(fd: &OwnedFd) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(fd, ITEM_SEALS)?)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn seal(_fd: &OwnedFd) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Why a received descriptor could not be read as an out-of-line item.
#[derive(Debug)]
pub(crate) enum MapError {
    /// Not a memfd carrying the write, shrink and grow seals.
    NotSealed,
    /// Its size differs from what the datagram announced.
    SizeMismatch,
    Io(io::Error),
}

/// A read-only mapping of a sealed memfd; unmapped on drop.
pub(crate) struct Mapping {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only memory that nothing can change (the memfd is sealed
// against writes and resizes), so sharing or moving the view across threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out `&[u8]`.
unsafe impl Sync for Mapping {}

impl std::ops::Deref for Mapping {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live PROT_READ mapping of exactly `len` bytes (checked
        // non-zero at creation) that stays mapped until `self` drops, and the sealed file
        // behind it cannot be written or truncated, so the bytes are initialized and
        // immutable for the lifetime of the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping made by `map_sealed_memfd` and not yet
        // unmapped; no borrow of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// Maps an out-of-line item's memfd for reading after checking it is sealed and exactly
/// `announced` bytes long (which the caller has already bounded).
#[cfg(target_os = "linux")]
pub(crate) fn map_sealed_memfd(fd: &OwnedFd, announced: u64) -> Result<Mapping, MapError> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| MapError::NotSealed)?;
    let required = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE;
    if !seals.contains(required) {
        return Err(MapError::NotSealed);
    }
    let stat = rustix::fs::fstat(fd).map_err(|e| MapError::Io(e.into()))?;
    let actual = stat.st_size as u64;
    if actual != announced || actual == 0 {
        return Err(MapError::SizeMismatch);
    }
    let len = usize::try_from(actual).map_err(|_| MapError::SizeMismatch)?;
    // SAFETY: a fresh mapping (null hint) of a file we hold open; `len` is its exact,
    // sealed size, so every mapped page is backed and no later truncation can fault.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            fd,
            0,
        )
    }
    .map_err(|e| MapError::Io(e.into()))?;
    Ok(Mapping { ptr, len })
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn map_sealed_memfd(_fd: &OwnedFd, _announced: u64) -> Result<Mapping, MapError> {
    Err(MapError::NotSealed)
}

// ----- cross-process counters and wake-ups ----------------------------------------------

/// A new eventfd, nonblocking and close-on-exec. In semaphore mode each read takes 1 from
/// the counter (a slot); otherwise a read takes the whole count.
#[cfg(target_os = "linux")]
pub(crate) fn eventfd(initial: u32, semaphore: bool) -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    let mut flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
    if semaphore {
        flags |= EventfdFlags::SEMAPHORE;
    }
    Ok(rustix::event::eventfd(initial, flags)?)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn eventfd(_initial: u32, _semaphore: bool) -> io::Result<OwnedFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "eventfd is Linux only",
    ))
}

/// Reads an eventfd without blocking (`WouldBlock` when its counter is 0).
pub(crate) fn eventfd_read(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let n = rustix::io::read(fd, &mut buf)?;
    if n != 8 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(u64::from_ne_bytes(buf))
}

/// Adds `n` to an eventfd's counter, waking its waiters.
pub(crate) fn eventfd_write(fd: BorrowedFd<'_>, n: u64) -> io::Result<()> {
    rustix::io::write(fd, &n.to_ne_bytes())?;
    Ok(())
}

/// How many 64-bit counters a [`SharedCounters`] region holds.
pub(crate) const COUNTERS: usize = 8;
const COUNTERS_BYTES: usize = COUNTERS * 8;

/// Atomic 64-bit counters in a memfd that every process holding it maps: what one process
/// adds, every other reads at once, with no system call.
pub(crate) struct SharedCounters {
    ptr: *mut std::ffi::c_void,
    fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through atomics, which are safe to share between
// threads (and processes); the pointer stays valid until drop.
unsafe impl Send for SharedCounters {}
// SAFETY: as above.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// A new region, all counters zero.
    pub(crate) fn create() -> io::Result<Self> {
        let fd = memfd()?;
        rustix::fs::ftruncate(&fd, COUNTERS_BYTES as u64)?;
        Self::map(fd)
    }

    /// Maps a region another process created (checked to be exactly the right size).
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Self> {
        let size = rustix::fs::fstat(&fd)?.st_size;
        if size != COUNTERS_BYTES as i64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a procq counter region",
            ));
        }
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: a fresh shared read-write mapping (null hint) of a file we hold open and
        // that is exactly COUNTERS_BYTES long, so every mapped byte is backed.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                COUNTERS_BYTES,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        Ok(SharedCounters { ptr, fd })
    }

    /// Counter `i` (< [`COUNTERS`]).
    pub(crate) fn get(&self, i: usize) -> &std::sync::atomic::AtomicI64 {
        assert!(i < COUNTERS, "counter index out of range");
        // SAFETY: the mapping is page-aligned and COUNTERS_BYTES long, so slot `i` is an
        // aligned, in-bounds 8-byte location that lives as long as `self`; it is only ever
        // accessed atomically (by this and other processes), which AtomicI64 permits.
        unsafe { &*self.ptr.cast::<std::sync::atomic::AtomicI64>().add(i) }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: unmaps the region mapped in `map`; no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, COUNTERS_BYTES) };
    }
}

// ----- handing descriptors to child processes -------------------------------------------

/// Arranges for `fd` to be inherited by the child `cmd` spawns, at the same number, and by
/// no other child: the descriptor stays close-on-exec in this process and the flag is
/// cleared only in the forked child, just before `exec` (what Python's `pass_fds` does).
/// `cmd` owns `fd` from now on; this process's copy closes when `cmd` is dropped.
pub(crate) fn inherit_in_child(cmd: &mut std::process::Command, fd: OwnedFd) -> RawFd {
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    let hook = move || -> io::Result<()> {
        // Only fcntl runs here: it is async-signal-safe, as code between fork and exec
        // must be.
        rustix::io::fcntl_setfd(fd.as_fd(), FdFlags::empty())?;
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only calls fcntl(2) on a
    // descriptor the closure owns; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(hook);
    }
    raw
}

/// Descriptors this process has already turned into channel halves, so that the same
/// inherited number can never be owned twice.
static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

/// Takes ownership of a descriptor this process inherited, by number. Fails if it is not
/// open or was claimed already (the caller checks what kind of file it is). The descriptor
/// is made close-on-exec again so it does not leak into this process's own children.
pub(crate) fn claim_inherited(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let claimed = claimed.get_or_insert_with(HashSet::new);
    if claimed.contains(&raw) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "descriptor already taken by an earlier from_env",
        ));
    }
    // SAFETY: the borrow is used only for the fcntl calls below, while no owner exists
    // (we hold the claim lock); an invalid number makes them fail with EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(borrowed)?;
    rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
    claimed.insert(raw);
    // SAFETY: the descriptor is open (fcntl succeeded), was inherited by this process for
    // procq, and the CLAIMED set guarantees this is the only OwnedFd ever made from it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_memfd(bytes: &[u8]) -> OwnedFd {
        use std::io::Write;
        let mut file = std::fs::File::from(memfd().unwrap());
        file.write_all(bytes).unwrap();
        let fd = OwnedFd::from(file);
        seal(&fd).unwrap();
        fd
    }

    #[test]
    fn memfd_round_trip_through_a_mapping() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let fd = sealed_memfd(&data);
        let map = map_sealed_memfd(&fd, data.len() as u64).unwrap();
        assert_eq!(&map[..], &data[..]);
        assert!(matches!(
            map_sealed_memfd(&fd, 5),
            Err(MapError::SizeMismatch)
        ));
    }

    #[test]
    fn shared_counters_are_shared_between_mappings() {
        let a = SharedCounters::create().unwrap();
        let b = SharedCounters::adopt(dup(a.fd()).unwrap()).unwrap();
        a.get(3).fetch_add(5, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(b.get(3).load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[test]
    fn unsealed_memfd_is_refused() {
        let fd = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&fd, b"hello").unwrap();
        assert!(matches!(map_sealed_memfd(&fd, 5), Err(MapError::NotSealed)));
    }
}
