//! Readiness and liveness probes (`docs/configuration.md`, "Probes"): timers of the instance's
//! actor, armed while it is `running`, so an idle daemon wakes only when a probe is due.
//!
//! `http`, `tcp` and `exec` probes run every `interval` (the first after `initial_delay`), each
//! in a task of its own with its `timeout`. A `log` probe is no timer: it watches the output of
//! each process from its spawn, passes at the first line its pattern matches and stays passed
//! while the process lives; a liveness `log` probe that has not matched yet counts a failure
//! every `interval`. A probe passes after
//! `success_threshold` successes in a row and fails after `failure_threshold` failures in a row;
//! readiness starts failed (not ready), liveness passed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinHandle;

use crate::config::{Dur, InstanceId, ProbeCheck, ProbeSpec, ProgramSpec};

use super::health::run_command;
use super::output::OutputSink;
use super::RuntimeCounters;

/// The shortest probe interval honoured, so a tiny interval cannot become a busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Readiness,
    Liveness,
}

impl Which {
    fn index(self) -> usize {
        match self {
            Which::Readiness => 0,
            Which::Liveness => 1,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Which::Readiness => "readiness",
            Which::Liveness => "liveness",
        }
    }
}

/// What a probe result changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProbeChange {
    Unchanged,
    /// It passes now (readiness: ready).
    Passing(String),
    /// It fails now; the text says which probe and why.
    Failing(String),
}

struct Slot {
    spec: ProbeSpec,
    passing: bool,
    successes: u32,
    failures: u32,
    due: Option<Instant>,
    in_flight: Option<JoinHandle<Result<(), String>>>,
    /// A `log` probe's watch for its line, and whether it matched.
    watch: Option<JoinHandle<()>>,
    matched: bool,
}

impl Slot {
    fn new(spec: &ProbeSpec, which: Which) -> Slot {
        Slot {
            spec: spec.clone(),
            passing: which == Which::Liveness,
            successes: 0,
            failures: 0,
            due: None,
            in_flight: None,
            watch: None,
            matched: false,
        }
    }

    fn interval(&self) -> Duration {
        self.spec.interval.get().max(MIN_INTERVAL)
    }

    fn is_log(&self) -> bool {
        matches!(self.spec.check, ProbeCheck::Log { .. })
    }
}

/// The probes of one instance.
#[derive(Default)]
pub(crate) struct Probes {
    /// Boxed: most programs have no probes, and every instance's actor holds this.
    slots: [Option<Box<Slot>>; 2],
    armed: bool,
}

impl Probes {
    pub(crate) fn new(spec: &ProgramSpec) -> Probes {
        Probes {
            slots: [
                spec.readiness
                    .as_ref()
                    .map(|p| Box::new(Slot::new(p, Which::Readiness))),
                spec.liveness
                    .as_ref()
                    .map(|p| Box::new(Slot::new(p, Which::Liveness))),
            ],
            armed: false,
        }
    }

    pub(crate) fn armed(&self) -> bool {
        self.armed
    }

    /// Readiness passes (or there is no readiness probe).
    pub(crate) fn ready(&self) -> bool {
        self.slots[0].as_ref().is_none_or(|s| s.passing)
    }

    /// A new process: `log` probes watch its output from now on, so a line it prints before it
    /// counts as `running` is seen too.
    pub(crate) fn process_started(&mut self, sink: &Arc<dyn OutputSink>) {
        for s in self.slots.iter_mut().flatten() {
            let ProbeCheck::Log { pattern } = &s.spec.check else {
                continue;
            };
            if let Some(old) = s.watch.take() {
                old.abort();
            }
            s.matched = false;
            let mut lines = sink.lines();
            let re = regex::Regex::new(pattern).ok();
            s.watch = Some(tokio::spawn(async move {
                while let Some(line) = lines.next().await {
                    if re.as_ref().is_some_and(|re| re.is_match(&line)) {
                        return;
                    }
                }
                std::future::pending::<()>().await
            }));
        }
    }

    /// Starts probing a process that just began to run: readiness from not ready, liveness from
    /// alive, the first probes after `initial_delay`.
    pub(crate) fn arm(&mut self, now: Instant) {
        self.armed = true;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let which = if i == 0 {
                Which::Readiness
            } else {
                Which::Liveness
            };
            s.passing = which == Which::Liveness;
            s.successes = 0;
            s.failures = 0;
            s.in_flight = None;
            let first = now + s.spec.initial_delay.get();
            s.due = if s.is_log() {
                // A readiness log probe only waits for its line; a liveness one counts the
                // intervals without it.
                (which == Which::Liveness && !s.matched).then(|| first + s.interval())
            } else {
                Some(first)
            };
            if s.is_log() && s.matched && s.watch.is_none() {
                // Matched before it was armed (and recorded then, unarmed): it passes.
                s.passing = true;
            }
        }
    }

    /// Stops probing; probes in flight run to their end on their own and their results are
    /// dropped (an `exec` probe's shell is still reaped).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
        for s in self.slots.iter_mut().flatten() {
            s.in_flight = None;
            s.due = None;
            s.passing = false;
        }
    }

    /// When the next probe is due; `None` when nothing is scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if !self.armed {
            return None;
        }
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.in_flight.is_none())
            .filter_map(|s| s.due)
            .min()
    }

    /// Starts the probes that are due (a `log` probe's result is known at once: it is recorded
    /// by the caller through [`Probes::finished`] on its next turn).
    pub(crate) fn start_due(
        &mut self,
        now: Instant,
        spec: &Arc<ProgramSpec>,
        id: &InstanceId,
        state_dir: Option<&Arc<std::path::Path>>,
    ) {
        for s in self.slots.iter_mut().flatten() {
            if s.in_flight.is_some() || s.due.is_none_or(|d| d > now) {
                continue;
            }
            s.due = None;
            let check = s.spec.check.clone();
            let timeout = s.spec.timeout.get();
            let matched = s.matched;
            let (spec, id, dir) = (Arc::clone(spec), id.clone(), state_dir.cloned());
            s.in_flight = Some(tokio::spawn(async move {
                run(&check, timeout, matched, &spec, &id, dir.as_deref()).await
            }));
        }
    }

    /// Waits for a probe result (forever when none can come). Cancel-safe.
    pub(crate) async fn finished(&mut self) -> (Which, Result<(), String>) {
        if !self.armed {
            return std::future::pending().await;
        }
        std::future::poll_fn(|cx| {
            for (i, slot) in self.slots.iter_mut().enumerate() {
                let Some(s) = slot else { continue };
                let which = if i == 0 {
                    Which::Readiness
                } else {
                    Which::Liveness
                };
                if let Some(task) = s.in_flight.as_mut() {
                    if let Poll::Ready(r) = task.poll_unpin(cx) {
                        s.in_flight = None;
                        let r = r.unwrap_or_else(|e| Err(format!("the probe task failed: {e}")));
                        return Poll::Ready((which, r));
                    }
                }
                if let Some(w) = s.watch.as_mut() {
                    if w.poll_unpin(cx).is_ready() {
                        s.watch = None;
                        s.matched = true;
                        return Poll::Ready((which, Ok(())));
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Records a result of `which` and schedules its next probe.
    pub(crate) fn record(
        &mut self,
        which: Which,
        result: Result<(), String>,
        now: Instant,
        counters: &RuntimeCounters,
    ) -> ProbeChange {
        let armed = self.armed;
        let Some(s) = self.slots[which.index()].as_mut() else {
            return ProbeChange::Unchanged;
        };
        let outcome = usize::from(result.is_err());
        counters.probes[which.index()][outcome].fetch_add(1, Ordering::Relaxed);
        if !armed {
            return ProbeChange::Unchanged;
        }
        // A matched log probe has nothing left to check; the others go on every interval.
        if !(s.is_log() && s.matched) {
            s.due = Some(now + s.interval());
        } else {
            s.due = None;
        }
        let label = s.spec.label();
        match result {
            Ok(()) => {
                s.failures = 0;
                s.successes = s.successes.saturating_add(1);
                // A log probe's line is seen once: one success is all it can have.
                let needed = if s.is_log() {
                    1
                } else {
                    s.spec.success_threshold.max(1)
                };
                if !s.passing && s.successes >= needed {
                    s.passing = true;
                    return ProbeChange::Passing(format!(
                        "{} probe {label} passes",
                        which.as_str()
                    ));
                }
            }
            Err(why) => {
                s.successes = 0;
                s.failures = s.failures.saturating_add(1);
                if s.passing && s.failures >= s.spec.failure_threshold.max(1) {
                    s.passing = false;
                    return ProbeChange::Failing(format!(
                        "{label} failed {} times in a row: {why}",
                        s.failures
                    ));
                }
            }
        }
        ProbeChange::Unchanged
    }
}

/// Runs one probe once.
async fn run(
    check: &ProbeCheck,
    timeout: Duration,
    matched: bool,
    spec: &ProgramSpec,
    id: &InstanceId,
    state_dir: Option<&std::path::Path>,
) -> Result<(), String> {
    match check {
        ProbeCheck::Http { url, expect_status } => {
            let (url, expect) = (url.clone(), expect_status.clone());
            let call = tokio::task::spawn_blocking(move || {
                // No proxy and no pooled connection: each probe asks the instance itself.
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .proxy(None)
                    .max_idle_connections(0)
                    .timeout_global(Some(timeout))
                    .build()
                    .into();
                match agent.get(&url).call() {
                    Ok(response) => {
                        let code = response.status().as_u16();
                        if expect.accepts(code) {
                            Ok(())
                        } else {
                            Err(format!("answered {code}, expected {expect}"))
                        }
                    }
                    Err(e) => Err(e.to_string()),
                }
            });
            call.await
                .unwrap_or_else(|e| Err(format!("the probe task failed: {e}")))
        }
        ProbeCheck::Tcp { address } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no connection within {}", Dur(timeout))),
            }
        }
        ProbeCheck::Exec { command } => run_command(command, timeout, spec, id, state_dir).await,
        ProbeCheck::Log { pattern } if matched => {
            let _ = pattern;
            Ok(())
        }
        ProbeCheck::Log { pattern } => Err(format!("no output line matched {pattern:?} yet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(check: ProbeCheck, success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            check,
            initial_delay: Dur::ZERO,
            interval: Dur::from_secs(1),
            timeout: Dur::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    struct NoSink;
    impl OutputSink for NoSink {
        fn attach(&self, _: std::os::fd::OwnedFd, _: std::os::fd::OwnedFd) {}
    }

    #[tokio::test]
    async fn thresholds_make_ready_and_not_ready_and_liveness_fail() {
        let mut spec = ProgramSpec::new("p", crate::config::Exec::Command("true".into()));
        let tcp = ProbeCheck::Tcp {
            address: "127.0.0.1:1".into(),
        };
        spec.readiness = Some(Box::new(probe(tcp.clone(), 2, 2)));
        spec.liveness = Some(Box::new(probe(tcp, 1, 3)));
        let counters = RuntimeCounters::default();
        let mut p = Probes::new(&spec);
        assert!(!p.ready(), "not ready before the first pass");
        let sink: Arc<dyn OutputSink> = Arc::new(NoSink);
        let now = Instant::now();
        assert_eq!(p.next_due(), None, "idle until armed");
        p.process_started(&sink);
        p.arm(now);
        assert_eq!(p.next_due(), Some(now));
        let r = Which::Readiness;
        assert_eq!(p.record(r, Ok(()), now, &counters), ProbeChange::Unchanged);
        assert!(matches!(
            p.record(r, Ok(()), now, &counters),
            ProbeChange::Passing(_)
        ));
        assert!(p.ready());
        assert_eq!(
            p.record(r, Err("x".into()), now, &counters),
            ProbeChange::Unchanged
        );
        assert!(matches!(
            p.record(r, Err("refused".into()), now, &counters),
            ProbeChange::Failing(why) if why == "tcp:127.0.0.1:1 failed 2 times in a row: refused"
        ));
        assert!(!p.ready());
        let l = Which::Liveness;
        for _ in 0..2 {
            assert_eq!(
                p.record(l, Err("x".into()), now, &counters),
                ProbeChange::Unchanged
            );
        }
        assert!(matches!(
            p.record(l, Err("x".into()), now, &counters),
            ProbeChange::Failing(_)
        ));
        assert_eq!(counters.probes[1][1].load(Ordering::Relaxed), 3);
        assert_eq!(counters.probes[0][0].load(Ordering::Relaxed), 2);
        p.disarm();
        assert_eq!(p.next_due(), None);
        assert!(!p.ready());
    }

    #[tokio::test]
    async fn tcp_probes_pass_on_an_open_port_and_fail_on_a_closed_one() {
        let spec = ProgramSpec::new("p", crate::config::Exec::Command("true".into()));
        let id = InstanceId::new("p", 1, 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        // Bound and not listening: connections are refused, and the port stays this test's. A
        // port merely freed could be taken at once by a test running beside this one.
        use rustix::net::{bind, getsockname, socket, AddressFamily, SocketType};
        let unlistened = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        bind(
            &unlistened,
            &std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .unwrap();
        let closed = std::net::SocketAddr::try_from(getsockname(&unlistened).unwrap())
            .unwrap()
            .to_string();
        let t = Duration::from_secs(2);
        let tcp = |address: &str| ProbeCheck::Tcp {
            address: address.into(),
        };
        assert_eq!(run(&tcp(&open), t, false, &spec, &id, None).await, Ok(()));
        assert!(run(&tcp(&closed), t, false, &spec, &id, None)
            .await
            .is_err());
    }
}
