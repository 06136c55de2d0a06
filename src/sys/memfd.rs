//! Sealed memfds: an out-of-line item is written into one, sealed against every change, and
//! its descriptor travels with the datagram; the reader maps it read-only.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

/// The seals an out-of-line item's memfd must carry before a reader maps it: with them the
/// contents and size can no longer change, so reading the mapping cannot fault (SIGBUS) or
/// observe a write.
const ITEM_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE)
    .union(SealFlags::SEAL);

/// A new, empty memfd that can be sealed, named `name` (shown in `/proc/PID/fd`).
pub(crate) fn create(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        name,
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?)
}

/// Seals an item's memfd against every change, so a reader may map it.
pub(crate) fn seal_item(fd: &OwnedFd) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(fd, ITEM_SEALS)?)
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
        // SAFETY: `ptr`/`len` describe a mapping made by `map_sealed` and not yet unmapped;
        // no borrow of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// Maps an out-of-line item's memfd for reading after checking it is sealed and exactly
/// `announced` bytes long (which the caller has already bounded).
pub(crate) fn map_sealed(fd: &OwnedFd, announced: u64) -> Result<Mapping, MapError> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| MapError::NotSealed)?;
    if !seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE) {
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
            // Populated: the pages are mapped in one call instead of one fault each.
            rustix::mm::MapFlags::SHARED | rustix::mm::MapFlags::POPULATE,
            fd.as_fd(),
            0,
        )
    }
    .map_err(|e| MapError::Io(e.into()))?;
    Ok(Mapping { ptr, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_memfd(bytes: &[u8]) -> OwnedFd {
        use std::io::Write;
        let mut file = std::fs::File::from(create("test").unwrap());
        file.write_all(bytes).unwrap();
        let fd = OwnedFd::from(file);
        seal_item(&fd).unwrap();
        fd
    }

    #[test]
    fn memfd_round_trip_through_a_mapping() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let fd = sealed_memfd(&data);
        let map = map_sealed(&fd, data.len() as u64).unwrap();
        assert_eq!(&map[..], &data[..]);
        assert!(matches!(map_sealed(&fd, 5), Err(MapError::SizeMismatch)));
    }

    #[test]
    fn unsealed_memfd_is_refused() {
        let fd = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&fd, b"hello").unwrap();
        assert!(matches!(map_sealed(&fd, 5), Err(MapError::NotSealed)));
    }
}
