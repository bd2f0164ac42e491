//! Schema versions of the store, the steps that upgrade one version to the next, and the move
//! from the sled 0.34 database (`db/`, versions 0 and 1) to the sled 1.x one (`db2/`, version 2).
//!
//! Version 2 is the first in sled 1.x's on-disk format, which sled 1.x cannot read from a 0.34
//! database; so a store at version 0 or 1 is read with sled 0.34 (the `old_sled` dependency),
//! its records are upgraded in memory step by step, and the result is written as a new sled 1.x
//! database in `db2.upgrading/`, flushed, and renamed to `db2/`. Only then is the old `db/`
//! renamed to `db.sled-0.34.backup/`, untouched. A crash at any point leaves either the old
//! store alone (the next open starts the upgrade again from scratch), or a complete `db2/` next
//! to the old `db/` (the next open uses `db2/` and finishes the rename). sled 0.34, and with it
//! its I/O thread pool, only starts when such an upgrade actually runs. A sled 1.x store below
//! the current version (2 → 3) is upgraded in place, in one atomic batch.
//!
//! Steps work on JSON values, not on today's Rust types: a step must keep reading the version it
//! upgrades from after the record types have moved on. `migrations/README.md` describes every
//! version and step; `migrations/fixtures/` holds a real store of each version, and the store
//! tests open each one and read it back at the current version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{lock, open_sled, StoreError, DB_DIR, INSTANCES, PROGRAMS, SCHEMA_KEY};

/// The schema version this provisr writes.
pub const CURRENT_SCHEMA: u32 = 4;

/// The first schema version kept in a sled 1.x database (`db2/`).
pub const FIRST_SLED1_SCHEMA: u32 = 2;

/// The sled 0.34 database's directory (schema versions 0 and 1).
pub const LEGACY_DB_DIR: &str = "db";
/// Where an upgrade keeps the sled 0.34 database once its records are safely in [`DB_DIR`].
pub const LEGACY_BACKUP_DIR: &str = "db.sled-0.34.backup";
/// Where an upgrade writes the new database before renaming it to [`DB_DIR`]: a `db2/` that
/// exists is always complete.
pub const UPGRADING_DIR: &str = "db2.upgrading";

/// The trees and key of the sled 0.34 layout.
const LEGACY_PROGRAMS_TREE: &str = "programs";
const LEGACY_INSTANCES_TREE: &str = "instances";
const LEGACY_META_TREE: &str = "meta";
const LEGACY_SCHEMA_KEY: &str = "schema_version";

/// Every record of a store, as encoded JSON by name, between reading one version and writing
/// the next. Kept encoded, and decoded by a step one record at a time: an upgrade of 10 000
/// programs never holds them all as `serde_json::Value`s (~10× their encoded size).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Records {
    pub programs: BTreeMap<String, Vec<u8>>,
    pub instances: BTreeMap<String, Vec<u8>>,
}

/// One upgrade step: rewrites the records of version `from` into those of version `to`.
pub struct Step {
    pub from: u32,
    pub to: u32,
    /// What the step changes, for the log.
    pub describes: &'static str,
    pub run: fn(&mut Records) -> Result<(), String>,
}

/// Every step, in order; `from` of each is `to` of the one before, the last ends at
/// [`CURRENT_SCHEMA`] (checked by a unit test).
pub const STEPS: &[Step] = &[
    Step {
        from: 0,
        to: 1,
        describes:
            "stamp the pre-versioning layout and give each program a generation and an error field",
        run: v0_to_v1,
    },
    Step {
        from: 1,
        to: 2,
        describes: "move the records from sled 0.34 to sled 1.x (records unchanged)",
        run: v1_to_v2,
    },
    Step {
        from: 2,
        to: 3,
        describes: "give each instance record a boot id, the spec its process runs, a write-ahead start, the requests it carried out and how it finished",
        run: v2_to_v3,
    },
    Step {
        from: 3,
        to: 4,
        describes: "store each spec without the keys that hold their reference value",
        run: v3_to_v4,
    },
];

/// What [`open_current`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaOutcome {
    /// No store yet: a new one, stamped with the current version.
    Created,
    /// Already at the current version.
    Current,
    /// Upgraded from this older version.
    Upgraded { from: u32 },
}

/// Opens the state directory's sled 1.x database at [`CURRENT_SCHEMA`]: creates it, upgrades a
/// sled 0.34 store into it, or finishes an upgrade a crash interrupted. Refuses a store written
/// by a newer provisr. The caller holds the state directory's lock.
pub fn open_current(state_dir: &Path) -> Result<(sled::Db, SchemaOutcome), StoreError> {
    let db_path = state_dir.join(DB_DIR);
    let legacy = state_dir.join(LEGACY_DB_DIR);
    let mut upgraded = None;
    if !db_path.exists() && legacy.exists() {
        upgraded = Some(upgrade_legacy(state_dir)?);
    }
    if legacy.exists() {
        // `db2/` is complete (it only ever appears by a rename after its flush), so the old
        // store is now only a backup; a crash may have come between the two renames.
        rename(
            &legacy,
            &state_dir.join(LEGACY_BACKUP_DIR),
            "keep the sled 0.34 store as a backup",
        )?;
        sync_dir(state_dir)?;
    }
    let db = open_sled(&db_path)?;
    let outcome = match stored_version(&db, &db_path)? {
        None => {
            stamp(&db, &db_path)?;
            SchemaOutcome::Created
        }
        Some(found) if found > CURRENT_SCHEMA => {
            return Err(StoreError::NewerSchema {
                path: db_path,
                found,
                supported: CURRENT_SCHEMA,
            })
        }
        Some(found) if found < FIRST_SLED1_SCHEMA => {
            return Err(StoreError::Migration {
                path: db_path,
                from: found,
                to: CURRENT_SCHEMA,
                reason: format!(
                    "a sled 1.x store starts at version {FIRST_SLED1_SCHEMA} and cannot be at version {found}"
                ),
            })
        }
        Some(found) if found < CURRENT_SCHEMA => {
            upgrade_in_place(&db, &db_path, found)?;
            SchemaOutcome::Upgraded { from: found }
        }
        Some(_) => match upgraded {
            Some(from) => SchemaOutcome::Upgraded { from },
            None => SchemaOutcome::Current,
        },
    };
    Ok((db, outcome))
}

/// The version a sled 1.x store was written at: `None` for an empty database.
pub fn stored_version(db: &sled::Db, db_path: &Path) -> Result<Option<u32>, StoreError> {
    let stored = db.get(SCHEMA_KEY).map_err(|source| StoreError::Sled {
        operation: format!("read {SCHEMA_KEY}"),
        path: db_path.to_path_buf(),
        source,
    })?;
    match stored {
        Some(bytes) => parse_version(&bytes, SCHEMA_KEY, db_path).map(Some),
        None if db.first().ok().flatten().is_some() => Err(StoreError::Migration {
            path: db_path.to_path_buf(),
            from: 0,
            to: CURRENT_SCHEMA,
            reason: format!("the database holds records but no {SCHEMA_KEY}"),
        }),
        None => Ok(None),
    }
}

/// The version a sled 0.34 store was written at: `None` for an empty database, `Some(0)` for
/// the pre-versioning layout (a `programs` tree but no `schema_version`).
pub fn legacy_version(db: &old_sled::Db, db_path: &Path) -> Result<Option<u32>, StoreError> {
    // Look before opening: `open_tree` creates the tree, and a `programs` tree is what marks v0.
    let names = db.tree_names();
    let has = |tree: &str| names.iter().any(|n| n.as_ref() == tree.as_bytes());
    if has(LEGACY_META_TREE) {
        let meta = legacy_tree(db, db_path, LEGACY_META_TREE)?;
        let stored = meta
            .get(LEGACY_SCHEMA_KEY)
            .map_err(|source| StoreError::OldSled {
                operation: format!("read {LEGACY_META_TREE}/{LEGACY_SCHEMA_KEY}"),
                path: db_path.to_path_buf(),
                source,
            })?;
        if let Some(bytes) = stored {
            return parse_version(&bytes, LEGACY_SCHEMA_KEY, db_path).map(Some);
        }
    }
    Ok(has(LEGACY_PROGRAMS_TREE).then_some(0))
}

fn parse_version(bytes: &[u8], key: &str, db_path: &Path) -> Result<u32, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        tree: "meta",
        key: key.to_string(),
        path: db_path.to_path_buf(),
        source,
    })
}

/// Stamps an empty database with [`CURRENT_SCHEMA`] and flushes.
fn stamp(db: &sled::Db, db_path: &Path) -> Result<(), StoreError> {
    let sled_err = |source| StoreError::Sled {
        operation: format!("write schema version {CURRENT_SCHEMA}"),
        path: db_path.to_path_buf(),
        source,
    };
    db.insert(SCHEMA_KEY, CURRENT_SCHEMA.to_string().as_bytes())
        .map_err(sled_err)?;
    db.flush().map_err(sled_err)?;
    Ok(())
}

/// Reads the sled 0.34 store in `db/`, runs the steps up to [`CURRENT_SCHEMA`] on its records
/// and writes them as a complete `db2/`. Returns the version it upgraded from. Leaves `db/` as
/// it found it (the caller renames it to the backup).
fn upgrade_legacy(state_dir: &Path) -> Result<u32, StoreError> {
    let legacy = state_dir.join(LEGACY_DB_DIR);
    let upgrading = state_dir.join(UPGRADING_DIR);
    let (from, mut records) = read_legacy(&legacy)?;
    if from > CURRENT_SCHEMA {
        return Err(StoreError::NewerSchema {
            path: legacy,
            found: from,
            supported: CURRENT_SCHEMA,
        });
    }
    run_steps(&legacy, from, &mut records)?;
    // A leftover of an upgrade a crash interrupted: incomplete by construction.
    if upgrading.exists() {
        std::fs::remove_dir_all(&upgrading).map_err(|source| StoreError::Io {
            operation: "remove an interrupted upgrade",
            path: upgrading.clone(),
            source,
        })?;
    }
    write_records(&upgrading, &records)?;
    rename(
        &upgrading,
        &state_dir.join(DB_DIR),
        "put the upgraded store in place",
    )?;
    sync_dir(state_dir)?;
    Ok(from)
}

/// Runs every step from `from` up to [`CURRENT_SCHEMA`] on `records`, in memory.
fn run_steps(store: &Path, from: u32, records: &mut Records) -> Result<(), StoreError> {
    let mut version = from;
    while version < CURRENT_SCHEMA {
        let step =
            STEPS
                .iter()
                .find(|s| s.from == version)
                .ok_or_else(|| StoreError::Migration {
                    path: store.to_path_buf(),
                    from: version,
                    to: CURRENT_SCHEMA,
                    reason: format!("no migration step starts at version {version}"),
                })?;
        tracing::info!(
            store = %store.display(),
            from = step.from,
            to = step.to,
            "upgrading the store: {}",
            step.describes
        );
        (step.run)(records).map_err(|reason| StoreError::Migration {
            path: store.to_path_buf(),
            from: step.from,
            to: step.to,
            reason,
        })?;
        version = step.to;
    }
    Ok(())
}

/// Upgrades a sled 1.x store at version `from` in place: reads every record, runs the steps up
/// to [`CURRENT_SCHEMA`] in memory, and writes the records that changed together with the new
/// version as one atomic batch, flushed. A crash before the flush leaves the store at `from`,
/// and the next open upgrades it again.
fn upgrade_in_place(db: &sled::Db, db_path: &Path, from: u32) -> Result<(), StoreError> {
    let sled_err = |operation: &str| {
        let operation = operation.to_string();
        move |source| StoreError::Sled {
            operation,
            path: db_path.to_path_buf(),
            source,
        }
    };
    let mut records = Records::default();
    for (kind, into) in [
        (PROGRAMS, &mut records.programs),
        (INSTANCES, &mut records.instances),
    ] {
        for entry in db.scan_prefix(kind.prefix) {
            let (key, value) = entry.map_err(sled_err("read the records to upgrade"))?;
            let name = String::from_utf8_lossy(&key[kind.prefix.len()..]).into_owned();
            into.insert(name, value.to_vec());
        }
    }
    let before = records.clone();
    run_steps(db_path, from, &mut records)?;
    let mut batch = sled::Batch::default();
    for (kind, old, new) in [
        (PROGRAMS, &before.programs, &records.programs),
        (INSTANCES, &before.instances, &records.instances),
    ] {
        for (name, value) in new {
            if old.get(name) != Some(value) {
                batch.insert(kind.key(name).as_bytes(), value.as_slice());
            }
        }
        for name in old.keys().filter(|name| !new.contains_key(*name)) {
            batch.remove(kind.key(name).as_bytes());
        }
    }
    batch.insert(SCHEMA_KEY, CURRENT_SCHEMA.to_string().as_bytes());
    db.apply_batch(batch)
        .map_err(sled_err("write the upgraded records"))?;
    db.flush().map_err(sled_err("flush the upgraded records"))?;
    Ok(())
}

/// Every record of the sled 0.34 store at `legacy`, with its version (0 for an empty store).
fn read_legacy(legacy: &Path) -> Result<(u32, Records), StoreError> {
    let old_err = |operation: String| {
        move |source| StoreError::OldSled {
            operation,
            path: legacy.to_path_buf(),
            source,
        }
    };
    // As before opening sled 1.x: a sled 0.34 handle of this process that is still closing
    // (its I/O threads let go asynchronously) holds the `db` file's lock.
    lock::wait_until_unlocked(&legacy.join("db"));
    let db = old_sled::Config::new()
        .path(legacy)
        // Its default cache is 1 GiB; the records are read once, in order.
        .cache_capacity(super::CACHE_CAPACITY as u64)
        .flush_every_ms(None)
        .open()
        .map_err(old_err("open the sled 0.34 database".to_string()))?;
    let version = legacy_version(&db, legacy)?.unwrap_or(0);
    let names = db.tree_names();
    let mut records = Records::default();
    for (tree, into) in [
        (LEGACY_PROGRAMS_TREE, &mut records.programs),
        (LEGACY_INSTANCES_TREE, &mut records.instances),
    ] {
        if !names.iter().any(|n| n.as_ref() == tree.as_bytes()) {
            continue;
        }
        for entry in legacy_tree(&db, legacy, tree)?.iter() {
            let (key, value) = entry.map_err(old_err(format!("read tree {tree}")))?;
            into.insert(String::from_utf8_lossy(&key).into_owned(), value.to_vec());
        }
    }
    drop(db);
    // sled 0.34 closes asynchronously; let it release its files before `db/` is renamed.
    lock::wait_until_unlocked(&legacy.join("db"));
    Ok((version, records))
}

fn legacy_tree(
    db: &old_sled::Db,
    db_path: &Path,
    name: &str,
) -> Result<old_sled::Tree, StoreError> {
    db.open_tree(name).map_err(|source| StoreError::OldSled {
        operation: format!("open tree {name}"),
        path: db_path.to_path_buf(),
        source,
    })
}

/// Writes `records` stamped with [`CURRENT_SCHEMA`] as a new sled 1.x database at `path`, in one
/// atomic batch, flushed before the database is closed.
fn write_records(path: &Path, records: &Records) -> Result<(), StoreError> {
    let db = open_sled(path)?;
    let mut batch = sled::Batch::default();
    for (kind, map) in [
        (PROGRAMS, &records.programs),
        (INSTANCES, &records.instances),
    ] {
        for (name, value) in map {
            batch.insert(kind.key(name).as_bytes(), value.as_slice());
        }
    }
    batch.insert(SCHEMA_KEY, CURRENT_SCHEMA.to_string().as_bytes());
    let sled_err = |operation: &str| {
        let operation = operation.to_string();
        move |source| StoreError::Sled {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    db.apply_batch(batch)
        .map_err(sled_err("write the upgraded records"))?;
    db.flush().map_err(sled_err("flush the upgraded records"))?;
    Ok(())
}

fn rename(from: &Path, to: &Path, operation: &'static str) -> Result<(), StoreError> {
    if to.exists() {
        return Err(StoreError::Io {
            operation,
            path: to.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} is in the way; move it elsewhere", to.display()),
            ),
        });
    }
    std::fs::rename(from, to).map_err(|source| StoreError::Io {
        operation,
        path: from.to_path_buf(),
        source,
    })
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        operation: "sync the state directory",
        path: PathBuf::from(dir),
        source,
    };
    std::fs::File::open(dir).map_err(io)?.sync_all().map_err(io)
}

/// 0 → 1. Version 0 is the layout before the store carried a version: a `programs` tree of
/// `{spec, source, desired}` objects keyed by program name, nothing else. Version 1 adds the
/// `meta` tree and gives each program record `generation` (1: the first version the store knows)
/// and `error` (`null`). A record that is not such an object stops the upgrade with its key
/// rather than being dropped.
fn v0_to_v1(records: &mut Records) -> Result<(), String> {
    for (name, bytes) in &mut records.programs {
        let bad = |why: String| format!("program record {name:?}: {why}");
        let mut value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let record: &mut Map<String, Value> = value
            .as_object_mut()
            .ok_or_else(|| bad("it is not a JSON object".to_string()))?;
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
        *bytes = serde_json::to_vec(&value).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// 1 → 2. The records stay as they are; what changes is the container: sled 1.x instead of
/// sled 0.34, one keyspace with `p/`, `i/` and `m/` key prefixes instead of three trees. The
/// move itself is done by [`open_current`] for every upgrade from a sled 0.34 store.
fn v1_to_v2(_records: &mut Records) -> Result<(), String> {
    Ok(())
}

/// 2 → 3. Every instance record gains `boot_id`, `generation`, `spec`, `starting`, `seq` and
/// `finished`, all `null`: nothing is known about them for records written before. A `null`
/// boot id makes adoption rely on pid and start time alone, as before; a `null` spec makes the
/// adopting daemon take the process as running the desired spec, as before; a `null` `seq`
/// counts the program's requests as carried out. A record that is not an object stops the
/// upgrade with its key.
fn v2_to_v3(records: &mut Records) -> Result<(), String> {
    for (name, bytes) in &mut records.instances {
        let bad = |why: String| format!("instance record {name:?}: {why}");
        let mut value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let record: &mut Map<String, Value> = value
            .as_object_mut()
            .ok_or_else(|| bad("it is not a JSON object".to_string()))?;
        for field in [
            "boot_id",
            "generation",
            "spec",
            "starting",
            "seq",
            "finished",
        ] {
            record.entry(field).or_insert(Value::Null);
        }
        *bytes = serde_json::to_vec(&value).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// 3 → 4. Each spec a record holds (a program's `spec`; an instance's `spec` and
/// `starting.spec`) drops the keys that hold their value in the reference spec of
/// `compact.rs`, which fills them back in when the record is read. The records read the same
/// either way; the step only makes the upgraded ones as small as those written at version 4. A
/// record that is not an object stops the upgrade with its key.
///
/// Should a later version change the reference, this step must keep version 4's.
fn v3_to_v4(records: &mut Records) -> Result<(), String> {
    let each = [
        ("program", &mut records.programs),
        ("instance", &mut records.instances),
    ];
    for (kind, tree) in each {
        for (name, bytes) in tree.iter_mut() {
            let bad = |why: String| format!("{kind} record {name:?}: {why}");
            let mut value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
            let record = value
                .as_object_mut()
                .ok_or_else(|| bad("it is not a JSON object".to_string()))?;
            if let Some(spec) = record.get_mut("spec").and_then(Value::as_object_mut) {
                super::compact::strip(spec);
            }
            let ahead = record.get_mut("starting").and_then(|l| l.get_mut("spec"));
            if let Some(spec) = ahead.and_then(Value::as_object_mut) {
                super::compact::strip(spec);
            }
            *bytes = serde_json::to_vec(&value).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(())
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

    fn programs(value: Value) -> Records {
        Records {
            programs: [("web".to_string(), serde_json::to_vec(&value).unwrap())].into(),
            instances: BTreeMap::new(),
        }
    }

    #[test]
    fn v0_records_gain_generation_and_error_and_keep_everything_else() {
        let mut records = programs(serde_json::json!({
            "spec": {"name": "web", "anything": [1, 2]},
            "source": {"kind": "api"},
            "desired": "stopped",
        }));
        v0_to_v1(&mut records).unwrap();
        let upgraded: Value = serde_json::from_slice(&records.programs["web"]).unwrap();
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
        let mut records = programs(serde_json::json!({"spec": {"name": "web"}}));
        let err = v0_to_v1(&mut records).unwrap_err();
        assert!(err.contains("\"web\"") && err.contains("source"), "{err}");

        let mut records = programs(serde_json::json!({
            "spec": {"name": "api"}, "source": {"kind": "api"}, "desired": "running"
        }));
        let err = v0_to_v1(&mut records).unwrap_err();
        assert!(err.contains("spec is named"), "{err}");

        let mut records = programs(serde_json::json!([1]));
        let err = v0_to_v1(&mut records).unwrap_err();
        assert!(err.contains("not a JSON object"), "{err}");
    }

    #[test]
    fn v2_instance_records_gain_the_v3_fields_as_null_and_keep_everything_else() {
        let mut records = Records {
            programs: BTreeMap::new(),
            instances: [(
                "web-2".to_string(),
                serde_json::to_vec(&serde_json::json!({
                    "program": "web", "pid": 42, "start_time": 7, "restarts": 3,
                }))
                .unwrap(),
            )]
            .into(),
        };
        v2_to_v3(&mut records).unwrap();
        let upgraded: Value = serde_json::from_slice(&records.instances["web-2"]).unwrap();
        assert_eq!(
            upgraded,
            serde_json::json!({
                "program": "web", "pid": 42, "start_time": 7, "restarts": 3,
                "boot_id": null, "generation": null, "spec": null, "starting": null,
                "seq": null, "finished": null,
            })
        );
        let record: crate::store::InstanceRecord = serde_json::from_value(upgraded).unwrap();
        assert_eq!(record.pid, Some(42));

        records.instances.insert("bad".into(), b"[1]".to_vec());
        let err = v2_to_v3(&mut records).unwrap_err();
        assert!(
            err.contains("\"bad\"") && err.contains("not a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn v3_specs_lose_their_reference_values_and_read_back_the_same() {
        use crate::config::{Exec, ProgramSpec};
        use crate::store::{InstanceRecord, Launch, ProgramRecord};
        let mut spec = ProgramSpec::new("web", Exec::Command("sleep 60".into()));
        spec.priority = 7;
        let whole = serde_json::to_value(&spec).unwrap();
        let mut records = Records {
            programs: [(
                "web".to_string(),
                serde_json::to_vec(&serde_json::json!({
                    "spec": whole, "source": {"kind": "api"}, "desired": "running",
                    "generation": 3, "error": null,
                }))
                .unwrap(),
            )]
            .into(),
            instances: [(
                "web".to_string(),
                serde_json::to_vec(&serde_json::json!({
                    "program": "web", "pid": 42, "start_time": 7, "restarts": 0,
                    "boot_id": null, "generation": 3, "spec": whole,
                    "starting": {"generation": 4, "spec": whole}, "seq": null, "finished": null,
                }))
                .unwrap(),
            )]
            .into(),
        };
        v3_to_v4(&mut records).unwrap();
        let compact = serde_json::json!({
            "name": "web", "exec": {"command": "sleep 60"}, "priority": 7,
        });
        let program: Value = serde_json::from_slice(&records.programs["web"]).unwrap();
        assert_eq!(program["spec"], compact);
        let instance: Value = serde_json::from_slice(&records.instances["web"]).unwrap();
        assert_eq!(
            (&instance["spec"], &instance["starting"]["spec"]),
            (&compact, &compact)
        );

        let program: ProgramRecord = serde_json::from_value(program).unwrap();
        assert_eq!(*program.spec, spec);
        let instance: InstanceRecord = serde_json::from_value(instance).unwrap();
        assert_eq!(instance.spec.as_ref(), Some(&spec));
        let ahead = instance.starting.map(|l: Launch| l.spec);
        assert_eq!(ahead.as_ref(), Some(&spec));

        records.instances.insert("bad".into(), b"[1]".to_vec());
        let err = v3_to_v4(&mut records).unwrap_err();
        assert!(
            err.contains("\"bad\"") && err.contains("not a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn versions_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_DIR);
        let db = open_sled(&path).unwrap();
        assert_eq!(stored_version(&db, &path).unwrap(), None);
        stamp(&db, &path).unwrap();
        assert_eq!(stored_version(&db, &path).unwrap(), Some(CURRENT_SCHEMA));
        db.insert(SCHEMA_KEY, &b"99"[..]).unwrap();
        assert_eq!(stored_version(&db, &path).unwrap(), Some(99));
        db.remove(SCHEMA_KEY).unwrap();
        db.insert("p/web", &b"{}"[..]).unwrap();
        assert!(matches!(
            stored_version(&db, &path),
            Err(StoreError::Migration { .. })
        ));
    }

    #[test]
    fn legacy_versions_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEGACY_DB_DIR);
        let db = old_sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()
            .unwrap();
        assert_eq!(legacy_version(&db, &path).unwrap(), None);
        db.open_tree(LEGACY_PROGRAMS_TREE).unwrap();
        assert_eq!(legacy_version(&db, &path).unwrap(), Some(0));
        db.open_tree(LEGACY_META_TREE)
            .unwrap()
            .insert(LEGACY_SCHEMA_KEY, &b"1"[..])
            .unwrap();
        assert_eq!(legacy_version(&db, &path).unwrap(), Some(1));
    }
}
