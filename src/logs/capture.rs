//! Reading one pipe until EOF: event-driven, one task per stream, no thread and no polling.
//!
//! The read end is registered with tokio's reactor (`tokio::net::unix::pipe::Receiver`, which
//! checks it is a pipe and makes it nonblocking); while the child is quiet the
//! stream costs one parked task and one epoll registration. When data arrives the task drains the
//! pipe with large reads into a per-thread scratch buffer and hands each batch to the stream
//! (file, memory tail, followers) before waiting again.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::net::unix::pipe;

use super::{Inner, LogError, Stream};

/// Size of one read batch: large, so a fast writer is drained with few syscalls and the file
/// gets big writes, yet small enough that the bytes are still in the CPU cache when they are
/// copied again into the page cache (256 KiB measured cheaper than 1 MiB in the bench).
const READ_BATCH: usize = 256 * 1024;

/// Bytes moved per wakeup before the task yields, so a stream that never runs dry cannot
/// starve other tasks on its worker thread.
const BUDGET_PER_WAKEUP: usize = 4 * 1024 * 1024;

/// Default pipe capacity on Linux. A read this large means the writer filled the pipe, i.e.
/// it is producing faster than it is being drained; the pipe is then grown once so it does not
/// block on every 64 KiB.
const DEFAULT_PIPE: usize = 64 * 1024;
const GROWN_PIPE: usize = 1024 * 1024;

thread_local! {
    // One scratch buffer per worker thread instead of one per stream: a thousand idle streams
    // then hold no read buffers at all.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

enum Drained {
    /// The pipe is empty for now.
    WouldBlock,
    /// Every write end is closed.
    Eof,
    /// The budget for this wakeup is used up; there may be more.
    Budget,
    Failed(io::Error),
}

/// Captures `fd` into `inner`'s `stream` until EOF.
pub(super) async fn run(inner: &Inner, stream: Stream, fd: OwnedFd) {
    let fail = |source: io::Error| {
        let err = LogError::Capture {
            instance: inner.name.clone(),
            stream,
            source,
        };
        tracing::warn!(instance = %inner.name, %stream, error = %err, "output capture stopped");
    };
    // The runtime may hand the read end over in blocking mode; `from_owned_fd` sets O_NONBLOCK,
    // as edge-triggered readiness needs reads that return EAGAIN instead of blocking a worker.
    let rx = match pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => return fail(e),
    };
    let mut reader = Reader {
        grow_tried: false,
        last_end: None,
    };
    loop {
        if let Err(e) = rx.readable().await {
            return fail(e);
        }
        // A read that returns WouldBlock clears the readiness `readable` waits for.
        match reader.drain(&rx, inner, stream) {
            Drained::WouldBlock => {}
            Drained::Budget => {
                // Readiness is kept: the next `readable()` returns at once, after others ran.
                tokio::task::yield_now().await;
            }
            Drained::Eof => break,
            Drained::Failed(e) => {
                fail(e);
                break;
            }
        }
    }
    if let Some(end) = reader.last_end {
        inner.end_line(stream, end);
    }
}

struct Reader {
    grow_tried: bool,
    /// Sequence number just after this capture's last bytes in the memory tail.
    last_end: Option<u64>,
}

impl Reader {
    fn drain(&mut self, rx: &pipe::Receiver, inner: &Inner, stream: Stream) -> Drained {
        SCRATCH.with_borrow_mut(|buf| {
            if buf.len() < READ_BATCH {
                buf.resize(READ_BATCH, 0);
            }
            let mut moved = 0;
            loop {
                let mut filled = 0;
                let mut end = None;
                while filled < buf.len() {
                    match rx.try_read(&mut buf[filled..]) {
                        Ok(0) => {
                            end = Some(Drained::Eof);
                            break;
                        }
                        Ok(n) => {
                            if n >= DEFAULT_PIPE && !self.grow_tried {
                                self.grow_tried = true;
                                grow_pipe(rx.as_fd());
                            }
                            filled += n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            end = Some(Drained::WouldBlock);
                            break;
                        }
                        Err(e) => {
                            end = Some(Drained::Failed(e));
                            break;
                        }
                    }
                }
                if filled > 0 {
                    self.last_end = Some(inner.deliver(stream, &buf[..filled]));
                    moved += filled;
                }
                if let Some(end) = end {
                    return end;
                }
                if moved >= BUDGET_PER_WAKEUP {
                    return Drained::Budget;
                }
            }
        })
    }
}

/// Best effort: an unprivileged daemon past its pipe quota keeps the default size.
fn grow_pipe(fd: BorrowedFd<'_>) {
    if let Ok(size) = rustix::pipe::fcntl_getpipe_size(fd) {
        if size < GROWN_PIPE {
            let _ = rustix::pipe::fcntl_setpipe_size(fd, GROWN_PIPE);
        }
    }
}
