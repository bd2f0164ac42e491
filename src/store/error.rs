//! Why the store could not open, read or write, with the operation, key and path involved.

use std::path::PathBuf;

/// Every way the desired-state store fails. Opening failures stop the daemon (DESIGN.md: the
/// store is one of the two things the daemon cannot run without); the rest are per-operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds `daemon.lock` in the state directory.
    #[error(
        "another provisr daemon{} is already using state directory {}; stop it or choose another [daemon] state_dir",
        holder_pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        state_dir.display()
    )]
    Locked {
        state_dir: PathBuf,
        /// The pid written in the lock file, if the holder had written it yet.
        holder_pid: Option<i32>,
    },

    /// A file-system operation on the state directory failed.
    #[error("cannot {operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `flock` failed for a reason other than another holder.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },

    /// sled reported an error.
    #[error("store error while trying to {operation} in {}: {source}", path.display())]
    Sled {
        /// What was being done, with the key: `read programs/web`.
        operation: String,
        /// The sled database directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// sled 0.34 reported an error while a store in its format was read for an upgrade.
    #[error("store error while trying to {operation} in {} (a sled 0.34 store being upgraded): {source}", path.display())]
    OldSled {
        operation: String,
        /// The sled 0.34 database directory.
        path: PathBuf,
        #[source]
        source: old_sled::Error,
    },

    /// A stored value does not decode as the record its tree holds.
    #[error("record {key:?} in tree {tree} of {} is corrupt: {source}", path.display())]
    Corrupt {
        tree: &'static str,
        key: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A record could not be encoded as JSON: a bug, reported rather than panicking the daemon.
    #[error("cannot encode record {key:?} for tree {tree}: {source}")]
    Encode {
        tree: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// The store was written by a provisr with a newer schema; opening it could lose data.
    #[error(
        "the store in {} has schema version {found}, written by a newer provisr (this one understands up to {supported}); upgrade provisr or choose another [daemon] state_dir",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// A migration step could not upgrade a record.
    #[error("cannot upgrade the store in {} from schema version {from} to {to}: {reason}", path.display())]
    Migration {
        path: PathBuf,
        from: u32,
        to: u32,
        reason: String,
    },

    /// A write named a program the store does not have.
    #[error("no program named {name:?}")]
    ProgramNotFound { name: String },

    /// A write expected no program of this name (registering a new one), and there is one.
    #[error("a program named {name:?} already exists, defined by {owner}")]
    ProgramExists {
        name: String,
        /// Where it comes from: `api`, `config` or `file:<path>`.
        owner: String,
    },

    /// A write expected a program registered through the API, and this one comes from a file or
    /// the main config.
    #[error("{name:?} is defined by {owner}; edit that instead of changing it through the API")]
    NotApiOwned { name: String, owner: String },

    /// The state directory's file system cannot take a write now; nothing was written. Writing
    /// anyway would fail halfway through sled's flush, which leaves the database unusable until
    /// it is reopened, so the store refuses before it starts.
    #[error("cannot write to the store in {}: {why}; nothing was written", path.display())]
    NoRoom { path: PathBuf, why: String },

    /// An earlier flush failed: sled then refuses every read and write of this database until
    /// it is opened again, so the store refuses at once instead of hanging or half-working.
    #[error(
        "the store in {} could not write to disk ({cause}); nothing more can be recorded until provisr is restarted",
        path.display()
    )]
    Failed { path: PathBuf, cause: String },

    /// The writer thread is gone (the store is being dropped, or the thread panicked); the write
    /// was not acknowledged and may or may not have been committed.
    #[error("the store's writer has stopped; cannot {operation}")]
    WriterGone { operation: &'static str },

    /// The fleet's store (etcd) could not be reached or did not answer in time: nothing was
    /// written (`docs/fleet.md`, "Degraded mode").
    #[error("the fleet's store is unreachable ({why}); nothing was written. This node keeps its programs running as last known; retry once etcd is back")]
    Unavailable { why: String },

    /// The fleet's store refused or lost a write for another reason.
    #[error("the fleet's store refused the write: {why}")]
    Fleet { why: String },
}
