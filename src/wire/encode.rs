//! Item encoding: postcard, straight into the outbox (an entry) or into a memfd (an
//! out-of-line item), with no intermediate copy.

use std::os::fd::OwnedFd;

use serde::Serialize;

use super::{entry_header, fds, ENTRY_PREFIX, MAX_ENTRY_HEADER, MAX_FDS};

/// Why [`append_entry`] appended nothing.
#[derive(Debug)]
pub(crate) enum EntryFail {
    /// The encoding is longer than the limit given: send it out of line instead.
    TooLong,
    /// The item's `Serialize` failed.
    Encode(postcard::Error),
    /// The item carries more descriptors than one datagram may.
    TooManyFds(usize),
}

/// Appends `item`'s postcard encoding to `out` as an entry (its header, then its bytes),
/// giving up as soon as the encoding passes `limit` bytes. On any failure, and if the
/// item's `Serialize` panics, `out` is left as it was. Returns the descriptors the item
/// carries (duplicates, owned), which travel with the entry.
pub(crate) fn append_entry<T: Serialize + ?Sized>(
    item: &T,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<Vec<OwnedFd>, EntryFail> {
    let start = out.len();
    let mut guard = Rollback {
        out,
        start,
        armed: true,
    };
    guard.out.extend_from_slice(&[0; ENTRY_PREFIX]);
    let flavor = AppendVec {
        out: guard.out,
        end: start + ENTRY_PREFIX + limit,
    };
    let (encoded, fds) = fds::encoding(|| postcard::serialize_with_flavor(item, flavor));
    match encoded {
        Ok(()) => {}
        Err(postcard::Error::SerializeBufferFull) => return Err(EntryFail::TooLong),
        Err(e) => return Err(EntryFail::Encode(e)),
    }
    if fds.len() > MAX_FDS {
        return Err(EntryFail::TooManyFds(fds.len()));
    }
    let len = guard.out.len() - start - ENTRY_PREFIX;
    let (header, header_len) = entry_header(len, fds.len());
    if header_len > ENTRY_PREFIX {
        // Rare (items with descriptors): make room for the count after the length.
        let at = start + ENTRY_PREFIX;
        guard.out.splice(
            at..at,
            header[ENTRY_PREFIX..MAX_ENTRY_HEADER].iter().copied(),
        );
    }
    guard.out[start..start + ENTRY_PREFIX].copy_from_slice(&header[..ENTRY_PREFIX]);
    guard.armed = false;
    Ok(fds)
}

/// Appends `bytes` exactly as given as an entry (a raw message).
pub(crate) fn append_raw_entry(bytes: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(bytes.len()).expect("callers bound raw entries");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Why [`into_file`] failed.
#[derive(Debug)]
pub(crate) enum FileFail {
    /// The encoding is longer than `max` bytes; `size` is its full length.
    TooLarge {
        size: u64,
    },
    Encode(postcard::Error),
    Io(std::io::Error),
    /// The item carries more descriptors than one datagram may.
    TooManyFds(usize),
}

/// Encodes `item` straight into `file` (an out-of-line item's memfd), with no copy in
/// memory, stopping once it passes `max` bytes. Returns the encoded length and the
/// descriptors the item carries.
pub(crate) fn into_file<T: Serialize + ?Sized>(
    item: &T,
    file: &std::fs::File,
    max: u64,
) -> Result<(u64, Vec<OwnedFd>), FileFail> {
    let (result, fds) = fds::encoding(|| into_file_inner(item, file, max));
    let size = result?;
    // The memfd travels in the same datagram.
    if fds.len() + 1 > MAX_FDS {
        return Err(FileFail::TooManyFds(fds.len()));
    }
    Ok((size, fds))
}

fn into_file_inner<T: Serialize + ?Sized>(
    item: &T,
    file: &std::fs::File,
    max: u64,
) -> Result<u64, FileFail> {
    use std::io::Write;
    let mut out = Limited {
        inner: std::io::BufWriter::with_capacity(1024 * 1024, file),
        written: 0,
        max,
        over: false,
        error: None,
    };
    let result = postcard::to_io(item, &mut out).map(|_| ());
    if out.over {
        let size = postcard::experimental::serialized_size(item).map_or(u64::MAX, |s| s as u64);
        return Err(FileFail::TooLarge { size });
    }
    if let Some(e) = out.error.take() {
        return Err(FileFail::Io(e));
    }
    result.map_err(FileFail::Encode)?;
    out.inner.flush().map_err(FileFail::Io)?;
    Ok(out.written)
}

/// A writer that counts, refuses to pass `max` bytes, and remembers its I/O error (which
/// postcard would otherwise flatten into its own error type).
struct Limited<W> {
    inner: W,
    written: u64,
    max: u64,
    over: bool,
    error: Option<std::io::Error>,
}

impl<W: std::io::Write> std::io::Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.max {
            self.over = true;
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        match self.inner.write(buf) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.error = Some(e);
                Err(kind.into())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Truncates a buffer back to `start` unless disarmed: a failed or panicking encoding
/// never leaves a partial entry behind.
struct Rollback<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.out.truncate(self.start);
        }
    }
}

/// A postcard output that appends to a `Vec` with bulk copies, up to `end` bytes.
struct AppendVec<'a> {
    out: &'a mut Vec<u8>,
    end: usize,
}

impl postcard::ser_flavors::Flavor for AppendVec<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.out.len() + data.len() > self.end {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.out.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.out.len() >= self.end {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.out.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_or_too_long_encoding_leaves_the_buffer_as_it_was() {
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            append_entry(&vec![0u8; 100], &mut out, 50),
            Err(EntryFail::TooLong)
        ));
        assert_eq!(out, vec![1, 2, 3]);
        assert!(append_entry(&7u32, &mut out, 50).unwrap().is_empty());
        assert_eq!(out, vec![1, 2, 3, 1, 0, 0, 0, 7]);
    }

    #[test]
    fn an_item_with_descriptors_gets_their_count_after_its_length() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let item = (5u8, crate::Fd::new(file));
        let mut out = Vec::new();
        let fds = append_entry(&item, &mut out, 50).unwrap();
        assert_eq!(fds.len(), 1);
        // length 2 with the flag, count 1, then the item: 5 and index 0.
        assert_eq!(out, vec![2, 0, 0, 0x80, 1, 0, 5, 0]);
        // Outside procq, an Fd does not serialize.
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(postcard::to_stdvec(&crate::Fd::new(file)).is_err());
    }
}
