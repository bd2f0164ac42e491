//! Output capture (`docs/logs.md`): each instance's stdout and stderr, into files with size rotation,
//! into a bounded in-memory tail, and out to live followers.
//!
//! One [`InstanceLog`] exists per instance and outlives its restarts: the runtime hands it the
//! read ends of every new child's pipes ([`InstanceLog::attach`]) and the API reads from it
//! ([`InstanceLog::tail`], [`InstanceLog::follow`]). Log settings change in place
//! ([`InstanceLog::update`]) without restarting anything.
//!
//! The write path is built so that a child is never slowed by the daemon:
//! - capture is event-driven (`capture`): a task per stream parked on the reactor, large reads,
//!   whole batches written to the file;
//! - rotation is a few renames inline; compression and pruning run on a background thread
//!   (`rotate`);
//! - the memory tail is a byte ring (`ring`) that copies at most its own size per batch and is
//!   split into lines only when read;
//! - followers read from that ring (`follow`), so they cost the write path one `watch` update.
//!
//! Files, naming and semantics for users are described in `docs/logs.md`.

mod capture;
mod follow;
mod ring;
mod rotate;

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{LogPaths, LogSpec};

pub use follow::{Follow, FollowEvent};
pub use rotate::Rotation;

use ring::Ring;
use rotate::FileSlot;

/// Bytes of recent output kept in memory per stream.
pub const TAIL_MAX_BYTES: usize = 256 * 1024;

/// Most lines one tail request returns.
pub const TAIL_MAX_LINES: usize = 1000;

/// One of an instance's two output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream name other than `stdout` or `stderr`.
#[derive(Debug, thiserror::Error)]
#[error("unknown stream {0:?}; use \"stdout\" or \"stderr\"")]
pub struct UnknownStream(pub String);

impl FromStr for Stream {
    type Err = UnknownStream;

    fn from_str(s: &str) -> Result<Stream, UnknownStream> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            other => Err(UnknownStream(other.to_string())),
        }
    }
}

/// What can go wrong with log files and capture. None of it stops a child or the daemon: the
/// error goes to the daemon log and output stays in the memory tail meanwhile.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create log directory {} for {instance}: {source}", path.display())]
    CreateDir {
        instance: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot open log file {} for {instance}: {source}", path.display())]
    Open {
        instance: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot write log file {} for {instance}: {source}", path.display())]
    Write {
        instance: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot rotate log file {} to {} for {instance}: {source}", from.display(), to.display())]
    Rotate {
        instance: String,
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot compress rotated log {}: {source}", path.display())]
    Compress { path: PathBuf, source: io::Error },
    #[error("cannot remove old log {}: {source}", path.display())]
    Prune { path: PathBuf, source: io::Error },
    #[error("cannot capture {stream} of {instance}: {source}")]
    Capture {
        instance: String,
        stream: Stream,
        source: io::Error,
    },
}

/// The captured output of one instance, across its restarts. Cheap to clone.
#[derive(Clone)]
pub struct InstanceLog {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    streams: [StreamLog; 2],
    /// Captures still reading (attached streams not yet at EOF).
    active: AtomicUsize,
    /// Sent when either stream got bytes and when a capture ended: wakes followers and
    /// `flushed`, who each look at what they wait for. One channel for both streams and the
    /// count, not three: each is several hundred bytes per instance, and a follower woken by
    /// the other stream finds nothing new and waits again.
    news: watch::Sender<()>,
}

struct StreamLog {
    /// Its own lock, apart from the tail's: a tail request never waits for a file write.
    file: Mutex<FileSlot>,
    /// Shared with followers, who read new bytes from it.
    ring: Arc<Mutex<Ring>>,
}

/// Locks that guard plain data updated in one step each (a file handle and its size, a ring),
/// so a panic elsewhere cannot leave them half-changed: recover instead of propagating poison.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InstanceLog {
    /// A log for `instance_name` writing to `paths` (a `None` stream is memory-only) with the
    /// rotation settings of `spec`. Files and their directories are created now.
    pub fn new(instance_name: &str, paths: LogPaths, spec: &LogSpec) -> InstanceLog {
        InstanceLog::with_rotation(instance_name, paths, Rotation::from_spec(spec))
    }

    /// Like [`InstanceLog::new`] with rotation settings given directly, e.g. a byte-sized
    /// `max_bytes` finer than `LogSpec`'s MiB.
    pub fn with_rotation(instance_name: &str, paths: LogPaths, rotation: Rotation) -> InstanceLog {
        let stream = |s: Stream| StreamLog {
            file: Mutex::new(FileSlot::new(instance_name, s)),
            ring: Arc::new(Mutex::new(Ring::new(TAIL_MAX_BYTES))),
        };
        let log = InstanceLog {
            inner: Arc::new(Inner {
                name: instance_name.to_string(),
                streams: [stream(Stream::Stdout), stream(Stream::Stderr)],
                active: AtomicUsize::new(0),
                news: watch::Sender::new(()),
            }),
        };
        log.update_rotation(paths, rotation);
        log
    }

    /// The instance this log belongs to.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where each stream is written now (`None`: memory only).
    pub fn paths(&self) -> LogPaths {
        let path = |s: Stream| lock(&self.inner.stream(s).file).path().map(PathBuf::from);
        LogPaths {
            stdout: path(Stream::Stdout),
            stderr: path(Stream::Stderr),
        }
    }

    /// Applies changed log settings in place. A stream whose path changed continues in the new
    /// file from its next write; one whose path stayed keeps its file and size.
    pub fn update(&self, paths: LogPaths, spec: &LogSpec) {
        self.update_rotation(paths, Rotation::from_spec(spec));
    }

    /// [`InstanceLog::update`] with rotation settings given directly.
    pub fn update_rotation(&self, paths: LogPaths, rotation: Rotation) {
        for (s, path) in [
            (Stream::Stdout, paths.stdout),
            (Stream::Stderr, paths.stderr),
        ] {
            lock(&self.inner.stream(s).file).configure(path, &rotation);
        }
    }

    /// Takes over the read ends of a new child's stdout and stderr pipes and captures each until
    /// EOF (every write end closed). Must be called inside a tokio runtime.
    pub fn attach(&self, stdout: OwnedFd, stderr: OwnedFd) {
        for (stream, fd) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
            // Counted before the task exists, so `flushed` called right after sees it.
            let active = Active::start(&self.inner);
            tokio::spawn(async move {
                capture::run(&active.0, stream, fd).await;
                drop(active);
            });
        }
    }

    /// Waits until every stream attached so far reached EOF and all its bytes were written to
    /// the file and the memory tail. Rotated files may still be compressing afterwards.
    pub async fn flushed(&self) {
        let mut news = self.inner.news.subscribe();
        // A capture that ends uncounts itself before it sends, so the count is never read
        // stale after the last send. The sender lives in `inner`, which `self` keeps alive:
        // this cannot fail.
        let active = &self.inner.active;
        let _ = news
            .wait_for(|()| active.load(Ordering::Acquire) == 0)
            .await;
    }

    /// The last `n` lines of `stream` (at most [`TAIL_MAX_LINES`], from the last
    /// [`TAIL_MAX_BYTES`]), an unterminated last line included.
    pub fn tail(&self, stream: Stream, n: usize) -> Vec<String> {
        lock(&self.inner.stream(stream).ring).tail(n)
    }

    /// The last `n` complete lines of `stream`, and a [`Follow`] that yields every line written
    /// after them, in order, without gaps or repeats. An unterminated last line is not in the
    /// backlog: the follower yields it whole once it ends.
    pub fn follow(&self, stream: Stream, n: usize) -> (Vec<String>, Follow) {
        let s = self.inner.stream(stream);
        // Snapshot and starting point under the ring's lock, so no write falls between them.
        let ring = lock(&s.ring);
        let (lines, next) = ring.backlog(n);
        let follow = Follow::new(Arc::clone(&s.ring), self.inner.news.subscribe(), next);
        drop(ring);
        (lines, follow)
    }
}

impl fmt::Debug for InstanceLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceLog")
            .field("name", &self.inner.name)
            .field("paths", &self.paths())
            .finish()
    }
}

impl Inner {
    fn stream(&self, s: Stream) -> &StreamLog {
        &self.streams[s.index()]
    }

    /// One batch of output: to the file, then the tail, then a wakeup for followers. Returns the
    /// stream's byte count after it.
    fn deliver(&self, stream: Stream, data: &[u8]) -> u64 {
        let s = self.stream(stream);
        lock(&s.file).write(data);
        let total = {
            let mut ring = lock(&s.ring);
            ring.push(data);
            ring.total()
        };
        self.news.send_replace(());
        total
    }

    /// A capture reached EOF in the middle of a line: end that line in the memory tail, so the
    /// next child's first line does not run into it. `end` is where the capture's last bytes
    /// ended; if another capture wrote since, the line is not ours to end. Files keep exactly
    /// what the child wrote.
    fn end_line(&self, stream: Stream, end: u64) {
        let s = self.stream(stream);
        {
            let mut ring = lock(&s.ring);
            if ring.total() != end || ring.last_byte().is_none_or(|b| b == b'\n') {
                return;
            }
            ring.push(b"\n");
        }
        self.news.send_replace(());
    }
}

/// One running capture, counted in `Inner::active` for as long as it lives (a panicking
/// capture still uncounts itself, so `flushed` never hangs on it).
struct Active(Arc<Inner>);

impl Active {
    fn start(inner: &Arc<Inner>) -> Active {
        inner.active.fetch_add(1, Ordering::AcqRel);
        Active(Arc::clone(inner))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.news.send_replace(());
    }
}

/// The runtime hands each new child's pipe read ends to the instance's log.
impl crate::supervisor::OutputSink for InstanceLog {
    fn attach(&self, stdout: OwnedFd, stderr: OwnedFd) {
        InstanceLog::attach(self, stdout, stderr);
    }

    /// A hook's line goes where the instance's output goes: file, memory tail, followers.
    fn note(&self, stream: crate::supervisor::OutputStream, line: &str) {
        let stream = match stream {
            crate::supervisor::OutputStream::Stdout => Stream::Stdout,
            crate::supervisor::OutputStream::Stderr => Stream::Stderr,
        };
        let mut data = Vec::with_capacity(line.len() + 1);
        data.extend_from_slice(line.as_bytes());
        data.push(b'\n');
        self.inner.deliver(stream, &data);
    }

    /// New lines of both streams, read by followers of the memory tail like `logs -f`.
    fn lines(&self) -> crate::supervisor::LineStream {
        use futures_util::StreamExt;
        let lines = |follow: Follow| {
            futures_util::stream::unfold(follow, |mut f| async move {
                loop {
                    match f.next().await? {
                        FollowEvent::Lines(lines) => {
                            return Some((futures_util::stream::iter(lines), f))
                        }
                        FollowEvent::Skipped { .. } => continue,
                    }
                }
            })
            .flatten()
        };
        let (_, out) = self.follow(Stream::Stdout, 0);
        let (_, err) = self.follow(Stream::Stderr, 0);
        Box::pin(futures_util::stream::select(lines(out), lines(err)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        // The runtime stores the log behind its `OutputSink` trait (Send + Sync + 'static) and
        // the API moves followers into response streams.
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        fn assert_send<T: Send + 'static>() {}
        assert_send_sync::<InstanceLog>();
        assert_send::<Follow>();
    }

    #[test]
    fn streams_are_named_in_lowercase() {
        assert_eq!(
            serde_json::to_string(&Stream::Stderr).unwrap(),
            "\"stderr\""
        );
        assert_eq!(
            serde_json::from_str::<Stream>("\"stdout\"").unwrap(),
            Stream::Stdout
        );
        assert_eq!("stderr".parse::<Stream>().unwrap(), Stream::Stderr);
        assert!("err".parse::<Stream>().is_err());
        assert_eq!(Stream::Stdout.to_string(), "stdout");
    }
}
