//! The event rules as a table: which events can change what a rescan sees.

use std::path::PathBuf;

use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, Flag, MetadataKind, ModifyKind, RemoveKind,
    RenameMode,
};
use notify::{Event, EventKind};

use super::*;

fn targets() -> Resolved {
    Resolved::new(
        &WatchTargets::new("/srv/app/programs")
            .with_file("/srv/app/config.toml")
            .with_file("/srv/env/vars.env"),
    )
    .expect("absolute paths resolve")
}

fn ev(kind: EventKind, paths: &[&str]) -> notify::Result<Event> {
    Ok(paths
        .iter()
        .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p))))
}

const CREATE: EventKind = EventKind::Create(CreateKind::File);
const MKDIR: EventKind = EventKind::Create(CreateKind::Folder);
const REMOVE: EventKind = EventKind::Remove(RemoveKind::File);
const RMDIR: EventKind = EventKind::Remove(RemoveKind::Folder);
const WRITE: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
const CHMOD: EventKind = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any));
const MOVED_FROM: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::From));
const MOVED_TO: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::To));
const MOVED: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
const OPEN: EventKind = EventKind::Access(AccessKind::Open(AccessMode::Any));
const CLOSE_READ: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Read));
const CLOSE_WRITE: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));

#[test]
fn event_rules() {
    let p = "/srv/app/programs";
    let cases: Vec<(&str, notify::Result<Event>, Reaction)> = vec![
        // Program files, every kind of change.
        (
            "create",
            ev(CREATE, &["/srv/app/programs/web.toml"]),
            Reaction::Rescan,
        ),
        (
            "write",
            ev(WRITE, &["/srv/app/programs/web.yaml"]),
            Reaction::Rescan,
        ),
        (
            "close after write",
            ev(CLOSE_WRITE, &["/srv/app/programs/web.yml"]),
            Reaction::Rescan,
        ),
        (
            "chmod",
            ev(CHMOD, &["/srv/app/programs/web.json"]),
            Reaction::Rescan,
        ),
        (
            "delete",
            ev(REMOVE, &["/srv/app/programs/web.toml"]),
            Reaction::Rescan,
        ),
        // Reads never count: the rescan itself opens every file and the directory.
        (
            "open",
            ev(OPEN, &["/srv/app/programs/web.toml"]),
            Reaction::Ignore,
        ),
        (
            "close after read",
            ev(CLOSE_READ, &["/srv/app/programs/web.toml"]),
            Reaction::Ignore,
        ),
        ("open the directory", ev(OPEN, &[p]), Reaction::Ignore),
        ("read the directory", ev(CLOSE_READ, &[p]), Reaction::Ignore),
        // Editor temp names alone.
        (
            "vim probe",
            ev(CREATE, &["/srv/app/programs/4913"]),
            Reaction::Ignore,
        ),
        (
            "vim probe removed",
            ev(REMOVE, &["/srv/app/programs/4913"]),
            Reaction::Ignore,
        ),
        (
            "backup",
            ev(CREATE, &["/srv/app/programs/web.toml~"]),
            Reaction::Ignore,
        ),
        (
            "backup removed",
            ev(REMOVE, &["/srv/app/programs/web.toml~"]),
            Reaction::Ignore,
        ),
        (
            "swap file",
            ev(WRITE, &["/srv/app/programs/.web.toml.swp"]),
            Reaction::Ignore,
        ),
        (
            "sed temp",
            ev(WRITE, &["/srv/app/programs/sedAb12Cd"]),
            Reaction::Ignore,
        ),
        (
            "hidden temp",
            ev(WRITE, &["/srv/app/programs/.web.toml.tmp"]),
            Reaction::Ignore,
        ),
        (
            "emacs lock",
            ev(CREATE, &["/srv/app/programs/.#web.toml"]),
            Reaction::Ignore,
        ),
        (
            "other extension",
            ev(WRITE, &["/srv/app/programs/README.md"]),
            Reaction::Ignore,
        ),
        // Renames: a temp name becoming a program name, and a program name going away.
        (
            "temp renamed over",
            ev(MOVED_TO, &["/srv/app/programs/web.toml"]),
            Reaction::Rescan,
        ),
        (
            "program renamed away",
            ev(MOVED_FROM, &["/srv/app/programs/web.toml"]),
            Reaction::Rescan,
        ),
        (
            "rename pair, temp to program",
            ev(
                MOVED,
                &["/srv/app/programs/sedXy", "/srv/app/programs/web.toml"],
            ),
            Reaction::Rescan,
        ),
        (
            "rename pair, program to backup",
            ev(
                MOVED,
                &["/srv/app/programs/web.toml", "/srv/app/programs/web.toml~"],
            ),
            Reaction::Rescan,
        ),
        (
            "rename pair between temp names",
            ev(
                MOVED,
                &["/srv/app/programs/4913", "/srv/app/programs/web.toml~"],
            ),
            Reaction::Ignore,
        ),
        (
            "temp moved in",
            ev(MOVED_TO, &["/srv/app/programs/web.toml~"]),
            Reaction::Ignore,
        ),
        // Not directly in the programs directory.
        (
            "subdirectory named like a program",
            ev(MKDIR, &["/srv/app/programs/old.toml"]),
            Reaction::Ignore,
        ),
        (
            "such a subdirectory removed",
            ev(RMDIR, &["/srv/app/programs/old.toml"]),
            Reaction::Ignore,
        ),
        (
            "subdirectory",
            ev(WRITE, &["/srv/app/programs/old/web.toml"]),
            Reaction::Ignore,
        ),
        (
            "sibling directory",
            ev(WRITE, &["/srv/app/programs2/web.toml"]),
            Reaction::Ignore,
        ),
        (
            "program-like file beside the config",
            ev(WRITE, &["/srv/app/web.toml"]),
            Reaction::Ignore,
        ),
        // The watched files, by full path.
        (
            "config written",
            ev(WRITE, &["/srv/app/config.toml"]),
            Reaction::Rescan,
        ),
        (
            "config renamed over",
            ev(MOVED_TO, &["/srv/app/config.toml"]),
            Reaction::Rescan,
        ),
        (
            "config deleted",
            ev(REMOVE, &["/srv/app/config.toml"]),
            Reaction::Rescan,
        ),
        (
            "config backup",
            ev(CREATE, &["/srv/app/config.toml~"]),
            Reaction::Ignore,
        ),
        (
            "env file",
            ev(CLOSE_WRITE, &["/srv/env/vars.env"]),
            Reaction::Rescan,
        ),
        (
            "other env file",
            ev(WRITE, &["/srv/env/other.env"]),
            Reaction::Ignore,
        ),
        (
            "config read",
            ev(OPEN, &["/srv/app/config.toml"]),
            Reaction::Ignore,
        ),
        // The programs directory itself, seen through its parent or its own watch.
        ("directory removed", ev(RMDIR, &[p]), Reaction::RewatchDir),
        ("directory created", ev(MKDIR, &[p]), Reaction::RewatchDir),
        (
            "directory moved away",
            ev(MOVED_FROM, &[p]),
            Reaction::RewatchDir,
        ),
        (
            "directory moved in",
            ev(MOVED_TO, &[p]),
            Reaction::RewatchDir,
        ),
        (
            "directory renamed in the parent",
            ev(MOVED, &["/srv/app/programs.new", p]),
            Reaction::RewatchDir,
        ),
        (
            "directory deleted (self)",
            ev(EventKind::Remove(RemoveKind::Other), &[p]),
            Reaction::RewatchDir,
        ),
        ("directory chmod", ev(CHMOD, &[p]), Reaction::Rescan),
        (
            "other directory in the parent",
            ev(RMDIR, &["/srv/app/logs"]),
            Reaction::Ignore,
        ),
        // When in doubt, rescan.
        (
            "queue overflow",
            Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)),
            Reaction::Rescan,
        ),
        (
            "rescan flag on an ignorable event",
            ev(OPEN, &["/srv/app/programs/4913"]).map(|e| e.set_flag(Flag::Rescan)),
            Reaction::Rescan,
        ),
        (
            "watcher error",
            Err(notify::Error::generic("inotify read failed")),
            Reaction::Rescan,
        ),
        (
            "unnamed kind, no path",
            ev(EventKind::Any, &[]),
            Reaction::Rescan,
        ),
        (
            "other kind, no path",
            ev(EventKind::Other, &[]),
            Reaction::Rescan,
        ),
        (
            "unnamed kind on a program",
            ev(EventKind::Any, &["/srv/app/programs/a.toml"]),
            Reaction::Rescan,
        ),
        (
            "unnamed kind on a temp file",
            ev(EventKind::Any, &["/srv/app/programs/a~"]),
            Reaction::Ignore,
        ),
    ];
    let t = targets();
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(what, event, want)| {
            let got = t.classify(event);
            (got != *want).then(|| format!("{what}: got {got:?}, want {want:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn resolved_targets_watch_directories_not_files() {
    let t = targets();
    assert_eq!(t.programs_dir, PathBuf::from("/srv/app/programs"));
    // The programs directory's parent (to see it replaced) and each file's directory, once.
    assert_eq!(
        t.dirs.iter().collect::<Vec<_>>(),
        [&PathBuf::from("/srv/app"), &PathBuf::from("/srv/env")]
    );
}

#[test]
fn a_file_inside_the_programs_directory_adds_no_second_watch() {
    let t =
        Resolved::new(&WatchTargets::new("/srv/programs").with_file("/srv/programs/common.env"))
            .expect("absolute paths resolve");
    assert_eq!(t.dirs.iter().collect::<Vec<_>>(), [&PathBuf::from("/srv")]);
    let got = t.classify(&ev(WRITE, &["/srv/programs/common.env"]));
    assert_eq!(
        got,
        Reaction::Rescan,
        "a target file counts whatever its name"
    );
}

#[test]
fn relative_targets_become_absolute() {
    let t = Resolved::new(&WatchTargets::new("programs").with_file("config.toml"))
        .expect("the current directory resolves");
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(t.programs_dir, cwd.join("programs"));
    assert!(t.files.contains(&cwd.join("config.toml")));
    assert_eq!(t.dirs.iter().collect::<Vec<_>>(), [&cwd]);
}

#[test]
fn an_empty_path_is_an_error() {
    let e = Resolved::new(&WatchTargets::new("")).expect_err("an empty path cannot be watched");
    assert!(matches!(e, WatchError::Resolve { .. }), "{e:?}");
}

#[test]
fn targets_from_settings_are_everything_a_rescan_reads() {
    let mut settings = Settings::embedded_default(Path::new("/srv/app"));
    assert_eq!(
        WatchTargets::from_settings(&settings),
        WatchTargets::new("/srv/app/programs")
    );
    settings.config_file = Some(PathBuf::from("/srv/app/provisr.toml"));
    settings.env_files = vec![
        PathBuf::from("/srv/env/a.env"),
        PathBuf::from("/srv/app/b.env"),
    ];
    assert_eq!(
        WatchTargets::from_settings(&settings),
        WatchTargets::new("/srv/app/programs")
            .with_file("/srv/app/provisr.toml")
            .with_file("/srv/env/a.env")
            .with_file("/srv/app/b.env")
    );
}

#[test]
fn default_debounce_fits_a_save_within_100ms() {
    let d = Debounce::default();
    assert_eq!(d.quiet, Duration::from_millis(50));
    assert_eq!(d.max_delay, Duration::from_secs(1));
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = spawn(
        WatchTargets::new(dir.path()),
        Debounce::default(),
        || async {},
    );
    assert!(matches!(r, Err(WatchError::NoRuntime)));
}

/// A burst in which the programs directory was watched anew holds no file of it back once quiet:
/// a write still queued from the replaced watch may have lost its close with that watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_close_went_with_a_replaced_watch_does_not_hold_the_rescan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let programs = dir.path().join("programs");
    std::fs::create_dir(&programs).expect("mkdir");
    let file = programs.join("web.toml");
    std::fs::write(&file, "command = \"sleep 1\"\n").expect("write");
    let (calls, mut called) = tokio::sync::mpsc::unbounded_channel();
    let handle = spawn(
        WatchTargets::new(&programs),
        Debounce::default(),
        move || {
            let calls = calls.clone();
            async move {
                let _ = calls.send(());
            }
        },
    )
    .expect("watch");
    // The directory's entry changed (watched anew), then a write arrives with no close after it.
    let send = |e: Event| {
        handle
            .signals
            .send(Signal::Fs(Ok(e)))
            .expect("the task runs")
    };
    send(Event::new(MKDIR).add_path(programs.clone()));
    send(Event::new(WRITE).add_path(file.clone()));
    // Well under the write hold, which is what the rescan would otherwise wait for.
    tokio::time::timeout(WRITE_HOLD / 2, called.recv())
        .await
        .expect("a rescan before the write hold ran out")
        .expect("a call");
    handle.stop().await;
}
