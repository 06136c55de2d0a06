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

use std::os::fd::{OwnedFd, RawFd};

use crate::error::Error;

/// The shapes of things that can be passed, as written in the environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sender,
    Receiver,
    Duplex,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Sender => "sender",
            Kind::Receiver => "receiver",
            Kind::Duplex => "duplex",
        }
    }
}

const PREFIX: &str = "procq1";

mod sealed {
    pub trait Sealed {}
}

/// A channel half (or queue handle) that [`pass`] can hand to a child process.
pub trait Passable: sealed::Sealed {
    #[doc(hidden)]
    fn into_passed(self) -> Result<(PassedKind, Vec<OwnedFd>), Error>;
}

/// Internal: what a [`Passable`] turns into. Not constructible outside procq.
#[doc(hidden)]
#[derive(Debug)]
pub struct PassedKind(Kind);

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
    let (PassedKind(kind), fds) = half.into_passed()?;
    let cmd = cmd.std_command();
    let numbers: Vec<String> = fds
        .into_iter()
        .map(|fd| crate::sys::inherit_in_child(cmd, fd).to_string())
        .collect();
    cmd.env(
        name,
        format!("{PREFIX}:{}:{}", kind.as_str(), numbers.join(",")),
    );
    Ok(())
}

pub(crate) fn passed(kind: Kind, fds: Vec<OwnedFd>) -> (PassedKind, Vec<OwnedFd>) {
    (PassedKind(kind), fds)
}

/// Takes the `N` descriptors passed under `name`, checking they were passed as `expected`.
pub(crate) fn take<const N: usize>(name: &str, expected: Kind) -> Result<[OwnedFd; N], Error> {
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
    let numbers: Vec<RawFd> = parts
        .next()
        .ok_or_else(|| bad("no descriptors"))?
        .split(',')
        .map(|n| n.parse::<RawFd>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("descriptor numbers are not integers"))?;
    if numbers.len() != N {
        return Err(bad("wrong number of descriptors"));
    }
    let mut fds = Vec::with_capacity(N);
    for n in numbers {
        fds.push(crate::sys::claim_inherited(n).map_err(|e| Error::BadEnv {
            name: name.into(),
            reason: format!("descriptor {n}: {e}"),
        })?);
    }
    Ok(fds.try_into().expect("N descriptors"))
}

impl<T> sealed::Sealed for crate::Sender<T> {}
impl<T> Passable for crate::Sender<T> {
    fn into_passed(self) -> Result<(PassedKind, Vec<OwnedFd>), Error> {
        Ok(passed(Kind::Sender, vec![self.descriptor()?]))
    }
}

impl<T> sealed::Sealed for crate::Receiver<T> {}
impl<T> Passable for crate::Receiver<T> {
    fn into_passed(self) -> Result<(PassedKind, Vec<OwnedFd>), Error> {
        Ok(passed(Kind::Receiver, vec![self.descriptor()?]))
    }
}

impl<A, B> sealed::Sealed for crate::Duplex<A, B> {}
impl<A, B> Passable for crate::Duplex<A, B> {
    fn into_passed(self) -> Result<(PassedKind, Vec<OwnedFd>), Error> {
        Ok(passed(Kind::Duplex, vec![self.descriptor()?]))
    }
}
