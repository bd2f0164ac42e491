//! The command inbox of one actor: a queue and a wakeup, with one sender (the handle) and one
//! receiver (the actor).
//!
//! A tokio `mpsc` channel allocates a block of 32 slots and cache-padded counters when it is
//! created, 1.3 KiB per instance that almost always holds nothing: an actor gets a handful of
//! commands in its life. This queue allocates when the first command arrives and frees nothing
//! it does not have to (`docs/benchmarks.md`, memory).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Command;

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Command>>,
    /// A stored permit when nobody waits: a command sent before the actor waits is not missed.
    arrived: Notify,
    /// The sender is gone: once the queue is empty there will be nothing more.
    closed: AtomicBool,
}

/// The sending side, held by the instance handle. Dropping it closes the inbox.
pub(super) struct Sender(Arc<Shared>);

/// The receiving side, held by the actor.
pub(super) struct Inbox(Arc<Shared>);

/// A new inbox and its sender.
pub(super) fn inbox() -> (Sender, Inbox) {
    let shared = Arc::new(Shared::default());
    (Sender(Arc::clone(&shared)), Inbox(shared))
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Command>> {
        super::lock(&self.queue)
    }
}

impl Sender {
    pub(super) fn send(&self, command: Command) {
        self.0.queue().push_back(command);
        self.0.arrived.notify_one();
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.arrived.notify_one();
    }
}

impl Inbox {
    /// The next command in the order sent; `None` once the sender is gone and every command it
    /// sent was taken. Cancel-safe: a command is only taken by a call that returns it.
    pub(super) async fn recv(&mut self) -> Option<Command> {
        loop {
            // Read before looking at the queue: when the sender is gone, everything it sent is
            // in the queue already.
            let closed = self.0.closed.load(Ordering::Acquire);
            if let Some(command) = self.0.queue().pop_front() {
                return Some(command);
            }
            if closed {
                return None;
            }
            self.0.arrived.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost wakeup fails the test instead of hanging it.
    async fn within_a_while<T>(f: impl std::future::Future<Output = T>) -> T {
        let limit = std::time::Duration::from_secs(10);
        tokio::time::timeout(limit, f)
            .await
            .expect("the receiver was never woken")
    }

    #[tokio::test]
    async fn commands_arrive_in_order_and_the_inbox_ends_after_the_last() {
        let (tx, mut rx) = inbox();
        tx.send(Command::Start(Some(1)));
        tx.send(Command::Stop);
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = rx.recv().await {
                got.push(c);
            }
            got
        });
        tokio::task::yield_now().await;
        tx.send(Command::Restart(None));
        drop(tx);
        let got = within_a_while(waiting).await.unwrap();
        assert!(matches!(
            got.as_slice(),
            [
                Command::Start(Some(1)),
                Command::Stop,
                Command::Restart(None)
            ]
        ));
    }

    #[tokio::test]
    async fn a_command_sent_while_the_actor_waits_wakes_it() {
        let (tx, mut rx) = inbox();
        let waiting = tokio::spawn(async move { rx.recv().await });
        // Let the receiver park on the empty queue first.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tx.send(Command::Shutdown);
        assert!(matches!(
            within_a_while(waiting).await.unwrap(),
            Some(Command::Shutdown)
        ));
    }

    #[tokio::test]
    async fn an_abandoned_receive_loses_no_command() {
        use futures_util::FutureExt;
        let (tx, mut rx) = inbox();
        // A select that another branch wins drops the receive after it waited, here after the
        // command arrived and woke it.
        {
            let mut waiting = Box::pin(rx.recv());
            assert!((&mut waiting).now_or_never().is_none());
            tx.send(Command::Stop);
        }
        assert!(matches!(
            within_a_while(rx.recv()).await,
            Some(Command::Stop)
        ));
        drop(tx);
        assert!(within_a_while(rx.recv()).await.is_none());
    }
}
