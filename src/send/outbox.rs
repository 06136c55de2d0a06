//! The outbox's byte format: encoded items waiting for the kernel, how they are cut into
//! datagrams, and how leftovers are decoded back into items.
//!
//! The outbox holds a run of *records*. A record is either an entry exactly as an inline
//! datagram carries it (its header, then the item's bytes), so that a run of them is
//! written with no copy behind a datagram header, or an out-of-line marker ([`MARKER`],
//! the item's `u64` size and `u16` descriptor count). Descriptors wait, in record order, in
//! a side list: an out-of-line item's memfd, then each item's own descriptors.

use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;

use super::item::Encoded;
use crate::sys::memfd;
use crate::wire::{self, split_entry, FD_COUNT_LEN, MAX_FDS};

/// The length prefix that marks an out-of-line record (never a real entry's prefix:
/// entries are bounded by the datagram size).
pub(crate) const MARKER: u32 = u32::MAX;
/// Bytes of an out-of-line record: the marker, the size and the descriptor count.
const MARKER_LEN: usize = 4 + 8 + FD_COUNT_LEN;

/// Encoded items that have not reached the kernel, oldest first.
#[derive(Default, Debug)]
pub(crate) struct Pending {
    bytes: Vec<u8>,
    /// Every record's descriptors, in record order.
    fds: Vec<OwnedFd>,
    items: usize,
}

/// One record of a [`Pending`] run.
#[derive(Debug, PartialEq, Eq)]
enum Record<'a> {
    /// An entry's item bytes and its descriptor count.
    Entry(&'a [u8], usize),
    /// An out-of-line item's size and its own descriptor count (its memfd comes first).
    OutOfLine(u64, usize),
}

impl Record<'_> {
    /// Descriptors the record takes from the side list.
    fn descriptors(&self) -> usize {
        match self {
            Record::Entry(_, fds) => *fds,
            Record::OutOfLine(_, fds) => 1 + fds,
        }
    }
}

/// Reads the record at `at`; returns it and where the next one starts.
fn record(bytes: &[u8], at: usize) -> (Record<'_>, usize) {
    let prefix = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if prefix == MARKER {
        let size = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("8 bytes"));
        let fds = u16::from_le_bytes(bytes[at + 12..at + 14].try_into().expect("2 bytes"));
        (Record::OutOfLine(size, fds as usize), at + MARKER_LEN)
    } else {
        let e = split_entry(&bytes[at..]).expect("the outbox holds whole entries");
        let start = at + e.header;
        let end = start + e.len;
        (Record::Entry(&bytes[start..end], e.fds), end)
    }
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.items == 0
    }

    pub(crate) fn items(&self) -> usize {
        self.items
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Appends `count` entries given exactly as an inline datagram carries them, with the
    /// descriptors their items carry; returns their cost.
    pub(crate) fn push_entries(
        &mut self,
        count: usize,
        entries: &[u8],
        fds: Vec<OwnedFd>,
    ) -> usize {
        self.bytes.extend_from_slice(entries);
        self.fds.extend(fds);
        self.items += count;
        entries.len()
    }

    /// Appends an encoded item; returns its cost.
    pub(crate) fn push(&mut self, item: Encoded) -> usize {
        let cost = item.cost();
        match item {
            Encoded::Inline { entry, fds } => {
                self.bytes.extend_from_slice(&entry);
                self.fds.extend(fds);
            }
            Encoded::OutOfLine { memfd, size, fds } => {
                self.push_out_of_line(memfd, size, fds);
            }
        }
        self.items += 1;
        cost
    }

    /// Appends an out-of-line record (without counting it: callers do).
    fn push_out_of_line(&mut self, memfd: OwnedFd, size: u64, fds: Vec<OwnedFd>) {
        let count = u16::try_from(fds.len()).expect("callers bound descriptors per item");
        self.bytes.extend_from_slice(&MARKER.to_le_bytes());
        self.bytes.extend_from_slice(&size.to_le_bytes());
        self.bytes.extend_from_slice(&count.to_le_bytes());
        self.fds.push(memfd);
        self.fds.extend(fds);
    }

    /// Appends an out-of-line item a receiver handed back.
    pub(crate) fn push_handed_back(
        &mut self,
        memfd: OwnedFd,
        size: u64,
        fds: Vec<OwnedFd>,
    ) -> usize {
        self.push_out_of_line(memfd, size, fds);
        self.items += 1;
        usize::try_from(size).unwrap_or(usize::MAX)
    }

    /// Moves everything in `other` to the end of this run.
    pub(crate) fn append(&mut self, other: &mut Pending) {
        self.bytes.extend_from_slice(&other.bytes);
        self.fds.append(&mut other.fds);
        self.items += other.items;
        other.clear();
    }

    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.fds.clear();
        self.items = 0;
    }

    /// Closes the first `n` descriptors (written with their datagram).
    pub(crate) fn close_front_fds(&mut self, n: usize) {
        self.fds.drain(..n.min(self.fds.len()));
    }

    /// The records from byte `from` on, as a run of their own (with every descriptor left:
    /// those of records before `from` were closed as they were written); this run is
    /// emptied.
    pub(crate) fn split_from(&mut self, from: usize) -> Pending {
        let mut rest = Pending::default();
        let mut at = from;
        while at < self.bytes.len() {
            let (_, next) = record(&self.bytes, at);
            rest.items += 1;
            at = next;
        }
        rest.bytes = self.bytes[from..].to_vec();
        rest.fds = std::mem::take(&mut self.fds);
        self.clear();
        rest
    }

    /// Decodes every record back into an item, oldest first, with its descriptors; counts
    /// those that do not decode (a `Serialize` / `Deserialize` pair that does not
    /// round-trip), whose descriptors are closed.
    pub(crate) fn decode_all<T: DeserializeOwned>(self, max_item: u64) -> (Vec<T>, usize) {
        let mut items = Vec::with_capacity(self.items);
        let mut undecodable = 0;
        let mut fds = self.fds.into_iter();
        let mut at = 0;
        while at < self.bytes.len() {
            let (rec, next) = record(&self.bytes, at);
            at = next;
            let decoded = match rec {
                Record::Entry(bytes, n) => {
                    let own: Vec<OwnedFd> = fds.by_ref().take(n).collect();
                    wire::decode::<T>(bytes, own, None).ok()
                }
                Record::OutOfLine(size, n) => {
                    let memfd = fds.next();
                    let own: Vec<OwnedFd> = fds.by_ref().take(n).collect();
                    match memfd {
                        Some(fd) if size <= max_item => match memfd::map_sealed(&fd, size) {
                            Ok(map) => {
                                let map = std::sync::Arc::new(map);
                                wire::decode::<T>(&map, own, Some(map.clone())).ok()
                            }
                            Err(_) => None,
                        },
                        _ => None,
                    }
                }
            };
            match decoded {
                Some(item) => items.push(item),
                None => undecodable += 1,
            }
        }
        (items, undecodable)
    }
}

/// What the next datagram carries: the records `[start, end)` of a run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) end: usize,
    pub(crate) items: usize,
    /// Bytes these records counted against the buffer limit.
    pub(crate) cost: usize,
    /// `Some(size)` for an out-of-line item (its datagram carries nothing else).
    pub(crate) out_of_line: Option<u64>,
    /// Descriptors the datagram carries (for an out-of-line item: its memfd, then its own).
    pub(crate) fds: usize,
}

/// Chooses the next datagram's records from `run`, starting at `start` (< `run.len()`):
/// one out-of-line item alone, or as many entries as fit `body_bytes`, `batch_items` and the
/// kernel's limit on descriptors per message (at least one).
pub(crate) fn plan(run: &[u8], start: usize, body_bytes: usize, batch_items: usize) -> Plan {
    if let (Record::OutOfLine(size, fds), end) = record(run, start) {
        return Plan {
            end,
            items: 1,
            cost: usize::try_from(size).unwrap_or(usize::MAX),
            out_of_line: Some(size),
            fds: 1 + fds,
        };
    }
    let mut end = start;
    let mut items = 0;
    let mut fds = 0;
    while end < run.len() && items < batch_items {
        let (rec, next) = record(run, end);
        if matches!(rec, Record::OutOfLine(..)) {
            break;
        }
        if end > start && (next - start > body_bytes || fds + rec.descriptors() > MAX_FDS) {
            break;
        }
        fds += rec.descriptors();
        end = next;
        items += 1;
    }
    Plan {
        end,
        items,
        cost: end - start,
        out_of_line: None,
        fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of entries of `len` bytes carrying `fds` descriptors (`Ok((len, fds))`), or
    /// out-of-line items of `size` (`Err(size)`).
    fn run(records: &[Result<(usize, usize), u64>]) -> Pending {
        let mut p = Pending::default();
        for r in records {
            match *r {
                Ok((len, n)) => {
                    let (header, header_len) = wire::entry_header(len, n);
                    let mut entry = header[..header_len].to_vec();
                    entry.extend(std::iter::repeat_n(7u8, len));
                    let fds = (0..n).map(|_| memfd::create("t").unwrap()).collect();
                    p.push_entries(1, &entry, fds);
                }
                Err(size) => {
                    let memfd = memfd::create("t").unwrap();
                    p.push(Encoded::OutOfLine {
                        memfd,
                        size,
                        fds: Vec::new(),
                    });
                }
            }
        }
        p
    }

    #[test]
    fn entries_are_packed_up_to_the_body_size() {
        // Entries of 4 + 100 bytes: three fit in 320 bytes, the fourth does not.
        let p = run(&[Ok((100, 0)), Ok((100, 0)), Ok((100, 0)), Ok((100, 0))]);
        let first = plan(p.bytes(), 0, 320, usize::MAX);
        assert_eq!(
            first,
            Plan {
                end: 312,
                items: 3,
                cost: 312,
                out_of_line: None,
                fds: 0,
            }
        );
        let second = plan(p.bytes(), first.end, 320, usize::MAX);
        assert_eq!(second.items, 1);
        assert_eq!(second.end, p.bytes().len());
    }

    #[test]
    fn batch_items_caps_a_datagram() {
        let p = run(&[Ok((1, 0)), Ok((1, 0)), Ok((1, 0))]);
        let plans: Vec<usize> = std::iter::successors(Some(plan(p.bytes(), 0, 1000, 1)), |prev| {
            (prev.end < p.bytes().len()).then(|| plan(p.bytes(), prev.end, 1000, 1))
        })
        .map(|pl| pl.items)
        .collect();
        assert_eq!(plans, vec![1, 1, 1]);
    }

    #[test]
    fn an_entry_larger_than_the_body_still_goes_alone() {
        let p = run(&[Ok((500, 0))]);
        assert_eq!(plan(p.bytes(), 0, 100, usize::MAX).items, 1);
    }

    #[test]
    fn out_of_line_items_travel_alone_and_cut_a_batch() {
        let p = run(&[Ok((10, 0)), Ok((10, 0)), Err(1 << 20), Ok((10, 0))]);
        let a = plan(p.bytes(), 0, 1000, usize::MAX);
        assert_eq!((a.items, a.out_of_line), (2, None));
        let b = plan(p.bytes(), a.end, 1000, usize::MAX);
        assert_eq!(
            (b.items, b.out_of_line, b.cost, b.fds),
            (1, Some(1 << 20), 1 << 20, 1)
        );
        let c = plan(p.bytes(), b.end, 1000, usize::MAX);
        assert_eq!((c.items, c.end), (1, p.bytes().len()));
    }

    #[test]
    fn a_batch_is_cut_before_it_carries_too_many_descriptors() {
        let p = run(&[Ok((1, 200)), Ok((1, 50)), Ok((1, 10)), Ok((1, 0))]);
        let a = plan(p.bytes(), 0, 10_000, usize::MAX);
        assert_eq!((a.items, a.fds), (2, 250));
        let b = plan(p.bytes(), a.end, 10_000, usize::MAX);
        assert_eq!((b.items, b.fds), (2, 10));
    }

    #[test]
    fn split_from_keeps_the_unwritten_records_and_their_descriptors() {
        let mut p = run(&[Ok((10, 2)), Err(5), Ok((10, 1))]);
        let a = plan(p.bytes(), 0, 1000, usize::MAX);
        p.close_front_fds(a.fds);
        let rest = p.split_from(a.end);
        assert_eq!(rest.items(), 2);
        assert_eq!(rest.fds.len(), 2); // the memfd and one descriptor
        assert!(p.is_empty());
    }

    #[test]
    fn leftovers_decode_back_into_items() {
        let mut p = Pending::default();
        for i in 0..3u32 {
            let mut entry = Vec::new();
            let fds = wire::encode::append_entry(&i, &mut entry, 100).unwrap();
            p.push_entries(1, &entry, fds);
        }
        let mut entry = Vec::new();
        wire::encode::append_raw_entry(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &mut entry);
        p.push_entries(1, &entry, Vec::new());
        let (items, bad) = p.decode_all::<u32>(1 << 20);
        assert_eq!(items, vec![0, 1, 2]);
        assert_eq!(bad, 1);
    }
}
