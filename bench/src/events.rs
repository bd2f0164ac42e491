//! A subscription to the daemon's `GET /events`, read on a thread of its own so that every
//! transition carries the time this process received it.

use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use provisr::client::{ApiClient, EventStream, StreamCloser};
use serde_json::Value;

/// A state transition as received on `/events`.
pub struct Transition {
    /// When this process read it off the stream.
    pub at: Instant,
    pub name: String,
    pub to: String,
}

pub enum Incoming {
    Transition(Transition),
    /// The daemon dropped this many events for this subscriber.
    Lagged(u64),
    Ended(String),
}

/// When [`Events::open`] returns, the daemon has subscribed (the response head arrived), so no
/// later transition is missed. Closed when dropped.
pub struct Events {
    rx: mpsc::Receiver<Incoming>,
    closer: Option<StreamCloser>,
    reader: Option<JoinHandle<()>>,
}

impl Events {
    /// `path` is the events endpoint under `client`'s base URL.
    pub fn open(client: &ApiClient, path: &str) -> Result<Events> {
        let stream = client
            .open_stream(path, &[])
            .with_context(|| format!("GET {path}"))?;
        let closer = stream.closer();
        let (tx, rx) = mpsc::channel();
        let reader = thread::Builder::new()
            .name("sse".into())
            .spawn(move || read(stream, tx))?;
        Ok(Events {
            rx,
            closer: Some(closer),
            reader: Some(reader),
        })
    }

    /// The next item; `None` when `timeout` passes first.
    pub fn next_within(&self, timeout: Duration) -> Result<Option<Incoming>> {
        match self.rx.recv_timeout(timeout) {
            Ok(item) => Ok(Some(item)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("/events reader ended"),
        }
    }

    /// The first transition matching `pred`, skipping others; `None` when `timeout` passes.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Transition) -> bool,
    ) -> Result<Option<Transition>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(item) = self.next_within(left)? else {
                return Ok(None);
            };
            match item {
                Incoming::Transition(t) if pred(&t) => return Ok(Some(t)),
                Incoming::Transition(_) => {}
                Incoming::Lagged(n) => bail!("/events lagged by {n} waiting for {what}"),
                Incoming::Ended(why) => bail!("/events ended waiting for {what}: {why}"),
            }
        }
    }

    /// [`Events::wait_until`], a timeout being an error.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Transition) -> bool,
    ) -> Result<Transition> {
        self.wait_until(what, timeout, pred)?
            .ok_or_else(|| anyhow!("timed out after {timeout:?} waiting on /events for {what}"))
    }

    /// Forgets what arrived so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // Closes the connection at once, so the daemon stops writing to this subscriber.
        if let Some(c) = self.closer.take() {
            c.close();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Passes on transitions and lag notices, stamped as they come off the stream.
fn read(stream: EventStream, tx: mpsc::Sender<Incoming>) {
    for event in stream {
        let at = Instant::now();
        let item = match event {
            Ok(e) => match e.kind.as_str() {
                "transition" => {
                    let Ok(v) = serde_json::from_str::<Value>(&e.data) else {
                        continue;
                    };
                    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                    Incoming::Transition(Transition {
                        at,
                        name: s("name"),
                        to: s("to"),
                    })
                }
                "lagged" => Incoming::Lagged(e.data.trim().parse().unwrap_or(0)),
                _ => continue,
            },
            Err(e) => {
                let _ = tx.send(Incoming::Ended(e.to_string()));
                return;
            }
        };
        if tx.send(item).is_err() {
            return;
        }
    }
    let _ = tx.send(Incoming::Ended("end of stream".into()));
}
