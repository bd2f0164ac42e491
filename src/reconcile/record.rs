//! What the reconcile loop writes into an instance's record, and how it tells whether the
//! record already says it.
//!
//! [`Facts`] are an instance's record in the loop's terms: specs as the very `Arc`s the actors
//! hold, compared by pointer, so a pass that changes nothing builds no record, clones no spec
//! and writes nothing.

use std::sync::Arc;

use crate::config::ProgramSpec;
use crate::plan::RunSeq;
use crate::store::{Finished, InstanceRecord, Launch};
use crate::supervisor::{InstanceState, InstanceStatus};

/// An instance's record as the loop sees it.
#[derive(Clone, Debug)]
pub(super) struct Facts {
    pub pid: Option<i32>,
    pub start_time: Option<u64>,
    pub restarts: u64,
    /// The spec the process runs, with its generation when known.
    pub spec: Option<(Arc<ProgramSpec>, Option<u64>)>,
    /// A start written ahead: the spec its process will run.
    pub starting: Option<(Arc<ProgramSpec>, Option<u64>)>,
    /// When that start was written ahead, in clock ticks after boot.
    pub starting_at: Option<u64>,
    pub seq: RunSeq,
    pub finished: Option<Finished>,
    /// The loop ordered the process stopped (and has not started one since).
    pub stopping: bool,
}

fn same(
    a: &Option<(Arc<ProgramSpec>, Option<u64>)>,
    b: &Option<(Arc<ProgramSpec>, Option<u64>)>,
) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some((a, ga)), Some((b, gb))) => Arc::ptr_eq(a, b) && ga == gb,
        _ => false,
    }
}

impl PartialEq for Facts {
    fn eq(&self, other: &Facts) -> bool {
        (self.pid, self.start_time, self.restarts, self.seq)
            == (other.pid, other.start_time, other.restarts, other.seq)
            && same(&self.spec, &other.spec)
            && same(&self.starting, &other.starting)
            && self.starting_at == other.starting_at
            && self.finished == other.finished
            && self.stopping == other.stopping
    }
}

impl Facts {
    /// The facts a stored record states. Its specs are new `Arc`s, equal to no actor's, so the
    /// next write of this instance goes to the store, which drops it if nothing changed.
    pub fn from_record(r: &InstanceRecord) -> Facts {
        Facts {
            pid: r.pid,
            start_time: r.start_time,
            restarts: r.restarts,
            spec: r.spec.clone().map(|s| (Arc::new(s), r.generation)),
            starting: r
                .starting
                .clone()
                .map(|l| (Arc::new(l.spec), Some(l.generation))),
            starting_at: r.starting.as_ref().and_then(|l| l.written_ns),
            seq: r.seq.unwrap_or_default(),
            finished: r.finished.clone(),
            stopping: r.stopping,
        }
    }

    /// An instance stopped by the daemon's shutdown: no process, nothing starting.
    pub fn stopped(restarts: u64, seq: RunSeq, finished: Option<Finished>) -> Facts {
        Facts {
            pid: None,
            start_time: None,
            restarts,
            spec: None,
            starting: None,
            starting_at: None,
            seq,
            finished,
            stopping: false,
        }
    }

    /// The generation recorded for `spec`, if these facts hold that very spec.
    pub fn generation_of(&self, spec: &Arc<ProgramSpec>) -> Option<u64> {
        [&self.spec, &self.starting]
            .into_iter()
            .flatten()
            .find(|(s, _)| Arc::ptr_eq(s, spec))
            .and_then(|(_, generation)| *generation)
    }

    /// The record to store for an instance of `program`, written in boot `boot`.
    pub fn record(&self, program: &str, boot: Option<&str>) -> InstanceRecord {
        InstanceRecord {
            program: program.to_string(),
            pid: self.pid,
            start_time: self.start_time,
            restarts: self.restarts,
            boot_id: boot.map(str::to_string),
            generation: self.spec.as_ref().and_then(|(_, g)| *g),
            spec: self.spec.as_ref().map(|(s, _)| (**s).clone()),
            starting: self.starting.as_ref().map(|(s, g)| Launch {
                generation: g.unwrap_or(0),
                spec: (**s).clone(),
                written_ns: self.starting_at,
            }),
            seq: Some(self.seq),
            finished: self.finished.clone(),
            removed: false,
            stopping: self.stopping,
        }
    }
}

/// How an instance ended when no restart is due, as its status shows it: `exited` or `failed`
/// with no process.
pub(super) fn finished_of(s: &InstanceStatus) -> Option<Finished> {
    let failed = match s.state {
        InstanceState::Exited => false,
        InstanceState::Failed => true,
        _ => return None,
    };
    if s.pid.is_some() {
        return None;
    }
    Some(Finished {
        failed,
        code: s.last_exit.and_then(|e| e.code),
        signal: s.last_exit.and_then(|e| e.signal),
        message: s.message.clone(),
    })
}
