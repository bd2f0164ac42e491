//! Output capture against real children writing into real pipes, into files in a temp dir.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use provisr::config::{LogPaths, LogSpec};
use provisr::logs::{FollowEvent, InstanceLog, Rotation, Stream, TAIL_MAX_LINES};

use crate::util::{wait_for_async, GroupGuard};

const LONG: Duration = Duration::from_secs(30);

/// Runs `script` under `/bin/sh -c` in its own process group with stdout and stderr on fresh
/// pipes whose read ends go to `log`.
fn spawn(log: &InstanceLog, script: &str, guard: &mut GroupGuard) -> Child {
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("stdout pipe");
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("stderr pipe");
    let child = {
        // The command owns our copies of the write ends; dropping it at the end of this block
        // closes them, so EOF comes when the child (and its descendants) are done.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .process_group(0);
        cmd.spawn().expect("spawn /bin/sh")
    };
    guard.add(child.id() as i32);
    log.attach(out_r, err_r);
    child
}

async fn flushed(log: &InstanceLog) {
    tokio::time::timeout(LONG, log.flushed())
        .await
        .expect("capture did not reach EOF");
}

fn reap(mut child: Child) {
    let status = child.wait().expect("wait for the child");
    assert!(status.success(), "child failed: {status}");
}

/// What `seq from to` prints.
fn seq(from: u32, to: u32) -> String {
    (from..=to).map(|i| format!("{i}\n")).collect()
}

fn bytes_rotation(max_bytes: u64, max_backups: u32, compress: bool) -> Rotation {
    Rotation {
        max_bytes,
        max_backups,
        max_age: None,
        compress,
    }
}

fn backup(base: &Path, k: u32, gz: bool) -> PathBuf {
    PathBuf::from(format!(
        "{}.{k}{}",
        base.display(),
        if gz { ".gz" } else { "" }
    ))
}

fn gunzip(path: &Path) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(fs::File::open(path).expect("open backup"))
        .read_to_string(&mut out)
        .expect("valid gzip of UTF-8 text");
    out
}

/// File names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn stdout_only(path: &Path) -> LogPaths {
    LogPaths {
        stdout: Some(path.to_path_buf()),
        stderr: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_go_to_their_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/logs/web.stdout.log");
    let err = dir.path().join("other/web.stderr.log");
    let paths = LogPaths {
        stdout: Some(out.clone()),
        stderr: Some(err.clone()),
    };
    let log = InstanceLog::new("web", paths.clone(), &LogSpec::default());
    assert_eq!(log.paths(), paths);
    assert!(
        out.exists() && err.exists(),
        "files and directories are created up front"
    );

    let mut guard = GroupGuard::default();
    let child = spawn(
        &log,
        "i=1; while [ $i -le 300 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done",
        &mut guard,
    );
    flushed(&log).await;
    reap(child);

    let expect = |what: &str| -> String { (1..=300).map(|i| format!("{what} {i}\n")).collect() };
    assert_eq!(fs::read_to_string(&out).unwrap(), expect("out"));
    assert_eq!(fs::read_to_string(&err).unwrap(), expect("err"));
    assert_eq!(log.tail(Stream::Stdout, 2), ["out 299", "out 300"]);
    assert_eq!(log.tail(Stream::Stderr, 1), ["err 300"]);
}

/// Streams that share one file (stdout and stderr of one instance, and a second instance) each
/// append whole batches: none overwrites or cuts another's lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_sharing_a_file_overwrite_none_of_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("all.log");
    let both = LogPaths {
        stdout: Some(shared.clone()),
        stderr: Some(shared.clone()),
    };
    let web = InstanceLog::new("web", both, &LogSpec::default());
    let worker = InstanceLog::new("worker", stdout_only(&shared), &LogSpec::default());
    let mut guard = GroupGuard::default();
    // Lines of 98 bytes, each written whole by `printf` (far below the pipe's atomic size), and
    // under 256 KiB per stream in all: no read batch can fill its buffer and end inside a line,
    // so each batch a stream appends is whole lines.
    let flood = |tag: &str| {
        format!(
            "i=1; while [ $i -le 2000 ]; do printf '{tag} %05d %088d\\n' $i 0; i=$((i+1)); done"
        )
    };
    let a = spawn(
        &web,
        &format!("{{ {} ; }} & {} >&2; wait", flood("wo"), flood("we")),
        &mut guard,
    );
    let b = spawn(&worker, &flood("ko"), &mut guard);
    flushed(&web).await;
    flushed(&worker).await;
    reap(a);
    reap(b);
    let text = fs::read_to_string(&shared).unwrap();
    assert_eq!(text.len(), 3 * 2000 * 98, "bytes were overwritten or lost");
    for tag in ["wo", "we", "ko"] {
        let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(tag)).collect();
        let expected: Vec<String> = (1..=2000)
            .map(|i| format!("{tag} {i:05} {:088}", 0))
            .collect();
        assert_eq!(mine, expected, "{tag}: lines lost, cut or out of order");
    }
}

/// A log file truncated by someone else (`logrotate`'s `copytruncate`, `: > app.log`) gets the
/// next output at its new end, with no hole of zeros where the old content was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_after_an_outside_truncation_goes_to_the_new_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let log = InstanceLog::new("app", stdout_only(&path), &LogSpec::default());
    let mut guard = GroupGuard::default();
    // The child waits on a FIFO between its two bursts: it goes on once the test writes to it.
    let go = dir.path().join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let script = format!("seq 1 1000; read _ < {}; seq 1001 1010", go.display());
    let child = spawn(&log, &script, &mut guard);
    wait_for_async(LONG, "the first lines in the file", || {
        (fs::metadata(&path).map_or(0, |m| m.len()) == seq(1, 1000).len() as u64).then_some(())
    })
    .await;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    fs::write(&go, "\n").unwrap();
    flushed(&log).await;
    reap(child);
    assert_eq!(fs::read_to_string(&path).unwrap(), seq(1001, 1010));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_exits_at_once_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let log = InstanceLog::new("burst", stdout_only(&out), &LogSpec::default());
    let mut guard = GroupGuard::default();
    let mut expected = String::new();
    // Many short-lived children on one log, as across restarts: each writes and exits at once,
    // the last bytes without a newline.
    for round in 0..20 {
        let child = spawn(
            &log,
            &format!("seq 1 3000; printf 'round {round} end'"),
            &mut guard,
        );
        flushed(&log).await;
        reap(child);
        expected.push_str(&seq(1, 3000));
        expected.push_str(&format!("round {round} end"));
        assert_eq!(fs::read_to_string(&out).unwrap(), expected, "round {round}");
        // The unterminated last line is in the tail, ended there so the next child's first
        // line does not run into it.
        assert_eq!(
            log.tail(Stream::Stdout, 2),
            ["3000".to_string(), format!("round {round} end")]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_exactly_max_backups() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.log");
    let log = InstanceLog::with_rotation("rot", stdout_only(&out), bytes_rotation(4096, 3, false));
    let mut guard = GroupGuard::default();
    let child = spawn(&log, "seq 1 20000", &mut guard);
    flushed(&log).await;
    reap(child);

    let mut chain = String::new();
    for k in (1..=3).rev() {
        let content = fs::read_to_string(backup(&out, k, false)).unwrap();
        assert!(
            content.len() <= 4096 && content.len() > 4000,
            "{k}: {}",
            content.len()
        );
        assert!(content.ends_with('\n'), "files are cut between lines");
        chain.push_str(&content);
    }
    let current = fs::read_to_string(&out).unwrap();
    assert!(current.len() <= 4096);
    chain.push_str(&current);
    assert!(!backup(&out, 4, false).exists());
    assert!(!backup(&out, 1, true).exists(), "compress is off");
    // Files that fell off the end were renamed away inline and are deleted in the background.
    wait_for_async(LONG, "only the file and its three backups", || {
        (names_in(dir.path()) == ["app.log", "app.log.1", "app.log.2", "app.log.3"]).then_some(())
    })
    .await;
    // The backups and the current file are, in order, exactly the end of the output.
    let all = seq(1, 20000);
    assert!(chain.len() > 12_000);
    assert!(all.ends_with(&chain));
    assert!(chain.starts_with(|c: char| c.is_ascii_digit()));
    assert!(all[..all.len() - chain.len()].ends_with('\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_are_compressed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.log");
    let log = InstanceLog::with_rotation("gz", stdout_only(&out), bytes_rotation(8192, 3, true));
    let mut guard = GroupGuard::default();
    let child = spawn(&log, "seq 1 30000", &mut guard);
    flushed(&log).await;
    reap(child);

    // Three compressed backups, no plain ones, and no temporary or dropped files left behind:
    // the pass a rotation schedules may still be running (or queued behind one that started
    // before the last rotation dropped its file) when the backups are already in place.
    let want = ["app.log", "app.log.1.gz", "app.log.2.gz", "app.log.3.gz"];
    wait_for_async(LONG, "three compressed backups and nothing else", || {
        (names_in(dir.path()) == want).then_some(())
    })
    .await;
    let mut chain = String::new();
    for k in (1..=3).rev() {
        let content = gunzip(&backup(&out, k, true));
        assert!(
            content.len() <= 8192 && content.len() > 8000,
            "{k}: {}",
            content.len()
        );
        chain.push_str(&content);
    }
    chain.push_str(&fs::read_to_string(&out).unwrap());
    let all = seq(1, 30000);
    assert!(
        all.ends_with(&chain),
        "decompressed backups + current file = end of the output"
    );
    assert!(all[..all.len() - chain.len()].ends_with('\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_only_capture_keeps_the_tail() {
    let log = InstanceLog::new("mem", LogPaths::default(), &LogSpec::default());
    assert_eq!(log.paths(), LogPaths::default());
    let mut guard = GroupGuard::default();
    let child = spawn(&log, "seq 1 5000; echo oops >&2", &mut guard);
    flushed(&log).await;
    reap(child);
    let want: Vec<String> = (4991..=5000).map(|i| i.to_string()).collect();
    assert_eq!(log.tail(Stream::Stdout, 10), want);
    let all = log.tail(Stream::Stdout, 100_000);
    assert_eq!(all.len(), TAIL_MAX_LINES);
    assert_eq!(all[0], (5001 - TAIL_MAX_LINES).to_string());
    assert_eq!(log.tail(Stream::Stderr, 10), ["oops"]);

    // A line still being written shows up in the tail before it ends.
    let child = spawn(&log, "printf 'a\\nhalf a line'; exec sleep 60", &mut guard);
    wait_for_async(LONG, "the partial line in the tail", || {
        (log.tail(Stream::Stdout, 2) == ["a", "half a line"]).then_some(())
    })
    .await;
    drop(guard); // kills the sleeping child's group: the pipe reaches EOF
    flushed(&log).await;
    let mut child = child;
    child.wait().unwrap();
    assert_eq!(log.tail(Stream::Stdout, 2), ["a", "half a line"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_see_every_line_once_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.log");
    let go = dir.path().join("go");
    let log = InstanceLog::with_rotation("f", stdout_only(&out), bytes_rotation(4096, 2, false));
    let mut guard = GroupGuard::default();
    // Two lines and half a third, then (once told) the rest of that line and 20000 more in
    // bursts, so the follower reads while the child writes and the file rotates.
    let child = spawn(
        &log,
        &format!(
            "echo before 1; echo before 2; printf 'before 3 and'; \
             while [ ! -e '{}' ]; do sleep 0.01; done; printf ' more\\n'; \
             i=0; while [ $i -lt 40 ]; do seq $((i*500+1)) $((i*500+500)); i=$((i+1)); done",
            go.display()
        ),
        &mut guard,
    );
    wait_for_async(LONG, "the half line in the tail", || {
        (log.tail(Stream::Stdout, 1) == ["before 3 and"]).then_some(())
    })
    .await;

    // The backlog has complete lines only; the half line reaches the follower whole.
    let (backlog, mut follow) = log.follow(Stream::Stdout, 5);
    assert_eq!(backlog, ["before 1", "before 2"]);
    fs::write(&go, b"").unwrap();

    let mut got: Vec<String> = Vec::new();
    while got.len() < 20_001 {
        match tokio::time::timeout(LONG, follow.next()).await {
            Ok(Some(FollowEvent::Lines(lines))) => got.extend(lines),
            other => panic!("unexpected {other:?} after {} lines", got.len()),
        }
    }
    flushed(&log).await;
    reap(child);
    let want: Vec<String> = std::iter::once("before 3 and more".to_string())
        .chain((1..=20_000).map(|i| i.to_string()))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "lines missing, repeated or out of order");
    assert!(
        backup(&out, 2, false).exists(),
        "the output rotated meanwhile"
    );

    // Nothing more is pending.
    let more = tokio::time::timeout(Duration::from_millis(200), follow.next()).await;
    assert!(more.is_err(), "unexpected {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_falls_behind_is_told_how_much_it_missed() {
    let log = InstanceLog::new("slow", LogPaths::default(), &LogSpec::default());
    let (backlog, mut follow) = log.follow(Stream::Stdout, 10);
    assert!(backlog.is_empty());
    let mut guard = GroupGuard::default();
    let child = spawn(&log, "seq 1 100000", &mut guard);
    flushed(&log).await;
    reap(child);

    let all = seq(1, 100_000);
    let Some(FollowEvent::Skipped { bytes }) = follow.next().await else {
        panic!("expected a skip");
    };
    let Some(FollowEvent::Lines(lines)) = follow.next().await else {
        panic!("expected lines after the skip");
    };
    // What it got is a run of whole lines up to the end, and with what it missed adds up to
    // exactly the output.
    let first: u32 = lines[0].parse().unwrap();
    let want: Vec<String> = (first..=100_000).map(|i| i.to_string()).collect();
    assert_eq!(lines, want);
    let received: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
    assert_eq!(bytes + received, all.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ends_when_the_log_is_gone() {
    let log = InstanceLog::new("gone", LogPaths::default(), &LogSpec::default());
    let (_, mut follow) = log.follow(Stream::Stderr, 10);
    let mut guard = GroupGuard::default();
    let child = spawn(&log, "printf 'x\\ny' >&2", &mut guard);
    flushed(&log).await;
    reap(child);
    drop(log);
    let mut got = Vec::new();
    while let Some(event) = tokio::time::timeout(LONG, follow.next()).await.unwrap() {
        match event {
            FollowEvent::Lines(lines) => got.extend(lines),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ["x", "y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_moves_a_running_childs_output_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a/first.log");
    let second = dir.path().join("b/second.log");
    let go = dir.path().join("go");
    let log = InstanceLog::new("live", stdout_only(&first), &LogSpec::default());
    let mut guard = GroupGuard::default();
    let child = spawn(
        &log,
        &format!(
            "echo one; while [ ! -e '{}' ]; do sleep 0.01; done; echo two",
            go.display()
        ),
        &mut guard,
    );
    wait_for_async(LONG, "the first line in the first file", || {
        (fs::read_to_string(&first).ok()? == "one\n").then_some(())
    })
    .await;

    let spec = LogSpec {
        compress: true,
        ..LogSpec::default()
    };
    log.update(stdout_only(&second), &spec);
    assert_eq!(log.paths(), stdout_only(&second));
    fs::write(&go, b"").unwrap();
    flushed(&log).await;
    reap(child);
    assert_eq!(fs::read_to_string(&first).unwrap(), "one\n");
    assert_eq!(fs::read_to_string(&second).unwrap(), "two\n");
    assert_eq!(log.tail(Stream::Stdout, 5), ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_of_a_grandchild_is_captured_until_it_closes_the_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.log");
    let log = InstanceLog::new("grand", stdout_only(&out), &LogSpec::default());
    let mut guard = GroupGuard::default();
    // The shell exits at once; its background child keeps the write end and writes later.
    let child = spawn(&log, "(sleep 0.3; echo late) & echo early", &mut guard);
    reap(child);
    flushed(&log).await;
    assert_eq!(fs::read_to_string(&out).unwrap(), "early\nlate\n");
}
