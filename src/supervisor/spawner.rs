//! The spawner: a small process the daemon starts once, which creates every child on its
//! behalf (`docs/runtime.md`, "Spawning").
//!
//! Forking the daemon itself costs what the daemon has: copying the page tables of a large
//! multi-threaded process, and closing in every child the thousands of descriptors the daemon
//! holds (three per instance), work that grows with the number of instances. The spawner is the
//! same binary started again in a hidden mode ([`ARG`]), before the daemon has anything: it
//! holds a socket, `/dev/null` and its standard streams, and a few hundred KiB of heap. For each
//! request the daemon sends a [`Launch`] on a unix stream socket, with the child's descriptors
//! attached (`SCM_RIGHTS`); the spawner starts the child with `clone(CLONE_VM | CLONE_VFORK |
//! CLONE_PARENT)` (`launch.rs`) and answers with its pid (and its start time when known without
//! reading `/proc`), or with the step that failed and why.
//!
//! `CLONE_PARENT` makes the child the daemon's own: the daemon watches its pidfd, reaps it,
//! owns it (`process.rs`) and is its subreaper, exactly as if it had forked it. A request counts
//! as a spawn in flight from before it is sent until a thread of the daemon that reads the
//! replies has recorded the pid as owned, so the orphan reaper never takes the new child for an
//! orphan.
//!
//! Requests are pipelined (up to [`IN_FLIGHT`]): callers await their reply, so a burst of starts
//! keeps the spawner busy while the daemon handles the replies. The spawner ends when the daemon
//! shuts its socket down (at exit) or dies. Should the spawner die, the next request starts a
//! new one; a request it died holding may have created a child that nobody knows, which the
//! caller finds by its tag (`spawn.rs`). Without a spawner (the runtime inside a test), children
//! are started from the calling process itself, by the same code.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use tokio::sync::{oneshot, Semaphore};

use super::launch::{self, Identity, Ids, Launch, LaunchError, Parent, Stage, Started, CHILD_FDS};
use super::lock;
use super::process::{begin_spawn, end_spawn, kill_group, settle_spawn};

/// The first argument that starts the `provisr` binary as a spawner (see `main.rs`).
pub const ARG: &str = "__provisr-spawner";

/// Requests in flight at most: enough to keep the spawner busy through a burst while the
/// daemon's threads wait for a CPU. Requests of the usual size (a few KiB) all fit the socket's
/// default buffer, so a send does not wait; large ones (up to [`MAX_REQUEST`]) may wait for the
/// spawner to read what is ahead of them, which it does as it works through them.
const IN_FLIGHT: usize = 64;

/// The largest request sent to the spawner. A child whose arguments and environment are larger
/// is started by the daemon itself.
const MAX_REQUEST: usize = 64 * 1024;

/// The spawner this process uses, once [`install`]ed.
static INSTALLED: OnceLock<Spawner> = OnceLock::new();

/// Starts the spawner from `exe` (the daemon's own binary, `/proc/self/exe`) and makes every
/// later spawn of this process go through it. Call it once, early, while the process holds
/// little.
pub fn install(exe: impl Into<PathBuf>) -> io::Result<()> {
    let spawner = Spawner {
        exe: exe.into(),
        conn: Mutex::new(None),
        permits: Semaphore::new(IN_FLIGHT),
    };
    let conn = spawner.connect()?;
    *spawner.lock() = Some(conn);
    INSTALLED
        .set(spawner)
        .map_err(|_| io::Error::new(io::ErrorKind::AlreadyExists, "a spawner is installed"))
}

/// The installed spawner, if any.
pub(crate) fn installed() -> Option<&'static Spawner> {
    INSTALLED.get()
}

/// The pid of the installed spawner process while it runs.
pub fn pid() -> Option<i32> {
    installed()?
        .lock()
        .as_ref()
        .filter(|c| c.is_open())
        .map(|c| c.pid)
}

/// Ends the installed spawner (it exits once its socket is shut down) and reaps it. Later
/// spawns start it again.
pub fn shutdown() {
    if let Some(s) = installed() {
        let conn = s.lock().take();
        if let Some(conn) = conn {
            conn.end();
        }
    }
}

/// The daemon's side of the spawner.
pub(crate) struct Spawner {
    exe: PathBuf,
    /// The running spawner; `None` until started again after it ended.
    conn: Mutex<Option<Conn>>,
    /// One per request in flight.
    permits: Semaphore,
}

/// What a request's caller waits for.
type Reply = Result<Started, LaunchError>;

/// One running spawner: the socket, the process, and who waits for which reply.
struct Conn {
    sock: Arc<OwnedFd>,
    /// The spawner process: owned (`process.rs`), so only its reader reaps it, once it ended.
    pid: i32,
    waiting: Arc<Mutex<Waiting>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Replies not read yet, in the order of their requests; `open` until the spawner ended;
/// `reaped` once the reader has reaped the spawner (its pid may then name another process).
struct Waiting {
    queue: VecDeque<oneshot::Sender<Reply>>,
    open: bool,
    reaped: bool,
}

impl Conn {
    fn is_open(&self) -> bool {
        lock(&self.waiting).open
    }

    /// Shuts the socket down, which ends the spawner; returns once its reader has reaped it.
    fn end(mut self) {
        let _ = rustix::net::shutdown(&*self.sock, rustix::net::Shutdown::Write);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Kills a spawner that failed a request, then ends it.
    fn abandon(self) {
        {
            let w = lock(&self.waiting);
            if !w.reaped {
                // Not reaped yet: the pid is still the spawner's.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.end();
    }
}

impl Spawner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        lock(&self.conn)
    }

    /// Starts a spawner process and the thread that reads its replies.
    fn connect(&self) -> io::Result<Conn> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // No `pre_exec`: std starts it with posix_spawn. Its socket is its stdin.
        begin_spawn();
        let child = Command::new(&self.exe)
            .arg0("provisr")
            .arg(ARG)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        if let Ok(c) = &child {
            super::process::own(c.id() as i32);
        }
        end_spawn();
        // Reaped by pid below, not through std (dropping a `Child` neither waits nor kills).
        let pid = child?.id() as i32;
        let sock = Arc::new(ours);
        let waiting = Arc::new(Mutex::new(Waiting {
            queue: VecDeque::new(),
            open: true,
            reaped: false,
        }));
        let reader = std::thread::Builder::new()
            .name("provisr-spawner".into())
            .spawn({
                let (sock, waiting) = (sock.clone(), waiting.clone());
                move || {
                    read_replies(&sock, &waiting);
                    // The spawner ended (it closed its socket): reap it.
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                    super::process::disown(pid);
                    lock(&waiting).reaped = true;
                }
            });
        match reader {
            Ok(reader) => Ok(Conn {
                sock,
                pid,
                waiting,
                reader: Some(reader),
            }),
            Err(e) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                super::process::disown(pid);
                Err(e)
            }
        }
    }

    /// Starts the child `launch` describes through the spawner (started again if it ended), and
    /// returns once it has exec'd, recorded as owned, or failed (and was reaped). `None` when
    /// the request is too large for the spawner ([`MAX_REQUEST`]).
    pub(crate) async fn launch(&self, launch: &Launch<'_>) -> Option<Reply> {
        let body = encode(launch);
        if body.len() > MAX_REQUEST {
            return None;
        }
        let lost = |e: io::Error| LaunchError::new(Stage::Spawner, e);
        let permit = self.permits.acquire().await;
        let Ok(_permit) = permit else {
            return Some(Err(lost(io::Error::other("the spawner is closed"))));
        };
        let fds: Vec<BorrowedFd<'_>> = launch.fds.iter().flatten().copied().collect();
        let reply = match self.send(&body, &fds) {
            Ok(reply) => reply,
            Err(e) => return Some(Err(e)),
        };
        Some(reply.await.unwrap_or_else(|_| {
            Err(LaunchError {
                maybe_started: true,
                ..lost(io::Error::other("the spawner's reader ended"))
            })
        }))
    }

    /// Sends one request; the receiver of its reply.
    fn send(
        &self,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<oneshot::Receiver<Reply>, LaunchError> {
        let lost = |e: io::Error| LaunchError::new(Stage::Spawner, e);
        let mut guard = self.lock();
        // A request that could not be sent was never acted on: one more try, on a new spawner.
        let mut last = None;
        for _ in 0..2 {
            if let Some(ended) = guard.take_if(|c| !c.is_open()) {
                tracing::warn!("the spawner process ended; starting it again");
                ended.abandon();
            }
            let conn = match &*guard {
                Some(c) => c,
                None => guard.insert(self.connect().map_err(lost)?),
            };
            let (tx, rx) = oneshot::channel();
            let mut waiting = lock(&conn.waiting);
            // Queued and sent under one lock, so replies are matched in order.
            waiting.queue.push_back(tx);
            begin_spawn();
            match send_request(&conn.sock, body, fds) {
                Ok(()) => return Ok(rx),
                Err(e) => {
                    waiting.queue.pop_back();
                    waiting.open = false;
                    end_spawn();
                    last = Some(e);
                }
            }
        }
        Err(lost(last.unwrap_or_else(|| {
            io::Error::other("the spawner could not be reached")
        })))
    }
}

/// The reader of one spawner's replies: each completes the oldest request, after the child is
/// recorded as owned (or reaped, when it failed). When the spawner ends, every request still
/// waiting fails, saying a child may have been started.
fn read_replies(sock: &OwnedFd, waiting: &Mutex<Waiting>) {
    let mut replies = Replies::default();
    loop {
        let reply = replies.next(sock);
        let mut w = lock(waiting);
        let result = match reply {
            Ok(result) => result,
            Err(e) => {
                w.open = false;
                // Whatever went wrong, the spawner is done: make sure it sees the end too.
                let _ = rustix::net::shutdown(sock, rustix::net::Shutdown::Both);
                let queue = std::mem::take(&mut w.queue);
                drop(w);
                if !queue.is_empty() {
                    tracing::warn!(
                        "the spawner process ended with {} requests in flight: {e}",
                        queue.len()
                    );
                }
                for tx in queue {
                    end_spawn();
                    let _ = tx.send(Err(LaunchError {
                        maybe_started: true,
                        ..LaunchError::new(Stage::Spawner, io::Error::new(e.kind(), e.to_string()))
                    }));
                }
                return;
            }
        };
        let Some(tx) = w.queue.pop_front() else {
            // A reply nobody asked for: the spawner is not speaking this protocol. End it.
            w.open = false;
            let _ = rustix::net::shutdown(sock, rustix::net::Shutdown::Both);
            return;
        };
        drop(w);
        settle_spawn(&result);
        end_spawn();
        if let Err(Ok(started)) = tx.send(result) {
            // Its caller went away (only as the runtime ends): nobody would watch this child.
            kill_group(started.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(started.pid), None);
            super::process::disown(started.pid);
        }
    }
}

/// The spawner process: serves requests on fd 0 until the daemon closes it. Returns the exit
/// status.
pub fn serve() -> i32 {
    match serve_requests() {
        Ok(()) => 0,
        Err(e) => {
            // Its stderr is the daemon's, which may be a pipe nobody reads any more: a failed
            // write is dropped, as `eprintln!` would panic.
            let _ = writeln!(io::stderr(), "provisr spawner: {e}");
            1
        }
    }
}

fn serve_requests() -> io::Result<()> {
    // The socket moves off fd 0 to a close-on-exec descriptor, and /dev/null takes its place.
    // Whatever else this process inherited never reaches a child: each child marks everything
    // above its own descriptors close-on-exec (`launch.rs`).
    let sock = rustix::io::fcntl_dupfd_cloexec(io::stdin().as_fd(), CHILD_FDS as i32)?;
    let null = rustix::fs::open(
        c"/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    drop(null);
    let mut requests = Requests::default();
    while let Some((body, fds)) = requests.next(&sock)? {
        let result = match decode(&body, fds) {
            Ok(request) => launch::start(&request.launch(), Parent::CallersParent),
            Err(e) => Err(LaunchError::new(Stage::Prepare, e)),
        };
        write_all(sock.as_fd(), &encode_reply(&result))?;
    }
    Ok(())
}

/// Bytes before a request's body: its length and how many descriptors come with it.
const HEADER: usize = 8;

/// Sends a request: a header, then the body, its descriptors attached to the first bytes. On a
/// stream socket the descriptors of one `sendmsg` arrive with its first byte and a read never
/// returns those of two (`unix(7)`), so the receiver matches them to requests in order.
fn send_request(sock: &OwnedFd, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(CHILD_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one request"));
    }
    let iov = [IoSlice::new(&header), IoSlice::new(body)];
    let sent = loop {
        match sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    // Whatever did not fit goes after, without descriptors.
    if sent < HEADER {
        write_all(sock.as_fd(), &header[sent..])?;
        write_all(sock.as_fd(), body)?;
    } else if sent < HEADER + body.len() {
        write_all(sock.as_fd(), &body[sent - HEADER..])?;
    }
    Ok(())
}

/// The spawner's side of the stream: bytes and descriptors received, cut into requests.
#[derive(Default)]
struct Requests {
    buf: Vec<u8>,
    /// Where the next request starts in `buf`.
    at: usize,
    fds: VecDeque<OwnedFd>,
}

impl Requests {
    /// The next request's body and descriptors; `None` at end of file. A request that breaks
    /// the protocol is an error: the spawner then ends, and the daemon starts a new one.
    fn next(&mut self, sock: &OwnedFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        loop {
            let pending = &self.buf[self.at..];
            if pending.len() >= HEADER {
                let word = |i: usize| {
                    u32::from_le_bytes([pending[i], pending[i + 1], pending[i + 2], pending[i + 3]])
                };
                let (len, nfds) = (word(0) as usize, word(4) as usize);
                if len > MAX_REQUEST || nfds > CHILD_FDS {
                    return Err(bad("a request larger than the protocol allows"));
                }
                if pending.len() >= HEADER + len {
                    if self.fds.len() < nfds {
                        return Err(bad("a request without its descriptors"));
                    }
                    let body = pending[HEADER..HEADER + len].to_vec();
                    self.at += HEADER + len;
                    let fds = self.fds.drain(..nfds).collect();
                    return Ok(Some((body, fds)));
                }
            }
            // Keep what is pending at the front, then read more.
            self.buf.drain(..self.at);
            self.at = 0;
            let had = self.buf.len();
            self.buf.resize(had + MAX_REQUEST + HEADER, 0);
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(CHILD_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = loop {
                let mut iov = [IoSliceMut::new(&mut self.buf[had..])];
                match recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other?,
                }
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    self.fds.extend(received);
                }
            }
            if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                return Err(bad("descriptors were lost"));
            }
            self.buf.truncate(had + got.bytes);
            if got.bytes == 0 {
                return Ok(None);
            }
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(fd, data, SendFlags::NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bytes of a reply: pid, stage (0: started), errno, start time (0: not known).
const REPLY: usize = 4 + 4 + 4 + 8;

fn encode_reply(result: &Result<Started, LaunchError>) -> [u8; REPLY] {
    let (pid, stage, errno, start) = match result {
        Ok(s) => (s.pid, 0, 0, s.start_time.unwrap_or(0)),
        Err(e) => (
            e.pid.unwrap_or(0),
            e.stage.code(),
            e.source.raw_os_error().unwrap_or(nix::libc::EIO),
            0,
        ),
    };
    let mut out = [0u8; REPLY];
    out[..4].copy_from_slice(&pid.to_le_bytes());
    out[4..8].copy_from_slice(&stage.to_le_bytes());
    out[8..12].copy_from_slice(&errno.to_le_bytes());
    out[12..].copy_from_slice(&start.to_le_bytes());
    out
}

/// The daemon's side of the stream: replies, read in bulk.
#[derive(Default)]
struct Replies {
    buf: Vec<u8>,
    at: usize,
}

impl Replies {
    fn next(&mut self, sock: &OwnedFd) -> io::Result<Reply> {
        while self.buf.len() - self.at < REPLY {
            self.buf.drain(..self.at);
            self.at = 0;
            let had = self.buf.len();
            self.buf.resize(had + 64 * REPLY, 0);
            let got = loop {
                match rustix::io::read(sock, &mut self.buf[had..]) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other?,
                }
            };
            self.buf.truncate(had + got);
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let mut reply = [0u8; REPLY];
        reply.copy_from_slice(&self.buf[self.at..self.at + REPLY]);
        self.at += REPLY;
        Ok(decode_reply(&reply))
    }
}

fn decode_reply(buf: &[u8; REPLY]) -> Reply {
    let word = |at: usize| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    let pid = i32::from_le_bytes(word(0));
    let stage = u32::from_le_bytes(word(4));
    let errno = i32::from_le_bytes(word(8));
    let mut start = [0u8; 8];
    start.copy_from_slice(&buf[12..]);
    let start = u64::from_le_bytes(start);
    match Stage::from_code(stage) {
        None => Ok(Started {
            pid,
            start_time: (start != 0).then_some(start),
        }),
        Some(stage) => Err(LaunchError {
            pid: (pid > 0).then_some(pid),
            stage,
            source: io::Error::from_raw_os_error(errno),
            maybe_started: false,
        }),
    }
}

/// A request as the spawner received it.
struct Request {
    argv: Vec<OsString>,
    env: Vec<OsString>,
    cwd: Option<PathBuf>,
    /// Per child descriptor: an index into `fds`, or `None` for `/dev/null`.
    slots: Vec<Option<usize>>,
    fds: Vec<OwnedFd>,
    nofile: Option<(u64, u64)>,
    identity: Identity,
}

impl Request {
    fn launch(&self) -> Launch<'_> {
        Launch {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            fds: self
                .slots
                .iter()
                .map(|s| s.and_then(|i| self.fds.get(i)).map(AsFd::as_fd))
                .collect(),
            nofile: self.nofile,
            identity: self.identity.clone(),
        }
    }
}

/// The body of a request: little-endian numbers, byte strings as a length and their bytes,
/// options as a presence byte and their value.
fn encode(l: &Launch<'_>) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(
        64 + l.env.iter().map(|e| e.len() + 4).sum::<usize>(),
    ));
    w.strings(l.argv.iter().map(|a| a.as_bytes()));
    w.strings(l.env.iter().map(|e| e.as_bytes()));
    w.option(l.cwd.as_ref(), |w, d| w.bytes(d.as_os_str().as_bytes()));
    w.u32(l.fds.len() as u32);
    for slot in &l.fds {
        w.0.push(u8::from(slot.is_some()));
    }
    w.option(l.nofile, |w, (soft, hard)| {
        w.u64(soft);
        w.u64(hard);
    });
    let id = &l.identity;
    w.option(id.ids.as_ref(), |w, ids| {
        w.u32(ids.uid);
        w.u32(ids.gid);
        w.u32(ids.groups.len() as u32);
        for &g in &ids.groups {
            w.u32(g);
        }
    });
    w.option(id.umask, Writer::u32);
    w.option(id.nice, |w, n| w.u32(n as u32));
    w.option(id.oom_score_adj, |w, n| w.u32(n as u32));
    w.u32(id.limits.len() as u32);
    for &(resource, value) in &id.limits {
        w.u32(resource);
        w.u64(value);
    }
    w.0
}

fn decode(body: &[u8], fds: Vec<OwnedFd>) -> io::Result<Request> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed spawn request");
    let mut r = Reader(body);
    let argv = r.strings().ok_or_else(bad)?;
    let env = r.strings().ok_or_else(bad)?;
    let cwd = r
        .option(|r| {
            r.bytes()
                .map(|b| PathBuf::from(OsString::from_vec(b.to_vec())))
        })
        .ok_or_else(bad)?;
    let nslots = r.u32().ok_or_else(bad)? as usize;
    if nslots > CHILD_FDS {
        return Err(bad());
    }
    let mut slots = Vec::with_capacity(nslots);
    let mut next = 0;
    for _ in 0..nslots {
        slots.push(match r.u8().ok_or_else(bad)? {
            0 => None,
            _ => {
                next += 1;
                Some(next - 1)
            }
        });
    }
    if next != fds.len() {
        return Err(bad());
    }
    let nofile = r.option(|r| Some((r.u64()?, r.u64()?))).ok_or_else(bad)?;
    let ids = r
        .option(|r| {
            let (uid, gid, n) = (r.u32()?, r.u32()?, r.u32()? as usize);
            let groups = (0..n).map(|_| r.u32()).collect::<Option<Vec<u32>>>()?;
            Some(Ids { uid, gid, groups })
        })
        .ok_or_else(bad)?;
    let umask = r.option(Reader::u32).ok_or_else(bad)?;
    let nice = r.option(|r| r.u32().map(|n| n as i32)).ok_or_else(bad)?;
    let oom_score_adj = r.option(|r| r.u32().map(|n| n as i32)).ok_or_else(bad)?;
    let nlimits = r.u32().ok_or_else(bad)? as usize;
    let limits = (0..nlimits)
        .map(|_| Some((r.u32()?, r.u64()?)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    if !r.0.is_empty() {
        return Err(bad());
    }
    Ok(Request {
        argv,
        env,
        cwd,
        slots,
        fds,
        nofile,
        identity: Identity {
            ids,
            umask,
            nice,
            oom_score_adj,
            limits,
        },
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, n: u32) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn u64(&mut self, n: u64) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }

    fn strings<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a [u8]>) {
        self.u32(items.len() as u32);
        for item in items {
            self.bytes(item);
        }
    }

    fn option<T>(&mut self, value: Option<T>, put: impl FnOnce(&mut Writer, T)) {
        match value {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                put(self, v);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn strings(&mut self) -> Option<Vec<OsString>> {
        let n = self.u32()? as usize;
        (0..n)
            .map(|_| self.bytes().map(|b| OsString::from_vec(b.to_vec())))
            .collect()
    }

    /// `Some(None)` when absent, `None` when malformed.
    fn option<T>(&mut self, get: impl FnOnce(&mut Reader<'a>) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            _ => get(self).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_its_encoding() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let launch = Launch {
            argv: vec!["/bin/sh".into(), "-c".into(), "échec".into()],
            env: vec!["A=1".into(), OsString::from_vec(vec![b'B', b'=', 0xff])],
            cwd: Some("/tmp".into()),
            fds: vec![None, Some(r.as_fd()), None],
            nofile: Some((1024, 4096)),
            identity: Identity {
                ids: Some(Ids {
                    uid: 65534,
                    gid: 65534,
                    groups: vec![65534, 100],
                }),
                umask: Some(0o27),
                nice: Some(-5),
                oom_score_adj: Some(-1000),
                limits: vec![(7, 4096), (4, u64::MAX)],
            },
        };
        let body = encode(&launch);
        let dup = rustix::io::dup(&r).unwrap();
        let back = decode(&body, vec![dup]).unwrap();
        let l = back.launch();
        assert_eq!(l.argv, launch.argv);
        assert_eq!(l.env, launch.env);
        assert_eq!(l.cwd, launch.cwd);
        assert_eq!(l.nofile, launch.nofile);
        assert_eq!(l.identity, launch.identity);
        assert_eq!(
            l.fds.iter().map(Option::is_some).collect::<Vec<_>>(),
            [false, true, false]
        );
        // A truncated body, trailing bytes, or descriptors that do not match are refused.
        assert!(decode(&body[..body.len() - 1], Vec::new()).is_err());
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode(&longer, Vec::new()).is_err());
        assert!(decode(&body, Vec::new()).is_err());
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn requests_sent_back_to_back_keep_their_own_descriptors() {
        let (a, b) = pair();
        let (r1, _w1) = rustix::pipe::pipe().unwrap();
        let (r2, _w2) = rustix::pipe::pipe().unwrap();
        let inode = |fd: BorrowedFd<'_>| rustix::fs::fstat(fd).unwrap().st_ino;
        send_request(&a, b"first", &[]).unwrap();
        send_request(&a, b"second", &[r1.as_fd()]).unwrap();
        send_request(&a, &[7u8; 5000], &[r2.as_fd(), r1.as_fd()]).unwrap();
        send_request(&a, b"", &[]).unwrap();
        drop(a);
        let mut requests = Requests::default();
        let (body, fds) = requests.next(&b).unwrap().unwrap();
        assert_eq!((body.as_slice(), fds.len()), (&b"first"[..], 0));
        let (body, fds) = requests.next(&b).unwrap().unwrap();
        assert_eq!(body, b"second");
        assert_eq!(fds.len(), 1);
        assert_eq!(inode(fds[0].as_fd()), inode(r1.as_fd()));
        let (body, fds) = requests.next(&b).unwrap().unwrap();
        assert_eq!(body, vec![7u8; 5000]);
        let inodes: Vec<u64> = fds.iter().map(|f| inode(f.as_fd())).collect();
        assert_eq!(inodes, [inode(r2.as_fd()), inode(r1.as_fd())]);
        let (body, fds) = requests.next(&b).unwrap().unwrap();
        assert!(body.is_empty() && fds.is_empty());
        assert!(requests.next(&b).unwrap().is_none(), "end of file");
    }

    #[test]
    fn replies_carry_the_pid_or_the_failed_stage() {
        let (a, b) = pair();
        let mut replies = Replies::default();
        let started = Started {
            pid: 42,
            start_time: Some(777),
        };
        write_all(a.as_fd(), &encode_reply(&Ok(started))).unwrap();
        assert_eq!(replies.next(&b).unwrap().unwrap(), started);
        let failed = Err(LaunchError {
            pid: Some(43),
            stage: Stage::User,
            source: io::Error::from_raw_os_error(nix::libc::EPERM),
            maybe_started: false,
        });
        // Two at once are read as two.
        write_all(
            a.as_fd(),
            &[encode_reply(&failed), encode_reply(&Ok(started))].concat(),
        )
        .unwrap();
        let e = replies.next(&b).unwrap().unwrap_err();
        assert_eq!((e.pid, e.stage), (Some(43), Stage::User));
        assert_eq!(e.source.raw_os_error(), Some(nix::libc::EPERM));
        assert_eq!(replies.next(&b).unwrap().unwrap(), started);
        drop(a);
        assert!(replies.next(&b).is_err());
    }
}
