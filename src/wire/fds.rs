//! How descriptors inside an item travel: while procq encodes an item, every
//! [`Fd`](crate::Fd) (and every handle) in it hands a duplicate of its descriptor to the
//! encoding under way and writes only its index; while procq decodes an item, each index is
//! turned back into the descriptor that came with the datagram. Both are per thread, so an
//! `Fd` serialized by anything else (`serde_json`, say) fails with a clear error instead of
//! becoming a number.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::sys::socket;

thread_local! {
    static ENCODING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static DECODING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// What an `Fd` serialized outside procq says.
pub(crate) const NOT_IN_PROCQ: &str =
    "procq::Fd (or a procq handle) can only be sent in an item through procq";

/// Runs `encode` with a fresh descriptor list for the item; returns what it returned and
/// the descriptors the item put in (duplicates, owned).
pub(crate) fn encoding<R>(encode: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    // Save the list of an encoding under way on this thread (a `Serialize` that sends
    // another item) and put it back after.
    let outer = ENCODING.with(|e| e.replace(Some(Vec::new())));
    let result = encode();
    let fds = ENCODING.with(|e| e.replace(outer)).unwrap_or_default();
    (result, fds)
}

/// Called by `Serialize`: adds a duplicate of `fd` to the item being encoded and returns
/// its index, or fails outside a procq encoding.
pub(crate) fn put(fd: BorrowedFd<'_>) -> Result<u32, String> {
    ENCODING.with(|e| match e.borrow_mut().as_mut() {
        Some(list) => {
            let dup = socket::dup(fd).map_err(|e| format!("duplicating a descriptor: {e}"))?;
            list.push(dup);
            Ok((list.len() - 1) as u32)
        }
        None => Err(NOT_IN_PROCQ.to_string()),
    })
}

/// Runs `decode` with the descriptors that came with the item; those it does not take are
/// closed when it returns.
pub(crate) fn decoding<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> R {
    let list = fds.into_iter().map(Some).collect();
    let outer = DECODING.with(|d| d.replace(Some(list)));
    let result = decode();
    drop(DECODING.with(|d| d.replace(outer)));
    result
}

/// Called by `Deserialize`: takes the descriptor at `index` of the item being decoded.
pub(crate) fn take(index: u32) -> Result<OwnedFd, String> {
    DECODING.with(|d| match d.borrow_mut().as_mut() {
        Some(list) => list
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                format!("the item names descriptor {index}, which it did not carry (or twice)")
            }),
        None => Err(NOT_IN_PROCQ.to_string()),
    })
}
