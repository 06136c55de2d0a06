//! The outbox's byte format: encoded items waiting for the kernel, how they are cut into
//! datagrams, and how leftovers are decoded back into items.
//!
//! The outbox holds a run of *records*. A record is either an entry exactly as an inline
//! datagram carries it (`u32` length, then the item's bytes), so that a run of them is
//! written with no copy behind a header, or an out-of-line marker ([`MARKER`], then the
//! item's `u64` size) whose memfd waits, in order, in a side queue.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;

use super::item::Encoded;
use crate::sys::memfd;
use crate::wire::{self, ENTRY_PREFIX};

/// The length prefix that marks an out-of-line record (never a real entry length: entries
/// are bounded by the datagram size).
pub(crate) const MARKER: u32 = u32::MAX;
/// Bytes of an out-of-line record: the marker and the size.
const MARKER_LEN: usize = 4 + 8;

/// Encoded items that have not reached the kernel, oldest first.
#[derive(Default, Debug)]
pub(crate) struct Pending {
    bytes: Vec<u8>,
    memfds: VecDeque<OwnedFd>,
    items: usize,
}

/// One record of a [`Pending`] run.
#[derive(Debug, PartialEq, Eq)]
enum Record<'a> {
    Entry(&'a [u8]),
    OutOfLine(u64),
}

/// Reads the record at `at`; returns it and where the next one starts.
fn record(bytes: &[u8], at: usize) -> (Record<'_>, usize) {
    let prefix = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if prefix == MARKER {
        let size = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("8 bytes"));
        (Record::OutOfLine(size), at + MARKER_LEN)
    } else {
        let start = at + ENTRY_PREFIX;
        let end = start + prefix as usize;
        (Record::Entry(&bytes[start..end]), end)
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

    /// Appends an encoded item; returns its cost.
    pub(crate) fn push(&mut self, item: Encoded) -> usize {
        let cost = item.cost();
        match item {
            Encoded::Inline(entry) => self.bytes.extend_from_slice(&entry),
            Encoded::OutOfLine { memfd, size } => {
                self.bytes.extend_from_slice(&MARKER.to_le_bytes());
                self.bytes.extend_from_slice(&size.to_le_bytes());
                self.memfds.push_back(memfd);
            }
        }
        self.items += 1;
        cost
    }

    /// Appends `count` entries given exactly as an inline datagram carries them; returns
    /// their cost.
    pub(crate) fn push_entries(&mut self, count: usize, entries: &[u8]) -> usize {
        self.bytes.extend_from_slice(entries);
        self.items += count;
        entries.len()
    }

    /// Moves everything in `other` to the end of this run.
    pub(crate) fn append(&mut self, other: &mut Pending) {
        self.bytes.extend_from_slice(&other.bytes);
        self.memfds.append(&mut other.memfds);
        self.items += other.items;
        other.clear();
    }

    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.memfds.clear();
        self.items = 0;
    }

    /// The records from byte `from` on, as a run of their own.
    pub(crate) fn split_from(&mut self, from: usize) -> Pending {
        let mut rest = Pending::default();
        let mut at = from;
        while at < self.bytes.len() {
            let (_, next) = record(&self.bytes, at);
            rest.items += 1;
            at = next;
        }
        rest.bytes = self.bytes[from..].to_vec();
        // Memfds already written were popped as their records went out.
        rest.memfds = std::mem::take(&mut self.memfds);
        self.clear();
        rest
    }

    /// The oldest memfd, which belongs to the next out-of-line record.
    pub(crate) fn front_memfd(&self) -> Option<&OwnedFd> {
        self.memfds.front()
    }

    /// Forgets the oldest memfd once its record has been written.
    pub(crate) fn pop_memfd(&mut self) {
        self.memfds.pop_front();
    }

    /// Decodes every record back into an item, oldest first; counts those that do not
    /// decode (a `Serialize`/`Deserialize` pair that does not round-trip).
    pub(crate) fn decode_all<T: DeserializeOwned>(mut self, max_item: u64) -> (Vec<T>, usize) {
        let mut items = Vec::with_capacity(self.items);
        let mut undecodable = 0;
        let mut at = 0;
        while at < self.bytes.len() {
            let (rec, next) = record(&self.bytes, at);
            at = next;
            let decoded = match rec {
                Record::Entry(bytes) => wire::decode::<T>(bytes).ok(),
                Record::OutOfLine(size) => match self.memfds.pop_front() {
                    Some(fd) if size <= max_item => match memfd::map_sealed(&fd, size) {
                        Ok(map) => wire::decode::<T>(&map).ok(),
                        Err(_) => None,
                    },
                    _ => None,
                },
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
}

/// Chooses the next datagram's records from `run`, starting at `start` (< `run.len()`):
/// one out-of-line item alone, or as many entries as fit `body_bytes` and `batch_items`
/// (at least one).
pub(crate) fn plan(run: &[u8], start: usize, body_bytes: usize, batch_items: usize) -> Plan {
    if let (Record::OutOfLine(size), end) = record(run, start) {
        return Plan {
            end,
            items: 1,
            cost: usize::try_from(size).unwrap_or(usize::MAX),
            out_of_line: Some(size),
        };
    }
    let mut end = start;
    let mut items = 0;
    while end < run.len() && items < batch_items {
        let (rec, next) = record(run, end);
        if matches!(rec, Record::OutOfLine(_)) {
            break;
        }
        if end > start && next - start > body_bytes {
            break;
        }
        end = next;
        items += 1;
    }
    Plan {
        end,
        items,
        cost: end - start,
        out_of_line: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(records: &[Result<usize, u64>]) -> Pending {
        let mut p = Pending::default();
        for r in records {
            match *r {
                Ok(len) => {
                    let mut entry = Vec::new();
                    wire::encode::append_raw_entry(&vec![7u8; len], &mut entry);
                    p.push_entries(1, &entry);
                }
                Err(size) => {
                    let memfd = memfd::create("t").unwrap();
                    p.push(Encoded::OutOfLine { memfd, size });
                }
            }
        }
        p
    }

    #[test]
    fn entries_are_packed_up_to_the_body_size() {
        // Entries of 4 + 100 bytes: three fit in 320 bytes, the fourth does not.
        let p = run(&[Ok(100), Ok(100), Ok(100), Ok(100)]);
        let first = plan(p.bytes(), 0, 320, usize::MAX);
        assert_eq!(
            first,
            Plan {
                end: 312,
                items: 3,
                cost: 312,
                out_of_line: None
            }
        );
        let second = plan(p.bytes(), first.end, 320, usize::MAX);
        assert_eq!(second.items, 1);
        assert_eq!(second.end, p.bytes().len());
    }

    #[test]
    fn batch_items_caps_a_datagram() {
        let p = run(&[Ok(1), Ok(1), Ok(1)]);
        let plans: Vec<usize> = std::iter::successors(Some(plan(p.bytes(), 0, 1000, 1)), |prev| {
            (prev.end < p.bytes().len()).then(|| plan(p.bytes(), prev.end, 1000, 1))
        })
        .map(|pl| pl.items)
        .collect();
        assert_eq!(plans, vec![1, 1, 1]);
    }

    #[test]
    fn an_entry_larger_than_the_body_still_goes_alone() {
        let p = run(&[Ok(500)]);
        assert_eq!(plan(p.bytes(), 0, 100, usize::MAX).items, 1);
    }

    #[test]
    fn out_of_line_items_travel_alone_and_cut_a_batch() {
        let p = run(&[Ok(10), Ok(10), Err(1 << 20), Ok(10)]);
        let a = plan(p.bytes(), 0, 1000, usize::MAX);
        assert_eq!((a.items, a.out_of_line), (2, None));
        let b = plan(p.bytes(), a.end, 1000, usize::MAX);
        assert_eq!(
            (b.items, b.out_of_line, b.cost),
            (1, Some(1 << 20), 1 << 20)
        );
        let c = plan(p.bytes(), b.end, 1000, usize::MAX);
        assert_eq!((c.items, c.end), (1, p.bytes().len()));
    }

    #[test]
    fn split_from_keeps_the_unwritten_records_and_their_memfds() {
        let mut p = run(&[Ok(10), Err(5), Ok(10)]);
        let a = plan(p.bytes(), 0, 1000, usize::MAX);
        let rest = p.split_from(a.end);
        assert_eq!(rest.items(), 2);
        assert_eq!(rest.memfds.len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn leftovers_decode_back_into_items() {
        let mut p = Pending::default();
        for i in 0..3u32 {
            let mut entry = Vec::new();
            wire::encode::append_entry(&i, &mut entry, 100).unwrap();
            p.push_entries(1, &entry);
        }
        let mut entry = Vec::new();
        wire::encode::append_raw_entry(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &mut entry);
        p.push_entries(1, &entry);
        let (items, bad) = p.decode_all::<u32>(1 << 20);
        assert_eq!(items, vec![0, 1, 2]);
        assert_eq!(bad, 1);
    }
}
