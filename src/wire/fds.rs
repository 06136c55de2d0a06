//! How descriptors inside an item travel: while procq encodes an item, every
//! [`Fd`](crate::Fd) (and every handle) in it hands a duplicate of its descriptor to the
//! encoding under way and writes only its index; while procq decodes an item, each index is
//! turned back into the descriptor that came with the datagram. Both are per thread, so an
//! `Fd` serialized by anything else (`serde_json`, say) fails with a clear error instead of
//! becoming a number.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;

use crate::sys::memfd::Mapping;
use crate::sys::socket;

/// The item being decoded: its descriptors, and why a part of it was refused (the
/// decoder itself keeps no message: postcard drops a custom error's text).
struct Decoding {
    fds: Vec<Option<OwnedFd>>,
    refusal: Option<String>,
    /// The out-of-line item's mapping, which the item's bytes are borrowed from.
    mapping: Option<Arc<Mapping>>,
}

thread_local! {
    static ENCODING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static DECODING: RefCell<Option<Decoding>> = const { RefCell::new(None) };
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

/// Called by `Serialize`: adds `fd` (already a duplicate) to the item being encoded and
/// returns its index, or fails outside a procq encoding.
pub(crate) fn put_owned(fd: OwnedFd) -> Result<u32, String> {
    ENCODING.with(|e| match e.borrow_mut().as_mut() {
        Some(list) => {
            list.push(fd);
            Ok((list.len() - 1) as u32)
        }
        None => Err(NOT_IN_PROCQ.to_string()),
    })
}

/// Runs `decode` with the descriptors that came with the item; those it does not take are
/// closed when it returns. Returns what `decode` returned and why a part of the item was
/// refused, if a part said so.
pub(crate) fn decoding<R>(
    fds: Vec<OwnedFd>,
    mapping: Option<Arc<Mapping>>,
    decode: impl FnOnce() -> R,
) -> (R, Option<String>) {
    let context = Decoding {
        fds: fds.into_iter().map(Some).collect(),
        refusal: None,
        mapping,
    };
    let outer = DECODING.with(|d| d.replace(Some(context)));
    let result = decode();
    let context = DECODING.with(|d| d.replace(outer));
    (result, context.and_then(|c| c.refusal))
}

/// Called by `Deserialize` with bytes it borrows from the item: when they lie in the
/// out-of-line item's mapping, a [`Bytes`] that shares that memory (no copy), else `None`.
pub(crate) fn share(borrowed: &[u8]) -> Option<Bytes> {
    DECODING.with(|d| {
        let d = d.borrow();
        let map = d.as_ref()?.mapping.as_ref()?;
        let base = map.as_ptr() as usize;
        let at = borrowed.as_ptr() as usize;
        if at < base || at + borrowed.len() > base + map.len() {
            return None;
        }
        Some(Bytes::from_owner(MappedRange {
            map: map.clone(),
            start: at - base,
            len: borrowed.len(),
        }))
    })
}

/// A range of a mapping, owned: what a shared [`Bytes`] points into.
struct MappedRange {
    map: Arc<Mapping>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

/// Called by `Deserialize` when it refuses what the item holds: the reason the receiver
/// gets (returned with the decoder's error). Returns the reason, for that error.
pub(crate) fn refuse(reason: String) -> String {
    DECODING.with(|d| {
        if let Some(context) = d.borrow_mut().as_mut() {
            context.refusal.get_or_insert_with(|| reason.clone());
        }
    });
    reason
}

/// Called by `Deserialize`: takes the descriptor at `index` of the item being decoded.
pub(crate) fn take(index: u32) -> Result<OwnedFd, String> {
    let taken = DECODING.with(|d| match d.borrow_mut().as_mut() {
        Some(context) => context
            .fds
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                format!("the item names descriptor {index}, which it did not carry (or twice)")
            }),
        None => Err(NOT_IN_PROCQ.to_string()),
    });
    taken.map_err(refuse)
}
