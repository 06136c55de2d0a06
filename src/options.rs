//! Per-channel settings: plain data.

/// Settings for one channel: how much a process may buffer, how items are batched, how large
/// an item may be, whether sends are buffered at all.
///
/// Every setting travels with a handle passed to another process
/// ([`pass`](crate::pass)): a child rebuilds exactly what the parent made. Only the
/// buffer size may be chosen by the receiving process (`from_env_with_buffer`), since it
/// bounds that process's own memory.
///
/// ```
/// # fn main() -> Result<(), procq::Error> {
/// // One item per datagram: each waiting worker process gets the next job (fair
/// // distribution), at the cost of one system call per item.
/// let (jobs, rx) = procq::Options::new().batch_items(1).channel::<String>()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub(crate) buffer_bytes: usize,
    pub(crate) batch_items: usize,
    pub(crate) datagram_bytes: usize,
    pub(crate) max_item_bytes: u64,
    pub(crate) direct: bool,
}

/// The largest datagram a sender may be configured to write; receivers size their read
/// buffer to it.
pub(crate) const MAX_DATAGRAM_BYTES: usize = crate::wire::MAX_DATAGRAM;
/// The smallest datagram size accepted.
pub(crate) const MIN_DATAGRAM_BYTES: usize = 4096;

impl Default for Options {
    fn default() -> Self {
        Options {
            buffer_bytes: 2 * 1024 * 1024,
            batch_items: usize::MAX,
            datagram_bytes: MAX_DATAGRAM_BYTES,
            max_item_bytes: 4 * 1024 * 1024 * 1024,
            direct: false,
        }
    }
}

impl Options {
    /// The defaults: a 2 MiB in-process buffer, datagrams of up to 256 KiB holding as many
    /// items as fit, items of up to 4 GiB, buffered sends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of encoded items a process may hold that the kernel has not taken yet. When the
    /// buffer is at the limit `send` waits and `try_send` reports
    /// [`Full`](crate::TrySendError::Full). One item may take the buffer over the limit,
    /// so the bound is this plus the largest item. Default 2 MiB; at least 1.
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes.max(1);
        self
    }

    /// The most items one datagram may carry. A datagram goes to exactly one receiving
    /// process, so with many workers reading one channel, `batch_items(1)` hands each item
    /// to whichever worker asks first (fair distribution, one system call per item),
    /// while the default packs as many as fit into
    /// [`datagram_bytes`](Self::datagram_bytes) (throughput, but a worker may get a whole
    /// batch). Default: unlimited; at least 1.
    pub fn batch_items(mut self, items: usize) -> Self {
        self.batch_items = items.max(1);
        self
    }

    /// The largest datagram a batch of items fills, clamped to 4 KiB ..= 256 KiB and to what
    /// the socket's send buffer takes. An item whose encoding does not fit travels alone,
    /// inline in a datagram of its own if it fits 256 KiB (the most any receiver reads; a
    /// datagram is that much cheaper than a memfd), else out of line, in a sealed memfd.
    /// Smaller datagrams spread a stream over several receiving processes in smaller
    /// batches (and a receiving process killed with a batch unread loses at most that
    /// much), at one system call and wake-up per datagram. Default 256 KiB.
    pub fn datagram_bytes(mut self, bytes: usize) -> Self {
        self.datagram_bytes = bytes.clamp(MIN_DATAGRAM_BYTES, MAX_DATAGRAM_BYTES);
        self
    }

    /// The largest encoded item this channel carries. A larger send fails with
    /// [`TooLarge`](crate::SendErrorKind::TooLarge); a larger announced item is rejected
    /// by the receiver before it maps anything. Default 4 GiB.
    pub fn max_item_bytes(mut self, bytes: u64) -> Self {
        self.max_item_bytes = bytes;
        self
    }

    /// Sends without a buffer: every `send` writes its own datagram and completes once the
    /// kernel holds the item (or fails then and there); no flush task, nothing to drain.
    /// Python's `Pipe` and `SimpleQueue` behave so. Lower latency for a lone message, far
    /// lower throughput for a stream of small ones (one system call each). Default: off.
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }
}
