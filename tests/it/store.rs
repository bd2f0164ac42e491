//! The desired-state store against a real sled database in a temp dir: round trips, generation
//! and desired-state rules, batches, wakeups, durability across reopen and `kill -9`, the state
//! directory lock, schema versions and the checked-in fixtures of every version.

// The helpers below run only inside tests, where a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util;
use provisr::config::{Dur, Exec, ProgramSpec, Source};
use provisr::store::migrations::{
    legacy_version, stored_version, LEGACY_BACKUP_DIR, LEGACY_DB_DIR, UPGRADING_DIR,
};
use provisr::store::{
    DesiredRun, DesiredStore, InstanceRecord, Launch, ProgramRecord, RunSeq, StoreError,
    StoreWrite, CURRENT_SCHEMA, DB_DIR,
};

fn spec(name: &str, command: &str) -> ProgramSpec {
    ProgramSpec::new(name, Exec::Command(command.to_string()))
}

fn file_source(name: &str) -> Source {
    Source::File(PathBuf::from(format!("/etc/provisr/programs/{name}.toml")))
}

fn instance(program: &str, pid: i32) -> InstanceRecord {
    InstanceRecord {
        pid: Some(pid),
        start_time: Some(123_456),
        restarts: 2,
        ..InstanceRecord::new(program)
    }
}

fn names(records: &[ProgramRecord]) -> Vec<&str> {
    records.iter().map(|r| r.spec.name.as_str()).collect()
}

#[tokio::test]
async fn programs_round_trip_sorted_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    assert!(store.list_programs().unwrap().is_empty());

    for name in ["web", "api", "worker"] {
        assert!(store
            .put_program(spec(name, "sleep 300"), file_source(name))
            .await
            .unwrap());
    }
    assert_eq!(
        names(&store.list_programs().unwrap()),
        ["api", "web", "worker"]
    );
    let web = store.get_program("web").unwrap().unwrap();
    assert_eq!(*web.spec, spec("web", "sleep 300"));
    assert_eq!(web.source, file_source("web"));
    assert_eq!(web.desired, DesiredRun::Running);
    assert_eq!(web.generation, 1);
    assert_eq!(web.error, None);
    assert_eq!(store.get_program("nope").unwrap(), None);

    assert!(store.delete_program("web").await.unwrap());
    assert!(!store.delete_program("web").await.unwrap());
    assert_eq!(store.get_program("web").unwrap(), None);
    assert_eq!(names(&store.list_programs().unwrap()), ["api", "worker"]);
}

#[tokio::test]
async fn generation_moves_only_when_the_spec_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    let commits = store.subscribe();

    assert!(store
        .put_program(spec("web", "sleep 1"), Source::Api)
        .await
        .unwrap());
    assert_eq!(store.get_program("web").unwrap().unwrap().generation, 1);
    let after_create = *commits.borrow();

    // Same spec, same source: nothing written, nobody woken.
    assert!(!store
        .put_program(spec("web", "sleep 1"), Source::Api)
        .await
        .unwrap());
    assert_eq!(store.get_program("web").unwrap().unwrap().generation, 1);
    assert_eq!(*commits.borrow(), after_create);

    // A new source is a change, but not a spec change.
    assert!(store
        .put_program(spec("web", "sleep 1"), file_source("web"))
        .await
        .unwrap());
    let record = store.get_program("web").unwrap().unwrap();
    assert_eq!((record.generation, record.source), (1, file_source("web")));

    let mut changed = spec("web", "sleep 2");
    assert!(store
        .put_program(changed.clone(), file_source("web"))
        .await
        .unwrap());
    assert_eq!(store.get_program("web").unwrap().unwrap().generation, 2);

    changed.stop_timeout = Dur::from_secs(3);
    assert!(store
        .put_program(changed.clone(), file_source("web"))
        .await
        .unwrap());
    let record = store.get_program("web").unwrap().unwrap();
    assert_eq!((record.generation, (*record.spec).clone()), (3, changed));
}

#[tokio::test]
async fn an_explicit_stop_survives_spec_updates() {
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();

    let mut manual = spec("manual", "sleep 1");
    manual.autostart = false;
    store
        .put_program(manual.clone(), Source::Config)
        .await
        .unwrap();
    assert_eq!(
        store.get_program("manual").unwrap().unwrap().desired,
        DesiredRun::Stopped
    );

    store
        .put_program(spec("web", "sleep 1"), file_source("web"))
        .await
        .unwrap();
    assert!(store.set_desired("web", DesiredRun::Stopped).await.unwrap());
    assert!(!store.set_desired("web", DesiredRun::Stopped).await.unwrap());
    // A file edit (new spec) keeps the explicit stop.
    store
        .put_program(spec("web", "sleep 2"), file_source("web"))
        .await
        .unwrap();
    let web = store.get_program("web").unwrap().unwrap();
    assert_eq!((web.desired, web.generation), (DesiredRun::Stopped, 2));
    assert!(store.set_desired("web", DesiredRun::Running).await.unwrap());
    assert_eq!(
        store.get_program("web").unwrap().unwrap().desired,
        DesiredRun::Running
    );

    let err = store
        .set_desired("ghost", DesiredRun::Running)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::ProgramNotFound { name } if name == "ghost"),
        "{err}"
    );
    assert_eq!(store.get_program("ghost").unwrap(), None);
}

#[tokio::test]
async fn a_source_error_keeps_the_last_good_spec_until_the_next_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    store
        .put_program(spec("web", "sleep 1"), file_source("web"))
        .await
        .unwrap();

    let error = vec!["web.toml:3: unknown key \"comand\"".to_string()];
    assert!(store.set_error("web", Some(error.clone())).await.unwrap());
    let web = store.get_program("web").unwrap().unwrap();
    assert_eq!(web.error, Some(error.clone()));
    assert_eq!(
        ((*web.spec).clone(), web.generation),
        (spec("web", "sleep 1"), 1)
    );
    assert!(!store.set_error("web", Some(error)).await.unwrap());

    // The file is fixed back to the very same spec: the error goes, the generation stays.
    assert!(store
        .put_program(spec("web", "sleep 1"), file_source("web"))
        .await
        .unwrap());
    let web = store.get_program("web").unwrap().unwrap();
    assert_eq!((web.error, web.generation), (None, 1));

    assert!(matches!(
        store.set_error("ghost", None).await,
        Err(StoreError::ProgramNotFound { .. })
    ));
}

/// Instance records round-trip; deleting their program deletes those without a process and
/// keeps the others as tombstones that carry the program's spec, until the reconcile loop has
/// stopped their processes and deletes them.
#[tokio::test]
async fn instances_round_trip_and_leave_with_their_program_once_they_have_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    let mut web = spec("web", "sleep 1");
    web.instances = 3;
    store.put_program(web.clone(), Source::Api).await.unwrap();
    store
        .put_program(spec("api", "sleep 1"), Source::Api)
        .await
        .unwrap();

    assert!(store
        .put_instance("web-2", instance("web", 200))
        .await
        .unwrap());
    assert!(store
        .put_instance("web-1", instance("web", 100))
        .await
        .unwrap());
    assert!(store
        .put_instance("api", instance("api", 300))
        .await
        .unwrap());
    assert!(!store
        .put_instance("api", instance("api", 300))
        .await
        .unwrap());
    assert_eq!(
        store.get_instance("web-1").unwrap(),
        Some(instance("web", 100))
    );
    let all: Vec<String> = store
        .list_instances()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(all, ["api", "web-1", "web-2"]);
    assert_eq!(
        store.instances_of("web").unwrap(),
        [
            ("web-1".to_string(), instance("web", 100)),
            ("web-2".to_string(), instance("web", 200))
        ]
    );

    let restarted = InstanceRecord {
        pid: Some(301),
        restarts: 3,
        ..instance("api", 300)
    };
    assert!(store.put_instance("api", restarted.clone()).await.unwrap());
    assert_eq!(store.get_instance("api").unwrap(), Some(restarted));

    let idle = InstanceRecord {
        pid: None,
        start_time: None,
        ..instance("web", 0)
    };
    assert!(store.put_instance("web-3", idle).await.unwrap());
    assert!(store.delete_program("web").await.unwrap());
    let tombstone = |pid| InstanceRecord {
        spec: Some(web.clone()),
        removed: true,
        ..instance("web", pid)
    };
    assert_eq!(
        store.instances_of("web").unwrap(),
        [
            ("web-1".to_string(), tombstone(100)),
            ("web-2".to_string(), tombstone(200))
        ]
    );
    assert!(store.delete_instance("web-1").await.unwrap());
    assert!(store.delete_instance("web-2").await.unwrap());
    assert_eq!(store.list_instances().unwrap().len(), 1);

    assert!(store.delete_instance("api").await.unwrap());
    assert!(!store.delete_instance("api").await.unwrap());
    assert_eq!(store.get_instance("api").unwrap(), None);
}

#[tokio::test]
async fn a_batch_is_one_commit_and_changes_nothing_when_a_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    let commits = store.subscribe();
    // More than one transaction's worth, so the chunked commit path is exercised.
    let load: Vec<StoreWrite> = (0..300)
        .map(|i| {
            let name = format!("prog-{i:03}");
            StoreWrite::PutProgram {
                spec: spec(&name, "sleep 300").into(),
                source: file_source(&name),
            }
        })
        .collect();

    assert_eq!(store.apply(load.clone()).await.unwrap(), 300);
    assert_eq!(*commits.borrow(), 1, "one commit for the whole batch");
    assert_eq!(store.list_programs().unwrap().len(), 300);

    // Reloading the same directory changes nothing and writes nothing.
    assert_eq!(store.apply(load).await.unwrap(), 0);
    assert_eq!(*commits.borrow(), 1);

    // Writes see the ones before them, and a failing write commits none of the batch.
    let err = store
        .apply(vec![
            StoreWrite::PutProgram {
                spec: spec("fresh", "sleep 1").into(),
                source: Source::Api,
            },
            StoreWrite::SetDesired {
                name: "fresh".to_string(),
                desired: DesiredRun::Stopped,
            },
            StoreWrite::SetDesired {
                name: "ghost".to_string(),
                desired: DesiredRun::Stopped,
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ProgramNotFound { .. }), "{err}");
    assert_eq!(store.get_program("fresh").unwrap(), None);
    assert_eq!(*commits.borrow(), 1);

    let changed = store
        .apply(vec![
            StoreWrite::PutProgram {
                spec: spec("fresh", "sleep 1").into(),
                source: Source::Api,
            },
            StoreWrite::SetDesired {
                name: "fresh".to_string(),
                desired: DesiredRun::Stopped,
            },
            StoreWrite::PutInstance {
                name: "fresh".to_string(),
                record: Box::new(instance("fresh", 42)),
            },
            StoreWrite::DeleteProgram {
                name: "prog-000".to_string(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(changed, 4);
    let fresh = store.get_program("fresh").unwrap().unwrap();
    assert_eq!((fresh.desired, fresh.generation), (DesiredRun::Stopped, 1));
    assert_eq!(
        store.get_instance("fresh").unwrap(),
        Some(instance("fresh", 42))
    );
    assert_eq!(store.get_program("prog-000").unwrap(), None);
    assert_eq!(*commits.borrow(), 2);
}

#[tokio::test]
async fn subscribers_are_woken_after_a_write_and_not_after_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    let mut woken = store.subscribe();
    let waiter = tokio::spawn(async move {
        woken.changed().await.unwrap();
        let seen = *woken.borrow_and_update();
        (seen, woken)
    });
    store
        .put_program(spec("web", "sleep 1"), Source::Api)
        .await
        .unwrap();
    let (seen, woken) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the subscriber was not woken by a write")
        .unwrap();
    assert_eq!(seen, 1);

    store
        .put_program(spec("web", "sleep 1"), Source::Api)
        .await
        .unwrap();
    assert!(!woken.has_changed().unwrap());
    store.set_desired("web", DesiredRun::Stopped).await.unwrap();
    assert!(woken.has_changed().unwrap());
}

#[tokio::test]
async fn acknowledged_writes_are_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = DesiredStore::open(dir.path()).unwrap();
        store
            .put_program(spec("web", "sleep 1"), file_source("web"))
            .await
            .unwrap();
        store.set_desired("web", DesiredRun::Stopped).await.unwrap();
        store
            .put_instance("web", instance("web", 77))
            .await
            .unwrap();
    }
    let store = DesiredStore::open(dir.path()).unwrap();
    let web = store.get_program("web").unwrap().unwrap();
    assert_eq!(web.desired, DesiredRun::Stopped);
    assert_eq!(
        store.get_instance("web").unwrap(),
        Some(instance("web", 77))
    );
}

#[tokio::test]
async fn a_second_open_of_one_state_dir_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join(".provisr");
    let first = DesiredStore::open(&state_dir).unwrap();

    // flock locks belong to the open file description, so a second open in the same process
    // conflicts just as another process would.
    let err = DesiredStore::open(&state_dir).unwrap_err();
    let me = std::process::id() as i32;
    assert!(
        matches!(&err, StoreError::Locked { state_dir: d, holder_pid: Some(pid) } if d == &state_dir && *pid == me),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "another provisr daemon (pid {me}) is already using state directory {}; stop it or choose another [daemon] state_dir",
            state_dir.display()
        )
    );
    // The refused open did not disturb the holder.
    first
        .put_program(spec("web", "sleep 1"), Source::Api)
        .await
        .unwrap();

    drop(first);
    let again = DesiredStore::open(&state_dir).unwrap();
    assert!(again.get_program("web").unwrap().is_some());
}

#[test]
fn children_do_not_inherit_the_lock() {
    // After `kill -9` the daemon's children keep running (`docs/reliability.md`); if they had inherited the
    // lock file (or sled's file) the next daemon could never open the state directory.
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    let child = Command::new("sleep").arg("300").spawn().unwrap();
    let child = ChildGuard(child);
    drop(store);
    assert!(util::alive(child.0.id() as i32));
    DesiredStore::open(dir.path()).unwrap();
}

#[tokio::test]
async fn a_store_written_by_a_newer_provisr_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(DesiredStore::open(dir.path()).unwrap());
    {
        let db = raw_db(dir.path());
        db.insert(
            "m/schema_version",
            (CURRENT_SCHEMA + 1).to_string().as_bytes(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    let err = DesiredStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found, supported, .. } if found == CURRENT_SCHEMA + 1 && supported == CURRENT_SCHEMA),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer provisr"), "{err}");
}

#[tokio::test]
async fn a_corrupt_record_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    drop(DesiredStore::open(dir.path()).unwrap());
    {
        let db = raw_db(dir.path());
        db.insert("p/web", &b"{not json"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = DesiredStore::open(dir.path()).unwrap();
    for err in [
        store.get_program("web").unwrap_err(),
        store.list_programs().unwrap_err(),
        store
            .set_desired("web", DesiredRun::Stopped)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&err, StoreError::Corrupt { tree: "programs", key, .. } if key == "web"),
            "{err:?}"
        );
    }
}

/// The raw sled database of a closed store, opened the way the store opens it.
fn raw_db(state_dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(state_dir.join(DB_DIR))
        .flush_every_ms(None)
        .open()
        .unwrap()
}

// ---- durability across kill -9 ---------------------------------------------------------------

/// Set for the helper process: the state directory it writes to.
const KILL9_DIR_ENV: &str = "PROVISR_TEST_STORE_KILL9_DIR";
/// The helper prints this once every write is acknowledged.
const KILL9_MARKER: &str = "provisr-store-writes-acknowledged";
const KILL9_PROGRAMS: usize = 150;

/// Kills the helper process (by its pid, through `Child`) if the test fails before doing so.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this test binary again running only the ignored helper test `test`, with `env` set,
/// and waits until it prints `marker` on a line. Its stdin is a pipe: closing it (or this
/// process going away) tells the helper to finish.
fn start_helper(test: &str, env: (&str, &Path), marker: &str) -> ChildGuard {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env.0, env.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (lines, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = seen
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("helper {test} never printed {marker}"));
        // libtest prints "test store::… ... " without a newline before the output.
        if line.trim_end().ends_with(marker) {
            return child;
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let mut child = start_helper(
        "store::kill9_writer",
        (KILL9_DIR_ENV, &state_dir),
        KILL9_MARKER,
    );

    // While the writer lives, another process opening its state directory is refused by pid.
    let err = DesiredStore::open(&state_dir).unwrap_err();
    let writer_pid = child.0.id() as i32;
    assert!(
        matches!(err, StoreError::Locked { holder_pid: Some(pid), .. } if pid == writer_pid),
        "{err:?}"
    );

    child.0.kill().unwrap(); // SIGKILL: no destructor, no flush on exit.
    let status = child.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");

    let store = DesiredStore::open(&state_dir).unwrap();
    let programs = store.list_programs().unwrap();
    assert_eq!(programs.len(), KILL9_PROGRAMS);
    let first = store.get_program("prog-000").unwrap().unwrap();
    assert_eq!((first.desired, first.generation), (DesiredRun::Stopped, 2));
    assert_eq!(*first.spec, spec("prog-000", "sleep 2"));
    assert_eq!(
        store.get_instance("prog-001").unwrap(),
        Some(instance("prog-001", 4242))
    );
}

/// Helper process of [`acknowledged_writes_survive_kill_9`]: writes, says so, then waits to be
/// killed (or for its parent to go away, which closes stdin).
#[tokio::test]
#[ignore = "helper process for acknowledged_writes_survive_kill_9, which runs it"]
async fn kill9_writer() {
    let state_dir = std::env::var_os(KILL9_DIR_ENV).unwrap_or_else(|| {
        panic!("{KILL9_DIR_ENV} is not set: run acknowledged_writes_survive_kill_9 instead")
    });
    let store = DesiredStore::open(Path::new(&state_dir)).unwrap();
    let load = (0..KILL9_PROGRAMS)
        .map(|i| {
            let name = format!("prog-{i:03}");
            StoreWrite::PutProgram {
                spec: spec(&name, "sleep 1").into(),
                source: file_source(&name),
            }
        })
        .collect();
    store.apply(load).await.unwrap();
    store
        .put_program(spec("prog-000", "sleep 2"), file_source("prog-000"))
        .await
        .unwrap();
    store
        .set_desired("prog-000", DesiredRun::Stopped)
        .await
        .unwrap();
    store
        .put_instance("prog-001", instance("prog-001", 4242))
        .await
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{KILL9_MARKER}").unwrap();
    out.flush().unwrap();
    drop(out);
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
}

// ---- schema fixtures ------------------------------------------------------------------------

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/fixtures")
}

/// The two programs every fixture holds.
fn fixture_specs() -> (ProgramSpec, ProgramSpec) {
    let mut web = spec("web", "python3 -m http.server 8000");
    web.priority = 10;
    web.env.insert("PORT".to_string(), "8000".to_string());
    let mut worker = ProgramSpec::new(
        "worker",
        Exec::Args(vec![
            "/usr/bin/worker".into(),
            "--queue".into(),
            "jobs".into(),
        ]),
    );
    worker.instances = 2;
    worker.autostart = false;
    worker.auto_restart = true;
    (web, worker)
}

/// What a version-0 store holds: `{spec, source, desired}` per program, no version.
fn write_v0(db_dir: &Path) {
    let (web, worker) = fixture_specs();
    let db = old_sled::Config::new()
        .path(db_dir)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let programs = db.open_tree("programs").unwrap();
    for (spec, source, desired) in [
        (web, file_source("web"), "running"),
        (worker, Source::Api, "stopped"),
    ] {
        let record = serde_json::json!({ "spec": spec, "source": source, "desired": desired });
        programs
            .insert(spec.name.as_bytes(), serde_json::to_vec(&record).unwrap())
            .unwrap();
    }
    db.flush().unwrap();
}

fn expected_from_v0() -> (Vec<ProgramRecord>, Vec<(String, InstanceRecord)>) {
    let (web, worker) = fixture_specs();
    let programs = vec![
        ProgramRecord {
            spec: web.into(),
            source: file_source("web"),
            desired: DesiredRun::Running,
            generation: 1,
            error: None,
            seq: RunSeq::default(),
            instances: Default::default(),
            cron: None,
        },
        ProgramRecord {
            spec: worker.into(),
            source: Source::Api,
            desired: DesiredRun::Stopped,
            generation: 1,
            error: None,
            seq: RunSeq::default(),
            instances: Default::default(),
            cron: None,
        },
    ];
    (programs, Vec::new())
}

/// What the version-1 to -4 fixtures hold, written through the store itself (so at the
/// current version): a spec change (generation 2), an error, an explicit start and instance
/// records. Each fixture was written so while its version was current; from version 3 on,
/// `worker-2` also has what version 3 added to instance records; version 4 stores the same
/// records with their specs compacted.
async fn write_current(state_dir: &Path) {
    let (web, worker) = fixture_specs();
    let store = DesiredStore::open(state_dir).unwrap();
    let mut first_web = web.clone();
    first_web.priority = 0;
    store
        .put_program(first_web, file_source("web"))
        .await
        .unwrap();
    store.put_program(web, file_source("web")).await.unwrap();
    store
        .set_error("web", Some(vec!["web.toml:4: unknown key \"prot\"".into()]))
        .await
        .unwrap();
    store.put_program(worker, Source::Api).await.unwrap();
    store
        .set_desired("worker", DesiredRun::Running)
        .await
        .unwrap();
    store
        .put_instance("web", instance("web", 1001))
        .await
        .unwrap();
    store
        .put_instance("worker-1", instance("worker", 1002))
        .await
        .unwrap();
    store.put_instance("worker-2", v3_instance()).await.unwrap();
}

/// `worker-2` of the version-3 fixture: every field version 3 added, set.
fn v3_instance() -> InstanceRecord {
    let (_, worker) = fixture_specs();
    let mut next = worker.clone();
    next.env.insert("QUEUE".to_string(), "jobs".to_string());
    InstanceRecord {
        boot_id: Some("6f1c2a9e-3b1d-4c55-9f0e-2d7a8b9c0d1e".into()),
        generation: Some(1),
        spec: Some(worker),
        starting: Some(Launch {
            written_ns: None,
            generation: 2,
            spec: next,
        }),
        seq: Some(RunSeq {
            start: 1,
            restart: 0,
        }),
        finished: None,
        ..instance("worker", 1003)
    }
}

fn expected_from_v3() -> (Vec<ProgramRecord>, Vec<(String, InstanceRecord)>) {
    let (programs, mut instances) = expected_from_v1();
    instances[2].1 = v3_instance();
    (programs, instances)
}

fn expected_from_v1() -> (Vec<ProgramRecord>, Vec<(String, InstanceRecord)>) {
    let (web, worker) = fixture_specs();
    let programs = vec![
        ProgramRecord {
            spec: web.into(),
            source: file_source("web"),
            desired: DesiredRun::Running,
            generation: 2,
            error: Some(vec!["web.toml:4: unknown key \"prot\"".into()]),
            seq: RunSeq::default(),
            instances: Default::default(),
            cron: None,
        },
        ProgramRecord {
            spec: worker.into(),
            source: Source::Api,
            desired: DesiredRun::Running,
            generation: 1,
            error: None,
            seq: RunSeq::default(),
            instances: Default::default(),
            cron: None,
        },
    ];
    let instances = vec![
        ("web".to_string(), instance("web", 1001)),
        ("worker-1".to_string(), instance("worker", 1002)),
        ("worker-2".to_string(), instance("worker", 1003)),
    ];
    (programs, instances)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The version of the store in a state directory, read the way its format needs: sled 0.34 in
/// `db/` for versions 0 and 1, sled 1.x in `db2/` from version 2.
fn version_in(state_dir: &Path) -> Option<u32> {
    let db2 = state_dir.join(DB_DIR);
    if db2.is_dir() {
        return stored_version(&raw_db(state_dir), &db2).unwrap();
    }
    let legacy = state_dir.join(LEGACY_DB_DIR);
    let db = old_sled::Config::new()
        .path(&legacy)
        .flush_every_ms(None)
        .open()
        .unwrap();
    legacy_version(&db, &legacy).unwrap()
}

#[tokio::test]
async fn fixtures_of_every_version_open_at_the_current_version() {
    type Expected = fn() -> (Vec<ProgramRecord>, Vec<(String, InstanceRecord)>);
    let fixtures: [(u32, Expected); 5] = [
        (0, expected_from_v0),
        (1, expected_from_v1),
        (2, expected_from_v1),
        (3, expected_from_v3),
        (4, expected_from_v3),
    ];
    // Every version up to the current one has a fixture.
    assert_eq!(fixtures.len() as u32, CURRENT_SCHEMA + 1);
    for (version, expected) in fixtures {
        let fixture = fixtures_dir().join(format!("v{version}"));
        let legacy = version < 2;
        let db_dir = if legacy { LEGACY_DB_DIR } else { DB_DIR };
        assert!(
            fixture.join(db_dir).is_dir(),
            "missing fixture {}",
            fixture.join(db_dir).display()
        );
        // Opening upgrades, so work on a copy.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture, dir.path());
        assert_eq!(version_in(dir.path()), Some(version), "fixture v{version}");
        let store = DesiredStore::open(dir.path()).unwrap();
        let (programs, instances) = expected();
        assert_eq!(
            store.list_programs().unwrap(),
            programs,
            "fixture v{version}"
        );
        assert_eq!(
            store.list_instances().unwrap(),
            instances,
            "fixture v{version}"
        );
        // The upgraded store works and stays upgraded.
        store.set_desired("web", DesiredRun::Stopped).await.unwrap();
        drop(store);
        assert_eq!(version_in(dir.path()), Some(CURRENT_SCHEMA));
        assert!(
            !dir.path().join(LEGACY_DB_DIR).exists(),
            "fixture v{version}"
        );
        assert!(
            !dir.path().join(UPGRADING_DIR).exists(),
            "fixture v{version}"
        );
        // An upgrade keeps the old store, untouched, as a backup.
        let backup = dir.path().join(LEGACY_BACKUP_DIR);
        assert_eq!(backup.is_dir(), legacy, "fixture v{version}");
        if legacy {
            let db = old_sled::Config::new()
                .path(&backup)
                .flush_every_ms(None)
                .open()
                .unwrap();
            assert_eq!(
                legacy_version(&db, &backup).unwrap(),
                Some(version),
                "fixture v{version}"
            );
        }
        let store = DesiredStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get_program("web").unwrap().unwrap().desired,
            DesiredRun::Stopped
        );
    }
}

/// From version 4 a stored spec omits the keys at their reference value, in records written since
/// and in those an upgrade rewrote; a spec written whole (version 3) keeps reading the same.
#[tokio::test]
async fn stored_specs_omit_reference_values_after_an_upgrade_and_when_written() {
    let spec_keys = |state_dir: &Path, key: &str| -> Vec<String> {
        let db = raw_db(state_dir);
        let bytes = db.get(key).unwrap().unwrap();
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let spec = record["spec"].as_object().unwrap();
        let mut keys: Vec<String> = spec.keys().cloned().collect();
        keys.sort();
        keys
    };
    for version in [3, 4] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixtures_dir().join(format!("v{version}")), dir.path());
        if version == 3 {
            let whole = spec_keys(dir.path(), "p/worker");
            assert!(whole.iter().any(|k| k == "stop_timeout"), "{whole:?}");
        }
        drop(DesiredStore::open(dir.path()).unwrap());
        // `worker` sets instances, autostart and auto_restart; the rest are defaults.
        let set = ["auto_restart", "autostart", "exec", "instances", "name"];
        assert_eq!(spec_keys(dir.path(), "p/worker"), set, "fixture v{version}");
        assert_eq!(
            spec_keys(dir.path(), "i/worker-2"),
            set,
            "fixture v{version}"
        );
    }
    // Written by this code: a new program and an instance record.
    let dir = tempfile::tempdir().unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    let (_, worker) = fixture_specs();
    store.put_program(worker, Source::Api).await.unwrap();
    store.put_instance("worker-2", v3_instance()).await.unwrap();
    drop(store);
    let set = ["auto_restart", "autostart", "exec", "instances", "name"];
    assert_eq!(spec_keys(dir.path(), "p/worker"), set);
    assert_eq!(spec_keys(dir.path(), "i/worker-2"), set);
}

/// An upgrade interrupted by a crash: before `db2/` was complete (a leftover `db2.upgrading/`),
/// or after it was put in place but before the old store was renamed. Both open with every
/// record.
#[tokio::test]
async fn an_interrupted_upgrade_is_finished_on_the_next_open() {
    // Crash while writing the new database.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures_dir().join("v1"), dir.path());
    let leftover = dir.path().join(UPGRADING_DIR);
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("half-written"), b"x").unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    assert_eq!(store.list_programs().unwrap(), expected_from_v1().0);
    drop(store);
    assert!(!leftover.exists());
    assert!(dir.path().join(LEGACY_BACKUP_DIR).is_dir());

    // Crash between the two renames: `db2/` complete, the old `db/` still in place.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures_dir().join("v1"), dir.path());
    drop(DesiredStore::open(dir.path()).unwrap());
    std::fs::rename(
        dir.path().join(LEGACY_BACKUP_DIR),
        dir.path().join(LEGACY_DB_DIR),
    )
    .unwrap();
    let store = DesiredStore::open(dir.path()).unwrap();
    assert_eq!(store.list_instances().unwrap(), expected_from_v1().1);
    drop(store);
    assert!(!dir.path().join(LEGACY_DB_DIR).exists());
    assert!(dir.path().join(LEGACY_BACKUP_DIR).is_dir());
}

/// Something already named like the backup is never overwritten: the upgrade stops, naming it.
#[test]
fn an_upgrade_never_overwrites_what_is_in_the_way_of_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures_dir().join("v0"), dir.path());
    std::fs::create_dir_all(dir.path().join(LEGACY_BACKUP_DIR)).unwrap();
    let err = DesiredStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains(LEGACY_BACKUP_DIR), "{err}");
    assert!(dir.path().join(LEGACY_DB_DIR).is_dir());
}

/// Regenerates `migrations/fixtures/v0` and the fixture of the current version. Fixtures of older
/// non-zero versions are kept as checked in: this code can no longer write them.
///
/// `cargo test --test it store::generate_store_fixtures -- --ignored --exact`
#[tokio::test]
#[ignore = "writes into migrations/fixtures; run by hand after a schema change"]
async fn generate_store_fixtures() {
    let root = fixtures_dir();

    let v0 = root.join("v0");
    let _ = std::fs::remove_dir_all(&v0);
    write_v0(&v0.join(LEGACY_DB_DIR));

    let current = root.join(format!("v{CURRENT_SCHEMA}"));
    let scratch = tempfile::tempdir().unwrap();
    write_current(scratch.path()).await;
    let _ = std::fs::remove_dir_all(&current);
    // Only the database: the lock file belongs to a live daemon, not to the layout.
    copy_dir(&scratch.path().join(DB_DIR), &current.join(DB_DIR));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_holds_the_spec_each_write_carried_and_takes_a_scans_equal_specs() {
    use provisr::config::Program;
    use provisr::desired::DesiredState;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let open = |state: &Path| {
        let store = DesiredStore::open(state).unwrap();
        let wake = Arc::new(tokio::sync::Notify::new());
        let metrics = Arc::new(provisr::metrics::Metrics::new());
        DesiredState::new(store, wake, metrics).unwrap()
    };
    let desired = open(&state);
    let put = |spec: &Arc<ProgramSpec>, source: Source| {
        vec![StoreWrite::PutProgram {
            spec: Arc::clone(spec),
            source,
        }]
    };
    let same = |desired: &DesiredState, spec: &Arc<ProgramSpec>| {
        Arc::ptr_eq(&desired.get("web").unwrap().spec, spec)
    };
    let first = Arc::new(spec("web", "sleep 1"));
    assert_eq!(desired.apply(put(&first, Source::Api)).await.unwrap(), 1);
    assert!(same(&desired, &first), "the mirror holds a copy of the put");
    // A write that carries no spec leaves the one the program had, not the store's copy.
    let stop = StoreWrite::SetDesired {
        name: "web".to_string(),
        desired: DesiredRun::Stopped,
    };
    assert_eq!(desired.apply(vec![stop]).await.unwrap(), 1);
    assert!(same(&desired, &first), "a stop left a copy of the spec");
    // An equal spec from elsewhere (a new source) is the one kept.
    let second = Arc::new(spec("web", "sleep 1"));
    assert_eq!(
        desired
            .apply(put(&second, file_source("web")))
            .await
            .unwrap(),
        1
    );
    assert!(same(&desired, &second));
    let mirrored = desired.get("web").unwrap();
    assert_eq!(
        (mirrored.generation, mirrored.desired),
        (1, DesiredRun::Stopped)
    );
    assert_eq!(
        desired.store().get_program("web").unwrap().as_ref(),
        Some(&*mirrored),
        "the mirror and the store disagree"
    );
    drop((desired, mirrored));

    // At start the mirror holds what the store decoded; a scan's equal spec replaces it, and
    // a different one does not (that takes a write).
    let desired = open(&state);
    let scanned = Arc::new(spec("web", "sleep 1"));
    assert!(!same(&desired, &scanned));
    let before = desired.get("web").unwrap();
    let scan = |spec: &Arc<ProgramSpec>| {
        [Program {
            spec: Arc::clone(spec),
            source: file_source("web"),
        }]
    };
    desired.share_specs(&scan(&scanned)).await;
    assert!(same(&desired, &scanned), "the scan's spec was not shared");
    assert_eq!(*desired.get("web").unwrap(), *before);
    let edited = Arc::new(spec("web", "sleep 2"));
    desired.share_specs(&scan(&edited)).await;
    assert!(same(&desired, &scanned), "share_specs changed a spec");
}
