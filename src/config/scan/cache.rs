//! What earlier scans learned about each program file, so a rescan parses and validates only the
//! files that changed (`docs/hot-reload.md`, "What a rescan reads").
//!
//! A file is known unchanged when its identity — device, inode, size, modification and change
//! times — is the one recorded, or, when it is not, when its content hashes to the same value.
//! Identity alone is trusted only for files last changed more than [`SETTLED`] before they were
//! read: a write within the file system's timestamp granularity of a read could leave the
//! identity as it was (the "racily clean" files of git), so such a file is read and hashed again
//! on the next scan.
//!
//! Only what depends on the file alone is reused: a valid program that names no user or group
//! (accounts are looked up at load, and may have changed since), validated against the same
//! shared context (log defaults, `use_os_env`, the environment). A different context empties the
//! cache; a broken file is always validated again, so its errors show on every reload.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::config::env::EnvLayers;
use crate::config::{ConfigError, LogSpec, ProgramSpec};

/// How long after its last change a file's identity alone says it is unchanged.
const SETTLED: Duration = Duration::from_secs(1);

/// Directories whose files are remembered at most: a daemon scans one (two while a reload moves
/// it), tests scan many.
const DIRS: usize = 4;

/// What a valid program file was validated against, besides itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Context {
    pub log_defaults: LogSpec,
    pub use_os_env: bool,
    pub env: EnvLayers,
}

/// A file's identity as `stat` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The later of the modification and change times.
    fn changed(&self) -> SystemTime {
        let at = |(s, ns): (i64, i64)| {
            SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
        };
        at(self.mtime).max(at(self.ctime))
    }
}

/// What a valid program file produced.
#[derive(Clone, Debug)]
pub(super) struct Valid {
    pub name: Option<String>,
    /// Where the name is written, for errors about it.
    pub name_site: Arc<ConfigError>,
    pub spec: Arc<ProgramSpec>,
}

struct Entry {
    key: Key,
    /// Boxed: the table holds one entry per file, most of it the spec.
    valid: Box<Valid>,
}

/// What is known of one directory's files, by file name.
struct Dir {
    path: PathBuf,
    context: Context,
    files: HashMap<OsString, Entry>,
}

static DIRS_SEEN: Mutex<Vec<Dir>> = Mutex::new(Vec::new());

/// A program file's name in its directory (the key of what is known of it).
fn file_name(path: &Path) -> &OsStr {
    path.file_name().unwrap_or(path.as_os_str())
}

fn hash_of(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// One scan of a programs directory: looks files up in what the last scan of it left, and
/// leaves what it found for the next.
pub(super) struct Session {
    dir: PathBuf,
    context: Context,
    known: HashMap<OsString, Entry>,
    found: HashMap<OsString, Entry>,
}

/// A program file as a scan sees it.
pub(super) enum Lookup {
    /// Unchanged since it was validated: its program.
    Unchanged(Valid),
    /// New or changed: its text, to parse and validate, then [`Session::remember`].
    Read(Read),
}

/// A file read by this scan: its text, and what says whether it changed.
pub(super) struct Read {
    pub text: String,
    pub key: Key,
}

/// What tells whether a file changed since it was read.
pub(super) struct Key {
    identity: Identity,
    hash: u64,
    /// The identity alone says the file is unchanged (see the module docs).
    settled: bool,
}

impl Session {
    /// Starts a scan of `dir` with the shared `context`.
    pub fn open(dir: &Path, context: Context) -> Session {
        let mut dirs = DIRS_SEEN.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken out: a scan running meanwhile just finds nothing to reuse.
        let known = dirs
            .iter()
            .position(|d| d.path == dir)
            .map(|i| dirs.remove(i));
        let known = known.filter(|d| d.context == context).map(|d| d.files);
        Session {
            dir: dir.to_path_buf(),
            context,
            // Sized for a rescan of the same files: grown one by one, thousands of entries were
            // rehashed a dozen times.
            found: HashMap::with_capacity(known.as_ref().map_or(0, HashMap::len)),
            known: known.unwrap_or_default(),
        }
    }

    /// Looks up `path`, reading it unless its identity says it is unchanged.
    pub fn lookup(&mut self, path: &Path) -> io::Result<Lookup> {
        let before = SystemTime::now();
        let identity = Identity::of(&std::fs::metadata(path)?);
        let settled = before
            .duration_since(identity.changed())
            .is_ok_and(|age| age > SETTLED);
        let known = match self.known.remove_entry(file_name(path)) {
            Some((name, entry)) if entry.key.settled && entry.key.identity == identity => {
                return Ok(self.keep(name, entry));
            }
            known => known,
        };
        let text = std::fs::read_to_string(path)?;
        let hash = hash_of(&text);
        let key = Key {
            identity,
            hash,
            settled,
        };
        match known {
            Some((name, entry)) if entry.key.hash == hash => {
                Ok(self.keep(name, Entry { key, ..entry }))
            }
            _ => Ok(Lookup::Read(Read { text, key })),
        }
    }

    fn keep(&mut self, name: OsString, entry: Entry) -> Lookup {
        let valid = Valid::clone(&entry.valid);
        self.found.insert(name, entry);
        Lookup::Unchanged(valid)
    }

    /// Remembers what the file read as `key` produced, when it may be reused (see the module
    /// docs).
    pub fn remember(&mut self, path: &Path, key: Key, valid: &Valid) {
        let spec = &valid.spec;
        // An account is looked up anew at each scan; dependencies are checked against the
        // other programs with the document at hand, to name their lines.
        let account = spec.user.is_some() || spec.group.is_some();
        if account || spec.supplementary_groups.is_some() || !spec.depends_on.is_empty() {
            return;
        }
        let entry = Entry {
            key,
            valid: Box::new(valid.clone()),
        };
        self.found.insert(file_name(path).to_owned(), entry);
    }

    /// Leaves what this scan found for the next scan of the directory.
    pub fn close(self) {
        let mut dirs = DIRS_SEEN.lock().unwrap_or_else(PoisonError::into_inner);
        dirs.retain(|d| d.path != self.dir);
        if dirs.len() >= DIRS {
            dirs.remove(0);
        }
        dirs.push(Dir {
            path: self.dir,
            context: self.context,
            files: self.found,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Exec, ProgramSpec};

    fn context(extra: &str) -> Context {
        let mut env = EnvLayers::new(Default::default());
        let _ = env.set("A", extra, true);
        Context {
            log_defaults: LogSpec::default(),
            use_os_env: false,
            env,
        }
    }

    fn valid(name: &str) -> Valid {
        Valid {
            name: Some(name.into()),
            name_site: Arc::new(ConfigError::new("web.toml", "")),
            spec: Arc::new(ProgramSpec::new(name, Exec::Command("sleep 1".into()))),
        }
    }

    /// One scan of `dir` looking up `path`: whether it was unchanged, remembering it if read.
    fn scan(dir: &Path, path: &Path, ctx: &Context, spec: &Valid) -> Option<String> {
        let mut session = Session::open(dir, ctx.clone());
        let text = match session.lookup(path).unwrap() {
            Lookup::Unchanged(_) => None,
            Lookup::Read(read) => {
                session.remember(path, read.key, spec);
                Some(read.text)
            }
        };
        session.close();
        text
    }

    #[test]
    fn a_file_is_read_again_only_when_it_or_the_context_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.toml");
        std::fs::write(&path, "command = \"a\"\n").unwrap();
        let (ctx, v) = (context("1"), valid("web"));
        assert_eq!(
            scan(dir.path(), &path, &ctx, &v).as_deref(),
            Some("command = \"a\"\n")
        );
        assert_eq!(scan(dir.path(), &path, &ctx, &v), None, "unchanged");
        // Same size, written right after the last read: its identity may not tell, its content
        // does.
        std::fs::write(&path, "command = \"b\"\n").unwrap();
        assert_eq!(
            scan(dir.path(), &path, &ctx, &v).as_deref(),
            Some("command = \"b\"\n")
        );
        assert_eq!(scan(dir.path(), &path, &ctx, &v), None);
        // Another shared environment validates everything again.
        assert!(scan(dir.path(), &path, &context("2"), &v).is_some());
    }

    #[test]
    fn programs_that_name_accounts_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.toml");
        std::fs::write(&path, "command = \"a\"\nuser = \"nobody\"\n").unwrap();
        let ctx = context("1");
        let mut v = valid("web");
        Arc::make_mut(&mut v.spec).user = Some("nobody".into());
        assert!(scan(dir.path(), &path, &ctx, &v).is_some());
        assert!(
            scan(dir.path(), &path, &ctx, &v).is_some(),
            "looked up again"
        );
    }

    #[test]
    fn a_file_not_seen_by_a_scan_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.toml");
        std::fs::write(&path, "command = \"a\"\n").unwrap();
        let (ctx, v) = (context("1"), valid("web"));
        assert!(scan(dir.path(), &path, &ctx, &v).is_some());
        // A scan that did not look at it (the file was gone meanwhile).
        Session::open(dir.path(), ctx.clone()).close();
        assert!(scan(dir.path(), &path, &ctx, &v).is_some());
    }
}
