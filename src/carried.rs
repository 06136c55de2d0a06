//! Handles carried inside items: every handle is `Serialize` and `Deserialize`, so a
//! request can carry the `Sender` its answer goes to, and a queue can be handed to a
//! process that is already running.
//!
//! What travels is what [`pass`](crate::pass) writes into the environment — the kind, every
//! setting and the item type(s) — with the descriptors themselves carried by the datagram
//! (see [`Fd`](crate::Fd)). The receiving process rebuilds exactly the handle that was
//! sent, with the same checks: another kind or item type is a decode error naming both.
//! While the item is on its way, the kernel (and, before that, the sender's buffer) holds
//! the descriptors, so the channel does not end while one of its handles is in flight.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::options::Options;
use crate::spawn::{Passable, Rebuild, Taken};
use crate::wire::fds;
use crate::{Duplex, JoinableQueue, Queue, Receiver, Sender, SimpleQueue};

/// A handle as an item carries it.
#[derive(Serialize, Deserialize)]
struct Carried {
    kind: String,
    types: Vec<String>,
    /// Index of each descriptor in the item's list (`None`: an optional one the handle
    /// does not have).
    fds: Vec<Option<u32>>,
    direct: bool,
    /// 0 for no limit.
    batch: u64,
    datagram: u64,
    max_item: u64,
    buffer: u64,
}

fn serialize<H: Passable, S: Serializer>(handle: &H, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    let passed = handle.describe().map_err(S::Error::custom)?;
    let kind = passed.kind().as_str().to_string();
    let types = passed.types().iter().map(|t| t.to_string()).collect();
    let opts = passed.options().clone();
    let fds = passed
        .into_fds()
        .into_iter()
        .map(|fd| fd.map(fds::put_owned).transpose())
        .collect::<Result<_, _>>()
        .map_err(S::Error::custom)?;
    Carried {
        kind,
        types,
        fds,
        direct: opts.direct,
        batch: if opts.batch_items == usize::MAX {
            0
        } else {
            opts.batch_items as u64
        },
        datagram: opts.datagram_bytes as u64,
        max_item: opts.max_item_bytes,
        buffer: opts.buffer_bytes as u64,
    }
    .serialize(serializer)
}

fn deserialize<'de, H: Rebuild, D: Deserializer<'de>>(deserializer: D) -> Result<H, D::Error> {
    let carried = Carried::deserialize(deserializer)?;
    if carried.kind != H::KIND.as_str() {
        return Err(D::Error::custom(fds::refuse(format!(
            "the item carries a procq {}, not a {}",
            carried.kind,
            H::KIND.as_str()
        ))));
    }
    let types = H::types();
    if carried.types != types {
        return Err(D::Error::custom(fds::refuse(format!(
            "the item carries a handle for `{}`, not `{}`",
            carried.types.join(", "),
            types.join(", ")
        ))));
    }
    if carried.fds.len() != H::DESCRIPTORS {
        return Err(D::Error::custom(fds::refuse(
            "the handle carries the wrong number of descriptors".to_string(),
        )));
    }
    let fds = carried
        .fds
        .iter()
        .map(|index| index.map(fds::take).transpose())
        .collect::<Result<Vec<_>, _>>()
        .map_err(D::Error::custom)?;
    let opts = Options {
        buffer_bytes: (carried.buffer as usize).max(1),
        batch_items: if carried.batch == 0 {
            usize::MAX
        } else {
            carried.batch as usize
        },
        datagram_bytes: (carried.datagram as usize).clamp(
            crate::options::MIN_DATAGRAM_BYTES,
            crate::options::MAX_DATAGRAM_BYTES,
        ),
        max_item_bytes: carried.max_item,
        direct: carried.direct,
    };
    H::rebuild(Taken::from_item(opts, fds), None)
        .map_err(|e| D::Error::custom(fds::refuse(e.to_string())))
}

macro_rules! carried {
    ($($handle:ident < $($t:ident),+ >),*) => {$(
        impl<$($t),+> Serialize for $handle<$($t),+> {
            /// Sends the handle inside an item (through procq only; see the module docs).
            fn serialize<Se: Serializer>(&self, serializer: Se) -> Result<Se::Ok, Se::Error> {
                serialize(self, serializer)
            }
        }

        impl<'de, $($t),+> Deserialize<'de> for $handle<$($t),+> {
            /// Rebuilds a handle that arrived inside an item.
            fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
                deserialize(deserializer)
            }
        }
    )*};
}

carried!(
    Sender<T>,
    Receiver<T>,
    Duplex<S, R>,
    Queue<T>,
    JoinableQueue<T>,
    SimpleQueue<T>
);
