//! `Sender` as a [`futures_sink::Sink`].
//!
//! `poll_ready` waits for room; `start_send` then always takes the item: a buffered sender
//! appends it (possibly taking the buffer over its limit by that one item), a direct
//! sender writes it if the kernel has room and otherwise keeps it, encoded, until
//! `poll_ready` / `poll_flush` finish writing it — so a full socket means waiting, never an
//! error. `poll_close` flushes and retires this handle only, as dropping it would: every
//! later send through it (`send`, `try_send`, `blocking_send`, the `Sink`) fails with
//! `Closed`, other clones go on, and if it was the last sender of every process the
//! receivers see the end.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use serde::Serialize;

use super::sender::fail_kind;
use super::Sender;
use crate::error::{FlushError, SendError, SendErrorKind};
use crate::send::item::Encoded;
use crate::send::{flush_to_send, Engine, Fail, Item, Payload};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The futures a `Sender` used as a `Sink` keeps between polls. Behind mutexes only so the
/// `Sender` stays `Sync`; they are reached through `&mut self`, never contended.
pub(crate) struct SinkState<T> {
    /// Buffered: waiting for room. Direct: writing the item `start_send` took.
    ready: Mutex<Option<BoxFuture<Result<(), Fail>>>>,
    flush: Mutex<Option<BoxFuture<Result<(), FlushError>>>>,
    /// `poll_close` retired this handle.
    closed: bool,
    _item: PhantomData<fn(T)>,
}

impl<T> Default for SinkState<T> {
    fn default() -> Self {
        SinkState {
            ready: Mutex::new(None),
            flush: Mutex::new(None),
            closed: false,
            _item: PhantomData,
        }
    }
}

fn slot<F>(m: &mut Mutex<Option<F>>) -> &mut Option<F> {
    m.get_mut().unwrap_or_else(|e| e.into_inner())
}

impl<T> Sender<T> {
    /// Drives the wait (buffered) or the held item's write (direct) to its end.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError<Option<T>>>> {
        let ready = slot(&mut self.sink.ready);
        if let Some(fut) = ready.as_mut() {
            let result = ready!(fut.as_mut().poll(cx));
            *ready = None;
            if let Err(fail) = result {
                return Poll::Ready(Err(SendError::new(None, fail_kind(fail))));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Serialize> futures_sink::Sink<T> for Sender<T> {
    /// The item when `start_send` could not take it; `None` when writing or flushing
    /// failed after the sink had taken it.
    type Error = SendError<Option<T>>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Engine::Buffered(outbox) = this.handle.engine() {
            if !outbox.has_room() {
                let outbox = outbox.clone();
                *slot(&mut this.sink.ready) = Some(Box::pin(async move {
                    outbox
                        .room()
                        .await
                        .map_err(|e| Fail::Failed(SendErrorKind::Io(e)))
                }));
                return this.poll_pending(cx);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        let this = self.get_mut();
        if this.sink.closed || this.handle.is_retired() {
            return Err(SendError::new(Some(item), SendErrorKind::Closed));
        }
        match this.handle.engine() {
            Engine::Buffered(outbox) => match outbox.try_push(&Item(&item), false) {
                Ok(_) => Ok(()),
                Err(fail) => Err(SendError::new(Some(item), fail_kind(fail))),
            },
            Engine::Direct(direct) => {
                let encoded: Encoded = match Item(&item).encode(direct.limits()) {
                    Ok(encoded) => encoded,
                    Err(kind) => return Err(SendError::new(Some(item), kind)),
                };
                match direct.try_write(&encoded) {
                    Ok(()) => Ok(()),
                    Err(Fail::Full | Fail::Timeout) => {
                        // Keep it and finish writing it in poll_ready / poll_flush.
                        let direct = direct.clone();
                        *slot(&mut this.sink.ready) =
                            Some(Box::pin(async move { direct.write(&encoded, None).await }));
                        Ok(())
                    }
                    Err(fail) => Err(SendError::new(Some(item), fail_kind(fail))),
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        let outbox = match this.handle.engine() {
            Engine::Buffered(outbox) => outbox.clone(),
            Engine::Direct(_) => return Poll::Ready(Ok(())),
        };
        let flush = slot(&mut this.sink.flush)
            .get_or_insert_with(|| Box::pin(async move { outbox.flush().await }));
        let result = ready!(flush.as_mut().poll(cx));
        *slot(&mut this.sink.flush) = None;
        Poll::Ready(result.map_err(|e| SendError::new(None, flush_to_send(e))))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        this.sink.closed = true;
        let flushed = ready!(Pin::new(&mut *this).poll_flush(cx));
        // Flushed (or failed) while still a handle; now no longer one.
        this.handle.retire();
        Poll::Ready(flushed)
    }
}
