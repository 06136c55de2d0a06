//! Handing handles to child processes: [`pass`], [`spawn`], and the value a child reads
//! back in `from_env`.
//!
//! A handle travels as inherited descriptors plus one environment variable that describes
//! it completely:
//!
//! ```text
//! JOBS=procq2;kind=receiver;fds=7@9.81234;direct=0;batch=0;datagram=65536;max_item=4294967296;buffer=2097152;types=alloc::string::String
//! ```
//!
//! * `kind`: which handle it is; `from_env` refuses another kind;
//! * `fds`: each descriptor's number in the child and its identity (device, inode, and an
//!   eventfd's id), which the child checks before it owns (and could ever close) the
//!   descriptor; `-` for an optional descriptor that is absent;
//! * every per-channel setting ([`Options`]), so the child rebuilds exactly the handle that
//!   was passed (its buffer size may be overridden there: it bounds the child's memory);
//! * `types`: the item type(s), as [`std::any::type_name`] spells them (percent-escaped);
//!   `from_env` refuses a different type. The name is a fingerprint, not a proof: two
//!   types with the same path (two versions of one crate) pass, and `type_name`'s spelling
//!   may change between compiler versions, so build parent and child with the same
//!   toolchain.
//!
//! The descriptors are close-on-exec in the parent, so no other child (and no grandchild)
//! inherits them; only the child spawned from this `Command` gets them, because the flag is
//! cleared in that child between `fork` and `exec`. procq never forks without `exec`: tokio
//! does not survive it.

use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use crate::error::{Error, FromEnvError};
use crate::options::Options;
use crate::sys::inherit::{self, Identity};
use crate::sys::socket;

/// The shapes of things that can be passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sender,
    Receiver,
    Duplex,
    Queue,
    JoinableQueue,
    SimpleQueue,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Sender => "sender",
            Kind::Receiver => "receiver",
            Kind::Duplex => "duplex",
            Kind::Queue => "queue",
            Kind::JoinableQueue => "joinable-queue",
            Kind::SimpleQueue => "simple-queue",
        }
    }
}

/// The format's first field; a new format gets a new one.
const FORMAT: &str = "procq2";

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// A handle that [`pass`] can hand to a child process (and that can travel inside an item):
/// [`Sender`](crate::Sender), [`Receiver`](crate::Receiver), [`Duplex`](crate::Duplex),
/// [`Queue`](crate::Queue), [`JoinableQueue`](crate::JoinableQueue),
/// [`SimpleQueue`](crate::SimpleQueue).
pub trait Passable: sealed::Sealed {
    /// Internal: duplicates of the handle's descriptors, its settings and item types.
    #[doc(hidden)]
    fn describe(&self) -> Result<Passed, Error>;
}

/// How a handle is rebuilt from what was passed (through the environment, or inside an
/// item).
pub(crate) trait Rebuild: Sized {
    const KIND: Kind;
    /// How many descriptors the handle is passed with (optional ones included).
    const DESCRIPTORS: usize;
    /// Its item type(s), as `std::any::type_name` spells them.
    fn types() -> Vec<&'static str>;
    /// Builds the handle; `buffer` overrides the parent's buffer size.
    fn rebuild(taken: Taken, buffer: Option<usize>) -> Result<Self, FromEnvError>;
}

/// Rebuilds the handle passed under `name`.
pub(crate) fn from_env<H: Rebuild>(name: &str, buffer: Option<usize>) -> Result<H, FromEnvError> {
    let taken = take(name, H::KIND, &H::types(), H::DESCRIPTORS)?;
    H::rebuild(taken, buffer)
}

/// Internal: what a [`Passable`] hands over. Not constructible outside procq.
#[doc(hidden)]
#[derive(Debug)]
pub struct Passed {
    kind: Kind,
    /// Duplicates of the handle's descriptors, in the kind's order (`None`: an optional
    /// one the handle does not have).
    fds: Vec<Option<OwnedFd>>,
    opts: Options,
    types: Vec<&'static str>,
}

impl Passed {
    /// What `handle` hands over: duplicates of `fds`, its settings and item types.
    pub(crate) fn new(
        kind: Kind,
        fds: &[Option<BorrowedFd<'_>>],
        opts: &Options,
        types: &[&'static str],
    ) -> Result<Passed, Error> {
        let fds = fds
            .iter()
            .map(|fd| fd.map(socket::dup).transpose())
            .collect::<Result<_, _>>()?;
        Ok(Passed {
            kind,
            fds,
            opts: opts.clone(),
            types: types.to_vec(),
        })
    }
}

/// A command that can spawn a child: [`std::process::Command`] or
/// [`tokio::process::Command`].
pub trait SpawnCommand: sealed::Sealed {
    /// What spawning returns.
    type Child;
    #[doc(hidden)]
    fn std_command(&mut self) -> &mut std::process::Command;
    #[doc(hidden)]
    fn spawn_child(&mut self) -> std::io::Result<Self::Child>;
}

impl sealed::Sealed for std::process::Command {}
impl SpawnCommand for std::process::Command {
    type Child = std::process::Child;
    fn std_command(&mut self) -> &mut std::process::Command {
        self
    }
    fn spawn_child(&mut self) -> std::io::Result<std::process::Child> {
        self.spawn()
    }
}

impl sealed::Sealed for tokio::process::Command {}
impl SpawnCommand for tokio::process::Command {
    type Child = tokio::process::Child;
    fn std_command(&mut self) -> &mut std::process::Command {
        self.as_std_mut()
    }
    fn spawn_child(&mut self) -> std::io::Result<tokio::process::Child> {
        self.spawn()
    }
}

/// Hands `handle` to the child that `cmd` will spawn, under `name`.
///
/// The child rebuilds it with `from_env(name)` on the same type
/// ([`Receiver::from_env`](crate::Receiver::from_env),
/// [`Queue::from_env`](crate::Queue::from_env), ...), with the same settings and item
/// type. `name` becomes an environment variable of the child; it must be non-empty and
/// contain neither `=` nor NUL.
///
/// `handle` is consumed; `cmd` holds a duplicate of its descriptors until `cmd` is dropped.
/// Spawn with [`spawn`], which drops the command right after spawning, so the parent keeps
/// no copy: a parent that kept a copy of a channel's sending side would keep its receivers
/// from ever seeing the end of the channel. To hand the same handle to several children,
/// clone it and pass each clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = procq::channel::<String>()?;
/// let mut cmd = tokio::process::Command::new("true"); // your worker program
/// procq::pass(&mut cmd, "JOBS", rx)?;
/// let mut child = procq::spawn(cmd)?; // the command, and its copy of `rx`, are gone
/// // In the worker: let rx = procq::Receiver::<String>::from_env("JOBS")?;
/// child.wait().await?;
/// assert!(tx.is_closed(), "`true` exited without reading: no receiver is left");
/// # Ok(()) }
/// ```
pub fn pass<C, P>(cmd: &mut C, name: &str, handle: P) -> Result<(), Error>
where
    C: SpawnCommand,
    P: Passable,
{
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(Error::InvalidName {
            name: name.to_string(),
        });
    }
    let cmd = cmd.std_command();
    if cmd.get_envs().any(|(k, v)| k == name && v.is_some()) {
        return Err(Error::InvalidName {
            name: name.to_string(),
        });
    }
    let Passed {
        kind,
        fds,
        opts,
        types,
    } = handle.describe()?;
    drop(handle);
    // Every identity first: a failure must leave nothing registered with the command.
    let identities = fds
        .iter()
        .map(|fd| {
            fd.as_ref()
                .map(|fd| inherit::identity(fd.as_fd()))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut described = Vec::with_capacity(fds.len());
    for (fd, id) in fds.into_iter().zip(identities) {
        described.push(match (fd, id) {
            (Some(fd), Some(id)) => {
                let number = inherit::inherit_in_child(cmd, fd);
                let mut s = format!("{number}@{}.{}", id.dev, id.ino);
                if let Some(e) = id.eventfd_id {
                    let _ = write!(s, ".e{e}");
                }
                s
            }
            _ => "-".to_string(),
        });
    }
    let types: Vec<String> = types.iter().map(|t| escape(t)).collect();
    let value = format!(
        "{FORMAT};kind={};fds={};direct={};batch={};datagram={};max_item={};buffer={};types={}",
        kind.as_str(),
        described.join(","),
        u8::from(opts.direct),
        if opts.batch_items == usize::MAX {
            0
        } else {
            opts.batch_items
        },
        opts.datagram_bytes,
        opts.max_item_bytes,
        opts.buffer_bytes,
        types.join(","),
    );
    cmd.env(name, value);
    Ok(())
}

/// Spawns `cmd` and drops it at once, so this process keeps no copy of the handles
/// [`pass`]ed into it: the child holds the only one. Returns what `cmd.spawn()` returns.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = procq::channel::<u32>()?;
/// let mut cmd = tokio::process::Command::new("true");
/// procq::pass(&mut cmd, "CH", tx)?;
/// procq::spawn(cmd)?.wait().await?;
/// // Neither the parent nor the exited child holds a sender: the channel is finished.
/// assert!(rx.recv().await.unwrap_err().is_closed());
/// # Ok(()) }
/// ```
pub fn spawn<C: SpawnCommand>(mut cmd: C) -> std::io::Result<C::Child> {
    cmd.spawn_child()
}

/// Percent-escapes the characters the value's syntax uses, and anything not printable
/// ASCII.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b';' | b',' | b'=') || b == b' ' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A handle's descriptors and settings, read back in the child and checked.
pub(crate) struct Taken {
    pub(crate) name: String,
    pub(crate) opts: Options,
    fds: std::vec::IntoIter<Option<OwnedFd>>,
}

impl Taken {
    /// A handle that arrived inside an item (its descriptors came with the datagram).
    pub(crate) fn from_item(opts: Options, fds: Vec<Option<OwnedFd>>) -> Taken {
        Taken {
            name: "(a handle inside an item)".to_string(),
            opts,
            fds: fds.into_iter(),
        }
    }
}

impl Passed {
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }
    pub(crate) fn options(&self) -> &Options {
        &self.opts
    }
    pub(crate) fn types(&self) -> &[&'static str] {
        &self.types
    }
    pub(crate) fn into_fds(self) -> Vec<Option<OwnedFd>> {
        self.fds
    }
}

/// Reads what was passed under `name`: it must be a `kind` of items `types` with `count`
/// descriptors, each still the very file that was passed. Takes ownership of the
/// descriptors only once all of them are checked.
pub(crate) fn take(
    name: &str,
    kind: Kind,
    types: &[&'static str],
    count: usize,
) -> Result<Taken, FromEnvError> {
    let value =
        std::env::var_os(name).ok_or_else(|| FromEnvError::NotPassed { name: name.into() })?;
    let malformed = |reason: &str| FromEnvError::Malformed {
        name: name.into(),
        reason: reason.into(),
    };
    let value = value.to_str().ok_or_else(|| malformed("not UTF-8"))?;
    let mut fields = value.split(';');
    match fields.next() {
        Some(FORMAT) => {}
        _ => {
            let head = value.split([';', ':']).next().unwrap_or_default();
            return Err(malformed(&if head.starts_with("procq") {
                format!(
                    "written by another version of procq (format {head}, this one reads {FORMAT})"
                )
            } else {
                "not a value procq wrote".to_string()
            }));
        }
    }
    let mut get = std::collections::HashMap::new();
    for field in fields {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| malformed("a field without '='"))?;
        get.insert(k, v);
    }
    let field = |k: &str| {
        get.get(k)
            .copied()
            .ok_or_else(|| malformed(&format!("no `{k}`")))
    };
    let number = |k: &str| -> Result<u64, FromEnvError> {
        field(k)?
            .parse()
            .map_err(|_| malformed(&format!("`{k}` is not a number")))
    };
    let found = field("kind")?;
    if found != kind.as_str() {
        return Err(FromEnvError::WrongKind {
            name: name.into(),
            expected: kind.as_str(),
            found: found.into(),
        });
    }
    let passed_types: Vec<String> = field("types")?
        .split(',')
        .map(unescape)
        .collect::<Option<_>>()
        .ok_or_else(|| malformed("bad escape in `types`"))?;
    if passed_types != types {
        return Err(FromEnvError::WrongType {
            name: name.into(),
            expected: types.join(", "),
            found: passed_types.join(", "),
        });
    }
    let batch = number("batch")?;
    let opts = Options {
        buffer_bytes: (number("buffer")? as usize).max(1),
        batch_items: if batch == 0 {
            usize::MAX
        } else {
            batch as usize
        },
        datagram_bytes: (number("datagram")? as usize).clamp(
            crate::options::MIN_DATAGRAM_BYTES,
            crate::options::MAX_DATAGRAM_BYTES,
        ),
        max_item_bytes: number("max_item")?,
        direct: number("direct")? == 1,
    };
    let described: Vec<&str> = field("fds")?.split(',').collect();
    if described.len() != count {
        return Err(malformed(&format!(
            "{} descriptors where a {} has {count}",
            described.len(),
            kind.as_str()
        )));
    }
    let mut wanted: Vec<(RawFd, Identity)> = Vec::new();
    let mut present = Vec::with_capacity(count);
    for d in described {
        if d == "-" {
            present.push(false);
            continue;
        }
        wanted.push(parse_fd(d).ok_or_else(|| malformed(&format!("bad descriptor `{d}`")))?);
        present.push(true);
    }
    let claimed = inherit::claim(&wanted).map_err(|e| FromEnvError::Descriptor {
        name: name.into(),
        reason: e.reason,
    })?;
    let mut claimed = claimed.into_iter();
    let fds: Vec<Option<OwnedFd>> = present
        .into_iter()
        .map(|p| if p { claimed.next() } else { None })
        .collect();
    Ok(Taken {
        name: name.to_string(),
        opts,
        fds: fds.into_iter(),
    })
}

/// `7@9.81234` or `8@16.1039.e12`: number, device, inode, and an eventfd's id.
fn parse_fd(d: &str) -> Option<(RawFd, Identity)> {
    let (number, id) = d.split_once('@')?;
    let mut parts = id.split('.');
    let dev = parts.next()?.parse().ok()?;
    let ino = parts.next()?.parse().ok()?;
    let eventfd_id = match parts.next() {
        None => None,
        Some(e) => Some(e.strip_prefix('e')?.parse().ok()?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((
        number.parse().ok()?,
        Identity {
            dev,
            ino,
            eventfd_id,
        },
    ))
}

impl Taken {
    fn bad(&self, reason: &str) -> FromEnvError {
        FromEnvError::Descriptor {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The next descriptor, which may be absent.
    pub(crate) fn optional(&mut self) -> Result<Option<OwnedFd>, FromEnvError> {
        self.fds
            .next()
            .ok_or_else(|| self.bad("too few descriptors"))
    }

    /// The next descriptor, which must be present.
    pub(crate) fn fd(&mut self) -> Result<OwnedFd, FromEnvError> {
        self.optional()?
            .ok_or_else(|| self.bad("a required descriptor is missing"))
    }

    /// The next descriptor, which must be a `SOCK_SEQPACKET` socket.
    pub(crate) fn socket(&mut self) -> Result<OwnedFd, FromEnvError> {
        let fd = self.fd()?;
        if !socket::is_seqpacket(fd.as_fd()) {
            return Err(self.bad("the descriptor is not a SOCK_SEQPACKET socket"));
        }
        Ok(fd)
    }
}

// ----- the channel handles --------------------------------------------------------------

use crate::channel::{duplex_on, receiver_on, sender_on};
use crate::{Duplex, Receiver, Sender};

/// `opts` with the receiving process's own buffer size, if it chose one.
pub(crate) fn with_buffer(mut opts: Options, buffer_bytes: Option<usize>) -> Options {
    if let Some(bytes) = buffer_bytes {
        opts.buffer_bytes = bytes.max(1);
    }
    opts
}

impl<T> Sender<T> {
    /// Rebuilds the sender a parent passed to this process under `name` with [`pass`]:
    /// same channel, same settings. Fails with [`FromEnvError`] if nothing was passed under
    /// that name, if a different kind of handle or item type was, or if the descriptor is
    /// not the one that was passed. Takes the descriptor: a second call for the same name
    /// fails. Needs no runtime.
    pub fn from_env(name: &str) -> Result<Self, FromEnvError> {
        from_env(name, None)
    }

    /// [`from_env`](Self::from_env) with this process's own buffer size (see
    /// [`Options::buffer_bytes`]); every other setting stays the parent's.
    pub fn from_env_with_buffer(name: &str, buffer_bytes: usize) -> Result<Self, FromEnvError> {
        from_env(name, Some(buffer_bytes))
    }
}

impl<T> Rebuild for Sender<T> {
    const KIND: Kind = Kind::Sender;
    const DESCRIPTORS: usize = 1;
    fn types() -> Vec<&'static str> {
        vec![std::any::type_name::<T>()]
    }
    fn rebuild(mut taken: Taken, buffer: Option<usize>) -> Result<Self, FromEnvError> {
        let fd = taken.socket()?;
        Ok(sender_on(fd, &with_buffer(taken.opts, buffer)))
    }
}

impl<T> Receiver<T> {
    /// Rebuilds the receiver a parent passed to this process under `name` with [`pass`].
    /// Errors as [`Sender::from_env`]. Needs no runtime.
    pub fn from_env(name: &str) -> Result<Self, FromEnvError> {
        from_env(name, None)
    }
}

impl<T> Rebuild for Receiver<T> {
    const KIND: Kind = Kind::Receiver;
    const DESCRIPTORS: usize = 1;
    fn types() -> Vec<&'static str> {
        vec![std::any::type_name::<T>()]
    }
    fn rebuild(mut taken: Taken, _buffer: Option<usize>) -> Result<Self, FromEnvError> {
        let fd = taken.socket()?;
        Ok(receiver_on(fd, &taken.opts))
    }
}

impl<S, R> Duplex<S, R> {
    /// Rebuilds the end a parent passed under `name`. Errors as [`Sender::from_env`].
    pub fn from_env(name: &str) -> Result<Self, FromEnvError> {
        from_env(name, None)
    }

    /// [`from_env`](Self::from_env) with this process's own buffer size.
    pub fn from_env_with_buffer(name: &str, buffer_bytes: usize) -> Result<Self, FromEnvError> {
        from_env(name, Some(buffer_bytes))
    }
}

impl<S, R> Rebuild for Duplex<S, R> {
    const KIND: Kind = Kind::Duplex;
    const DESCRIPTORS: usize = 1;
    fn types() -> Vec<&'static str> {
        vec![std::any::type_name::<S>(), std::any::type_name::<R>()]
    }
    fn rebuild(mut taken: Taken, buffer: Option<usize>) -> Result<Self, FromEnvError> {
        let fd = taken.socket()?;
        Ok(duplex_on(fd, &with_buffer(taken.opts, buffer)))
    }
}

impl<T> sealed::Sealed for Sender<T> {}
impl<T> Passable for Sender<T> {
    fn describe(&self) -> Result<Passed, Error> {
        let socket = self.handle.socket().ok_or(Error::Closed)?;
        Passed::new(
            Kind::Sender,
            &[Some(socket.fd().as_fd())],
            self.handle.options(),
            &Self::types(),
        )
    }
}

impl<T> sealed::Sealed for Receiver<T> {}
impl<T> Passable for Receiver<T> {
    fn describe(&self) -> Result<Passed, Error> {
        Passed::new(
            Kind::Receiver,
            &[Some(self.inbox.socket().fd().as_fd())],
            self.inbox.options(),
            &Self::types(),
        )
    }
}

impl<S, R> sealed::Sealed for Duplex<S, R> {}
impl<S, R> Passable for Duplex<S, R> {
    fn describe(&self) -> Result<Passed, Error> {
        Passed::new(
            Kind::Duplex,
            &[Some(self.rx.inbox.socket().fd().as_fd())],
            self.tx.handle.options(),
            &Self::types(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_survive_escaping() {
        for t in [
            "alloc::string::String",
            "(u32, [u8; 4])",
            "HashMap<K, V>",
            "a%b;c=d",
        ] {
            let e = escape(t);
            assert!(!e.contains([';', ',', '=']));
            assert_eq!(unescape(&e).as_deref(), Some(t));
        }
    }

    #[test]
    fn descriptors_parse_with_and_without_an_eventfd_id() {
        assert_eq!(
            parse_fd("7@9.81234"),
            Some((
                7,
                Identity {
                    dev: 9,
                    ino: 81234,
                    eventfd_id: None
                }
            ))
        );
        assert_eq!(
            parse_fd("8@16.1039.e12"),
            Some((
                8,
                Identity {
                    dev: 16,
                    ino: 1039,
                    eventfd_id: Some(12)
                }
            ))
        );
        assert_eq!(parse_fd("8@16"), None);
        assert_eq!(parse_fd("x@1.2"), None);
    }
}
