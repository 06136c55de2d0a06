//! Handing channel halves to child processes.
//!
//! A half travels as inherited descriptors plus one environment variable naming them:
//!
//! ```text
//! JOBS=procq1:receiver:7
//! ```
//!
//! The descriptors are close-on-exec in the parent, so no other child (and no grandchild)
//! inherits them; only the child spawned from this `Command` gets them, because the flag is
//! cleared in that child between `fork` and `exec`. The child rebuilds the half with
//! `from_env(name)`. procq never forks without `exec`: tokio does not survive it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::Interest;

use crate::options::Socket;

use crate::error::Error;

/// The shapes of things that can be passed, as written in the environment variable.
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
    fn as_str(self) -> &'static str {
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

const PREFIX: &str = "procq1";

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// A channel half (or queue handle) that [`pass`] can hand to a child process.
pub trait Passable: sealed::Sealed {
    #[doc(hidden)]
    fn into_passed(self) -> Result<Passed, Error>;
}

/// Internal: what a [`Passable`] hands over, its kind and its descriptors in order (`None`
/// for an optional one it does not have). Not constructible outside procq.
#[doc(hidden)]
#[derive(Debug)]
pub struct Passed {
    kind: Kind,
    fds: Vec<Option<OwnedFd>>,
}

/// A command that can spawn a child: [`std::process::Command`] or
/// [`tokio::process::Command`].
pub trait SpawnCommand: sealed::Sealed {
    #[doc(hidden)]
    fn std_command(&mut self) -> &mut std::process::Command;
}

impl sealed::Sealed for std::process::Command {}
impl SpawnCommand for std::process::Command {
    fn std_command(&mut self) -> &mut std::process::Command {
        self
    }
}

impl sealed::Sealed for tokio::process::Command {}
impl SpawnCommand for tokio::process::Command {
    fn std_command(&mut self) -> &mut std::process::Command {
        self.as_std_mut()
    }
}

/// Hands `half` to the child that `cmd` will spawn, under `name`.
///
/// The child rebuilds it with `from_env(name)` ([`Receiver::from_env`](crate::Receiver::from_env),
/// [`Sender::from_env`](crate::Sender::from_env), [`Duplex::from_env`](crate::Duplex::from_env)).
/// `name` becomes an environment variable of the child; it must be non-empty and contain
/// neither `=` nor NUL.
///
/// `half` is consumed. Its descriptor is owned by `cmd` until `cmd` is dropped, so drop the
/// command after spawning (or let it go out of scope): a parent that kept a copy of a
/// channel's sending side would keep its receivers from ever seeing the end of the channel.
/// Passing the same half to several children: clone it and pass each clone.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = procq::channel::<String>()?;
/// let mut cmd = tokio::process::Command::new("./worker");
/// procq::pass(&mut cmd, "JOBS", rx)?;
/// let mut child = cmd.spawn()?;
/// drop(cmd);
/// tx.send("job".into()).await?;
/// // In ./worker: let rx = procq::Receiver::<String>::from_env("JOBS")?;
/// # Ok(()) }
/// ```
pub fn pass<C, P>(cmd: &mut C, name: &str, half: P) -> Result<(), Error>
where
    C: SpawnCommand,
    P: Passable,
{
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(Error::BadEnv {
            name: name.to_string(),
            reason: "a name must be non-empty and contain neither '=' nor NUL".into(),
        });
    }
    let Passed { kind, fds } = half.into_passed()?;
    let cmd = cmd.std_command();
    let numbers: Vec<String> = fds
        .into_iter()
        .map(|fd| match fd {
            Some(fd) => crate::sys::inherit_in_child(cmd, fd).to_string(),
            None => "-".to_string(),
        })
        .collect();
    let value = format!("{PREFIX}:{}:{}", kind.as_str(), numbers.join(","));
    cmd.env(name, value);
    Ok(())
}

/// Duplicates each descriptor for a child (`None` stays absent).
pub(crate) fn passed(kind: Kind, fds: &[Option<BorrowedFd<'_>>]) -> Result<Passed, Error> {
    let fds = fds
        .iter()
        .map(|fd| fd.map(crate::sys::dup).transpose())
        .collect::<Result<_, _>>()?;
    Ok(Passed { kind, fds })
}

/// The descriptors passed under `name`, checking they were passed as `expected` and that
/// there are `count` of them (`None` where an optional one was absent).
pub(crate) fn take(name: &str, expected: Kind, count: usize) -> Result<Taken, Error> {
    let value = std::env::var_os(name).ok_or_else(|| Error::NotPassed { name: name.into() })?;
    let bad = |reason: &str| Error::BadEnv {
        name: name.into(),
        reason: reason.into(),
    };
    let value = value.to_str().ok_or_else(|| bad("not UTF-8"))?;
    let mut parts = value.splitn(3, ':');
    if parts.next() != Some(PREFIX) {
        return Err(bad("missing the procq1: prefix"));
    }
    let kind = parts.next().ok_or_else(|| bad("no kind"))?;
    if kind != expected.as_str() {
        return Err(Error::WrongKind {
            name: name.into(),
            expected: expected.as_str(),
            found: kind.into(),
        });
    }
    let numbers: Vec<Option<RawFd>> = parts
        .next()
        .ok_or_else(|| bad("no descriptors"))?
        .split(',')
        .map(|n| {
            if n == "-" {
                Ok(None)
            } else {
                n.parse::<RawFd>().map(Some)
            }
        })
        .collect::<Result<_, _>>()
        .map_err(|_| bad("descriptor numbers are not integers"))?;
    if numbers.len() != count {
        return Err(bad("wrong number of descriptors"));
    }
    let mut fds = Vec::with_capacity(count);
    for n in numbers {
        fds.push(match n {
            None => None,
            Some(n) => Some(crate::sys::claim_inherited(n).map_err(|e| Error::BadEnv {
                name: name.into(),
                reason: format!("descriptor {n}: {e}"),
            })?),
        });
    }
    Ok(Taken {
        name: name.to_string(),
        fds: fds.into_iter(),
    })
}

/// Descriptors taken from the environment, handed out in order.
pub(crate) struct Taken {
    name: String,
    fds: std::vec::IntoIter<Option<OwnedFd>>,
}

impl Taken {
    fn bad(&self, reason: &str) -> Error {
        Error::BadEnv {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The next descriptor, which must be present.
    pub(crate) fn fd(&mut self) -> Result<OwnedFd, Error> {
        self.optional()?
            .ok_or_else(|| self.bad("a required descriptor is missing"))
    }

    /// The next descriptor, which may be absent.
    pub(crate) fn optional(&mut self) -> Result<Option<OwnedFd>, Error> {
        self.fds
            .next()
            .ok_or_else(|| self.bad("too few descriptors"))
    }

    /// The next descriptor, which must be a procq socket, to be waited on for `interest`.
    pub(crate) fn socket(&mut self, interest: Interest) -> Result<Arc<Socket>, Error> {
        let fd = self.fd()?;
        if !crate::sys::is_seqpacket(fd.as_fd()) {
            return Err(self.bad("descriptor is not a SOCK_SEQPACKET socket"));
        }
        Ok(Arc::new(crate::options::socket(fd, interest)?))
    }
}

impl<T> sealed::Sealed for crate::Sender<T> {}
impl<T> Passable for crate::Sender<T> {
    fn into_passed(self) -> Result<Passed, Error> {
        let socket = self.socket()?;
        passed(Kind::Sender, &[Some(socket.get_ref().as_fd())])
    }
}

impl<T> sealed::Sealed for crate::Receiver<T> {}
impl<T> Passable for crate::Receiver<T> {
    fn into_passed(self) -> Result<Passed, Error> {
        passed(Kind::Receiver, &[Some(self.socket().get_ref().as_fd())])
    }
}

impl<A, B> sealed::Sealed for crate::Duplex<A, B> {}
impl<A, B> Passable for crate::Duplex<A, B> {
    fn into_passed(self) -> Result<Passed, Error> {
        passed(Kind::Duplex, &[Some(self.socket().get_ref().as_fd())])
    }
}
