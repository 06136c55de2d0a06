//! [`Fd`]: a descriptor that travels inside an item.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wire::fds;

/// An owned file descriptor that can sit anywhere in an item: a socket, a file, a pipe,
/// an eventfd. Sending the item sends the descriptor with it (`SCM_RIGHTS`, in the same
/// datagram as the item); receiving the item gives the receiving process its own
/// descriptor for the same open file, owned by the `Fd` it gets. Python's
/// `multiprocessing.reduction.send_handle` / `recv_handle`, inside typed items.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use std::io::{Read, Write};
///
/// #[derive(Serialize, Deserialize)]
/// struct Upload { name: String, file: procq::Fd }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = procq::channel::<Upload>()?;
/// let (mut reader, mut writer) = std::io::pipe()?;
/// tx.send(Upload { name: "log".into(), file: procq::Fd::new(writer) }).await?;
/// // (In another process, typically.) The receiver owns a descriptor for the same pipe:
/// let upload = rx.recv().await?;
/// let mut file = std::fs::File::from(upload.file.into_owned());
/// file.write_all(b"hello")?;
/// drop(file);
/// let mut got = String::new();
/// reader.read_to_string(&mut got)?;
/// assert_eq!(got, "hello");
/// # Ok(()) }
/// ```
///
/// Sending duplicates the descriptor into the datagram, so the `Fd` in an item that
/// could not be sent (handed back in a `SendError`, or by `drain`) is still yours. An item
/// carries at most 253 descriptors, the kernel's limit for one message; a batch of items is
/// cut before it would carry more. Descriptors of an item that is not received (it fails to
/// decode, or its datagram is rejected) are closed.
///
/// Serializing an `Fd` with anything but procq (`serde_json`, say) fails with an error: a
/// descriptor number means nothing in another process.
pub struct Fd(OwnedFd);

impl Fd {
    /// Wraps a descriptor (an `OwnedFd`, a `File`, a `TcpStream`, ...).
    pub fn new(fd: impl Into<OwnedFd>) -> Self {
        Fd(fd.into())
    }

    /// The descriptor, to turn back into what it is (`File::from`, `TcpStream::from`, ...).
    pub fn into_owned(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Self {
        Fd(fd)
    }
}

impl From<Fd> for OwnedFd {
    fn from(fd: Fd) -> Self {
        fd.0
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl fmt::Debug for Fd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Fd").field(&self.0.as_raw_fd()).finish()
    }
}

impl Serialize for Fd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = fds::put(self.0.as_fd()).map_err(serde::ser::Error::custom)?;
        serializer.serialize_u32(index)
    }
}

impl<'de> Deserialize<'de> for Fd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let index = u32::deserialize(deserializer)?;
        fds::take(index).map(Fd).map_err(serde::de::Error::custom)
    }
}
