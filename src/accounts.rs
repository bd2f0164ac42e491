//! The local user and group database: names to ids, ids to names, and group membership.
//!
//! Lookups go through the C library (`getpwnam_r`, `getgrouplist`, …), so NSS sources such as
//! LDAP or systemd-homed users count like `/etc/passwd` ones. Numbers are accepted as ids without a
//! lookup: a uid need not have a passwd entry (containers, mapped ids).

use nix::unistd::{Gid, Group, Uid, User};

/// The uid of a user named by name or number.
pub fn uid_of(user: &str) -> Result<u32, String> {
    let user = user.trim();
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!("there is no user named {user:?}")),
        Err(e) => Err(format!("cannot look up the user {user:?}: {e}")),
    }
}

/// The gid of a group named by name or number.
pub fn gid_of(group: &str) -> Result<u32, String> {
    let group = group.trim();
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("there is no group named {group:?}")),
        Err(e) => Err(format!("cannot look up the group {group:?}: {e}")),
    }
}

/// A user's uid and primary gid; a number without a passwd entry has no primary group.
pub fn user_of(user: &str) -> Result<(u32, Option<u32>), String> {
    let user = user.trim();
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    };
    match (found, user.parse::<u32>()) {
        (Ok(Some(u)), _) => Ok((u.uid.as_raw(), Some(u.gid.as_raw()))),
        (Ok(None), Ok(uid)) => Ok((uid, None)),
        (Ok(None), Err(_)) => Err(format!("there is no user named {user:?}")),
        (Err(e), _) => Err(format!("cannot look up the user {user:?}: {e}")),
    }
}

/// `name (uid N)` when the uid has a name, else `uid N`: how messages name a caller.
pub fn describe_uid(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Every group the user with this uid belongs to: its primary group and its supplementary
/// groups. Empty for a uid without a passwd entry.
pub fn groups_of(uid: u32) -> Vec<u32> {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name.as_str()) else {
        return vec![user.gid.as_raw()];
    };
    match nix::unistd::getgrouplist(&name, user.gid) {
        Ok(groups) => groups.into_iter().map(Gid::as_raw).collect(),
        Err(_) => vec![user.gid.as_raw()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(uid_of("root"), Ok(0));
        assert_eq!(uid_of("4242"), Ok(4242));
        assert_eq!(gid_of("root"), Ok(0));
        assert!(uid_of("no-such-user-here")
            .unwrap_err()
            .contains("no user named"));
        assert!(gid_of("no-such-group-here")
            .unwrap_err()
            .contains("no group named"));
        assert_eq!(describe_uid(0), "root (uid 0)");
        assert!(groups_of(0).contains(&0));
        assert!(groups_of(4_000_000_000).is_empty());
    }
}
