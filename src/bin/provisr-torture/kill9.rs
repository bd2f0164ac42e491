//! Scenario `kill9`: the daemon is killed with `kill -9` at a random moment while API writes
//! and program-file edits are in flight, a thousand times over, and restarted on the same state.
//!
//! A writer thread issues random writes — `register`, `update` (a new command or a scale),
//! `unregister`, `start`, `stop` of API programs, `start`/`stop` of file programs, and file
//! creates, edits (in place or written aside and renamed over) and deletes — and keeps a model
//! of what desired state must be: every acknowledged (2xx) write is certain, a write whose
//! answer never came may or may not have happened, a file is whatever was last written. Then
//! the daemon dies (sometimes again while it starts up), a new one starts, and the checker
//! compares:
//! - `/programs` with the model: every acknowledged write reflected, nothing else invented;
//! - the processes tagged with the state directory in `/proc` with desired state: each
//!   instance of a program desired running exactly once (no duplicate), running the command
//!   of its current spec, with the pid the daemon reports; nothing else (no leak);
//! - no zombie children of the daemon once it has settled, and every restart opens the store;
//! - a job (a program that runs once and exits) never runs again because the daemon restarted.
//!
//! One cycle in eight ends in an orderly shutdown (SIGTERM) right after the last write instead:
//! then no process of the test may be left once the daemon has exited.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use provisr::client::{ApiClient, ClientError};
use serde_json::{json, Value};

use crate::harness::{poll, Daemon, Project, Report};
use crate::{procs, Ctx};

/// API-registered program names.
const API_NAMES: [&str; 6] = ["a0", "a1", "a2", "a3", "a4", "a5"];
/// Program files, all four formats.
const FILES: [&str; 8] = [
    "f0.toml", "f1.yaml", "f2.json", "f3.yml", "f4.toml", "f5.yaml", "f6.json", "f7.yml",
];
/// The job's program name: a file program no write touches.
const JOB: &str = "job";

/// How many times the job ran.
fn job_runs(log: &std::path::Path) -> usize {
    fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

/// The longest a cycle writes before the daemon is killed.
const MAX_WRITE_MS: u64 = 60;
/// How long a restarted daemon may take to settle before that counts as a violation.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a restarted daemon may sit unchanged, nothing in progress, short of settled, before
/// that counts as stuck (a violation) rather than slow.
const STUCK: Duration = Duration::from_secs(1);
/// Once the daemon reports it settled, how long `/proc` may take to agree (reaping).
const PROC_GRACE: Duration = Duration::from_secs(3);

/// What the model says about a program.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Prog {
    file: bool,
    command: String,
    instances: u32,
    running: bool,
}

/// The states a program may be in: one when certain, more after a write whose answer was lost.
type Alts = BTreeSet<Option<Prog>>;

#[derive(Clone, Default)]
struct Model {
    progs: BTreeMap<String, Alts>,
    /// File programs deleted since the last check: if re-created before the daemon noticed the
    /// deletion, the old record (and its desired state) lives on.
    deleted: BTreeSet<String>,
}

impl Model {
    fn alts(&self, name: &str) -> Alts {
        self.progs
            .get(name)
            .cloned()
            .unwrap_or_else(|| Alts::from([None]))
    }

    fn exists(&self, name: &str) -> bool {
        self.alts(name).iter().any(Option::is_some)
    }
}

/// One write of the writer thread.
#[derive(Clone, Debug)]
enum Op {
    Register(String, String, u32),
    Update(String, String, u32),
    Unregister(String),
    Run(String, bool),
    WriteFile(&'static str, String, u32, bool),
    DeleteFile(&'static str),
}

/// What became of an API write.
enum Answer {
    Acked,
    Refused(u16, String),
    /// No answer: the daemon died with the write in flight (or before it arrived).
    Lost,
}

#[derive(Default)]
struct Counts {
    acked: usize,
    refused: usize,
    lost: usize,
    file_writes: usize,
    file_deletes: usize,
}

fn stem(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

fn file_text(file: &str, command: &str, instances: u32) -> String {
    match file.rsplit('.').next() {
        Some("toml") => format!("command = \"{command}\"\ninstances = {instances}\n"),
        Some("json") => json!({"command": command, "instances": instances}).to_string(),
        _ => format!("command: \"{command}\"\ninstances: {instances}\n"),
    }
}

/// What `op` does to one possible state: `None` when the daemon would refuse it there.
fn apply(op: &Op, alt: &Option<Prog>) -> Option<Option<Prog>> {
    match (op, alt) {
        (Op::Register(_, command, instances), None) => Some(Some(Prog {
            file: false,
            command: command.clone(),
            instances: *instances,
            running: true,
        })),
        (Op::Update(_, command, instances), Some(p)) if !p.file => Some(Some(Prog {
            command: command.clone(),
            instances: *instances,
            ..p.clone()
        })),
        (Op::Unregister(_), Some(p)) if !p.file => Some(None),
        (Op::Run(_, running), Some(p)) => Some(Some(Prog {
            running: *running,
            ..p.clone()
        })),
        _ => None,
    }
}

fn name_of(op: &Op) -> &str {
    match op {
        Op::Register(n, ..) | Op::Update(n, ..) | Op::Unregister(n) | Op::Run(n, _) => n,
        Op::WriteFile(f, ..) | Op::DeleteFile(f) => stem(f),
    }
}

/// The writer: random writes until `stop`, each folded into the model.
struct Writer {
    api: ApiClient,
    programs: std::path::PathBuf,
    model: Model,
    rng: fastrand::Rng,
    counts: Counts,
    version: u64,
    /// Answers the model says were impossible: the daemon lost or invented a write.
    surprises: Vec<String>,
}

impl Writer {
    fn command(&mut self) -> String {
        self.version += 1;
        format!("sleep {}", 100_000 + self.version)
    }

    fn pick(&mut self) -> Op {
        let r = self.rng.u32(0..100);
        let api = API_NAMES[self.rng.usize(..API_NAMES.len())].to_string();
        let instances = self.rng.u32(1..=3);
        match r {
            0..=17 => {
                let c = self.command();
                Op::Register(api, c, instances)
            }
            18..=34 => {
                // A scale keeps the command; an edit changes it.
                let c = match self.model.alts(&api).into_iter().flatten().next() {
                    Some(p) if self.rng.bool() => p.command,
                    _ => self.command(),
                };
                Op::Update(api, c, instances)
            }
            35..=44 => Op::Unregister(api),
            45..=66 => {
                let name = if self.rng.bool() {
                    api
                } else {
                    stem(FILES[self.rng.usize(..FILES.len())]).to_string()
                };
                Op::Run(name, self.rng.u32(0..100) < 45)
            }
            67..=90 => {
                let c = self.command();
                Op::WriteFile(
                    FILES[self.rng.usize(..FILES.len())],
                    c,
                    instances,
                    self.rng.bool(),
                )
            }
            _ => Op::DeleteFile(FILES[self.rng.usize(..FILES.len())]),
        }
    }

    fn send(&self, op: &Op) -> Answer {
        let result = match op {
            Op::Register(name, command, instances) => self.api.post(
                "/register",
                &[],
                Some(&json!({"name": name, "command": command, "instances": instances})),
            ),
            Op::Update(name, command, instances) => self.api.post(
                "/update",
                &[],
                Some(&json!({"name": name, "command": command, "instances": instances})),
            ),
            Op::Unregister(name) => {
                self.api
                    .post::<Value>("/unregister", &[("name", name.clone())], None)
            }
            Op::Run(name, running) => self.api.post::<Value>(
                if *running { "/start" } else { "/stop" },
                &[("name", name.clone()), ("wait", "0s".into())],
                None,
            ),
            Op::WriteFile(..) | Op::DeleteFile(_) => return Answer::Acked,
        };
        match result {
            Ok(_) => Answer::Acked,
            Err(ClientError::Api { status, message }) => Answer::Refused(status, message),
            Err(_) => Answer::Lost,
        }
    }

    fn step(&mut self) -> Result<()> {
        let op = self.pick();
        let name = name_of(&op).to_string();
        let alts = self.model.alts(&name);
        let file_program = name.starts_with('f');
        let next: Alts = match &op {
            Op::WriteFile(file, command, instances, aside) => {
                let path = self.programs.join(file);
                let text = file_text(file, command, *instances);
                if *aside {
                    let tmp = self.programs.join(format!(".{file}.tmp"));
                    fs::write(&tmp, text)?;
                    fs::rename(&tmp, &path)?;
                } else {
                    fs::write(&path, text)?;
                }
                self.counts.file_writes += 1;
                let recreated = self.model.deleted.contains(&name);
                let mut next = Alts::new();
                for alt in &alts {
                    let desired: &[bool] = match alt {
                        Some(p) => &[p.running][..],
                        None if recreated => &[true, false][..],
                        None => &[true][..],
                    };
                    for &running in desired {
                        next.insert(Some(Prog {
                            file: true,
                            command: command.clone(),
                            instances: *instances,
                            running,
                        }));
                    }
                }
                next
            }
            Op::DeleteFile(file) => {
                if !self.model.exists(&name) {
                    return Ok(());
                }
                match fs::remove_file(self.programs.join(file)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                self.counts.file_deletes += 1;
                self.model.deleted.insert(name.clone());
                Alts::from([None])
            }
            _ => match self.send(&op) {
                Answer::Acked => {
                    self.counts.acked += 1;
                    let done: Alts = alts.iter().filter_map(|a| apply(&op, a)).collect();
                    if file_program {
                        // The daemon may not have seen the latest file change yet: a start or
                        // stop it accepted applies to the record it has.
                        alts.iter()
                            .map(|a| apply(&op, a).unwrap_or_else(|| a.clone()))
                            .collect()
                    } else if done.is_empty() {
                        self.surprises.push(format!(
                            "{op:?} was accepted, but the acknowledged writes before it say {alts:?}"
                        ));
                        alts
                    } else {
                        done
                    }
                }
                Answer::Refused(status, message) => {
                    self.counts.refused += 1;
                    let consistent: Alts = alts
                        .iter()
                        .filter(|a| apply(&op, a).is_none())
                        .cloned()
                        .collect();
                    if file_program {
                        alts
                    } else if consistent.is_empty() {
                        self.surprises.push(format!(
                            "{op:?} was refused ({status} {message}), but the acknowledged writes before it say {alts:?}"
                        ));
                        alts
                    } else {
                        consistent
                    }
                }
                Answer::Lost => {
                    self.counts.lost += 1;
                    let mut next = alts.clone();
                    next.extend(alts.iter().filter_map(|a| apply(&op, a)));
                    next
                }
            },
        };
        self.model.progs.insert(name, next);
        Ok(())
    }
}

/// The program an instance name belongs to.
fn program_of_instance(instance: &str, programs: &BTreeMap<String, Prog>) -> String {
    match instance.rsplit_once('-') {
        Some((base, n)) if n.parse::<u32>().is_ok() && programs.contains_key(base) => {
            base.to_string()
        }
        _ => instance.to_string(),
    }
}

/// The instance names a program runs.
fn instance_names(name: &str, instances: u32) -> Vec<String> {
    if instances <= 1 {
        vec![name.to_string()]
    } else {
        (1..=instances).map(|i| format!("{name}-{i}")).collect()
    }
}

fn program_of(v: &Value) -> Option<(String, Prog, Option<String>)> {
    let name = v["name"].as_str()?.to_string();
    let spec = &v["spec"];
    let prog = Prog {
        file: v["source"].as_str()?.starts_with("file:"),
        command: spec["exec"]["command"].as_str()?.to_string(),
        instances: spec["instances"].as_u64()? as u32,
        running: v["desired"].as_str()? == "running",
    };
    let error = (!v["error"].is_null()).then(|| v["error"].to_string());
    Some((name, prog, error))
}

/// Tallies of the checks, for the table.
#[derive(Default)]
struct Broken {
    lost_writes: usize,
    surprises: usize,
    unsettled: usize,
    duplicates: usize,
    leaked: usize,
    missing: usize,
    stale: usize,
    stale_seen: BTreeSet<(i32, u64)>,
    pid_mismatch: usize,
    zombies: usize,
    failed_reopens: usize,
    panics: usize,
    outlived_shutdown: usize,
    job_reruns: usize,
    checked_instances: usize,
}

impl Broken {
    fn total(&self) -> usize {
        self.lost_writes
            + self.surprises
            + self.unsettled
            + self.duplicates
            + self.leaked
            + self.missing
            + self.stale
            + self.pid_mismatch
            + self.zombies
            + self.failed_reopens
            + self.panics
            + self.outlived_shutdown
            + self.job_reruns
    }
}

/// Compares the daemon after a restart with the model, then the model becomes what it found.
fn verify(
    cycle: usize,
    d: &Daemon,
    project: &Project,
    model: &mut Model,
    broken: &mut Broken,
    report: &mut Report,
) -> Result<()> {
    let programs = d.api.get("/programs", &[])?;
    let mut observed: BTreeMap<String, Prog> = BTreeMap::new();
    for v in programs.as_array().into_iter().flatten() {
        let (name, prog, error) =
            program_of(v).ok_or_else(|| anyhow!("unexpected /programs entry {v}"))?;
        if let Some(e) = error {
            report.violation(format!("cycle {cycle}: {name} has an error: {e}"));
            broken.lost_writes += 1;
        }
        observed.insert(name, prog);
    }
    let names: BTreeSet<String> = model.progs.keys().chain(observed.keys()).cloned().collect();
    for name in &names {
        let found = observed.get(name).cloned();
        let alts = model.alts(name);
        if !alts.contains(&found) {
            broken.lost_writes += 1;
            report.violation(format!(
                "cycle {cycle}: {name}: acknowledged writes say {alts:?}, the restarted daemon has {found:?}"
            ));
        }
    }
    model.progs = observed
        .iter()
        .map(|(n, p)| (n.clone(), Alts::from([Some(p.clone())])))
        .collect();
    model.deleted.clear();

    let expected: BTreeMap<String, String> = observed
        .iter()
        .filter(|(n, p)| p.running && *n != JOB)
        .flat_map(|(n, p)| {
            instance_names(n, p.instances)
                .into_iter()
                .map(|i| (i, p.command.clone()))
        })
        .collect();
    broken.checked_instances += expected.len();

    // The daemon's own view first: every expected instance running, nothing in between.
    let status = |d: &Daemon| -> Option<BTreeMap<String, (String, Option<i64>)>> {
        let all = d.api.get("/status", &[]).ok()?;
        Some(
            all.as_array()?
                .iter()
                .filter_map(|s| {
                    Some((
                        s["name"].as_str()?.to_string(),
                        (s["state"].as_str()?.to_string(), s["pid"].as_i64()),
                    ))
                })
                .collect(),
        )
    };
    let settled = |s: &BTreeMap<String, (String, Option<i64>)>| {
        expected.keys().all(|n| {
            s.get(n)
                .is_some_and(|(st, pid)| st == "running" && pid.is_some())
        }) && s.iter().all(|(n, (st, _))| {
            expected.contains_key(n) || matches!(st.as_str(), "stopped" | "exited" | "failed")
        })
    };
    // Settled, or stuck: nothing starting, stopping or in backoff, and no change for 1 s.
    let mut last = BTreeMap::new();
    let deadline = Instant::now() + SETTLE;
    let mut unchanged_since = Instant::now();
    let outcome = loop {
        let now = status(d).unwrap_or_default();
        if settled(&now) {
            break true;
        }
        let transient = now
            .values()
            .any(|(st, _)| matches!(st.as_str(), "starting" | "stopping" | "backoff"));
        if transient || now != last {
            unchanged_since = Instant::now();
        }
        last = now;
        if Instant::now() >= deadline || unchanged_since.elapsed() >= STUCK {
            break false;
        }
        thread::sleep(Duration::from_millis(2));
    };
    if !outcome {
        broken.unsettled += 1;
        let odd: Vec<String> = last
            .iter()
            .filter(|(n, (st, _))| {
                expected.contains_key(*n) != (st == "running")
                    || !matches!(st.as_str(), "running" | "stopped" | "exited" | "failed")
            })
            .map(|(n, (st, _))| format!("{n}={st}"))
            .chain(
                expected
                    .keys()
                    .filter(|n| !last.contains_key(*n))
                    .map(|n| format!("{n}=absent")),
            )
            .collect();
        report.violation(format!(
            "cycle {cycle}: the restarted daemon did not settle (within {SETTLE:?}, or stuck for {STUCK:?}): {}",
            odd.join(", ")
        ));
    }

    // Then the truth: the tagged processes.
    let mut found: BTreeMap<String, Vec<procs::Proc>> = BTreeMap::new();
    let stale_seen = broken.stale_seen.clone();
    let agrees = poll(PROC_GRACE, || {
        let s = status(d)?;
        found.clear();
        for p in project.tagged() {
            found.entry(p.name.clone()).or_default().push(p);
        }
        let ok = found.len() == expected.len()
            && expected.iter().all(|(n, command)| {
                found.get(n).is_some_and(|ps| {
                    ps.len() == 1
                        && (ps[0].cmdline.join(" ") == *command
                            || stale_seen.contains(&(ps[0].pid, ps[0].start_time)))
                        && s.get(n).and_then(|x| x.1) == Some(ps[0].pid as i64)
                })
            });
        ok.then_some(s)
    });
    if agrees.is_none() {
        let s = status(d).unwrap_or_default();
        for (name, ps) in &found {
            let reported = s.get(name).and_then(|x| x.1);
            match expected.get(name) {
                None => {
                    broken.leaked += ps.len();
                    report.violation(format!(
                        "cycle {cycle}: leaked: {name} is not desired running but {} process(es) run: {}",
                        ps.len(),
                        describe(ps)
                    ));
                }
                Some(command) => {
                    if ps.len() > 1 {
                        broken.duplicates += ps.len() - 1;
                        report.violation(format!(
                            "cycle {cycle}: duplicate: {name} runs {} times: {} (the daemon reports pid {reported:?})",
                            ps.len(),
                            describe(ps)
                        ));
                    } else if ps[0].cmdline.join(" ") != *command {
                        // Reported once per process: the daemon keeps it, so every later
                        // check would find it again.
                        if broken.stale_seen.insert((ps[0].pid, ps[0].start_time)) {
                            broken.stale += 1;
                            report.violation(format!(
                                "cycle {cycle}: stale spec: {name} runs {:?}, its spec says {command:?}",
                                ps[0].cmdline.join(" ")
                            ));
                        }
                    } else if reported != Some(ps[0].pid as i64) {
                        broken.pid_mismatch += 1;
                        report.violation(format!(
                            "cycle {cycle}: {name} runs as pid {} but the daemon reports {reported:?}",
                            ps[0].pid
                        ));
                    }
                }
            }
            // Leave the next cycle a clean slate: end what no instance should run.
            for p in ps {
                let wanted = expected.contains_key(name) && reported == Some(p.pid as i64);
                if !wanted {
                    procs::kill(p.pid, p.start_time);
                }
            }
        }
        let mut heal = BTreeSet::new();
        for name in expected.keys().filter(|n| !found.contains_key(*n)) {
            broken.missing += 1;
            report.violation(format!(
                "cycle {cycle}: missing: {name} is desired running but no process of it runs"
            ));
            heal.insert(program_of_instance(name, &observed));
        }
        // Leave the next cycle a clean slate here too: an explicit start (desired state stays
        // `running`) so the fault is counted once, not in every later cycle.
        for program in heal {
            let _ =
                d.api
                    .post::<Value>("/start", &[("name", program), ("wait", "10s".into())], None);
        }
    }
    if poll(Duration::from_secs(2), || {
        procs::zombie_children(d.pid).is_empty().then_some(())
    })
    .is_none()
    {
        let z = procs::zombie_children(d.pid);
        broken.zombies += z.len();
        report.violation(format!(
            "cycle {cycle}: {} zombie children of the daemon: {z:?}",
            z.len()
        ));
    }
    Ok(())
}

fn describe(ps: &[procs::Proc]) -> String {
    ps.iter()
        .map(|p| format!("pid {} `{}`", p.pid, p.cmdline.join(" ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts a daemon on the project; a failure is a failed reopen of the store (retried twice).
fn boot(
    ctx: &Ctx,
    project: &Project,
    cycle: usize,
    broken: &mut Broken,
    report: &mut Report,
) -> Result<Daemon> {
    let mut last = None;
    for _ in 0..3 {
        match Daemon::start(&ctx.bin, project) {
            Ok(d) => return Ok(d),
            Err(e) => {
                broken.failed_reopens += 1;
                report.violation(format!("cycle {cycle}: restart failed: {e}"));
                last = Some(e);
            }
        }
    }
    Err(anyhow!(
        "the daemon cannot be restarted: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

pub fn run(ctx: &Ctx, cycles: usize) -> Result<Report> {
    let mut report = Report::new("kill9: daemon kill -9 during writes");
    let project = Project::new("kill9")?;
    let mut rng = fastrand::Rng::with_seed(ctx.seed);
    let mut broken = Broken::default();
    let mut counts = Counts::default();
    let mut model = Model::default();
    let mut version = 0u64;
    let mut boot_kills = 0usize;
    let mut shutdowns = 0usize;
    let mut job_seen = 1usize;
    let mut done = 0usize;
    let (mut booting, mut checking) = (Vec::new(), Vec::new());

    // A job: it runs once, exits, and must never run again just because the daemon restarted.
    let job_log = project.root.join("job.log");
    let job_command = format!("echo ran >> {}", job_log.display());
    fs::write(
        project.programs.join(format!("{JOB}.toml")),
        format!("command = {}\n", toml::Value::String(job_command.clone())),
    )?;
    model.progs.insert(
        JOB.into(),
        Alts::from([Some(Prog {
            file: true,
            command: job_command,
            instances: 1,
            running: true,
        })]),
    );
    let mut d = boot(ctx, &project, 0, &mut broken, &mut report)?;
    poll(SETTLE, || job_runs(&job_log).eq(&1).then_some(()))
        .ok_or_else(|| anyhow!("the job did not run at the first start"))?;
    verify(0, &d, &project, &mut model, &mut broken, &mut report)?;
    for cycle in 1..=cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            api: d.api.clone(),
            programs: project.programs.clone(),
            model: std::mem::take(&mut model),
            rng: fastrand::Rng::with_seed(rng.u64(..)),
            counts: Counts::default(),
            version,
            surprises: Vec::new(),
        };
        let flag = stop.clone();
        let worker = thread::spawn(move || -> Result<Writer> {
            while !flag.load(Ordering::Relaxed) {
                writer.step()?;
            }
            Ok(writer)
        });
        thread::sleep(Duration::from_millis(rng.u64(0..=MAX_WRITE_MS)));
        if d.panics() > 0 {
            broken.panics += d.panics();
            report.violation(format!(
                "cycle {cycle}: the daemon panicked:\n{}",
                d.log_tail(20)
            ));
        }
        let pid = d.pid;
        // One cycle in eight ends in an orderly shutdown instead, right after the last write
        // (a removal may be in flight): every child must be stopped, none left behind.
        let graceful = rng.u32(0..8) == 0;
        if graceful {
            stop.store(true, Ordering::Relaxed);
            shutdowns += 1;
            match d.terminate(Duration::from_secs(60)) {
                Ok(s) if s.success() => {}
                Ok(s) => report.violation(format!(
                    "cycle {cycle}: SIGTERM: the daemon exited with {s}"
                )),
                Err(e) => report.violation(format!("cycle {cycle}: SIGTERM: {e:#}")),
            }
            let left = project.tagged();
            if !left.is_empty() {
                broken.outlived_shutdown += left.len();
                report.violation(format!(
                    "cycle {cycle}: {} processes outlived an orderly shutdown: {}",
                    left.len(),
                    describe(&left)
                ));
                for p in &left {
                    procs::kill(p.pid, p.start_time);
                }
            }
        } else {
            // The writer stops right after the kill: a write it starts later is refused at the
            // connection and changes nothing, but would count as one whose answer was lost.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            stop.store(true, Ordering::Relaxed);
            d.kill9();
        }
        let writer = worker
            .join()
            .map_err(|_| anyhow!("the writer thread panicked"))??;
        model = writer.model;
        version = writer.version;
        counts.acked += writer.counts.acked;
        counts.refused += writer.counts.refused;
        counts.lost += writer.counts.lost;
        counts.file_writes += writer.counts.file_writes;
        counts.file_deletes += writer.counts.file_deletes;
        for s in writer.surprises {
            broken.surprises += 1;
            report.violation(format!("cycle {cycle} (daemon pid {pid}): {s}"));
        }
        // Sometimes the next daemon dies too, while it opens the store and adopts.
        if rng.u32(0..10) == 0 {
            let (_, _, early) = Daemon::spawn(&ctx.bin, &project)?;
            thread::sleep(Duration::from_micros(rng.u64(0..30_000)));
            early.kill9();
            boot_kills += 1;
        }
        let t0 = Instant::now();
        d = boot(ctx, &project, cycle, &mut broken, &mut report)?;
        let t1 = Instant::now();
        verify(cycle, &d, &project, &mut model, &mut broken, &mut report)?;
        let runs = job_runs(&job_log);
        if runs > job_seen {
            broken.job_reruns += runs - job_seen;
            report.violation(format!(
                "cycle {cycle}: the finished job ran again after a restart ({runs} runs in all)"
            ));
            job_seen = runs;
        }
        booting.push(t1 - t0);
        checking.push(t1.elapsed());
        done = cycle;
        if broken.total() >= ctx.max_violations {
            report.violation(format!(
                "stopped after cycle {cycle} of {cycles}: {} violations",
                broken.total()
            ));
            break;
        }
    }
    let status = d.terminate(Duration::from_secs(60))?;
    if !status.success() {
        report.violation(format!("the last daemon exited with {status} on SIGTERM"));
    }
    let left = poll(Duration::from_secs(2), || {
        project.tagged().is_empty().then_some(())
    })
    .map_or_else(|| project.tagged().len(), |()| 0);
    if left > 0 {
        report.violation(format!(
            "{left} processes outlived the daemon's shutdown: {}",
            describe(&project.tagged())
        ));
    }

    report.figure("cycles (start, write, kill -9, restart, check)", done);
    report.figure("orderly shutdowns (SIGTERM) instead of a kill", shutdowns);
    report.figure("kills while starting up", boot_kills);
    report.figure("API writes acknowledged", counts.acked);
    report.figure("API writes refused (4xx)", counts.refused);
    report.figure("API writes in flight at a kill", counts.lost);
    report.figure("file writes (in place or renamed over)", counts.file_writes);
    report.figure("file deletes", counts.file_deletes);
    report.figure("instances checked in /proc", broken.checked_instances);
    let median_max = |mut v: Vec<Duration>| {
        v.sort();
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        format!("{:.0} / {:.0} ms", ms(v.get(v.len() / 2)), ms(v.last()))
    };
    report.figure("restart to listening, median / max", median_max(booting));
    report.figure("listening to checked, median / max", median_max(checking));
    report.invariant("acknowledged writes lost or invented", broken.lost_writes);
    report.invariant("answers contradicting earlier acks", broken.surprises);
    report.invariant("restarts that did not settle", broken.unsettled);
    report.invariant("duplicate processes", broken.duplicates);
    report.invariant("leaked processes", broken.leaked);
    report.invariant("desired instances not running", broken.missing);
    report.invariant("instances on a stale spec", broken.stale);
    report.invariant("pid reported ≠ pid running", broken.pid_mismatch);
    report.invariant("zombie children", broken.zombies);
    report.invariant("failed reopens of the store", broken.failed_reopens);
    report.invariant("daemon panics", broken.panics);
    report.invariant(
        "processes outliving an orderly shutdown",
        broken.outlived_shutdown,
    );
    report.invariant("runs of a finished job after a restart", broken.job_reruns);
    report.invariant("processes left after shutdown", left);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(file: bool, command: &str, instances: u32, running: bool) -> Option<Prog> {
        Some(Prog {
            file,
            command: command.into(),
            instances,
            running,
        })
    }

    #[test]
    fn writes_apply_only_where_the_daemon_would_accept_them() {
        let register = Op::Register("a0".into(), "sleep 1".into(), 2);
        assert_eq!(
            apply(&register, &None),
            Some(prog(false, "sleep 1", 2, true))
        );
        assert_eq!(apply(&register, &prog(false, "sleep 9", 1, false)), None);

        let update = Op::Update("a0".into(), "sleep 2".into(), 3);
        // An update keeps the desired state and is refused for file programs and absent ones.
        assert_eq!(
            apply(&update, &prog(false, "sleep 1", 1, false)),
            Some(prog(false, "sleep 2", 3, false))
        );
        assert_eq!(apply(&update, &prog(true, "sleep 1", 1, true)), None);
        assert_eq!(apply(&update, &None), None);

        let unregister = Op::Unregister("a0".into());
        assert_eq!(
            apply(&unregister, &prog(false, "sleep 1", 1, true)),
            Some(None)
        );
        assert_eq!(apply(&unregister, &prog(true, "sleep 1", 1, true)), None);

        let stop = Op::Run("f1".into(), false);
        assert_eq!(
            apply(&stop, &prog(true, "sleep 1", 2, true)),
            Some(prog(true, "sleep 1", 2, false))
        );
        assert_eq!(apply(&stop, &None), None);
    }

    #[test]
    fn program_files_say_the_same_in_every_format() {
        for file in FILES {
            let text = file_text(file, "sleep 7", 2);
            let tree: Value = match file.rsplit('.').next() {
                Some("toml") => {
                    serde_json::to_value(toml::from_str::<toml::Value>(&text).unwrap()).unwrap()
                }
                Some("json") => serde_json::from_str(&text).unwrap(),
                _ => serde_yaml::from_str(&text).unwrap(),
            };
            assert_eq!(
                tree,
                json!({"command": "sleep 7", "instances": 2}),
                "{file}"
            );
        }
    }

    #[test]
    fn instances_are_named_like_the_daemon_names_them() {
        assert_eq!(instance_names("web", 1), ["web"]);
        assert_eq!(instance_names("web", 3), ["web-1", "web-2", "web-3"]);
    }
}
