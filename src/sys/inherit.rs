//! Handing descriptors to a child process, and taking them back there.
//!
//! A descriptor reaches exactly one child: it stays close-on-exec in this process and the
//! flag is cleared only in the forked child, just before `exec` (what Python's `pass_fds`
//! does). The child finds it by number, and before owning it checks that the number still
//! names the very file the parent passed (device and inode, and an eventfd's id): a
//! grandchild that inherited the environment variable but not the descriptor must not take,
//! and later close, whatever file now has that number.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::io::FdFlags;

/// What identifies an open file across processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// Every eventfd shares one inode; the kernel numbers them in `fdinfo` instead.
    pub(crate) eventfd_id: Option<u64>,
}

/// The identity of `fd`.
pub(crate) fn identity(fd: BorrowedFd<'_>) -> io::Result<Identity> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(Identity {
        dev: stat.st_dev,
        ino: stat.st_ino,
        eventfd_id: eventfd_id(fd.as_raw_fd()),
    })
}

/// The kernel's id of an eventfd (Linux 6.5 and later show it in `fdinfo`); `None` for
/// anything else, or when `/proc` is not there.
fn eventfd_id(raw: RawFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("eventfd-id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Arranges for `fd` to be inherited by the child `cmd` spawns, at the same number, and by
/// no other child. `cmd` owns `fd` from now on; this process's copy closes when `cmd` is
/// dropped.
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

/// Descriptors this process has already turned into handles, so that the same inherited
/// number can never be owned twice.
static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

/// Why [`claim`] refused the descriptors.
#[derive(Debug)]
pub(crate) struct ClaimError {
    pub(crate) reason: String,
}

/// Takes ownership of inherited descriptors, by number, all or none: each must be open,
/// not claimed already, and have the identity recorded when it was passed. Nothing is
/// owned (so nothing can be closed) until every one of them has been checked. Claimed
/// descriptors are made close-on-exec again, so they do not leak into this process's own
/// children.
pub(crate) fn claim(wanted: &[(RawFd, Identity)]) -> Result<Vec<OwnedFd>, ClaimError> {
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let claimed = claimed.get_or_insert_with(HashSet::new);
    for (index, &(raw, expected)) in wanted.iter().enumerate() {
        let fail = |reason: String| ClaimError { reason };
        if raw < 0 {
            return Err(fail(format!("{raw} is not a descriptor number")));
        }
        if claimed.contains(&raw) || wanted[..index].iter().any(|&(r, _)| r == raw) {
            return Err(fail(format!("descriptor {raw} was already taken")));
        }
        // SAFETY: the borrow is used only for fcntl/fstat below, while no owner of this
        // number exists in procq (we hold the claim lock and it is not claimed); a closed
        // number makes them fail with EBADF.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        if rustix::io::fcntl_getfd(borrowed).is_err() {
            return Err(fail(format!(
                "descriptor {raw} is not open in this process (the variable was inherited \
                 without it)"
            )));
        }
        let found = identity(borrowed).map_err(|e| fail(format!("descriptor {raw}: {e}")))?;
        // Every eventfd shares one anonymous inode: where the parent saw an eventfd id, the
        // same id must be here. (Kernels before 6.5 show no ids; there the inode check is
        // all there is for an eventfd.)
        let same = found.dev == expected.dev
            && found.ino == expected.ino
            && (expected.eventfd_id.is_none() || found.eventfd_id == expected.eventfd_id);
        if !same {
            return Err(fail(format!(
                "descriptor {raw} is another file than the one that was passed"
            )));
        }
    }
    let mut owned = Vec::with_capacity(wanted.len());
    for &(raw, _) in wanted {
        claimed.insert(raw);
        // SAFETY: checked above: open, the very file the parent passed to this process for
        // procq, and never claimed before (the CLAIMED set makes this the only OwnedFd
        // ever made from it).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = rustix::io::fcntl_setfd(&fd, FdFlags::CLOEXEC);
        owned.push(fd);
    }
    Ok(owned)
}
