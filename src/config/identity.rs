//! The privilege and limit keys of a program (`docs/configuration.md`, "Privileges and limits"):
//! `user`, `group`, `supplementary_groups`, `umask`, `nice`, `oom_score_adj`, `[limits]`.
//! Accounts must exist when the file is loaded, and what only root may do is refused at load
//! when the daemon (or the CLI checking a file) is not root, with a sentence.

use serde::Deserialize;

use super::program::RawProgram;
use super::raw::{Check, Val};
use super::{Limit, Limits, ProgramSpec};
use crate::accounts::{gid_of, user_of};

/// A user or group as written: a name, or a number.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "a name or a number")]
pub enum RawAccount {
    Name(String),
    Id(u32),
}

impl RawAccount {
    fn text(&self) -> String {
        match self {
            RawAccount::Name(n) => n.trim().to_string(),
            RawAccount::Id(id) => id.to_string(),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of keys")]
pub struct RawLimits {
    nofile: Val<Limit>,
    nproc: Val<Limit>,
    core: Val<Limit>,
    memlock: Val<Limit>,
    #[serde(rename = "as")]
    address_space: Val<Limit>,
    cpu: Val<Limit>,
}

/// Applies the keys to `spec`.
pub fn apply(c: &mut Check, raw: &RawProgram, spec: &mut ProgramSpec) {
    let root = nix::unistd::geteuid().is_root();
    let needs_root = |c: &mut Check, key: &str, what: &str| {
        let me = crate::accounts::describe_uid(nix::unistd::geteuid().as_raw());
        c.bad(
            key,
            format_args!("{what} needs root, and provisr runs as {me}"),
        )
        .help("remove the key, or run the daemon as root");
    };
    if let Some(user) = c.get(&raw.user, "user").map(RawAccount::text) {
        match user_of(&user) {
            Ok((uid, None)) if raw.group.is_absent() => {
                c.bad(
                    "user",
                    format_args!("uid {uid} has no passwd entry, so no primary group"),
                )
                .help("set `group` too");
            }
            Ok((uid, _)) if !root && uid != nix::unistd::geteuid().as_raw() => {
                needs_root(c, "user", &format!("running as {user:?}"));
            }
            Ok(_) => spec.user = Some(user),
            Err(why) => {
                let shown = c.at.key("user");
                c.err("user", format!("`{shown}`: {why}"))
                    .help("name an existing user (or a numeric uid); `getent passwd` lists them");
            }
        }
    }
    if let Some(group) = c.get(&raw.group, "group").map(RawAccount::text) {
        match gid_of(&group) {
            Ok(gid) if !root && gid != nix::unistd::getegid().as_raw() => {
                needs_root(c, "group", &format!("running as group {group:?}"));
            }
            Ok(_) => spec.group = Some(group),
            Err(why) => {
                let shown = c.at.key("group");
                c.err("group", format!("`{shown}`: {why}"))
                    .help("name an existing group (or a numeric gid); `getent group` lists them");
            }
        }
    }
    let groups = c.each(&raw.supplementary_groups, "supplementary_groups", |c, g| {
        let g = g.text();
        match gid_of(&g) {
            Ok(_) => Some(g),
            Err(why) => {
                c.err("", format!("`{}`: {why}", c.at));
                None
            }
        }
    });
    if let Val::Ok(_) = raw.supplementary_groups {
        let names: Vec<String> = groups.into_iter().flatten().collect();
        if !root && !names.is_empty() {
            needs_root(c, "supplementary_groups", "setting supplementary groups");
        }
        spec.supplementary_groups = Some(names);
    }
    if let Some(mask) = c.get(&raw.umask, "umask") {
        let digits = mask.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && !digits.is_empty() => spec.umask = Some(format!("{m:04o}")),
            _ => {
                c.bad("umask", format_args!("{mask:?} is not an octal umask"))
                    .help("write octal digits in quotes, e.g. umask = \"077\" (files 0600, directories 0700)");
            }
        }
    }
    let ranged = |c: &mut Check, v: &Val<i64>, key: &str, min: i64, max: i64| {
        let &n = c.get(v, key)?;
        if !(min..=max).contains(&n) {
            c.bad(
                key,
                format_args!("must be between {min} and {max}, got {n}"),
            );
            return None;
        }
        i32::try_from(n).ok()
    };
    spec.nice = ranged(c, &raw.nice, "nice", -20, 19);
    spec.oom_score_adj = ranged(c, &raw.oom_score_adj, "oom_score_adj", -1000, 1000);
    if !root && spec.nice.is_some_and(|n| n < 0) {
        needs_root(c, "nice", "a negative nice value");
    }
    if !root && spec.oom_score_adj.is_some_and(|n| n < 0) {
        needs_root(c, "oom_score_adj", "a negative oom_score_adj");
    }
    let limits = c.table(&raw.limits, "limits", |c, limits| Limits {
        nofile: c.value(&limits.nofile, "nofile"),
        nproc: c.value(&limits.nproc, "nproc"),
        core: c.value(&limits.core, "core"),
        memlock: c.value(&limits.memlock, "memlock"),
        address_space: c.value(&limits.address_space, "as"),
        cpu: c.value(&limits.cpu, "cpu"),
    });
    spec.limits = limits.unwrap_or_default().into();
}
