//! Cron jobs (`docs/configuration.md`, "Cron jobs"): a program with a `schedule` is run at the
//! times it names instead of being kept running. This module holds the validated types and the
//! one computation on them, "the next time after this one"; the schedule grammar is croner's
//! and the time-zone rules chrono-tz's, never ours.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use chrono::{DateTime, TimeZone as _};
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Dur;

/// When a cron job runs: a cron expression (5 fields, or 6 with seconds first), a nickname
/// (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`), or `@every <duration>`.
#[derive(Clone, Debug)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Cron(Box<croner::Cron>),
    Every(Dur),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.text == other.text
    }
}

impl Eq for Schedule {}

impl Schedule {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time of the schedule strictly after `after`, in `zone` (the daemon's local
    /// time without one); `None` when there is none (a pattern no date matches).
    pub fn next_after(&self, after: SystemTime, zone: Option<&TimeZone>) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every(d) => after.checked_add(d.get()),
            Kind::Cron(cron) => {
                let utc: DateTime<chrono::Utc> = after.into();
                let next = match zone {
                    Some(z) => cron
                        .find_next_occurrence(&utc.with_timezone(&z.0), false)
                        .ok()
                        .map(|t| t.with_timezone(&chrono::Utc)),
                    None => cron
                        .find_next_occurrence(&utc.with_timezone(&chrono::Local), false)
                        .ok()
                        .map(|t| t.with_timezone(&chrono::Utc)),
                }?;
                Some(next.into())
            }
        }
    }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        let text = s.trim().to_string();
        if let Some(every) = text.strip_prefix("@every") {
            let d: Dur = every
                .trim()
                .parse()
                .map_err(|e: super::duration::DurationError| format!("`@every`: {e}"))?;
            if d < Dur::from_millis(100) {
                return Err("`@every` must be at least 100ms".to_string());
            }
            return Ok(Schedule {
                text,
                kind: Kind::Every(d),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&text)
            .map_err(|e| format!("{text:?} is not a cron schedule: {e}"))?;
        Ok(Schedule {
            text,
            kind: Kind::Cron(Box::new(cron)),
        })
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An IANA time zone (`Europe/Berlin`, `UTC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl FromStr for TimeZone {
    type Err = String;

    fn from_str(s: &str) -> Result<TimeZone, String> {
        s.trim()
            .parse::<chrono_tz::Tz>()
            .map(TimeZone)
            .map_err(|_| format!("{s:?} is not a time zone of the IANA database"))
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl Serialize for TimeZone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a run due while an earlier one still runs does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Starts beside it, in another instance (`instances` is how many runs may overlap).
    Allow,
    /// Is skipped (the default).
    #[default]
    Forbid,
    /// Stops it and starts in its place.
    Replace,
}

impl Concurrency {
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Allow => "allow",
            Concurrency::Forbid => "forbid",
            Concurrency::Replace => "replace",
        }
    }
}

/// The schedule of a cron job and how its runs go; the job itself is the rest of the spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronSpec {
    pub schedule: Schedule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<TimeZone>,
    #[serde(default)]
    pub concurrency: Concurrency,
    /// No scheduled runs while true (`trigger` still runs it).
    #[serde(default)]
    pub suspend: bool,
    /// How late a run may start: a run due longer ago than this (the daemon was down, or busy)
    /// is skipped. `None`: runs due while the daemon was down are skipped, late ones while it
    /// runs are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Dur>,
    /// Finished runs kept in the history, with their log files.
    pub history_limit: u32,
    /// The longest a run may take before it is stopped; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// How many times a failed run (exit code other than 0) is run again, `retry_interval` apart.
    #[serde(default)]
    pub retries: u32,
}

impl CronSpec {
    pub const DEFAULT_HISTORY_LIMIT: u32 = 10;

    /// The next scheduled time strictly after `after`.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        self.schedule.next_after(after, self.time_zone.as_ref())
    }
}

/// `after` in `zone` as a wall-clock time, for messages: `2026-01-01 12:00:00 CET`.
pub fn describe_time(t: SystemTime, zone: Option<&TimeZone>) -> String {
    let utc: DateTime<chrono::Utc> = t.into();
    match zone {
        Some(z) => {
            z.0.from_utc_datetime(&utc.naive_utc())
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        }
        None => utc
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn schedules_of_every_documented_form() {
        let utc: TimeZone = "UTC".parse().unwrap();
        let next = |s: &str, after: &str| {
            let schedule: Schedule = s.parse().unwrap();
            schedule.next_after(at(after), Some(&utc)).unwrap()
        };
        assert_eq!(
            next("*/5 * * * *", "2026-01-01T12:01:30Z"),
            at("2026-01-01T12:05:00Z")
        );
        assert_eq!(
            next("30 */5 * * * *", "2026-01-01T12:05:30Z"),
            at("2026-01-01T12:10:30Z"),
            "six fields: seconds first"
        );
        assert_eq!(
            next("@hourly", "2026-01-01T12:00:00Z"),
            at("2026-01-01T13:00:00Z"),
            "strictly after"
        );
        assert_eq!(
            next("@daily", "2026-01-01T12:00:00Z"),
            at("2026-01-02T00:00:00Z")
        );
        assert_eq!(
            next("@every 1m30s", "2026-01-01T12:00:00Z"),
            at("2026-01-01T12:01:30Z")
        );
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "@every",
            "@every 10",
            "@every 1ms",
            "@reboot",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_zones_move_the_wall_clock_times() {
        let berlin: TimeZone = "Europe/Berlin".parse().unwrap();
        let daily: Schedule = "0 2 * * *".parse().unwrap();
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            daily.next_after(at("2026-01-10T00:00:00Z"), Some(&berlin)),
            Some(at("2026-01-10T01:00:00Z"))
        );
        assert!("Mars/Olympus".parse::<TimeZone>().is_err());
        let every: Schedule = "@every 2s".parse().unwrap();
        let t = at("2026-01-01T00:00:00Z");
        assert_eq!(
            every.next_after(t, Some(&berlin)),
            Some(t + Duration::from_secs(2))
        );
    }
}
