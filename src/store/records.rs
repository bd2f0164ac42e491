//! The records the desired-state store keeps, one JSON value per sled key.
//!
//! These are the shapes of schema version [`super::CURRENT_SCHEMA`]. Changing a field here changes
//! the on-disk format: add a migration step (`migrations.rs`, `migrations/README.md`) and a fixture.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::config::{ProgramSpec, Source};

/// Whether a program should run (`docs/store.md`). Only an explicit start or stop changes it; file edits
/// and reloads keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredRun {
    Running,
    Stopped,
}

impl DesiredRun {
    /// The desired state of a program that first appears: `running` unless `autostart = false`.
    pub fn initial(spec: &ProgramSpec) -> DesiredRun {
        if spec.autostart {
            DesiredRun::Running
        } else {
            DesiredRun::Stopped
        }
    }
}

impl std::fmt::Display for DesiredRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DesiredRun::Running => "running",
            DesiredRun::Stopped => "stopped",
        })
    }
}

/// One program's desired state, stored under `p/<program name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramRecord {
    /// The last good spec. A broken file keeps this and only sets `error` (`docs/configuration.md`, "Errors and reloads").
    pub spec: ProgramSpec,
    pub source: Source,
    pub desired: DesiredRun,
    /// 1 when the program first appears, +1 on every change of `spec`; source, desired state and
    /// error changes keep it. It restarts at 1 when a program is deleted and created again, so a
    /// reader that caches generations must also notice the deletion.
    pub generation: u64,
    /// Why the program's source no longer validates, one sentence each (file, line, what is
    /// wrong); `None` while the source is good. Cleared by the next good spec.
    pub error: Option<Vec<String>>,
    /// Counts of explicit start and restart requests for the whole program, so an `exited` or
    /// `failed` instance starts again once per request rather than on every reconcile pass.
    /// Added in place to schema 1 with a default, so older records read as "no requests yet".
    #[serde(default)]
    pub seq: RunSeq,
    /// Instances started or stopped on their own (`stop --name web-2`), overriding `desired` and
    /// `seq` for them; a request for the whole program clears these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, InstanceDesired>,
}

impl ProgramRecord {
    /// A program as it first appears: generation 1, desired state from `autostart`.
    pub fn new(spec: ProgramSpec, source: Source) -> ProgramRecord {
        ProgramRecord {
            desired: DesiredRun::initial(&spec),
            spec,
            source,
            generation: 1,
            error: None,
            seq: RunSeq::default(),
            instances: BTreeMap::new(),
        }
    }

    /// What is wanted of one instance: its own override, else the program's.
    pub fn instance_desired(&self, instance: &str) -> InstanceDesired {
        resolve_instance(self.desired, self.seq, Some(&self.instances), instance)
    }

    /// Applies an explicit start, stop or restart of the whole program (`instance = None`) or of
    /// one instance; returns whether anything changed.
    pub fn request(&mut self, instance: Option<&str>, request: RunRequest) -> bool {
        let before = (self.desired, self.seq, self.instances.clone());
        match instance {
            None => {
                // Program-wide requests replace per-instance ones; counters never go back, so
                // an instance that carried out a request of its own still sees the new one.
                for o in self.instances.values() {
                    self.seq.start = self.seq.start.max(o.seq.start);
                    self.seq.restart = self.seq.restart.max(o.seq.restart);
                }
                self.instances.clear();
                (self.desired, self.seq) = request.applied(self.seq);
            }
            Some(name) => {
                let now = self.instance_desired(name);
                let (run, seq) = request.applied(now.seq);
                self.instances
                    .insert(name.to_string(), InstanceDesired { run, seq });
            }
        }
        before != (self.desired, self.seq, self.instances.clone())
    }
}

/// The desired run state and requests of `instance`, given a program's and its overrides.
pub fn resolve_instance(
    run: DesiredRun,
    seq: RunSeq,
    overrides: Option<&BTreeMap<String, InstanceDesired>>,
    instance: &str,
) -> InstanceDesired {
    overrides
        .and_then(|o| o.get(instance).copied())
        .unwrap_or(InstanceDesired { run, seq })
}

/// How many start and restart requests a program or instance has had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunSeq {
    pub start: u64,
    pub restart: u64,
}

/// An instance's own desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceDesired {
    pub run: DesiredRun,
    pub seq: RunSeq,
}

/// An explicit request from the CLI or API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunRequest {
    Start,
    Stop,
    Restart,
}

impl RunRequest {
    fn applied(self, seq: RunSeq) -> (DesiredRun, RunSeq) {
        match self {
            RunRequest::Start => (
                DesiredRun::Running,
                RunSeq {
                    start: seq.start + 1,
                    ..seq
                },
            ),
            RunRequest::Stop => (DesiredRun::Stopped, seq),
            RunRequest::Restart => (
                DesiredRun::Running,
                RunSeq {
                    restart: seq.restart + 1,
                    ..seq
                },
            ),
        }
    }
}

/// What the daemon needs to find an instance's process again after it restarts (`docs/reliability.md`),
/// stored under `i/<instance name>` (`i/web`, `i/web-2`). `docs/store.md` describes how the
/// reconcile loop keeps it: written ahead of a start, confirmed once the process runs, kept as a
/// tombstone while the process of a removed program stops.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The program the instance belongs to.
    pub program: String,
    /// The process it runs, if any.
    pub pid: Option<i32>,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot) when `pid` was recorded, so a
    /// reused pid is never mistaken for the instance's process.
    pub start_time: Option<u64>,
    /// Automatic restarts so far; survives daemon restarts (`docs/api.md`).
    pub restarts: u64,
    /// The boot this record was written in (`/proc/sys/kernel/random/boot_id`): a pid and start
    /// time from another boot name no process of ours, and a job that finished in another boot
    /// runs again. `None` in records written before schema 3.
    pub boot_id: Option<String>,
    /// The program's generation when `spec` was its spec.
    pub generation: Option<u64>,
    /// The spec the process `pid` runs with: as it was started, or as changed in place since.
    /// A daemon that adopts the process compares it with the desired spec, so an edit made while
    /// no daemon ran is applied. `None` without a process, and in records from before schema 3.
    pub spec: Option<ProgramSpec>,
    /// Written ahead of a start that the reconcile loop orders, before the process is spawned:
    /// a process of this instance found in `/proc` by its tag that this record does not name yet
    /// runs this spec.
    pub starting: Option<Launch>,
    /// The start and restart requests this instance has carried out, so a request is carried out
    /// once across daemon restarts. `None` in records from before schema 3.
    pub seq: Option<RunSeq>,
    /// How its last process ended when no restart followed (`exited` or `failed`): a finished job
    /// is not run again by the next daemon of the same boot.
    pub finished: Option<Finished>,
    /// Its program was deleted while its process may still run: a tombstone, kept to stop that
    /// process. Should a program of the same name come back, nothing this record says about
    /// requests carried out or a run that ended belongs to it (`docs/reliability.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// The daemon ordered its process stopped (a stop, a removal, a scale-down), written ahead
    /// of the order: a process that is gone did not end on its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

impl InstanceRecord {
    /// The record of a new instance of `program`, with nothing to find yet.
    pub fn new(program: &str) -> InstanceRecord {
        InstanceRecord {
            program: program.to_string(),
            ..InstanceRecord::default()
        }
    }

    /// Whether the instance may have a process: one is recorded, or a start was under way.
    pub fn may_run(&self) -> bool {
        self.pid.is_some() || self.starting.is_some()
    }
}

/// A start written ahead: the spec and generation the next process of an instance runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub generation: u64,
    pub spec: ProgramSpec,
    /// When it was written ahead, in clock ticks after boot (the unit of a process's start time
    /// in `/proc`): a launch noted at or after it carried it out (`docs/reliability.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at: Option<u64>,
}

/// How an instance that will not be restarted ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// `true` for `failed` (retries used up), `false` for `exited`.
    pub failed: bool,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The status message it ended with.
    pub message: Option<String>,
}

/// Who a writer expects to own a program before it writes: the store checks it in the same
/// batch as the write, so two writers can never both pass a check and then overwrite each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// No program of that name exists (registering a new one).
    Nobody,
    /// It exists and was registered through the API (update, unregister).
    Api,
    /// Either of the two (`start` with a spec: register or replace one's own).
    NobodyOrApi,
}

/// One write of a batch applied by [`super::DesiredStore::apply`].
// Big batches are almost all `PutProgram`, so boxing the spec would add an allocation per write
// and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreWrite {
    /// Create or update a program from a good spec: see [`super::DesiredStore::put_program`].
    PutProgram {
        spec: ProgramSpec,
        source: Source,
    },
    /// Set or clear a program's source error, keeping its last good spec.
    SetError {
        name: String,
        error: Option<Vec<String>>,
    },
    /// Set the program-wide desired state (e.g. `start --dry-run` previews).
    SetDesired {
        name: String,
        desired: DesiredRun,
    },
    /// An explicit start, stop or restart of a program, or of one of its instances.
    Request {
        name: String,
        instance: Option<String>,
        request: RunRequest,
    },
    /// Remove a program and the instance records that have no process; those that may still
    /// have one stay, as tombstones carrying the spec to stop it with, until it has stopped.
    DeleteProgram {
        name: String,
    },
    PutInstance {
        name: String,
        record: InstanceRecord,
    },
    DeleteInstance {
        name: String,
    },
    /// Fails the whole batch unless program `name` is owned as `owner` says; writes nothing.
    Expect {
        name: String,
        owner: Owner,
    },
}

impl StoreWrite {
    /// The program a write changes or checks; `None` for an instance write.
    pub fn program(&self) -> Option<&str> {
        match self {
            StoreWrite::PutProgram { spec, .. } => Some(&spec.name),
            StoreWrite::SetError { name, .. }
            | StoreWrite::SetDesired { name, .. }
            | StoreWrite::Request { name, .. }
            | StoreWrite::DeleteProgram { name }
            | StoreWrite::Expect { name, .. } => Some(name),
            StoreWrite::PutInstance { .. } | StoreWrite::DeleteInstance { .. } => None,
        }
    }

    /// The one rule of a program write: what it makes of the program's record (`None`: there
    /// is none), and whether that changed anything. The store commits by it and a dry run
    /// previews by it (`docs/store.md`). Instance writes change no program: `Ok(false)`.
    pub fn apply_to_program(&self, record: &mut Option<ProgramRecord>) -> Result<bool, StoreError> {
        let missing = |name: &str| StoreError::ProgramNotFound {
            name: name.to_string(),
        };
        match self {
            StoreWrite::PutProgram { spec, source } => {
                let next = match record.clone() {
                    None => ProgramRecord::new(spec.clone(), source.clone()),
                    // The generation counts spec changes; a good spec clears the error; the
                    // desired state and requests stay (an explicit stop survives an edit).
                    Some(old) => ProgramRecord {
                        generation: if old.spec == *spec {
                            old.generation
                        } else {
                            old.generation.saturating_add(1)
                        },
                        spec: spec.clone(),
                        source: source.clone(),
                        error: None,
                        ..old
                    },
                };
                let changed = record.as_ref() != Some(&next);
                *record = Some(next);
                Ok(changed)
            }
            StoreWrite::SetError { name, error } => {
                let r = record.as_mut().ok_or_else(|| missing(name))?;
                let changed = r.error != *error;
                r.error = error.clone();
                Ok(changed)
            }
            StoreWrite::SetDesired { name, desired } => {
                let r = record.as_mut().ok_or_else(|| missing(name))?;
                let changed = r.desired != *desired;
                r.desired = *desired;
                Ok(changed)
            }
            StoreWrite::Request {
                name,
                instance,
                request,
            } => {
                let r = record.as_mut().ok_or_else(|| missing(name))?;
                Ok(r.request(instance.as_deref(), *request))
            }
            StoreWrite::DeleteProgram { .. } => Ok(record.take().is_some()),
            StoreWrite::Expect { name, owner } => {
                let source = record.as_ref().map(|r| &r.source);
                match (owner, source) {
                    (Owner::Nobody | Owner::NobodyOrApi, None) => Ok(false),
                    (Owner::Api | Owner::NobodyOrApi, Some(Source::Api)) => Ok(false),
                    (Owner::Api, None) => Err(missing(name)),
                    (Owner::Nobody, Some(source)) => Err(StoreError::ProgramExists {
                        name: name.clone(),
                        owner: source.to_string(),
                    }),
                    (Owner::Api | Owner::NobodyOrApi, Some(source)) => {
                        Err(StoreError::NotApiOwned {
                            name: name.clone(),
                            owner: source.to_string(),
                        })
                    }
                }
            }
            StoreWrite::PutInstance { .. } | StoreWrite::DeleteInstance { .. } => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Exec;

    fn put(command: &str) -> StoreWrite {
        StoreWrite::PutProgram {
            spec: ProgramSpec::new("web", Exec::Command(command.into())),
            source: Source::Api,
        }
    }

    #[test]
    fn the_write_rule_counts_spec_changes_and_keeps_an_explicit_stop() {
        let mut r = None;
        assert!(put("sleep 1").apply_to_program(&mut r).unwrap());
        assert_eq!(r.as_ref().unwrap().generation, 1);
        assert!(
            !put("sleep 1").apply_to_program(&mut r).unwrap(),
            "the same spec"
        );
        let stop = StoreWrite::SetDesired {
            name: "web".into(),
            desired: DesiredRun::Stopped,
        };
        assert!(stop.apply_to_program(&mut r).unwrap());
        let error = StoreWrite::SetError {
            name: "web".into(),
            error: Some(vec!["broken".into()]),
        };
        assert!(error.apply_to_program(&mut r).unwrap());
        assert!(put("sleep 2").apply_to_program(&mut r).unwrap());
        let now = r.as_ref().unwrap();
        assert_eq!(now.generation, 2);
        assert_eq!(
            now.desired,
            DesiredRun::Stopped,
            "an edit keeps an explicit stop"
        );
        assert_eq!(now.error, None, "a good spec clears the error");
        let expect_new = StoreWrite::Expect {
            name: "web".into(),
            owner: Owner::Nobody,
        };
        assert!(expect_new.apply_to_program(&mut r).is_err());
        let delete = StoreWrite::DeleteProgram { name: "web".into() };
        assert!(delete.apply_to_program(&mut r).unwrap());
        assert!(r.is_none());
        assert!(stop.apply_to_program(&mut r).is_err(), "no program to stop");
    }
}
