//! What a child runs as and within: `user`, `group`, `supplementary_groups`, `umask`, `nice`,
//! `oom_score_adj` and `[limits]` (`docs/configuration.md`, "Privileges and limits").
//!
//! Names are resolved in the daemon just before each spawn (so an account changed since the file
//! was loaded is seen), and applied in the child between `clone` and `exec` (`launch.rs`), in the
//! only order that works: what needs privileges first (OOM score, priority, limits), then the umask, then the
//! groups, the group and last the user. The child's pipes and log files were opened by the daemon,
//! so the process writes its output whoever it runs as.

use nix::libc;

use crate::config::{Limit, ProgramSpec};

use super::launch::{Identity, Ids};

/// What `spec` says its process runs as and within, with names resolved to numbers; the child
/// applies it between `clone` and `exec` (`launch.rs`). An account that no longer resolves is an
/// error before anything is spawned.
pub(crate) fn resolve(spec: &ProgramSpec) -> Result<Identity, String> {
    let mut id = Identity::default();
    if spec.user.is_some() || spec.group.is_some() || spec.supplementary_groups.is_some() {
        let (uid, gid, groups) = ids(spec)?;
        id.ids = Some(Ids { uid, gid, groups });
    }
    id.umask = match &spec.umask {
        Some(m) => {
            Some(u32::from_str_radix(m, 8).map_err(|e| format!("umask {m:?}: {e}"))? & 0o777)
        }
        None => None,
    };
    id.nice = spec.nice;
    id.oom_score_adj = spec.oom_score_adj;
    for (key, limit) in spec.limits.set() {
        let resource = match key {
            "nofile" => libc::RLIMIT_NOFILE,
            "nproc" => libc::RLIMIT_NPROC,
            "core" => libc::RLIMIT_CORE,
            "memlock" => libc::RLIMIT_MEMLOCK,
            "as" => libc::RLIMIT_AS,
            _ => libc::RLIMIT_CPU,
        };
        let value = match limit {
            Limit::Value(n) => n,
            Limit::Unlimited => libc::RLIM_INFINITY,
        };
        id.limits.push((resource, value));
    }
    Ok(id)
}

/// The uid, primary gid and supplementary groups `spec` asks for.
fn ids(spec: &ProgramSpec) -> Result<(u32, u32, Vec<u32>), String> {
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
    Ok((uid, gid, groups))
}
