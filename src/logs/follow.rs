//! Following a stream live (`logs -f`): complete lines as they are written, none missed or
//! repeated.
//!
//! A follower does not get its own copy of every chunk. It remembers a sequence number and reads
//! what is new straight from the memory tail when the capture path signals that the stream grew
//! (a `watch` of the stream's byte count). The capture path therefore pays nothing extra for
//! followers, and a follower that falls more than the tail's size behind learns exactly how many
//! bytes it missed instead of silently skipping them.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::ring::Ring;

/// What [`Follow::next`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowEvent {
    /// New complete lines, oldest first, without their newline.
    Lines(Vec<String>),
    /// The follower fell so far behind that this many bytes left the memory tail before it read
    /// them (they are still in the log file, if there is one). Following resumes at the next
    /// complete line.
    Skipped { bytes: u64 },
}

/// A live view of one stream, created by [`super::InstanceLog::follow`].
///
/// It ends (`next` returns `None`) only when the [`super::InstanceLog`] and every capture of it
/// are gone; a child exiting or restarting does not end it. `next` is cancel-safe, so it can sit
/// in a `select!` next to a client disconnect.
pub struct Follow {
    ring: Arc<Mutex<Ring>>,
    /// Wakes on new bytes in either stream of the log (and on a capture ending).
    news: watch::Receiver<()>,
    /// Sequence number of the next byte to read.
    next: u64,
    /// The start of a line whose end has not been written yet.
    pending: Vec<u8>,
    /// After a skip that landed mid-line: drop bytes up to the next newline.
    resync: bool,
    /// Lines read together with a skip, handed out on the next call.
    ready: Vec<String>,
    ended: bool,
}

impl Follow {
    pub(super) fn new(ring: Arc<Mutex<Ring>>, news: watch::Receiver<()>, next: u64) -> Follow {
        Follow {
            ring,
            news,
            next,
            pending: Vec::new(),
            resync: false,
            ready: Vec::new(),
            ended: false,
        }
    }

    /// Waits for the next lines (or a report of bytes missed); `None` once the log is gone.
    pub async fn next(&mut self) -> Option<FollowEvent> {
        loop {
            if !self.ready.is_empty() {
                return Some(FollowEvent::Lines(std::mem::take(&mut self.ready)));
            }
            if self.ended {
                return None;
            }
            // Mark the current count seen before reading, so a write landing after the read
            // always wakes `changed` below.
            self.news.borrow_and_update();
            if let Some(event) = self.read_new() {
                return Some(event);
            }
            if self.news.changed().await.is_err() {
                // Writers are gone. Read what they left, then hand out an unterminated last
                // line too: nothing will ever end it.
                let event = self.read_new();
                self.ended = true;
                if !self.pending.is_empty() {
                    let last =
                        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
                    match event {
                        Some(FollowEvent::Lines(mut lines)) => {
                            lines.push(last);
                            return Some(FollowEvent::Lines(lines));
                        }
                        _ => self.ready.push(last),
                    }
                }
                if event.is_some() {
                    return event;
                }
            }
        }
    }

    /// Consumes what the tail holds past `next`; `None` when that yields no complete line.
    fn read_new(&mut self) -> Option<FollowEvent> {
        let read = self
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read_from(self.next);
        self.next = read.end;
        let mut skipped = read.skipped;
        let mut data = &read.data[..];
        if skipped > 0 {
            // The partial line we held lost its continuation: count it as missed, not as a line.
            skipped += self.pending.len() as u64;
            self.pending.clear();
            self.resync = !read.starts_line;
        }
        if self.resync {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    skipped += i as u64 + 1;
                    data = &data[i + 1..];
                    self.resync = false;
                }
                None => {
                    skipped += data.len() as u64;
                    data = &[];
                }
            }
        }

        let mut lines = Vec::new();
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let line = if self.pending.is_empty() {
                String::from_utf8_lossy(&rest[..i]).into_owned()
            } else {
                self.pending.extend_from_slice(&rest[..i]);
                String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
            };
            lines.push(line);
            rest = &rest[i + 1..];
        }
        self.pending.extend_from_slice(rest);
        // A line that never ends is handed out in pieces of the tail's size rather than held
        // without bound.
        while self.pending.len() >= super::TAIL_MAX_BYTES {
            let piece: Vec<u8> = self.pending.drain(..super::TAIL_MAX_BYTES).collect();
            lines.push(String::from_utf8_lossy(&piece).into_owned());
        }

        if skipped > 0 {
            self.ready = lines;
            return Some(FollowEvent::Skipped { bytes: skipped });
        }
        (!lines.is_empty()).then_some(FollowEvent::Lines(lines))
    }
}
