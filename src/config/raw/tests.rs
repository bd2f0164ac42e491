//! The raw shapes: every unknown key with a suggestion from the struct's own fields, type
//! errors kept per key, env and signal spellings.

use serde_json::json;

use super::*;
use crate::config::document::k;
use crate::config::program::{RawProgram, RawSignal};

fn request(tree: Value) -> Document {
    Document::without_text("<request>", tree)
}

#[test]
fn every_unknown_key_in_order_with_the_keys_known_there() {
    let doc = request(json!({
        "comand": "x",
        "name": "a",
        "log": {"dirr": "d", "dir": "e"},
        "detectors": [{"type": "command"}, {"type": "pidfile", "pth": "/p"}],
        "colour": 1,
    }));
    let mut c = Check::new(&doc, KeyPath::default());
    let _: RawProgram = c.read(&doc.tree, |_| None);
    let got: Vec<(Option<&str>, Option<&str>)> = c
        .errors
        .iter()
        .map(|e| (e.key.as_deref(), e.hint.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some("comand"), Some("did you mean `command`?")),
            (Some("log.dirr"), Some("did you mean `dir`?")),
            (Some("detectors[1].pth"), Some("did you mean `path`?")),
            (Some("colour"), None),
        ]
    );
    assert!(c.errors[0].message.contains("unknown key `comand`"));
    // The known keys are still read.
    let log: RawLog = Check::new(&doc, KeyPath::default()).read(&doc.tree["log"], |_| None);
    assert_eq!(log.dir, Val::Ok("e".into()));
}

#[test]
fn known_keys_come_from_the_structs() {
    assert!(known_keys::<RawProgram>(&[]).contains(&"stop_signal"));
    let log = known_keys::<RawProgram>(&[Seg::Key("log".into())]);
    assert_eq!(
        log,
        [
            "stdout",
            "stderr",
            "dir",
            "max_size_mb",
            "max_backups",
            "max_age_days",
            "compress"
        ]
    );
    let detector = known_keys::<RawProgram>(&[Seg::Key("detectors".into()), Seg::Index(3)]);
    assert!(detector.contains(&"failure_threshold"), "{detector:?}");
    assert!(known_keys::<RawProgram>(&[Seg::Key("command".into())]).is_empty());
}

#[test]
fn a_wrong_type_is_kept_per_key() {
    let doc = request(json!({"log": {"max_size_mb": "big", "compress": "yes", "dir": "/d"}}));
    let mut c = Check::new(&doc, KeyPath::default());
    let raw: RawLog = c.read(&doc.tree["log"], |_| None);
    assert!(matches!(raw.max_size_mb, Val::Bad(_)));
    assert_eq!(raw.dir, Val::Ok("/d".into()));
    let log = c.log(&Val::Ok(raw), LogSpec::default(), None);
    assert_eq!(log.dir.as_deref(), Some(Path::new("/d")));
    let got: Vec<_> = c
        .errors
        .iter()
        .map(|e| (e.key.clone().unwrap(), e.hint.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "log.max_size_mb".to_string(),
                "write a whole number".to_string()
            ),
            (
                "log.compress".to_string(),
                "write true or false".to_string()
            ),
        ]
    );
}

#[test]
fn env_accepts_lists_and_tables_in_order() {
    let list: RawEnv = serde_json::from_value(json!(["B=1", "A=2"])).unwrap();
    let entries = |env: &RawEnv| env.entries(&k("env"));
    let ok = |at: &str, key: &str, v: &str| {
        let at = at
            .split(['.', '['])
            .fold(KeyPath::default(), |p, s| match s.strip_suffix(']') {
                Some(i) => p.index(i.parse().unwrap()),
                None => p.key(s),
            });
        (at, Ok((key.to_string(), v.to_string())))
    };
    assert_eq!(
        entries(&list),
        [ok("env[0]", "B", "1"), ok("env[1]", "A", "2")]
    );
    let table: RawEnv = serde_json::from_value(json!({"Z": "1", "A": 8080, "B": true})).unwrap();
    assert_eq!(
        entries(&table),
        [
            ok("env.Z", "Z", "1"),
            ok("env.A", "A", "8080"),
            ok("env.B", "B", "true")
        ]
    );
    let bad: RawEnv = serde_json::from_value(json!({"A-B": "1", "C": [1]})).unwrap();
    assert!(entries(&bad).iter().all(|(_, e)| e.is_err()));
    assert!(serde_json::from_value::<RawEnv>(json!([1])).is_err());
    let e = serde_json::from_value::<RawEnv>(json!("A=1")).unwrap_err();
    assert!(
        e.to_string().contains("a list of \"KEY=VALUE\" strings"),
        "{e}"
    );
}

#[test]
fn signals_are_names_or_numbers() {
    assert_eq!(
        serde_json::from_value::<RawSignal>(json!("TERM")).unwrap(),
        RawSignal::Name("TERM".into())
    );
    assert_eq!(
        serde_json::from_value::<RawSignal>(json!(9)).unwrap(),
        RawSignal::Number(9)
    );
    assert!(serde_json::from_value::<RawSignal>(json!(true)).is_err());
}
