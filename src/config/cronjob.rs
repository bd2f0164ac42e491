//! The keys of a cron job (`docs/configuration.md`, "Cron jobs"): a `type = "cronjob"` file, or a
//! program with a `schedule`. `schedule`, `time_zone`, `concurrency`, `suspend`,
//! `starting_deadline`, `history_limit`, `timeout`, `retries`; the job itself is the rest of the
//! program's keys.

use super::program::RawProgram;
use super::raw::Check;
use super::{Concurrency, CronSpec, ProgramSpec, TimeZone};

/// Applies the keys to `spec`; `kind` is the file's `type`, when it says one.
pub fn apply(c: &mut Check, raw: &RawProgram, spec: &mut ProgramSpec, kind: Option<&str>) {
    // The keys only a cron job takes, and whether each is written.
    let cron_only = [
        ("time_zone", !raw.time_zone.is_absent()),
        ("concurrency", !raw.concurrency.is_absent()),
        ("suspend", !raw.suspend.is_absent()),
        ("starting_deadline", !raw.starting_deadline.is_absent()),
        ("history_limit", !raw.history_limit.is_absent()),
        ("timeout", !raw.timeout.is_absent()),
        ("retries", !raw.retries.is_absent()),
    ];
    let declared = kind == Some("cronjob");
    if kind == Some("process") && !raw.schedule.is_absent() {
        c.bad("schedule", "makes a cron job, but `type` is \"process\"")
            .help("write type = \"cronjob\", or remove `schedule`");
        return;
    }
    if !declared && raw.schedule.is_absent() {
        for (key, _) in cron_only.into_iter().filter(|&(_, given)| given) {
            c.bad(key, "applies only to cron jobs")
                .help("add `schedule` (e.g. schedule = \"@hourly\") to make this a cron job");
        }
        return;
    }
    let hint = "schedule = \"@hourly\", \"*/5 * * * *\" or \"@every 30s\"";
    c.required(&raw.schedule, "schedule", " for a cron job", hint);
    let schedule = c.get(&raw.schedule, "schedule").and_then(|text| match text.parse() {
        Ok(s) => Some(s),
        Err(why) => {
            c.err("schedule", format!("`{}`: {why}", c.at.key("schedule")))
                .help("write 5 fields (\"*/5 * * * *\"), 6 with seconds first, \"@hourly\", \"@daily\", … or \"@every 30s\"");
            None
        }
    });
    let time_zone = c
        .get(&raw.time_zone, "time_zone")
        .and_then(|z| match z.parse::<TimeZone>() {
            Ok(z) => Some(z),
            Err(why) => {
                c.err("time_zone", format!("`{}`: {why}", c.at.key("time_zone")))
                    .help("name a zone such as \"UTC\" or \"Europe/Berlin\"");
                None
            }
        });
    let concurrency = c.value(&raw.concurrency, "concurrency").unwrap_or_default();
    let instances_given = !raw.instances.is_absent();
    match concurrency {
        Concurrency::Allow if spec.instances < 2 => {
            c.bad("concurrency", "\"allow\" runs overlapping runs each in an instance of its own, and `instances` is 1")
                .help("set `instances` to how many runs may overlap, e.g. instances = 3");
        }
        Concurrency::Forbid | Concurrency::Replace if instances_given && spec.instances > 1 => {
            c.bad(
                "instances",
                format_args!(
                    "must be 1 with concurrency = \"{}\": only one run is under way at a time",
                    concurrency.as_str()
                ),
            )
            .help("set concurrency = \"allow\" for overlapping runs");
        }
        _ => {}
    }
    if spec.auto_restart {
        c.bad(
            "auto_restart",
            "does not apply to a cron job: a run that ends is done",
        )
        .help("use `retries` to run a failed run again");
    }
    let starting_deadline = c.positive_dur(&raw.starting_deadline, "starting_deadline");
    let timeout = c.positive_dur(&raw.timeout, "timeout");
    let history_limit = raw.history_limit.or(CronSpec::DEFAULT_HISTORY_LIMIT.into());
    let history_limit = c.count(&history_limit, "history_limit");
    let retries = c.count(&raw.retries, "retries").unwrap_or(0);
    if let (Some(schedule), Some(history_limit)) = (schedule, history_limit) {
        spec.cron = Some(Box::new(CronSpec {
            schedule,
            time_zone,
            concurrency,
            suspend: c.value(&raw.suspend, "suspend").unwrap_or(false),
            starting_deadline,
            history_limit,
            timeout,
            retries,
        }));
    }
}
