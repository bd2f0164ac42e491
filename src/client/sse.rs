//! Server-sent events as an iterator: the daemon's `/events` and followed logs.
//!
//! The wire format is the one of the HTML standard: `event:` names the kind, `data:` lines join
//! with newlines, a blank line ends an event, and lines starting with `:` are comments.

use std::io::{BufRead, BufReader, Lines};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::ClientError;

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message` when the event names none.
    pub kind: String,
    pub data: String,
}

/// An open stream of server-sent events; each item is the next event. It ends when the server
/// ends the response or a [`StreamCloser`] closes it, and after the first error.
pub struct EventStream {
    /// The stream's URL, as errors name it.
    url: String,
    lines: Lines<BufReader<ureq::BodyReader<'static>>>,
    /// The agent that owns the connection, and nothing else (see [`EventStream::closer`]).
    agent: ureq::Agent,
    closed: Arc<AtomicBool>,
    done: bool,
}

/// Closes an [`EventStream`] from another thread: a read blocked on it returns at once, and the
/// stream ends without an error.
pub struct StreamCloser {
    agent: ureq::Agent,
    closed: Arc<AtomicBool>,
}

impl StreamCloser {
    pub fn close(self) {
        self.closed.store(true, Ordering::SeqCst);
        self.agent.shutdown();
    }
}

impl EventStream {
    pub(super) fn new(url: String, agent: ureq::Agent, body: ureq::Body) -> EventStream {
        EventStream {
            url,
            lines: BufReader::with_capacity(64 << 10, body.into_reader()).lines(),
            agent,
            closed: Arc::new(AtomicBool::new(false)),
            done: false,
        }
    }

    /// A handle that closes this stream, for the thread that does not read it.
    pub fn closer(&self) -> StreamCloser {
        StreamCloser {
            agent: self.agent.clone(),
            closed: self.closed.clone(),
        }
    }
}

impl Iterator for EventStream {
    type Item = Result<SseEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut kind = String::new();
        let mut data = String::new();
        let mut has_data = false;
        while !self.done {
            let line = match self.lines.next() {
                Some(Ok(line)) => line,
                None => break,
                Some(Err(e)) => {
                    self.done = true;
                    if self.closed.load(Ordering::SeqCst) {
                        break;
                    }
                    return Some(Err(ClientError::Protocol {
                        url: self.url.clone(),
                        reason: e.to_string(),
                    }));
                }
            };
            if line.is_empty() {
                // An event without data (a lone `event:` line) is not dispatched.
                if has_data {
                    if kind.is_empty() {
                        kind.push_str("message");
                    }
                    return Some(Ok(SseEvent { kind, data }));
                }
                kind.clear();
            } else if let Some(d) = line.strip_prefix("data:") {
                if has_data {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
                has_data = true;
            } else if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim().to_string();
            }
        }
        self.done = true;
        None
    }
}
