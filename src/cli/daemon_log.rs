//! The daemon's own log: its lines on standard error, written so that a reader that stalls or
//! goes away never stops the daemon (docs/reliability.md, "A daemon whose log reader stalls or
//! went away").
//!
//! Until [`Queue::start`], each line is one `write_all` to stderr. After it, lines go through a
//! bounded queue to a thread of their own that writes them: a stalled reader (a full pipe, a
//! paused `less`, a journald that does not keep up) blocks only that thread, and while the queue
//! is full further lines are dropped and counted, never waited for. The first line that fits
//! again is preceded by one that says how many were lost. The queue starts after the store and
//! the spawner, which want a process with one thread (docs/store.md, "Opening"), and the
//! runtime.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// Lines the queue holds at most while its thread cannot write (a line is about 150 bytes):
/// enough for the two transitions of each of 2000 instances while the reader catches up.
const QUEUE_LINES: usize = 4096;

/// How long the end of the queue waits for its thread to write what is queued.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// The queue while it runs; `None` before [`Queue::start`] and after its end.
static QUEUE: RwLock<Option<SyncSender<Vec<u8>>>> = RwLock::new(None);

/// Lines dropped because the queue was full, and how many of them were reported.
static DROPPED: AtomicUsize = AtomicUsize::new(0);
static REPORTED: AtomicUsize = AtomicUsize::new(0);

/// The writer the daemon's tracing subscriber makes for each line.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let queue = QUEUE.read().unwrap_or_else(PoisonError::into_inner);
        match queue.as_ref() {
            Some(queue) => enqueue(queue, buf),
            None => write_stderr(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One line on stderr, in one `write_all` under the stderr lock so that lines do not
/// interleave. A line that cannot be written (EPIPE: the reader went away) is dropped: the
/// daemon goes on (Rust ignores SIGPIPE), and reporting it would go to the same stderr.
fn write_stderr(line: &[u8]) {
    let _ = io::stderr().write_all(line);
}

/// Queues `line` without waiting, first saying how many lines were dropped since the last
/// such note.
fn enqueue(queue: &SyncSender<Vec<u8>>, line: &[u8]) {
    let dropped = DROPPED.load(Ordering::Relaxed);
    let reported = REPORTED.load(Ordering::Relaxed);
    if dropped > reported {
        let lost = dropped - reported;
        let note = format!("provisr: {lost} log lines were dropped: standard error was not read\n");
        if queue.try_send(note.into_bytes()).is_ok() {
            REPORTED.fetch_max(dropped, Ordering::Relaxed);
        }
    }
    match queue.try_send(line.to_vec()) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Disconnected(line)) => write_stderr(&line),
    }
}

/// The running queue; dropping it writes what is queued (waiting up to [`DRAIN_WAIT`]) and
/// goes back to writing each line directly.
pub struct Queue {
    /// Closed by the writer thread once it wrote every queued line.
    drained: Receiver<()>,
}

impl Queue {
    /// Starts the writer thread and sends every later line through it. `None` when no thread
    /// can be started: lines are then written directly, as before.
    pub fn start() -> Option<Queue> {
        let (lines, queued) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
        let (done, drained) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("provisr-log".into())
            .spawn(move || {
                for line in queued {
                    write_stderr(&line);
                }
                drop(done);
            })
            .ok()?;
        *QUEUE.write().unwrap_or_else(PoisonError::into_inner) = Some(lines);
        Some(Queue { drained })
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The last sender goes: the thread writes what is queued, then ends. Lines logged from
        // now on are written directly, after those (unless stderr is stalled, when they wait
        // no longer than `DRAIN_WAIT`).
        QUEUE.write().unwrap_or_else(PoisonError::into_inner).take();
        let _ = self.drained.recv_timeout(DRAIN_WAIT);
    }
}
