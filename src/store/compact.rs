//! How a record stores a program spec: without the keys that hold their value in a fixed
//! reference spec, filled back in from it when read (`docs/store.md`, "Stored specs").
//!
//! Most programs set a few keys and leave the rest at their defaults, and the store keeps a spec
//! in every program record and in every instance record that runs one; written whole, a spec is
//! about 440 bytes of JSON, most of it defaults. The reference is part of the schema, frozen
//! here rather than taken from the code's defaults: a default that moves only makes records that
//! hold it longer, while a change to the reference would change what older records mean, so it
//! takes a new schema version and a migration step (`migrations/README.md`).

use std::sync::LazyLock;

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The keys a stored spec omits when they hold these values (schema version 4 on).
const REFERENCE: &str = r#"{
    "work_dir": null,
    "use_os_env": true,
    "env": {},
    "priority": 0,
    "autostart": true,
    "instances": 1,
    "start_duration": "0s",
    "retry_count": 3,
    "retry_interval": "1s",
    "auto_restart": false,
    "restart_interval": "1s",
    "restart_max_interval": "1m",
    "stop_signal": "TERM",
    "stop_timeout": "10s",
    "log": {
        "stdout": null,
        "stderr": null,
        "dir": null,
        "max_size_mb": 10,
        "max_backups": 3,
        "max_age_days": 7,
        "compress": false
    },
    "detectors": []
}"#;

fn reference() -> &'static Map<String, Value> {
    static PARSED: LazyLock<Map<String, Value>> =
        LazyLock::new(|| serde_json::from_str(REFERENCE).expect("the reference spec is JSON"));
    &PARSED
}

/// Removes from `spec` every key whose value is the reference's, and within a table the
/// reference also has, every entry whose value is the reference's.
pub fn strip(spec: &mut Map<String, Value>) {
    strip_against(spec, reference());
}

fn strip_against(map: &mut Map<String, Value>, reference: &Map<String, Value>) {
    map.retain(|key, value| {
        let Some(usual) = reference.get(key) else {
            return true;
        };
        if let (Value::Object(inner), Value::Object(usual)) = (&mut *value, usual) {
            if !usual.is_empty() {
                strip_against(inner, usual);
                return !inner.is_empty();
            }
        }
        value != usual
    });
}

/// Puts back into `spec` every key of the reference it lacks: the inverse of [`strip`], and
/// nothing to do for a spec written whole (schema version 3).
pub fn fill(spec: &mut Map<String, Value>) {
    fill_from(spec, reference());
}

fn fill_from(map: &mut Map<String, Value>, reference: &Map<String, Value>) {
    for (key, usual) in reference {
        match (map.get_mut(key), usual) {
            (None, _) => {
                map.insert(key.clone(), usual.clone());
            }
            (Some(Value::Object(inner)), Value::Object(usual)) => fill_from(inner, usual),
            (Some(_), _) => {}
        }
    }
}

/// `#[serde(with = "compact")]` for a spec field: a spec (or an `Option`, `Arc` or `Box` of one)
/// written without its reference values.
pub fn serialize<T: Serialize, S: Serializer>(spec: &T, s: S) -> Result<S::Ok, S::Error> {
    let mut value = serde_json::to_value(spec).map_err(S::Error::custom)?;
    if let Value::Object(map) = &mut value {
        strip(map);
    }
    value.serialize(s)
}

/// Reads what [`serialize`] wrote, or a spec written whole.
pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let mut value = Value::deserialize(d)?;
    if let Value::Object(map) = &mut value {
        fill(map);
    }
    serde_json::from_value(value).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Exec, LogSpec, ProgramSpec};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        spec: ProgramSpec,
    }

    fn round_trip(spec: ProgramSpec) -> String {
        let text = serde_json::to_string(&Holder { spec: spec.clone() }).unwrap();
        let back: Holder = serde_json::from_str(&text).unwrap();
        assert_eq!(back.spec, spec, "{text}");
        text
    }

    #[test]
    fn a_spec_of_defaults_is_stored_as_its_name_and_command() {
        let spec = ProgramSpec::new("web", Exec::Command("sleep 60".into()));
        let text = round_trip(spec);
        assert_eq!(
            text,
            r#"{"spec":{"name":"web","exec":{"command":"sleep 60"}}}"#
        );
    }

    #[test]
    fn changed_keys_and_changed_log_entries_are_kept() {
        let mut spec = ProgramSpec::new("web", Exec::Command("x".into()));
        spec.priority = 5;
        spec.autostart = false;
        spec.env.insert("PORT".into(), "8080".into());
        spec.log = LogSpec {
            dir: Some("/var/log/web".into()),
            ..LogSpec::default()
        }
        .into();
        let text = round_trip(spec);
        assert!(text.contains(r#""priority":5"#), "{text}");
        assert!(text.contains(r#""log":{"dir":"/var/log/web"}"#), "{text}");
        assert!(!text.contains("max_backups"), "{text}");
    }

    #[test]
    fn a_spec_written_whole_reads_the_same() {
        let mut spec = ProgramSpec::new("web", Exec::Command("x".into()));
        spec.stop_timeout = crate::config::Dur::from_secs(3);
        let whole = serde_json::json!({ "spec": serde_json::to_value(&spec).unwrap() });
        let back: Holder = serde_json::from_value(whole).unwrap();
        assert_eq!(back.spec, spec);
    }

    #[test]
    fn an_absent_spec_stays_null() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Maybe {
            #[serde(with = "super")]
            spec: Option<ProgramSpec>,
        }
        let text = serde_json::to_string(&Maybe { spec: None }).unwrap();
        assert_eq!(text, r#"{"spec":null}"#);
        let back: Maybe = serde_json::from_str(&text).unwrap();
        assert_eq!(back, Maybe { spec: None });
    }
}
