//! Schema versions of the store and the steps that upgrade one version to the next.
//!
//! The version lives in the `meta` tree under `schema_version` (a JSON number). On open the store
//! reads it and runs every step from the stored version up to [`CURRENT_SCHEMA`], each in one
//! sled transaction that also stamps the step's target version, then flushes: a crash mid-upgrade
//! leaves the store at the last completed version, and the next open resumes from there.
//!
//! Steps work on JSON values, not on today's Rust types: a step must keep reading the version it
//! upgrades from after the record types have moved on. `migrations/README.md` describes every
//! version and step; `migrations/fixtures/` holds a real store of each version, and the store
//! tests open each one and read it back at the current version.

use std::path::Path;

use serde_json::{Map, Value};

use super::{transact, RawWrite, StoreError, META_TREE, PROGRAMS_TREE, SCHEMA_KEY};

/// The schema version this provisr writes.
pub const CURRENT_SCHEMA: u32 = 1;

/// One upgrade step: reads the store at version `from` and returns the writes that make it
/// version `to`. The runner applies them and the new `schema_version` atomically.
pub struct Step {
    pub from: u32,
    pub to: u32,
    /// What the step changes, for the log.
    pub describes: &'static str,
    pub run: fn(&sled::Db) -> Result<Vec<RawWrite>, String>,
}

/// Every step, in order; `from` of each is `to` of the one before, the last ends at
/// [`CURRENT_SCHEMA`] (checked by a unit test).
pub const STEPS: &[Step] = &[Step {
    from: 0,
    to: 1,
    describes:
        "stamp the pre-versioning layout and give each program a generation and an error field",
    run: v0_to_v1,
}];

/// What [`bring_to_current`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaOutcome {
    /// An empty database, now stamped with the current version.
    Created,
    /// Already at the current version.
    Current,
    /// Upgraded from this older version.
    Upgraded { from: u32 },
}

/// The version the store was written at: `None` for an empty database, `Some(0)` for the
/// pre-versioning layout (a `programs` tree but no `schema_version`).
pub fn stored_version(db: &sled::Db, db_path: &Path) -> Result<Option<u32>, StoreError> {
    // Look before opening: `open_tree` creates the tree, and a `programs` tree is what marks v0.
    let names = db.tree_names();
    let has = |tree: &str| names.iter().any(|n| n.as_ref() == tree.as_bytes());
    if has(META_TREE) {
        let meta = open_tree(db, db_path, META_TREE)?;
        let stored = meta.get(SCHEMA_KEY).map_err(|source| StoreError::Sled {
            operation: format!("read {META_TREE}/{SCHEMA_KEY}"),
            path: db_path.to_path_buf(),
            source,
        })?;
        if let Some(bytes) = stored {
            let version = serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                tree: META_TREE,
                key: SCHEMA_KEY.to_string(),
                path: db_path.to_path_buf(),
                source,
            })?;
            return Ok(Some(version));
        }
    }
    Ok(has(PROGRAMS_TREE).then_some(0))
}

/// Stamps a fresh database with [`CURRENT_SCHEMA`], or runs the steps from its stored version,
/// or refuses a database written by a newer provisr.
pub fn bring_to_current(db: &sled::Db, db_path: &Path) -> Result<SchemaOutcome, StoreError> {
    let Some(found) = stored_version(db, db_path)? else {
        commit_version(db, db_path, Vec::new(), CURRENT_SCHEMA)?;
        return Ok(SchemaOutcome::Created);
    };
    if found > CURRENT_SCHEMA {
        return Err(StoreError::NewerSchema {
            path: db_path.to_path_buf(),
            found,
            supported: CURRENT_SCHEMA,
        });
    }
    if found == CURRENT_SCHEMA {
        return Ok(SchemaOutcome::Current);
    }
    let mut version = found;
    while version < CURRENT_SCHEMA {
        let step =
            STEPS
                .iter()
                .find(|s| s.from == version)
                .ok_or_else(|| StoreError::Migration {
                    path: db_path.to_path_buf(),
                    from: version,
                    to: CURRENT_SCHEMA,
                    reason: format!("no migration step starts at version {version}"),
                })?;
        tracing::info!(
            store = %db_path.display(),
            from = step.from,
            to = step.to,
            "upgrading the store: {}",
            step.describes
        );
        let writes = (step.run)(db).map_err(|reason| StoreError::Migration {
            path: db_path.to_path_buf(),
            from: step.from,
            to: step.to,
            reason,
        })?;
        commit_version(db, db_path, writes, step.to)?;
        version = step.to;
    }
    Ok(SchemaOutcome::Upgraded { from: found })
}

/// Applies a step's writes and stamps `version` in one transaction, then flushes.
fn commit_version(
    db: &sled::Db,
    db_path: &Path,
    mut writes: Vec<RawWrite>,
    version: u32,
) -> Result<(), StoreError> {
    writes.push(RawWrite {
        tree: META_TREE,
        key: SCHEMA_KEY.as_bytes().to_vec(),
        value: Some(version.to_string().into_bytes()),
    });
    let mut names: Vec<&'static str> = writes.iter().map(|w| w.tree).collect();
    names.sort_unstable();
    names.dedup();
    let trees = names
        .iter()
        .map(|name| open_tree(db, db_path, name))
        .collect::<Result<Vec<_>, _>>()?;
    let sled_err = |source| StoreError::Sled {
        operation: format!("write schema version {version}"),
        path: db_path.to_path_buf(),
        source,
    };
    let named: Vec<(&str, &sled::Tree)> = names.iter().copied().zip(trees.iter()).collect();
    transact(&named, &writes).map_err(sled_err)?;
    db.flush().map_err(sled_err)?;
    Ok(())
}

fn open_tree(db: &sled::Db, db_path: &Path, name: &str) -> Result<sled::Tree, StoreError> {
    db.open_tree(name).map_err(|source| StoreError::Sled {
        operation: format!("open tree {name}"),
        path: db_path.to_path_buf(),
        source,
    })
}

/// 0 → 1. Version 0 is the layout before the store carried a version: a `programs` tree of
/// `{spec, source, desired}` objects keyed by program name, nothing else. Version 1 adds the
/// `meta` tree and gives each program record `generation` (1: the first version the store knows)
/// and `error` (`null`). A record that is not such an object stops the upgrade with its key
/// rather than being dropped.
fn v0_to_v1(db: &sled::Db) -> Result<Vec<RawWrite>, String> {
    let programs = db
        .open_tree(PROGRAMS_TREE)
        .map_err(|e| format!("cannot open tree {PROGRAMS_TREE}: {e}"))?;
    let mut writes = Vec::new();
    for entry in programs.iter() {
        let (key, value) = entry.map_err(|e| format!("cannot read tree {PROGRAMS_TREE}: {e}"))?;
        let name = String::from_utf8_lossy(&key).into_owned();
        let bad = |why: String| format!("program record {name:?}: {why}");
        let mut record: Map<String, Value> =
            serde_json::from_slice(&value).map_err(|e| bad(e.to_string()))?;
        for field in ["spec", "source", "desired"] {
            if !record.contains_key(field) {
                return Err(bad(format!("the field {field:?} is missing")));
            }
        }
        let spec_name = record
            .get("spec")
            .and_then(|spec| spec.get("name"))
            .and_then(Value::as_str);
        if spec_name != Some(name.as_str()) {
            return Err(bad(format!(
                "it is stored under {name:?} but its spec is named {spec_name:?}"
            )));
        }
        record.entry("generation").or_insert(Value::from(1u64));
        record.entry("error").or_insert(Value::Null);
        let bytes = serde_json::to_vec(&record).map_err(|e| bad(e.to_string()))?;
        writes.push(RawWrite {
            tree: PROGRAMS_TREE,
            key: key.to_vec(),
            value: Some(bytes),
        });
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_contiguous_and_end_at_the_current_version() {
        let mut version = 0;
        for step in STEPS {
            assert_eq!(step.from, version, "step {}→{}", step.from, step.to);
            assert_eq!(step.to, step.from + 1, "step {}→{}", step.from, step.to);
            version = step.to;
        }
        assert_eq!(version, CURRENT_SCHEMA);
    }

    fn temp_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        (dir, db)
    }

    #[test]
    fn v0_records_gain_generation_and_error_and_keep_everything_else() {
        let (_dir, db) = temp_db();
        let programs = db.open_tree(PROGRAMS_TREE).unwrap();
        let v0 = serde_json::json!({
            "spec": {"name": "web", "anything": [1, 2]},
            "source": {"kind": "api"},
            "desired": "stopped",
        });
        programs
            .insert("web", serde_json::to_vec(&v0).unwrap())
            .unwrap();
        let writes = v0_to_v1(&db).unwrap();
        assert_eq!(writes.len(), 1);
        let upgraded: Value = serde_json::from_slice(writes[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(
            upgraded,
            serde_json::json!({
                "spec": {"name": "web", "anything": [1, 2]},
                "source": {"kind": "api"},
                "desired": "stopped",
                "generation": 1,
                "error": null,
            })
        );
    }

    #[test]
    fn a_v0_record_that_is_not_a_program_stops_the_upgrade_naming_it() {
        let (_dir, db) = temp_db();
        let programs = db.open_tree(PROGRAMS_TREE).unwrap();
        programs
            .insert("web", &b"{\"spec\":{\"name\":\"web\"}}"[..])
            .unwrap();
        let err = v0_to_v1(&db).unwrap_err();
        assert!(err.contains("\"web\"") && err.contains("source"), "{err}");

        programs
            .insert(
                "web",
                &b"{\"spec\":{\"name\":\"api\"},\"source\":{\"kind\":\"api\"},\"desired\":\"running\"}"[..],
            )
            .unwrap();
        let err = v0_to_v1(&db).unwrap_err();
        assert!(err.contains("spec is named"), "{err}");
    }

    #[test]
    fn versions_are_told_apart() {
        let (dir, db) = temp_db();
        let path = dir.path().join("db");
        assert_eq!(stored_version(&db, &path).unwrap(), None);
        db.open_tree(PROGRAMS_TREE).unwrap();
        assert_eq!(stored_version(&db, &path).unwrap(), Some(0));
        assert_eq!(
            bring_to_current(&db, &path).unwrap(),
            SchemaOutcome::Upgraded { from: 0 }
        );
        assert_eq!(stored_version(&db, &path).unwrap(), Some(CURRENT_SCHEMA));
        assert_eq!(
            bring_to_current(&db, &path).unwrap(),
            SchemaOutcome::Current
        );
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_KEY, &b"99"[..])
            .unwrap();
        assert!(matches!(
            bring_to_current(&db, &path),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
    }
}
