//! What a starting daemon takes over: the processes an earlier daemon left, found from the
//! store's instance records *and* from `/proc` by their tag, so that a child spawned but not yet
//! recorded when that daemon died is found too (`docs/reliability.md`, window 1).
//!
//! Per instance name, the record says what was intended (the spec its process runs, a start
//! written ahead, the requests it carried out, how a finished job ended) and `/proc` says what
//! runs. [`takeover`] is the pure decision; the loop carries it out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::config::{Exec, InstanceId, ProgramSpec};
use crate::desired::Programs;
use crate::plan::RunSeq;
use crate::store::{DesiredRun, Finished, InstanceRecord, ProgramRecord};
use crate::supervisor::tag::Tagged;
use crate::supervisor::{ExitInfo, Initial};

/// One instance the loop starts with.
#[derive(Debug)]
pub(super) struct Adopted {
    pub id: InstanceId,
    /// The spec its process runs, as far as the record knows; else the desired one.
    pub spec: Arc<ProgramSpec>,
    /// The generation of `spec`, when known.
    pub generation: Option<u64>,
    pub initial: Initial,
    /// The requests it has carried out.
    pub seq: RunSeq,
    /// Its record as stored, if any.
    pub record: Option<InstanceRecord>,
    /// No program claims it any more: the first pass stops it and forgets it.
    pub orphan: bool,
    /// Where its process was found: `"record"` or `"tag"`; `None` without a process.
    pub found_by: Option<&'static str>,
}

/// What a starting daemon does about the records and tagged processes it finds.
#[derive(Debug, Default)]
pub(super) struct Takeover {
    pub adopted: Vec<Adopted>,
    /// Records that name no process and that no program claims: deleted.
    pub forget: Vec<String>,
    /// Tagged processes nothing will adopt and that no adopted process's group holds: detector
    /// commands whose daemon died, and processes whose group leader has died. Killed.
    pub leftovers: Vec<Tagged>,
}

/// Decides, per instance name, what to adopt, forget and kill.
///
/// - `records`: the store's instance records; `tagged`: the live processes carrying this
///   daemon's tag; `boot`: this boot's id; `alive(pid, start_time)`: whether that process lives.
/// - A recorded pid is adopted when it lives with its recorded start time and its record is of
///   this boot (or predates boot ids). Else the oldest tagged process leading its own group under
///   the instance's name is: spawned, but not recorded by the daemon that died. It runs the spec
///   the record wrote ahead for the start under way, or else the one the record names.
/// - A record whose process is gone keeps its restarts; one whose job finished in this boot
///   stays finished (`exited`/`failed`) rather than starting again.
pub(super) fn takeover(
    programs: &Programs,
    records: Vec<(String, InstanceRecord)>,
    tagged: &[Tagged],
    launched: &BTreeMap<String, u64>,
    boot: Option<&str>,
    alive: impl Fn(i32, u64) -> bool,
) -> Takeover {
    let mut claims: BTreeMap<String, (&ProgramRecord, InstanceId)> = BTreeMap::new();
    for program in programs.values() {
        for id in program.spec.instances() {
            claims.insert(id.name.clone(), (program, id));
        }
    }
    let mut leaders: BTreeMap<&str, Vec<&Tagged>> = BTreeMap::new();
    for t in tagged.iter().filter(|t| !t.detector && t.leads_group()) {
        leaders.entry(t.name.as_str()).or_default().push(t);
    }
    let mut records: BTreeMap<String, InstanceRecord> = records.into_iter().collect();
    let names: BTreeSet<String> = records
        .keys()
        .cloned()
        .chain(leaders.keys().map(|n| n.to_string()))
        .collect();
    let mut out = Takeover::default();
    // Leaders of processes spawned with a spec a later start written ahead replaced.
    let mut superseded: Vec<i32> = Vec::new();
    for name in names {
        let record = records.remove(&name);
        let this_boot = |r: &InstanceRecord| match (r.boot_id.as_deref(), boot) {
            (Some(theirs), Some(ours)) => theirs == ours,
            _ => true,
        };
        let recorded = record
            .as_ref()
            .filter(|r| this_boot(r))
            .and_then(|r| Some((r.pid?, r.start_time?)))
            .filter(|&(pid, start_time)| alive(pid, start_time));
        // The process, the spec it runs (if the record knows) with its generation, how it was
        // found, and whether it replaced the recorded one without a start written ahead.
        let process = match recorded {
            Some((pid, start_time)) => {
                let spec = record
                    .as_ref()
                    .and_then(|r| Some((r.spec.clone()?, r.generation)));
                Some((pid, start_time, spec, "record", false))
            }
            None => leaders
                .get(name.as_str())
                .and_then(|found| found.iter().min_by_key(|t| (t.start_time, t.pid)))
                .and_then(|t| {
                    let spec = match record.as_ref().map(|r| spec_of_tagged(r, t.spec)) {
                        Some(Ok(spec)) => spec,
                        Some(Err(Superseded)) => {
                            superseded.push(t.pid);
                            return None;
                        }
                        None => None,
                    };
                    let replaced = record.as_ref().is_some_and(|r| {
                        this_boot(r)
                            && r.starting.is_none()
                            && r.start_time.is_some_and(|before| before < t.start_time)
                    });
                    Some((t.pid, t.start_time, spec, "tag", replaced))
                }),
        };
        let mut restarts = record.as_ref().map_or(0, |r| r.restarts);
        let claim = claims.get(&name);
        // A recorded process of this boot replaced by a younger one, with no start written
        // ahead: the earlier daemon restarted it on its own and died before recording that. With
        // `auto_restart` that was an automatic restart, and `restarts` counts it.
        if let (Some((program, _)), Some((.., true))) = (claim, &process) {
            if program.spec.auto_restart {
                restarts += 1;
            }
        }
        match (claim, process) {
            (Some((program, id)), process) => {
                let wanted = program.instance_desired(&name).seq;
                // A tombstone of a program that was deleted and has come back since: the
                // requests it carried out and how its run ended were the old program's.
                let record = record.map(|r| match r.removed {
                    true => InstanceRecord {
                        seq: None,
                        finished: None,
                        starting: None,
                        ..r
                    },
                    false => r,
                });
                let seq = record.as_ref().and_then(|r| r.seq).unwrap_or(wanted);
                let (spec, generation, initial, found_by) = match process {
                    Some((pid, start_time, spec, found_by, _)) => {
                        let (spec, generation) = match spec {
                            Some((spec, generation)) => (Arc::new(spec), generation),
                            None => (Arc::clone(&program.spec), Some(program.generation)),
                        };
                        let initial = Initial::Adopt {
                            pid,
                            start_time,
                            restarts,
                        };
                        (spec, generation, initial, Some(found_by))
                    }
                    None => {
                        let finished = record
                            .as_ref()
                            .filter(|r| r.boot_id.is_some() && this_boot(r))
                            .and_then(|r| {
                                let carried_out = started_since_written(r, launched.get(&name));
                                r.finished
                                    .clone()
                                    .or_else(|| ended(&name, r, program, carried_out))
                            });
                        let initial = match finished {
                            Some(f) => Initial::Finished {
                                restarts,
                                failed: f.failed,
                                exit: Some(ExitInfo {
                                    code: f.code,
                                    signal: f.signal,
                                }),
                                message: f.message,
                            },
                            None => Initial::Fresh { restarts },
                        };
                        let spec = Arc::clone(&program.spec);
                        (spec, Some(program.generation), initial, None)
                    }
                };
                out.adopted.push(Adopted {
                    id: id.clone(),
                    spec,
                    generation,
                    initial,
                    seq,
                    record,
                    orphan: false,
                    found_by,
                });
            }
            (None, Some((pid, start_time, spec, found_by, _))) => {
                let program = record.as_ref().map(|r| r.program.as_str());
                let index = leaders
                    .get(name.as_str())
                    .and_then(|found| found.iter().find(|t| t.pid == pid))
                    .and_then(|t| t.index);
                let id = orphan_id(&name, program, index);
                // Stop settings: the record's, else those the program (scaled down) has now.
                let (spec, generation) = match spec {
                    Some((spec, generation)) => (Arc::new(spec), generation),
                    None => match programs.get(&id.program) {
                        Some(p) => (Arc::clone(&p.spec), None),
                        None => (
                            Arc::new(ProgramSpec::new(id.program.clone(), Exec::Args(Vec::new()))),
                            None,
                        ),
                    },
                };
                out.adopted.push(Adopted {
                    id,
                    spec,
                    generation,
                    initial: Initial::Adopt {
                        pid,
                        start_time,
                        restarts,
                    },
                    seq: RunSeq::default(),
                    record,
                    orphan: true,
                    found_by: Some(found_by),
                });
            }
            (None, None) => out.forget.push(name),
        }
    }
    // Tagged processes that belong to no live group of their instance: detector commands (no
    // daemon waits for them now) and members whose group leader is gone.
    let leads = |pgid: i32, name: &str| {
        tagged
            .iter()
            .any(|l| l.pid == pgid && l.name == name && l.leads_group())
    };
    out.leftovers = tagged
        .iter()
        .filter(|t| {
            t.detector
                || (!t.leads_group() && !leads(t.pgid, &t.name))
                || superseded.contains(&t.pgid)
        })
        .cloned()
        .collect();
    out
}

/// A process of this boot that the record names (or whose start it wrote ahead) and that is gone:
/// it ended while no daemon ran. Without `auto_restart` nothing restarts a process that ended, so
/// the instance is `exited`, as it would be had a daemon seen the exit — a job that ran is not
/// run again. A start written ahead that the launch journal shows no process for was never
/// carried out (the daemon died before spawning, or while the old process of a restart was
/// stopping): it is carried out now, so an acknowledged start is never lost either.
fn ended(
    name: &str,
    r: &InstanceRecord,
    program: &ProgramRecord,
    carried_out: bool,
) -> Option<Finished> {
    // A start written ahead that no process of it carried out (the launch journal has no launch
    // since) was cut short by the crash: nothing ended, the start is carried out now.
    let cut_short = r.starting.is_some() && !carried_out;
    // A tombstone's process, or one the daemon had ordered stopped, did not end on its own. A
    // removal sets the record's flag ahead of its signal; a stop sets none: the loop orders one
    // only from desired state that says stopped, which it sees once that write was flushed
    // (`docs/reliability.md`).
    let stopped = program.instance_desired(name).run == DesiredRun::Stopped;
    let stopped_by_daemon = r.removed || r.stopping || stopped;
    let on_its_own = !cut_short && !stopped_by_daemon;
    (r.may_run() && !program.spec.auto_restart && on_its_own).then(|| Finished {
        failed: false,
        code: None,
        signal: None,
        message: Some(
            "its process ended while no daemon ran; not restarted (auto_restart is off)"
                .to_string(),
        ),
    })
}

/// Whether the instance's latest spawn carried out the start written ahead, as the launch
/// journal says (`latest`: the launch token of its latest spawn, the `written_ns` of the start
/// it carried out). A record written before starts were timed counts as carried out: a process
/// is never started twice.
fn started_since_written(r: &InstanceRecord, latest: Option<&u64>) -> bool {
    match r.starting.as_ref().and_then(|l| l.written_ns) {
        Some(written) => latest == Some(&written),
        None => true,
    }
}
/// A process found by its tag that runs none of the specs its record names: a spawn that was
/// under way when the start of a newer spec was written ahead. It is killed and the start
/// written ahead carried out.
struct Superseded;

/// What a process found by its tag runs: the spec its tag's digest matches, the start written
/// ahead or the recorded one. Without a digest (a process of an older provisr), the start
/// written ahead, else the recorded spec, as the record is all there is to go by.
fn spec_of_tagged(
    r: &InstanceRecord,
    digest: Option<u64>,
) -> Result<Option<(ProgramSpec, Option<u64>)>, Superseded> {
    let starting = r
        .starting
        .as_ref()
        .map(|l| (l.spec.clone(), Some(l.generation)));
    let recorded = r.spec.clone().map(|s| (s, r.generation));
    let Some(digest) = digest else {
        return Ok(starting.or(recorded));
    };
    let matches = |c: &Option<(ProgramSpec, Option<u64>)>| {
        c.as_ref().is_some_and(|(s, _)| s.digest() == digest)
    };
    if matches(&starting) {
        Ok(starting)
    } else if matches(&recorded) {
        Ok(recorded)
    } else if starting.is_none() && recorded.is_none() {
        Ok(None)
    } else {
        Err(Superseded)
    }
}

/// The id of an instance no program claims, named `name`: instance `index` of `program` when
/// that spells `name`, else a single instance of a program called `name`. Only its name and
/// program matter: it is stopped and forgotten.
fn orphan_id(name: &str, program: Option<&str>, index: Option<u32>) -> InstanceId {
    let suffix_index = |program: &str| -> Option<u32> {
        name.strip_prefix(program)?.strip_prefix('-')?.parse().ok()
    };
    if let Some(program) = program {
        if name == program {
            return InstanceId::new(program, 1, 1);
        }
        if let Some(i) = suffix_index(program).filter(|i| *i > 0) {
            return InstanceId::new(program, i, i.max(2));
        }
    }
    if let Some(i) = index.filter(|i| *i > 0) {
        if let Some(program) = name.strip_suffix(&format!("-{i}")) {
            return InstanceId::new(program, i, i.max(2));
        }
    }
    InstanceId::new(name, 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use crate::store::Launch;

    fn spec(name: &str, command: &str, instances: u32) -> ProgramSpec {
        let mut spec = ProgramSpec::new(name, Exec::Command(command.into()));
        spec.instances = instances;
        spec
    }

    fn programs(specs: &[ProgramSpec]) -> Programs {
        Arc::new(
            specs
                .iter()
                .map(|s| {
                    let mut r = ProgramRecord::new(s.clone(), Source::Api);
                    r.generation = 5;
                    (s.name.clone(), Arc::new(r))
                })
                .collect(),
        )
    }

    fn record(program: &str, pid: Option<i32>) -> InstanceRecord {
        InstanceRecord {
            pid,
            start_time: pid.map(|p| p as u64 * 10),
            restarts: 2,
            boot_id: Some("this".into()),
            ..InstanceRecord::new(program)
        }
    }

    fn tag(pid: i32, name: &str, pgid: i32) -> Tagged {
        Tagged {
            pid,
            ppid: 1,
            pgid,
            start_time: pid as u64 * 10,
            name: name.into(),
            index: None,
            detector: false,
            spec: None,
        }
    }

    #[test]
    fn a_process_found_by_its_tag_runs_the_spec_its_digest_names() {
        // `web` ran "sleep 1" (recorded) and the start of "sleep 3" was written ahead; the
        // process found by its tag (no recorded pid) was spawned with one of three specs.
        let p = programs(&[spec("web", "sleep 3", 1)]);
        let (one, two, three) = (
            spec("web", "sleep 1", 1),
            spec("web", "sleep 2", 1),
            spec("web", "sleep 3", 1),
        );
        let take = |digest: Option<u64>| {
            let mut r = record("web", None);
            r.spec = Some(one.clone());
            r.starting = Some(Launch {
                generation: 7,
                spec: three.clone(),
                written_ns: Some(100),
            });
            let mut t = tag(40, "web", 40);
            t.spec = digest;
            let tagged = [t, tag(41, "web", 40)];
            takeover(
                &p,
                vec![("web".into(), r)],
                &tagged,
                &BTreeMap::new(),
                Some("this"),
                alive,
            )
        };
        let runs = |t: &Takeover| t.adopted[0].spec.exec.clone();
        // The start written ahead, or the recorded spec, as its digest says.
        let t = take(Some(three.digest()));
        assert_eq!(
            (pid_of(&t.adopted[0]), runs(&t)),
            (Some(40), three.exec.clone())
        );
        let t = take(Some(one.digest()));
        assert_eq!(
            (pid_of(&t.adopted[0]), runs(&t)),
            (Some(40), one.exec.clone())
        );
        // Neither: spawned before the newer start was written; killed with its group, and the
        // start written ahead is carried out.
        let t = take(Some(two.digest()));
        assert_eq!(pid_of(&t.adopted[0]), None);
        assert!(matches!(t.adopted[0].initial, Initial::Fresh { .. }));
        let killed: Vec<i32> = t.leftovers.iter().map(|l| l.pid).collect();
        assert_eq!(killed, [40, 41]);
        // No digest (an older provisr's process): the start written ahead, as before.
        let t = take(None);
        assert_eq!(runs(&t), three.exec);
    }

    /// Every pid below 100 lives, with start time pid × 10.
    fn alive(pid: i32, start_time: u64) -> bool {
        pid < 100 && start_time == pid as u64 * 10
    }

    fn pid_of(a: &Adopted) -> Option<i32> {
        match a.initial {
            Initial::Adopt { pid, .. } => Some(pid),
            _ => None,
        }
    }

    #[test]
    fn a_start_written_ahead_is_carried_out_unless_the_journal_shows_its_launch() {
        // A job (no auto_restart) whose start was written ahead with token 100; no process found.
        let p = programs(&[spec("job", "true", 1)]);
        let written = |at: Option<u64>| {
            let mut r = record("job", None);
            r.starting = Some(Launch {
                generation: 5,
                spec: spec("job", "true", 1),
                written_ns: at,
            });
            vec![("job".to_string(), r)]
        };
        let initial = |records, launched: &[(&str, u64)]| {
            let launched = launched.iter().map(|(n, t)| (n.to_string(), *t)).collect();
            let t = takeover(&p, records, &[], &launched, Some("this"), alive);
            t.adopted[0].initial.clone()
        };
        // Never launched: cut short by the crash, so it is started now.
        assert!(matches!(
            initial(written(Some(100)), &[]),
            Initial::Fresh { .. }
        ));
        // The latest spawn carried out an earlier start: not this one.
        let before = initial(written(Some(100)), &[("job", 90)]);
        assert!(matches!(before, Initial::Fresh { .. }), "{before:?}");
        // The latest spawn carried out this start: it ran, and ended while no daemon ran. Not
        // run twice.
        let ran = initial(written(Some(100)), &[("job", 100)]);
        assert!(matches!(ran, Initial::Finished { .. }), "{ran:?}");
        // A record from before launches were timed: taken as carried out.
        assert!(matches!(
            initial(written(None), &[]),
            Initial::Finished { .. }
        ));
    }

    #[test]
    fn a_process_gone_while_desired_state_said_stopped_was_stopped_by_the_daemon() {
        // A job (no auto_restart) with a recorded process of this boot that is gone, and no
        // `stopping` flag: the daemon died after its stop's signal and before recording it.
        let initial = |desired: DesiredRun| {
            let mut r = ProgramRecord::new(spec("job", "sleep 9", 1), Source::Api);
            r.desired = desired;
            let p: Programs = Arc::new([("job".to_string(), Arc::new(r))].into());
            let records = vec![("job".to_string(), record("job", Some(500)))];
            let t = takeover(&p, records, &[], &BTreeMap::new(), Some("this"), alive);
            t.adopted[0].initial.clone()
        };
        // Desired state says stopped, durably: stopped, not "ended while no daemon ran".
        let stopped = initial(DesiredRun::Stopped);
        assert!(matches!(stopped, Initial::Fresh { .. }), "{stopped:?}");
        // Desired state says running: it ended on its own.
        let ended = initial(DesiredRun::Running);
        assert!(matches!(ended, Initial::Finished { .. }), "{ended:?}");
    }

    #[test]
    fn a_tombstone_says_nothing_about_a_program_of_its_name_that_came_back() {
        // `job` was deleted while its process stopped, then registered again; the process is gone.
        let p = programs(&[spec("job", "true", 1)]);
        let mut r = record("job", Some(500));
        r.removed = true;
        r.seq = Some(RunSeq {
            start: 3,
            restart: 1,
        });
        let t = takeover(
            &p,
            vec![("job".into(), r)],
            &[],
            &BTreeMap::new(),
            Some("this"),
            alive,
        );
        let a = &t.adopted[0];
        assert!(
            matches!(a.initial, Initial::Fresh { .. }),
            "{:?}",
            a.initial
        );
        assert_eq!(
            a.seq,
            RunSeq::default(),
            "the new program's requests, not the old one's"
        );
    }

    #[test]
    fn a_recorded_live_process_is_adopted_with_the_spec_it_runs() {
        let old = spec("web", "sleep 1", 1);
        let p = programs(&[spec("web", "sleep 2", 1)]);
        let mut r = record("web", Some(10));
        r.spec = Some(old.clone());
        r.generation = Some(4);
        let t = takeover(
            &p,
            vec![("web".into(), r)],
            &[],
            &BTreeMap::new(),
            Some("this"),
            alive,
        );
        let a = &t.adopted[0];
        assert_eq!(
            (pid_of(a), a.found_by, a.orphan),
            (Some(10), Some("record"), false)
        );
        assert_eq!((&*a.spec, a.generation), (&old, Some(4)));
    }

    #[test]
    fn an_unrecorded_tagged_leader_is_adopted_and_runs_the_start_written_ahead() {
        let p = programs(&[spec("web", "sleep 2", 1)]);
        let mut r = record("web", Some(500)); // dead
        r.spec = Some(spec("web", "sleep 1", 1));
        r.starting = Some(Launch {
            written_ns: None,
            generation: 5,
            spec: spec("web", "sleep 2", 1),
        });
        // The leader, a member of its group, and a younger leader (a setsid escapee of it).
        let tagged = [tag(20, "web", 20), tag(21, "web", 20), tag(30, "web", 30)];
        let t = takeover(
            &p,
            vec![("web".into(), r)],
            &tagged,
            &BTreeMap::new(),
            Some("this"),
            alive,
        );
        let a = &t.adopted[0];
        assert_eq!((pid_of(a), a.found_by), (Some(20), Some("tag")));
        assert_eq!(a.spec.exec, Exec::Command("sleep 2".into()));
        assert!(t.leftovers.is_empty(), "{:?}", t.leftovers);
        // The recorded process was replaced with no start written ahead, a restart the earlier
        // daemon did not record: counted when the program restarts automatically.
        let mut replaced = record("web", Some(15));
        replaced.spec = Some(spec("web", "sleep 2", 1));
        let mut auto = spec("web", "sleep 2", 1);
        auto.auto_restart = true;
        for (program, counted) in [(spec("web", "sleep 2", 1), 2), (auto, 3)] {
            let t = takeover(
                &programs(&[program]),
                vec![("web".into(), replaced.clone())],
                &[tag(20, "web", 20)],
                &BTreeMap::new(),
                Some("this"),
                |_, _| false,
            );
            assert!(
                matches!(t.adopted[0].initial, Initial::Adopt { pid: 20, restarts, .. } if restarts == counted)
            );
        }
        // Without any record at all, the desired spec is assumed.
        let t = takeover(&p, vec![], &tagged, &BTreeMap::new(), Some("this"), alive);
        assert_eq!(pid_of(&t.adopted[0]), Some(20));
        assert_eq!(t.adopted[0].generation, Some(5));
    }

    #[test]
    fn a_record_of_another_boot_is_not_adopted_and_its_finished_job_runs_again() {
        let p = programs(&[spec("web", "sleep 2", 1), spec("job", "true", 1)]);
        let mut web = record("web", Some(10));
        web.boot_id = Some("other".into());
        let finished = Finished {
            failed: false,
            code: Some(0),
            signal: None,
            message: Some("exited with code 0".into()),
        };
        let mut job = record("job", None);
        job.finished = Some(finished.clone());
        let mut old_job = job.clone();
        old_job.boot_id = Some("other".into());
        let t = takeover(
            &p,
            vec![("web".into(), web), ("job".into(), job)],
            &[],
            &BTreeMap::new(),
            Some("this"),
            alive,
        );
        let by: BTreeMap<&str, &Adopted> =
            t.adopted.iter().map(|a| (a.id.name.as_str(), a)).collect();
        assert_eq!(by["web"].initial, Initial::Fresh { restarts: 2 });
        assert!(
            matches!(&by["job"].initial, Initial::Finished { failed: false, exit: Some(e), .. } if e.code == Some(0))
        );
        let t = takeover(
            &p,
            vec![("job".into(), old_job)],
            &[],
            &BTreeMap::new(),
            Some("this"),
            alive,
        );
        assert_eq!(t.adopted[0].initial, Initial::Fresh { restarts: 2 });
    }

    #[test]
    fn a_process_that_ended_while_no_daemon_ran_is_restarted_only_with_auto_restart() {
        let mut service = spec("svc", "sleep 300", 1);
        service.auto_restart = true;
        let p = programs(&[spec("job", "true", 1), service]);
        let records = || {
            vec![
                ("job".to_string(), record("job", Some(500))),
                ("svc".to_string(), record("svc", Some(501))),
            ]
        };
        let t = takeover(&p, records(), &[], &BTreeMap::new(), Some("this"), alive);
        let by: BTreeMap<&str, &Adopted> =
            t.adopted.iter().map(|a| (a.id.name.as_str(), a)).collect();
        assert!(
            matches!(&by["job"].initial, Initial::Finished { failed: false, exit: Some(e), .. } if e.code.is_none())
        );
        assert_eq!(by["svc"].initial, Initial::Fresh { restarts: 2 });
        // After a reboot everything starts again.
        let t = takeover(&p, records(), &[], &BTreeMap::new(), Some("next"), alive);
        assert!(t
            .adopted
            .iter()
            .all(|a| a.initial == Initial::Fresh { restarts: 2 }));
    }

    #[test]
    fn unclaimed_processes_are_orphans_and_unclaimed_records_without_one_are_forgotten() {
        let p = programs(&[spec("web", "sleep 2", 2)]);
        let mut gone = record("gone", Some(11));
        gone.spec = Some(ProgramSpec {
            stop_signal: "INT".into(),
            ..spec("gone", "sleep 1", 1)
        });
        let records = vec![
            ("web-3".to_string(), record("web", Some(12))),
            ("gone".to_string(), gone),
            ("idle".to_string(), record("idle", None)),
        ];
        let mut stray = tag(40, "x-2", 40);
        stray.index = Some(2);
        let t = takeover(&p, records, &[stray], &BTreeMap::new(), Some("this"), alive);
        let orphans: Vec<(&str, &str, u32, &str)> = t
            .adopted
            .iter()
            .filter(|a| a.orphan)
            .map(|a| {
                (
                    a.id.name.as_str(),
                    a.id.program.as_str(),
                    a.id.index,
                    a.spec.stop_signal.as_str(),
                )
            })
            .collect();
        assert_eq!(
            orphans,
            [
                ("gone", "gone", 1, "INT"),
                ("web-3", "web", 3, "TERM"),
                ("x-2", "x", 2, "TERM"),
            ]
        );
        assert_eq!(t.forget, ["idle"]);
    }

    #[test]
    fn detectors_and_members_of_a_dead_leader_are_leftovers() {
        let p = programs(&[spec("web", "sleep 2", 1)]);
        let mut probe = tag(50, "web", 50);
        probe.detector = true;
        // 61 and 62 were in the group of leader 60, which is gone.
        let tagged = [
            tag(20, "web", 20),
            tag(21, "web", 20),
            tag(61, "web", 60),
            tag(62, "web", 60),
            probe,
        ];
        let t = takeover(&p, vec![], &tagged, &BTreeMap::new(), Some("this"), alive);
        let pids: Vec<i32> = t.leftovers.iter().map(|t| t.pid).collect();
        assert_eq!(pids, [61, 62, 50]);
        assert_eq!(pid_of(&t.adopted[0]), Some(20));
    }
}
