//! Durations as users write them: `"500ms"`, `"1.5s"`, `"2m"`, `"1h"`.
//!
//! [`Dur`] serializes back to the same compact string, so specs in the store and in JSON output
//! read the way the files were written.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed from a string with a unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why}; write a number and a unit, e.g. \"500ms\", \"1.5s\", \"2m\", \"1h\"")]
pub struct DurationError {
    pub input: String,
    pub why: &'static str,
}

impl Dur {
    pub const ZERO: Dur = Dur(Duration::ZERO);

    pub fn from_secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    pub fn from_millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Dur {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| DurationError {
            input: input.to_string(),
            why,
        };
        let mut s = input.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        // One or more number-unit pairs, as Go's `time.ParseDuration` reads them: "1m30s".
        let mut secs = 0.0;
        while !s.is_empty() {
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("the unit is missing"))?;
            let (num, rest) = s.split_at(split);
            if num.is_empty() {
                return Err(err("the number is missing"));
            }
            let value: f64 = num.parse().map_err(|_| err("the number is not valid"))?;
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let (unit, next) = rest.split_at(unit_len);
            let unit_secs = match unit.trim() {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return Err(err("the unit is not one of ms, s, m, h, d")),
            };
            secs += value * unit_secs;
            s = next.trim_start();
        }
        if !secs.is_finite() || secs > 1e12 {
            return Err(err("it is too large"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    /// The shortest exact form: `0s`, `500ms`, `1.5s`, `2m`, `1h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if nanos.is_multiple_of(size) {
                return write!(f, "{}{unit}", nanos / size);
            }
        }
        if nanos >= 1_000_000_000 {
            // Sub-second fractions of seconds, e.g. 1.5s, exact to the nanosecond.
            let s = format!("{:.9}", self.0.as_secs_f64());
            return write!(f, "{}s", s.trim_end_matches('0').trim_end_matches('.'));
        }
        write!(f, "{nanos}ns")
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            ("1m30s", Duration::from_secs(90)),
            ("1h 30m", Duration::from_secs(5400)),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Dur>().unwrap().0, want, "{input}");
        }
    }

    #[test]
    fn rejects_bad_forms_with_a_reason() {
        for input in ["", "10", "s", "1x", "1..5s", "-1s", "abc", "1m30", "1s x"] {
            let e = input.parse::<Dur>().unwrap_err();
            assert!(e.to_string().contains("invalid duration"), "{input}: {e}");
        }
    }

    #[test]
    fn displays_round_trip() {
        for input in ["0s", "500ms", "1500ms", "2m", "1h", "90s", "250us"] {
            let d: Dur = input.parse().unwrap();
            let again: Dur = d.to_string().parse().unwrap();
            assert_eq!(d, again, "{input} -> {d}");
        }
        assert_eq!("1.5s".parse::<Dur>().unwrap().to_string(), "1500ms");
        assert_eq!("60s".parse::<Dur>().unwrap().to_string(), "1m");
    }
}
