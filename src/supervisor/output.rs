//! The seam between the runtime and output capture.
//!
//! The supervisor owns a child's pipes up to their read ends; whatever drains them (the `logs`
//! module in the daemon, a small file writer in tests) implements [`OutputSink`].

use std::os::fd::OwnedFd;
use std::pin::Pin;

/// New complete lines of an instance's output, both streams, oldest first.
pub type LineStream = Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// One of an instance's two output streams, as the runtime names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Where an instance's output goes. The logs module implements this; tests can use a file sink.
///
/// The descriptors are blocking pipe read ends opened `O_CLOEXEC`; a sink that reads them through
/// an event loop sets `O_NONBLOCK` itself. The child holds its own copies of the read ends (fd 3
/// and 4, see `docs/runtime.md`), so the sink sees end-of-file only once every writer (the child and
/// whatever it forked) has exited, and a sink that stops reading never makes the child die of
/// `SIGPIPE`: its writes block once the pipe is full.
///
/// A sink must keep draining both descriptors: a pipe nobody reads stops the child when it fills.
pub trait OutputSink: Send + Sync + 'static {
    /// Take over the read ends of a new child's stdout and stderr pipes; called once per spawn/adoption.
    fn attach(&self, stdout: OwnedFd, stderr: OwnedFd);

    /// Adds a line of the runtime's own to the instance's output: a hook's output, prefixed
    /// with its name (`docs/configuration.md`, "Hooks"). A sink that keeps nothing drops it.
    fn note(&self, stream: OutputStream, line: &str) {
        let _ = (stream, line);
    }

    /// Every complete line either stream gets from now on, for a `log` probe. A sink that
    /// keeps nothing yields none.
    fn lines(&self) -> LineStream {
        Box::pin(futures_util::stream::pending())
    }
}
