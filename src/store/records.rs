//! The records the desired-state store keeps, one JSON value per sled key.
//!
//! These are the shapes of schema version [`super::CURRENT_SCHEMA`]. Changing a field here changes
//! the on-disk format: add a migration step (`migrations.rs`, `migrations/README.md`) and a fixture.

use serde::{Deserialize, Serialize};

use crate::config::{ProgramSpec, Source};

/// Whether a program should run (SPEC §4). Only an explicit start or stop changes it; file edits
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

/// One program's desired state, keyed by program name in the `programs` tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramRecord {
    /// The last good spec. A broken file keeps this and only sets `error` (SPEC §12).
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
}

/// What the daemon needs to find an instance's process again after it restarts (SPEC §11),
/// keyed by instance name (`web`, `web-2`) in the `instances` tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The program the instance belongs to.
    pub program: String,
    /// The process it runs, if any.
    pub pid: Option<i32>,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot) when `pid` was recorded, so a
    /// reused pid is never mistaken for the instance's process.
    pub start_time: Option<u64>,
    /// Automatic restarts so far; survives daemon restarts (SPEC §9.2).
    pub restarts: u64,
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
    /// An explicit start or stop.
    SetDesired {
        name: String,
        desired: DesiredRun,
    },
    /// Remove a program and its instance records.
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
}
