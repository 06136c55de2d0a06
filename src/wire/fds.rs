//! How descriptors inside an item travel: while procq encodes an item, every
//! [`Fd`](crate::Fd) (and every handle) in it hands a duplicate of its descriptor to the
//! encoding under way and writes only its index; while procq decodes an item, each index is
//! turned back into the descriptor that came with the datagram. Both are per thread, so an
//! `Fd` serialized by anything else (`serde_json`, say) fails with a clear error instead of
//! becoming a number.

use std::cell::{Cell, RefCell};
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
    /// The descriptors of the items being encoded on this thread, innermost last (an item
    /// whose `Serialize` sends another item nests). Usually empty: most items carry none.
    static ENCODED: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
    /// Where the innermost encoding's descriptors start in `ENCODED`, and how long
    /// `ENCODED` is, kept in cells so that an item without descriptors never borrows it.
    static ENCODING_FROM: Cell<Option<usize>> = const { Cell::new(None) };
    static ENCODED_LEN: Cell<usize> = const { Cell::new(0) };
    /// The context of a decoding whose item carried descriptors or lies in a mapping.
    static DECODING: RefCell<Option<Decoding>> = const { RefCell::new(None) };
    /// Inside a decoding of an item with no descriptors and no mapping (the common case,
    /// kept to a few cell writes): `take` refuses, `share` copies.
    static PLAIN: Cell<bool> = const { Cell::new(false) };
    /// Why a part of such an item was refused.
    static PLAIN_REFUSAL: Cell<Option<String>> = const { Cell::new(None) };
}

/// What an `Fd` serialized outside procq says.
pub(crate) const NOT_IN_PROCQ: &str =
    "procq::Fd (or a procq handle) can only be sent in an item through procq";

/// Runs `encode` with a fresh descriptor list for the item; returns what it returned and
/// the descriptors the item put in (duplicates, owned).
pub(crate) fn encoding<R>(encode: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    // An encoding under way on this thread (a `Serialize` that sends another item) keeps
    // its descriptors below ours.
    let from = ENCODED_LEN.get();
    let outer = ENCODING_FROM.replace(Some(from));
    // Restores the outer state even if `encode` panics (closing what it put in).
    let _restore = Restore(move || {
        ENCODING_FROM.set(outer);
        if ENCODED_LEN.get() != from {
            ENCODED_LEN.set(from);
            let _ = ENCODED.try_with(|e| e.borrow_mut().truncate(from));
        }
    });
    let result = encode();
    let fds = if ENCODED_LEN.get() == from {
        Vec::new()
    } else {
        ENCODED_LEN.set(from);
        ENCODED.with(|e| e.borrow_mut().split_off(from))
    };
    (result, fds)
}

/// Runs its closure when dropped: thread-local state put back on every way out.
struct Restore<F: FnMut()>(F);

impl<F: FnMut()> Drop for Restore<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Called by `Serialize`: adds a duplicate of `fd` to the item being encoded and returns
/// its index, or fails outside a procq encoding.
pub(crate) fn put(fd: BorrowedFd<'_>) -> Result<u32, String> {
    if ENCODING_FROM.get().is_none() {
        return Err(NOT_IN_PROCQ.to_string());
    }
    let dup = socket::dup(fd).map_err(|e| format!("duplicating a descriptor: {e}"))?;
    put_owned(dup)
}

/// Called by `Serialize`: adds `fd` (already a duplicate) to the item being encoded and
/// returns its index, or fails outside a procq encoding.
pub(crate) fn put_owned(fd: OwnedFd) -> Result<u32, String> {
    let Some(from) = ENCODING_FROM.get() else {
        return Err(NOT_IN_PROCQ.to_string());
    };
    let len = ENCODED.with(|e| {
        let mut e = e.borrow_mut();
        e.push(fd);
        e.len()
    });
    ENCODED_LEN.set(len);
    Ok((len - 1 - from) as u32)
}

/// Runs `decode` with the descriptors that came with the item; those it does not take are
/// closed when it returns. Returns what `decode` returned and why a part of the item was
/// refused, if a part said so.
pub(crate) fn decoding<R>(
    fds: Vec<OwnedFd>,
    mapping: Option<Arc<Mapping>>,
    decode: impl FnOnce() -> R,
) -> (R, Option<String>) {
    if fds.is_empty() && mapping.is_none() {
        let outer = PLAIN.replace(true);
        let result = {
            let _restore = Restore(move || PLAIN.set(outer));
            decode()
        };
        return (result, PLAIN_REFUSAL.take());
    }
    let context = Decoding {
        fds: fds.into_iter().map(Some).collect(),
        refusal: None,
        mapping,
    };
    let outer = DECODING.with(|d| d.replace(Some(context)));
    let outer_plain = PLAIN.replace(false);
    let mut outer = Some(outer);
    // Puts the outer context back, even if `decode` panics; hands ours out.
    let mut ours = None;
    let result = {
        let _restore = Restore(|| {
            PLAIN.set(outer_plain);
            let put_back = outer.take().flatten();
            ours = DECODING.try_with(|d| d.replace(put_back)).ok().flatten();
        });
        decode()
    };
    (result, ours.and_then(|c| c.refusal))
}

/// Called by `Deserialize` with bytes it borrows from the item: when they lie in the
/// out-of-line item's mapping, a [`Bytes`] that shares that memory (no copy), else `None`.
pub(crate) fn share(borrowed: &[u8]) -> Option<Bytes> {
    if PLAIN.get() {
        return None;
    }
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
    if PLAIN.get() {
        let first = PLAIN_REFUSAL.take();
        PLAIN_REFUSAL.set(Some(first.unwrap_or_else(|| reason.clone())));
        return reason;
    }
    DECODING.with(|d| {
        if let Some(context) = d.borrow_mut().as_mut() {
            context.refusal.get_or_insert_with(|| reason.clone());
        }
    });
    reason
}

/// Called by `Deserialize`: takes the descriptor at `index` of the item being decoded.
pub(crate) fn take(index: u32) -> Result<OwnedFd, String> {
    if PLAIN.get() {
        return Err(refuse(not_carried(index)));
    }
    let taken = DECODING.with(|d| match d.borrow_mut().as_mut() {
        Some(context) => context
            .fds
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| not_carried(index)),
        None => Err(NOT_IN_PROCQ.to_string()),
    });
    taken.map_err(refuse)
}

fn not_carried(index: u32) -> String {
    format!("the item names descriptor {index}, which it did not carry (or twice)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn nested_encodings_number_their_own_descriptors() {
        let (a, b) = std::io::pipe().unwrap();
        let ((outer_index, inner), outer) = encoding(|| {
            let first = put(a.as_fd()).unwrap();
            let inner = encoding(|| put(b.as_fd()).unwrap());
            (first, inner)
        });
        assert_eq!(outer_index, 0);
        assert_eq!((inner.0, inner.1.len()), (0, 1));
        assert_eq!(outer.len(), 1);
        assert!(put(a.as_fd()).is_err(), "outside an encoding");
    }

    #[test]
    fn a_panicking_encoding_or_decoding_leaves_no_state_behind() {
        let (a, _b) = std::io::pipe().unwrap();
        let _ = std::panic::catch_unwind(|| {
            encoding(|| {
                put(a.as_fd()).unwrap();
                panic!("a Serialize that panics");
            })
        });
        assert_eq!(put(a.as_fd()), Err(NOT_IN_PROCQ.to_string()));
        let (_, fds) = encoding(|| ());
        assert!(fds.is_empty(), "nothing left over from the panic");

        let _ = std::panic::catch_unwind(|| decoding(Vec::new(), None, || panic!("plain")));
        let carried = socket::dup(a.as_fd()).unwrap();
        let _ = std::panic::catch_unwind(move || decoding(vec![carried], None, || panic!("fds")));
        assert_eq!(take(0).unwrap_err(), NOT_IN_PROCQ);
        assert!(share(b"x").is_none());
    }
}
