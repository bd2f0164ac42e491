//! What a child runs as and within: `user`, `group`, `supplementary_groups`, `umask`, `nice`,
//! `oom_score_adj` and `[limits]` (`docs/configuration.md`, "Privileges and limits").
//!
//! Names are resolved in the daemon just before each spawn (so an account changed since the file
//! was loaded is seen), and applied in the child between `fork` and `exec`, in the only order that
//! works: what needs privileges first (OOM score, priority, limits), then the umask, then the
//! groups, the group and last the user. The child's pipes and log files were opened by the daemon,
//! so the process writes its output whoever it runs as.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

use crate::config::{Limit, ProgramSpec};

/// Everything to apply in the child, resolved and allocated before `fork`.
#[derive(Debug, Default)]
struct ChildIdentity {
    ids: Option<(Uid, Gid, Vec<Gid>)>,
    umask: Option<Mode>,
    nice: Option<i32>,
    /// The text written to `/proc/self/oom_score_adj`.
    oom_score_adj: Option<String>,
    limits: Vec<(Resource, u64)>,
}

impl ChildIdentity {
    fn resolve(spec: &ProgramSpec) -> Result<ChildIdentity, String> {
        let mut id = ChildIdentity::default();
        if spec.user.is_some() || spec.group.is_some() || spec.supplementary_groups.is_some() {
            id.ids = Some(ids(spec)?);
        }
        id.umask = match &spec.umask {
            Some(m) => Some(Mode::from_bits_truncate(
                u32::from_str_radix(m, 8).map_err(|e| format!("umask {m:?}: {e}"))?,
            )),
            None => None,
        };
        id.nice = spec.nice;
        id.oom_score_adj = spec.oom_score_adj.map(|n| n.to_string());
        for (key, limit) in spec.limits.set() {
            let resource = match key {
                "nofile" => Resource::RLIMIT_NOFILE,
                "nproc" => Resource::RLIMIT_NPROC,
                "core" => Resource::RLIMIT_CORE,
                "memlock" => Resource::RLIMIT_MEMLOCK,
                "as" => Resource::RLIMIT_AS,
                _ => Resource::RLIMIT_CPU,
            };
            let value = match limit {
                Limit::Value(n) => n,
                Limit::Unlimited => RLIM_INFINITY,
            };
            id.limits.push((resource, value));
        }
        Ok(id)
    }

    fn is_empty(&self) -> bool {
        self.ids.is_none()
            && self.umask.is_none()
            && self.nice.is_none()
            && self.oom_score_adj.is_none()
            && self.limits.is_empty()
    }

    /// In the child, between `fork` and `exec`: system calls only, no allocation, no lock.
    fn apply(&self) -> io::Result<()> {
        if let Some(score) = &self.oom_score_adj {
            use rustix::fs::{open, Mode as FileMode, OFlags};
            let fd = open(
                c"/proc/self/oom_score_adj",
                OFlags::WRONLY | OFlags::CLOEXEC,
                FileMode::empty(),
            )?;
            rustix::io::write(&fd, score.as_bytes())?;
        }
        if let Some(n) = self.nice {
            rustix::process::setpriority_process(None, n)?;
        }
        for &(resource, value) in &self.limits {
            setrlimit(resource, value, value)?;
        }
        if let Some(mask) = self.umask {
            umask(mask);
        }
        if let Some((uid, gid, groups)) = &self.ids {
            setgroups(groups)?;
            setgid(*gid)?;
            setuid(*uid)?;
        }
        Ok(())
    }
}

/// The uid, primary gid and supplementary groups `spec` asks for.
fn ids(spec: &ProgramSpec) -> Result<(Uid, Gid, Vec<Gid>), String> {
    let (uid, primary) = match &spec.user {
        Some(u) => crate::accounts::user_of(u)?,
        None => (
            nix::unistd::geteuid().as_raw(),
            Some(nix::unistd::getegid().as_raw()),
        ),
    };
    let gid = match &spec.group {
        Some(g) => crate::accounts::gid_of(g)?,
        None => primary.ok_or_else(|| format!("uid {uid} has no passwd entry: set `group`"))?,
    };
    let groups = match &spec.supplementary_groups {
        Some(list) => list
            .iter()
            .map(|g| crate::accounts::gid_of(g))
            .collect::<Result<Vec<u32>, String>>()?,
        // As `initgroups`: the user's groups from the group database.
        None if spec.user.is_some() => {
            let mut groups = crate::accounts::groups_of(uid);
            if groups.is_empty() {
                groups.push(gid);
            }
            groups
        }
        None => vec![gid],
    };
    Ok((
        Uid::from_raw(uid),
        Gid::from_raw(gid),
        groups.into_iter().map(Gid::from_raw).collect(),
    ))
}

/// Arranges for the child of `cmd` to run as and within what `spec` says; an account that no
/// longer resolves is an error before anything is spawned.
// `pre_exec` is unsafe because the closure runs in the forked child of a multi-threaded process,
// where only async-signal-safe operations are allowed. Everything was resolved and allocated
// above; the closure makes plain system calls (`open`, `write`, `close`, `setpriority`,
// `setrlimit`, `umask`, `setgroups`, `setgid`, `setuid`) and allocates nothing.
#[allow(unsafe_code)]
pub(crate) fn set_identity(cmd: &mut Command, spec: &ProgramSpec) -> Result<(), String> {
    let identity = ChildIdentity::resolve(spec)?;
    if identity.is_empty() {
        return Ok(());
    }
    // SAFETY: see the comment on this function.
    unsafe {
        cmd.pre_exec(move || identity.apply());
    }
    Ok(())
}

/// Whether `spec` changes what its process runs as or within (for error messages).
pub(crate) fn has_identity(spec: &ProgramSpec) -> bool {
    spec.user.is_some()
        || spec.group.is_some()
        || spec.supplementary_groups.is_some()
        || spec.umask.is_some()
        || spec.nice.is_some()
        || spec.oom_score_adj.is_some()
        || !spec.limits.is_empty()
}
