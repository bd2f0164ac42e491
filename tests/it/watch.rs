//! The programs-directory watcher against real directories and real inotify: for each way editors
//! save, what `config::scan_programs` sees at the moment of each `on_change` call (never a
//! half-written or missing file, and the last call sees the final content), new and deleted files,
//! a replaced directory, the config and env files, and no call at all while nothing changes.
//!
//! Writers keep the gaps between their steps far below the debounce used here (milliseconds
//! against hundreds), so a loaded machine would have to stall a writer for most of a second to
//! break a test; waits for calls are conditions with generous timeouts.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provisr::config::{self, ProgramSpec, Settings};
use provisr::watch::{self, Debounce, WatchHandle, WatchTargets};

use crate::util::wait_for;

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long "nothing more happens" is watched for.
const IDLE: Duration = Duration::from_millis(500);
/// A debounce far longer than any gap between a test writer's steps.
const SLOW: Debounce = Debounce {
    quiet: Duration::from_millis(300),
    max_delay: Duration::from_secs(5),
};
/// Gap between the chunks of a multi-write save.
const GAP: Duration = Duration::from_millis(10);

/// What one call of `on_change` saw.
#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    /// Program files by file name: their spec, or their errors rendered.
    programs: BTreeMap<String, Result<ProgramSpec, String>>,
    /// Errors not about one file (the directory cannot be read).
    dir_errors: Vec<String>,
    /// Whether the programs directory existed (a missing one has no programs, and no error).
    dir_exists: bool,
    /// Contents of the extra watched files (`None`: absent).
    files: BTreeMap<PathBuf, Option<String>>,
}

struct Harness {
    root: tempfile::TempDir,
    programs: PathBuf,
    calls: Arc<Mutex<Vec<Call>>>,
    handle: Option<WatchHandle>,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    /// A root with an empty `programs` directory, watched with `debounce`.
    fn new(debounce: Debounce) -> Harness {
        Harness::with_files(debounce, |_| Vec::new())
    }

    /// Also watches the files `extra(root)` names.
    fn with_files(debounce: Debounce, extra: impl FnOnce(&Path) -> Vec<PathBuf>) -> Harness {
        let root = tempfile::tempdir().expect("tempdir");
        let programs = root.path().join("programs");
        fs::create_dir(&programs).expect("create programs directory");
        let extra = extra(root.path());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut h = Harness {
            root,
            programs,
            calls,
            handle: None,
            runtime,
        };
        let targets = extra
            .iter()
            .fold(WatchTargets::new(&h.programs), |t, f| t.with_file(f));
        h.handle = Some(h.spawn(targets, debounce, extra));
        h
    }

    /// Starts a watcher whose `on_change` records a scan of `programs` and the `extra` files.
    fn spawn(&self, targets: WatchTargets, debounce: Debounce, extra: Vec<PathBuf>) -> WatchHandle {
        let calls = self.calls.clone();
        let settings = Settings::embedded_default(self.root.path());
        assert_eq!(settings.programs_directory, self.programs);
        let _in_runtime = self.runtime.enter();
        watch::spawn(targets, debounce, move || {
            calls
                .lock()
                .expect("calls lock")
                .push(observe(&settings, &extra));
            std::future::ready(())
        })
        .expect("watcher starts")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.programs.join(name)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    fn count(&self) -> usize {
        self.calls.lock().expect("calls lock").len()
    }

    /// Waits until a call after the first `after` calls satisfies `done`; returns all calls.
    fn wait_call(&self, after: usize, what: &str, done: impl Fn(&Call) -> bool) -> Vec<Call> {
        wait_for(TIMEOUT, what, || {
            let calls = self.calls();
            calls[after.min(calls.len())..]
                .iter()
                .any(&done)
                .then_some(calls)
        })
    }

    /// Asserts that no call comes for a while.
    fn assert_quiet(&self, what: &str) {
        let before = self.count();
        std::thread::sleep(IDLE);
        let calls = self.calls();
        assert_eq!(
            calls.len(),
            before,
            "{what}: unexpected calls {:#?}",
            &calls[before..]
        );
    }
}

fn observe(settings: &Settings, extra: &[PathBuf]) -> Call {
    let scan = config::scan_programs(settings, &BTreeMap::new());
    let programs = scan
        .files
        .iter()
        .map(|f| {
            let name = f
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let result = (f.result.as_deref().cloned()).map_err(|e| config::render_errors(e));
            (name, result)
        })
        .collect();
    let dir_errors = scan
        .errors
        .iter()
        .filter(|e| !scan.files.iter().any(|f| e.is_in(&f.path)))
        .map(|e| e.to_string())
        .collect();
    let files = extra
        .iter()
        .map(|f| (f.clone(), fs::read_to_string(f).ok()))
        .collect();
    Call {
        at: Instant::now(),
        programs,
        dir_errors,
        dir_exists: settings.programs_directory.is_dir(),
        files,
    }
}

/// The spec a file's content validates to, through the same loader.
fn spec_of(name: &str, content: &str) -> ProgramSpec {
    let dir = tempfile::tempdir().expect("tempdir");
    let programs = dir.path().join("programs");
    fs::create_dir(&programs).expect("mkdir");
    fs::write(programs.join(name), content).expect("write");
    let settings = Settings::embedded_default(dir.path());
    let scan = config::scan_programs(&settings, &BTreeMap::new());
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    let mut spec = (*scan.programs[0].spec).clone();
    // The loader resolves nothing path-like for these programs; only the source differs.
    spec.work_dir = None;
    spec
}

fn seen(call: &Call, name: &str) -> Option<Result<ProgramSpec, String>> {
    call.programs.get(name).cloned().map(|r| {
        r.map(|mut s| {
            s.work_dir = None;
            s
        })
    })
}

const BEFORE: &str = "command = \"sleep 100\"\n";
/// Every strict prefix of this either fails to parse or validates to something else.
const AFTER: &str = "command = \"sleep 200\"\npriority = 7\nstop_timeout = \"3s\"\n";

/// `content` cut into `n` pieces.
fn chunks(content: &str, n: usize) -> Vec<&str> {
    let step = content.len().div_ceil(n);
    (0..content.len())
        .step_by(step)
        .map(|i| &content[i..(i + step).min(content.len())])
        .collect()
}

/// Writes `content` to an open file in four chunks with small gaps, flushing each.
fn write_slowly(file: &mut fs::File, content: &str) {
    write_in_pieces(file, content, 4, GAP)
}

fn write_in_pieces(file: &mut fs::File, content: &str, pieces: usize, gap: Duration) {
    for (i, chunk) in chunks(content, pieces).into_iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        file.write_all(chunk.as_bytes()).expect("write chunk");
        file.flush().expect("flush");
    }
    file.sync_all().expect("fsync");
}

/// Checks one save of `web.toml` from BEFORE to AFTER: one call, seeing exactly the final spec;
/// then nothing more (the scan's own reads trigger nothing).
fn check_save(style: &str, save: impl FnOnce(&Path)) {
    check_save_with(SLOW, style, save)
}

fn check_save_with(debounce: Debounce, style: &str, save: impl FnOnce(&Path)) {
    let h = Harness::new(debounce);
    let path = h.path("web.toml");
    // Written before the watcher sees anything would be ideal, but the harness is already
    // watching: this write is its own burst.
    fs::write(&path, BEFORE).expect("write initial");
    let initial = spec_of("web.toml", BEFORE);
    h.wait_call(0, "the initial write", |c| {
        seen(c, "web.toml") == Some(Ok(initial.clone()))
    });
    h.assert_quiet(&format!("{style}: after the initial write"));
    let start = h.count();

    save(&path);

    let want = spec_of("web.toml", AFTER);
    h.wait_call(start, &format!("{style}: a call seeing the save"), |c| {
        seen(c, "web.toml") == Some(Ok(want.clone()))
    });
    h.assert_quiet(&format!("{style}: after the save"));
    let all = h.calls();
    let calls = &all[start..];
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(
            seen(call, "web.toml"),
            Some(Ok(want.clone())),
            "{style}: call {i} of {} saw something else than the final file: {call:#?}",
            calls.len()
        );
        assert!(call.dir_errors.is_empty(), "{style}: {call:#?}");
    }
    assert_eq!(
        calls.len(),
        1,
        "{style}: one save, one call (all calls: {calls:#?})"
    );
}

#[test]
fn save_by_writing_a_temp_file_and_renaming_it_over() {
    check_save("temp + rename", |path| {
        let tmp = path.with_file_name(".web.toml.tmp-4711");
        let mut f = fs::File::create(&tmp).expect("create temp");
        write_slowly(&mut f, AFTER);
        drop(f);
        std::thread::sleep(GAP);
        fs::rename(&tmp, path).expect("rename over");
    });
}

#[test]
fn save_by_truncating_and_rewriting_in_several_writes() {
    check_save("truncate + rewrite", |path| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .expect("open for rewrite");
        std::thread::sleep(GAP);
        write_slowly(&mut f, AFTER);
    });
}

#[test]
fn save_like_vim_with_probe_and_backup_rename() {
    check_save("vim", |path| {
        // vim checks it may create files in the directory ...
        let probe = path.with_file_name("4913");
        fs::File::create(&probe).expect("create probe");
        fs::remove_file(&probe).expect("remove probe");
        // ... renames the original to the backup, writes the new file, deletes the backup.
        let backup = path.with_file_name("web.toml~");
        fs::rename(path, &backup).expect("backup rename");
        std::thread::sleep(GAP);
        let mut f = fs::File::create(path).expect("create new file");
        write_slowly(&mut f, AFTER);
        drop(f);
        std::thread::sleep(GAP);
        fs::remove_file(&backup).expect("remove backup");
    });
}

#[test]
fn save_with_sed_in_place() {
    check_save("sed -i", |path| {
        // GNU sed writes a temp file in the same directory and renames it over the original.
        let status = Command::new("sed")
            .arg("-i")
            .arg("s/sleep 100/sleep 200/; $a priority = 7\\nstop_timeout = \"3s\"")
            .arg(path)
            .status()
            .expect("run sed");
        assert!(status.success());
        assert_eq!(fs::read_to_string(path).expect("read"), AFTER);
    });
}

#[test]
fn a_writer_slower_than_the_quiet_period_in_total_is_waited_for() {
    // The whole save takes about twice the quiet period, but no pause comes near it: the quiet
    // period restarts on every write, so the one call comes after the last.
    let debounce = Debounce {
        quiet: Duration::from_millis(600),
        max_delay: Duration::from_secs(10),
    };
    check_save_with(debounce, "slow writer", |path| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .expect("open for rewrite");
        write_in_pieces(&mut f, AFTER, 28, Duration::from_millis(40));
    });
}

#[test]
fn a_writer_pausing_mid_file_is_waited_for_until_it_closes() {
    // The pause is far longer than the quiet period, and the first half is a valid program on
    // its own: only the writer's close says the file is complete.
    check_save("pause mid-file", |path| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .expect("open for rewrite");
        let (head, tail) = AFTER.split_at(AFTER.find('\n').expect("a line") + 1);
        f.write_all(head.as_bytes()).expect("write the first line");
        f.flush().expect("flush");
        std::thread::sleep(SLOW.quiet * 3);
        f.write_all(tail.as_bytes()).expect("write the rest");
        f.sync_all().expect("fsync");
    });
}

#[test]
fn default_debounce_applies_a_save_promptly() {
    let h = Harness::new(Debounce::default());
    let path = h.path("api.yaml");
    let tmp = h.path(".api.yaml.tmp");
    fs::write(&tmp, "command: sleep 5\ninstances: 2\n").expect("write temp");
    let saved = Instant::now();
    fs::rename(&tmp, &path).expect("rename over");
    let want = spec_of("api.yaml", "command: sleep 5\ninstances: 2\n");
    let calls = h.wait_call(0, "the save to be seen", |c| {
        seen(c, "api.yaml") == Some(Ok(want.clone()))
    });
    // Informational only (run with --nocapture): the latency a user sees, debounce included.
    eprintln!(
        "save → on_change with the default debounce: {:?}",
        calls[0].at.duration_since(saved)
    );
    h.assert_quiet("after one save");
    assert_eq!(h.count(), 1);
}

#[test]
fn no_call_while_nothing_changes() {
    let h = Harness::new(Debounce::default());
    fs::write(h.path("web.toml"), BEFORE).expect("write");
    h.wait_call(0, "the write", |c| c.programs.contains_key("web.toml"));
    let start = h.count();
    // Reading the files and the directory, as every rescan does, is not a change.
    for _ in 0..3 {
        let _ = config::scan_programs(&Settings::embedded_default(h.root.path()), &BTreeMap::new());
        let _ = fs::read_dir(&h.programs).expect("read dir").count();
    }
    h.assert_quiet("reads only");
    assert_eq!(h.count(), start);

    let idle = Harness::new(Debounce::default());
    idle.assert_quiet("a fresh watcher on an untouched directory");
    assert_eq!(idle.count(), 0, "no call at start");
}

#[test]
fn editor_temp_files_alone_cause_no_call() {
    let h = Harness::new(SLOW);
    for name in [
        "4913",
        "web.toml~",
        ".web.toml.swp",
        "sedX1y2Z3",
        "notes.txt",
        "#web.toml#",
    ] {
        let p = h.path(name);
        fs::write(&p, "junk").expect("write temp");
        fs::rename(&p, h.path(&format!("{name}.old~"))).expect("rename temp");
        fs::remove_file(h.path(&format!("{name}.old~"))).expect("remove temp");
    }
    fs::create_dir(h.path("subdir.toml")).expect("mkdir");
    fs::write(h.path("subdir.toml/inner.toml"), BEFORE).expect("write in subdir");
    // Beside the programs directory: not watched for programs.
    fs::write(h.root.path().join("stray.toml"), BEFORE).expect("write beside");
    h.assert_quiet("temp names only");
    std::thread::sleep(SLOW.quiet);
    assert_eq!(h.count(), 0, "{:#?}", h.calls());
}

#[test]
fn a_new_file_and_a_deleted_file_each_trigger() {
    let h = Harness::new(Debounce::default());
    fs::write(h.path("new.json"), r#"{"command": "sleep 9"}"#).expect("write");
    h.wait_call(0, "the new file", |c| {
        matches!(c.programs.get("new.json"), Some(Ok(_)))
    });
    let after_new = h.count();
    fs::remove_file(h.path("new.json")).expect("delete");
    let calls = h.wait_call(after_new, "the deletion", |c| {
        !c.programs.contains_key("new.json")
    });
    assert!(calls
        .last()
        .is_some_and(|c| c.programs.is_empty() && c.dir_errors.is_empty()));
    h.assert_quiet("after the deletion");
}

#[test]
fn a_directory_removed_and_recreated_is_watched_again() {
    let h = Harness::new(Debounce::default());
    fs::write(h.path("a.toml"), BEFORE).expect("write a");
    h.wait_call(0, "a.toml", |c| c.programs.contains_key("a.toml"));

    // rm -rf dir: a rescan sees the directory gone.
    let n = h.count();
    fs::remove_dir_all(&h.programs).expect("rm -rf");
    h.wait_call(n, "the removal", |c| c.programs.is_empty() && !c.dir_exists);

    // mkdir dir; write a file in it.
    let n = h.count();
    fs::create_dir(&h.programs).expect("mkdir");
    fs::write(h.path("b.toml"), AFTER).expect("write b");
    h.wait_call(n, "b.toml in the new directory", |c| {
        c.programs.contains_key("b.toml") && c.dir_exists && c.dir_errors.is_empty()
    });

    // Later changes in the new directory still trigger.
    h.assert_quiet("after the new directory settled");
    let n = h.count();
    fs::write(h.path("c.toml"), BEFORE).expect("write c");
    h.wait_call(n, "c.toml, a later change", |c| {
        c.programs.contains_key("b.toml") && c.programs.contains_key("c.toml")
    });
    let n = h.count();
    fs::remove_file(h.path("b.toml")).expect("remove b");
    h.wait_call(n, "b.toml deleted", |c| {
        !c.programs.contains_key("b.toml") && c.programs.contains_key("c.toml")
    });
}

#[test]
fn quick_rm_mkdir_write_is_seen() {
    let h = Harness::new(Debounce::default());
    for round in 0..5 {
        let name = format!("r{round}.toml");
        fs::remove_dir_all(&h.programs).expect("rm -rf");
        fs::create_dir(&h.programs).expect("mkdir");
        fs::write(h.path(&name), BEFORE).expect("write");
        let calls = h.wait_call(0, &format!("round {round}"), |c| {
            c.programs.keys().eq([&name])
        });
        let last = calls.last().expect("a call");
        assert!(last.programs.keys().eq([&name]), "round {round}: {last:#?}");
    }
    let n = h.count();
    fs::write(h.path("later.toml"), BEFORE).expect("write later");
    h.wait_call(n, "a change after the rounds", |c| {
        c.programs.contains_key("later.toml")
    });
}

#[test]
fn a_directory_replaced_by_rename_is_watched_again() {
    let h = Harness::new(Debounce::default());
    fs::write(h.path("old.toml"), BEFORE).expect("write old");
    h.wait_call(0, "old.toml", |c| c.programs.contains_key("old.toml"));

    // Build the new directory beside it, then swap: mv programs programs.old; mv programs.new programs.
    let staged = h.root.path().join("programs.new");
    let retired = h.root.path().join("programs.old");
    fs::create_dir(&staged).expect("mkdir staged");
    fs::write(staged.join("new.toml"), AFTER).expect("write staged");
    let n = h.count();
    fs::rename(&h.programs, &retired).expect("move away");
    fs::rename(&staged, &h.programs).expect("move in");
    h.wait_call(n, "the swapped-in directory", |c| {
        c.programs.keys().eq(["new.toml"])
    });
    h.assert_quiet("after the swap");

    // The retired directory is no longer watched: its changes call nothing.
    fs::write(retired.join("stale.toml"), BEFORE).expect("write retired");
    fs::remove_file(retired.join("old.toml")).expect("remove in retired");
    h.assert_quiet("changes in the retired directory");

    // The new one is.
    let n = h.count();
    fs::write(h.path("more.toml"), BEFORE).expect("write more");
    h.wait_call(n, "more.toml", |c| {
        c.programs.contains_key("more.toml") && c.programs.contains_key("new.toml")
    });
}

#[test]
fn a_missing_directory_is_watched_once_it_appears() {
    let root = tempfile::tempdir().expect("tempdir");
    let h = Harness::new(Debounce::default());
    fs::remove_dir(&h.programs).expect("rmdir");
    h.wait_call(0, "the removal", |c| !c.dir_exists);
    // A second watcher started while the directory does not exist.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let _in_runtime = h.runtime.enter();
    let late = watch::spawn(
        WatchTargets::new(root.path().join("programs")),
        Debounce::default(),
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(())
        },
    )
    .expect("a missing programs directory is not an error");
    fs::create_dir(root.path().join("programs")).expect("mkdir");
    wait_for(TIMEOUT, "the directory to appear", || {
        (calls.load(Ordering::SeqCst) >= 1).then_some(())
    });
    let n = calls.load(Ordering::SeqCst);
    fs::write(root.path().join("programs/x.toml"), BEFORE).expect("write");
    wait_for(TIMEOUT, "a file in the new directory", || {
        (calls.load(Ordering::SeqCst) > n).then_some(())
    });
    drop(late);
}

#[test]
fn config_and_env_files_trigger_through_their_directories() {
    let h = Harness::with_files(Debounce::default(), |root| {
        let env_dir = root.join("env");
        fs::create_dir(&env_dir).expect("mkdir env");
        fs::write(root.join("config.toml"), "env = []\n").expect("write config");
        fs::write(env_dir.join("vars.env"), "A=1\n").expect("write env");
        vec![root.join("config.toml"), env_dir.join("vars.env")]
    });
    let config = h.root.path().join("config.toml");
    let env = h.root.path().join("env/vars.env");

    // The config saved by rename-over.
    let tmp = h.root.path().join("config.toml.new");
    fs::write(&tmp, "env = [\"B=2\"]\n").expect("write temp config");
    fs::rename(&tmp, &config).expect("rename over config");
    h.wait_call(0, "the config edit", |c| {
        c.files.get(&config) == Some(&Some("env = [\"B=2\"]\n".to_string()))
    });
    h.assert_quiet("after the config edit");

    // The env file written in place.
    let n = h.count();
    fs::write(&env, "A=3\n").expect("rewrite env");
    h.wait_call(n, "the env edit", |c| {
        c.files.get(&env) == Some(&Some("A=3\n".to_string()))
    });
    h.assert_quiet("after the env edit");

    // Neighbours of the watched files are not watched.
    fs::write(h.root.path().join("notes.toml"), "x = 1\n").expect("neighbour");
    fs::write(h.root.path().join("env/other.env"), "C=1\n").expect("neighbour env");
    h.assert_quiet("neighbours of the watched files");
}

#[test]
fn a_continuously_written_directory_is_still_rescanned() {
    let debounce = Debounce {
        quiet: Duration::from_millis(200),
        max_delay: Duration::from_millis(400),
    };
    let h = Harness::new(debounce);
    let path = h.path("busy.toml");
    let start = Instant::now();
    // Writes every 20 ms, far more often than the quiet period, for 3 s.
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(3) {
        fs::write(&path, format!("command = \"sleep {i}\"\n")).expect("write");
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let writing_ended = Instant::now();
    let calls = h.wait_call(0, "a call after the writes", |c| c.at >= writing_ended);
    let during = calls.iter().filter(|c| c.at < writing_ended).count();
    assert!(
        during >= 1,
        "the max delay must force calls while the writer never pauses"
    );
    let want = spec_of("busy.toml", &format!("command = \"sleep {}\"\n", i - 1));
    let calls = h.wait_call(0, "the last write", |c| {
        seen(c, "busy.toml") == Some(Ok(want.clone()))
    });
    assert_eq!(
        seen(calls.last().expect("a call"), "busy.toml"),
        Some(Ok(want))
    );
}

#[test]
fn calls_never_overlap_and_changes_during_a_call_get_their_own() {
    let root = tempfile::tempdir().expect("tempdir");
    let programs = root.path().join("programs");
    fs::create_dir(&programs).expect("mkdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (r, m, e, f) = (
        running.clone(),
        max_running.clone(),
        entered.clone(),
        finished.clone(),
    );
    let _in_runtime = runtime.enter();
    let handle = watch::spawn(
        WatchTargets::new(&programs),
        Debounce::default(),
        move || {
            let (r, m, e, f) = (r.clone(), m.clone(), e.clone(), f.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                e.fetch_add(1, Ordering::SeqCst);
                // A slow reload.
                tokio::time::sleep(Duration::from_millis(400)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                f.fetch_add(1, Ordering::SeqCst);
            }
        },
    )
    .expect("watcher starts");
    fs::write(programs.join("a.toml"), BEFORE).expect("write a");
    wait_for(TIMEOUT, "the first call to start", || {
        (entered.load(Ordering::SeqCst) == 1).then_some(())
    });
    // Written while the first call runs.
    fs::write(programs.join("b.toml"), BEFORE).expect("write b");
    wait_for(
        TIMEOUT,
        "a second call for the change made during the first",
        || (finished.load(Ordering::SeqCst) >= 2).then_some(()),
    );
    assert_eq!(max_running.load(Ordering::SeqCst), 1, "calls overlapped");
    // stop() waits for a call in progress and then no call starts.
    fs::write(programs.join("c.toml"), BEFORE).expect("write c");
    wait_for(TIMEOUT, "the third call to start", || {
        (entered.load(Ordering::SeqCst) >= 3).then_some(())
    });
    runtime.block_on(handle.stop());
    assert_eq!(running.load(Ordering::SeqCst), 0, "stop returned mid-call");
    let n = entered.load(Ordering::SeqCst);
    fs::write(programs.join("d.toml"), BEFORE).expect("write d");
    std::thread::sleep(IDLE);
    assert_eq!(entered.load(Ordering::SeqCst), n, "a call after stop");
}

#[test]
fn dropping_the_handle_stops_watching() {
    let mut h = Harness::new(Debounce::default());
    fs::write(h.path("a.toml"), BEFORE).expect("write");
    h.wait_call(0, "a.toml", |c| c.programs.contains_key("a.toml"));
    h.assert_quiet("after a.toml");
    drop(h.handle.take());
    fs::write(h.path("b.toml"), BEFORE).expect("write");
    fs::remove_file(h.path("a.toml")).expect("remove");
    h.assert_quiet("after the handle was dropped");
}

#[test]
fn set_targets_moves_the_watch() {
    let h = Harness::new(Debounce::default());
    let handle = h.handle.as_ref().expect("handle");
    let first = handle.targets();
    assert_eq!(first, WatchTargets::new(&h.programs));

    // Unchanged targets: nothing happens.
    handle.set_targets(first.clone()).expect("same targets");
    h.assert_quiet("set_targets with the same targets");

    // New directory: one rescan for the switch, then only the new directory counts.
    let other = h.root.path().join("elsewhere");
    fs::create_dir(&other).expect("mkdir elsewhere");
    let config = h.root.path().join("provisr.toml");
    handle
        .set_targets(WatchTargets::new(&other).with_file(&config))
        .expect("new targets");
    h.wait_call(0, "the rescan after switching", |_| true);
    h.assert_quiet("after the switch");
    let n = h.count();
    fs::write(h.path("old-dir.toml"), BEFORE).expect("write old dir");
    h.assert_quiet("a change in the directory no longer watched");
    fs::write(other.join("new-dir.toml"), BEFORE).expect("write new dir");
    h.wait_call(n, "a change in the new directory", |_| true);
    h.assert_quiet("after the new directory's change");
    let n = h.count();
    fs::write(&config, "").expect("write config");
    h.wait_call(n, "the new config file", |_| true);

    // A target whose directory does not exist is an error naming it; the rest is still watched
    // and the same call once the directory exists watches it too.
    let later = h.root.path().join("later");
    let late_config = later.join("config.toml");
    let targets = WatchTargets::new(&other).with_file(&late_config);
    let e = handle
        .set_targets(targets.clone())
        .expect_err("a missing directory cannot be watched");
    assert!(e.to_string().contains("later"), "{e}");
    assert_eq!(handle.targets(), targets);
    let n = h.count();
    fs::write(other.join("still.toml"), BEFORE).expect("write new dir");
    // (The harness scans its first directory; the call itself is what counts here.)
    h.wait_call(n, "the programs directory, still watched", |_| true);
    h.assert_quiet("after the change in the still-watched directory");
    fs::create_dir(&later).expect("mkdir later");
    let n = h.count();
    handle
        .set_targets(targets)
        .expect("the directory exists now");
    h.wait_call(n, "the rescan after watching the new directory", |_| true);
    h.assert_quiet("after the retry");
    let n = h.count();
    fs::write(&late_config, "").expect("write late config");
    h.wait_call(n, "the config in the directory created later", |_| true);
}
