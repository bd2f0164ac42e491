//! Table tests: one case per validation error kind, and the defaults and spellings that are valid.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::document::FileFormat;
use crate::config::LogSpec;
use crate::config::{Concurrency, Condition, OnFailure};

struct Fixture {
    log: LogSpec,
    env: EnvLayers,
}

impl Fixture {
    fn new() -> Fixture {
        let mut base = BTreeMap::new();
        base.insert("PATH".to_string(), "/bin".to_string());
        base.insert("HOME".to_string(), "/home/u".to_string());
        let mut env = EnvLayers::new(base);
        env.set("GLOBAL_NAME", "provisr", false).unwrap();
        Fixture {
            log: LogSpec::default(),
            env,
        }
    }

    /// Validates `text` as the file `/etc/provisr/programs/<file>`.
    fn check(&self, file: &str, text: &str) -> Result<ProgramSpec, Vec<ConfigError>> {
        let path = Path::new("/etc/provisr/programs").join(file);
        let doc = Document::parse(
            path.clone(),
            text.to_string(),
            FileFormat::of(&path).unwrap(),
        )
        .map_err(|e| vec![e])?;
        let pc = ProgramContext {
            log_defaults: &self.log,
            use_os_env: true,
            env: &self.env,
            base_dir: path.parent(),
            fallback_name: path.file_stem().map(|s| s.to_string_lossy().into_owned()),
        };
        validate(&doc, &doc.tree, KeyPath::default(), &pc).result
    }

    fn ok(&self, text: &str) -> ProgramSpec {
        match self.check("web.toml", text) {
            Ok(spec) => spec,
            Err(e) => panic!("{text}\n{}", crate::config::render_errors(&e)),
        }
    }
}

/// (what, file text, every expected error as (key, line, words in the message, words in the hint)).
type Case = (
    &'static str,
    &'static str,
    &'static [(
        Option<&'static str>,
        Option<usize>,
        &'static str,
        &'static str,
    )],
);

const CASES: &[Case] = &[
    (
        "fleet placement: neither node nor labels, a bad node name, spread 0 and over a node",
        "command = \"x\"\nplacement = {}\n",
        &[(Some("placement"), Some(2), "names neither a node nor labels", "placement = { node")],
    ),
    (
        "fleet placement: bad values",
        "command = \"x\"\nplacement = { node = \"-n\" }\nspread = 0\nmovable = \"yes\"\n",
        &[
            (Some("placement.node"), Some(2), "not a valid node name", ""),
            (Some("spread"), Some(3), "at least 1", ""),
            (Some("movable"), Some(4), "wrong type", ""),
        ],
    ),
    (
        "fleet placement: spread over one named node",
        "command = \"x\"\nplacement = { node = \"n1\" }\nspread = 2\n",
        &[(Some("spread"), Some(3), "names one node", "place it by labels")],
    ),
    (
        "unknown key with a suggestion",
        "comand = \"x\"\nargs = [\"a\"]\n",
        &[(Some("comand"), Some(1), "unknown key `comand`", "did you mean `command`?")],
    ),
    (
        "every unknown key of a file, nested ones too",
        "command = \"x\"\ncolour = 1\n[log]\ndirr = \"d\"\n[[detectors]]\ntype = \"command\"\ncommand = \"true\"\nintervall = \"1s\"\n",
        &[
            (Some("colour"), Some(2), "unknown key `colour`", ""),
            (Some("log.dirr"), Some(4), "unknown key `log.dirr`", "`dir`"),
            (Some("detectors[0].intervall"), Some(8), "unknown key", "`interval`"),
        ],
    ),
    (
        "every bad duration",
        "command = \"x\"\nstart_duration = \"10\"\nretry_interval = \"fast\"\nstop_timeout = \"1y\"\n",
        &[
            (Some("start_duration"), Some(2), "the unit is missing", "e.g. \"500ms\", \"1.5s\""),
            (Some("retry_interval"), Some(3), "invalid duration \"fast\"", "1.5s"),
            (Some("stop_timeout"), Some(4), "the unit is not one of", "1.5s"),
        ],
    ),
    (
        "a duration that is not a string",
        "command = \"x\"\nstop_timeout = 5\n",
        &[(Some("stop_timeout"), Some(2), "wrong type", "\"1.5s\"")],
    ),
    (
        "bad name",
        "name = \"-web\"\ncommand = \"x\"\n",
        &[(Some("name"), Some(1), "must start with a letter or digit", "^[A-Za-z0-9]")],
    ),
    (
        "command and args together",
        "command = \"x\"\nargs = [\"y\"]\n",
        &[(Some("args"), Some(2), "`command` and `args` are both given", "not both")],
    ),
    (
        "neither command nor args",
        "priority = 1\n",
        &[(None, None, "`command` or `args` is required", "command = ")],
    ),
    (
        "empty command",
        "command = \"  \"\n",
        &[(Some("command"), Some(1), "`command` is empty", "")],
    ),
    (
        "empty args",
        "args = []\n",
        &[(Some("args"), Some(1), "at least the program", "args = [")],
    ),
    (
        "unknown ${VAR}, and every bad entry",
        "command = \"x\"\nenv = [\n  \"A=${NOPE}\",\n  \"no-equals\",\n  \"B=${GLOBAL_NAME}\",\n  \"C=${A-B}\",\n]\n",
        &[
            (Some("env[0]"), Some(3), "unknown variable `${NOPE}`", "define it earlier"),
            (Some("env[1]"), Some(4), "not of the form KEY=VALUE", "KEY=VALUE"),
            (Some("env[3]"), Some(6), "does not hold a variable name", "${NAME}"),
        ],
    ),
    (
        "instances 0",
        "command = \"x\"\ninstances = 0\n",
        &[(Some("instances"), Some(2), "`instances` must be at least 1, got 0", "autostart")],
    ),
    (
        "instances negative",
        "command = \"x\"\ninstances = -2\n",
        &[(Some("instances"), Some(2), "at least 1, got -2", "")],
    ),
    (
        "instances too many",
        "command = \"x\"\ninstances = 4000000000\n",
        &[(Some("instances"), Some(2), "at most 10000, got 4000000000", "split the work")],
    ),
    (
        "bad signal name and number",
        "command = \"x\"\nstop_signal = \"TERMINATE\"\n",
        &[(Some("stop_signal"), Some(2), "\"TERMINATE\" is not a known signal", "\"TERM\"")],
    ),
    (
        "bad signal number",
        "command = \"x\"\nstop_signal = 999\n",
        &[(Some("stop_signal"), Some(2), "999 is not a signal number", "")],
    ),
    (
        "bad detector type",
        "command = \"x\"\n[[detectors]]\ntype = \"pidfil\"\npath = \"/p\"\n",
        &[(Some("detectors[0].type"), Some(3), "\"pidfil\" is not a detector type", "did you mean `pidfile`?")],
    ),
    (
        "detector without its required key, and a key that does not apply",
        "command = \"x\"\n[[detectors]]\ntype = \"pidfile\"\n[[detectors]]\ntype = \"command\"\npath = \"/p\"\ntimeout = \"0s\"\n",
        &[
            (Some("detectors[0]"), Some(2), "`detectors[0].path` is required", "path = "),
            (Some("detectors[1].path"), Some(6), "does not apply to a `command` detector", ""),
            (Some("detectors[1].timeout"), Some(7), "must be more than 0s", ""),
            (Some("detectors[1]"), Some(4), "`detectors[1].command` is required", ""),
        ],
    ),
    (
        "detector schedule out of range",
        "command = \"x\"\n[[detectors]]\ntype = \"exec:pid\"\ninterval = \"0s\"\nfailure_threshold = 0\n",
        &[
            (Some("detectors[0].interval"), Some(4), "must be more than 0s", ""),
            (Some("detectors[0].failure_threshold"), Some(5), "at least 1, got 0", ""),
        ],
    ),
    (
        "detector without type",
        "command = \"x\"\n[[detectors]]\npath = \"/p\"\n",
        &[(Some("detectors[0]"), Some(2), "`detectors[0].type` is required", "\"pidfile\"")],
    ),
    (
        "type other than process",
        "type = \"cron\"\n[spec]\ncommand = \"x\"\n",
        &[(Some("type"), Some(1), "only \"process\" and \"cronjob\"", "`cronjob`")],
    ),
    (
        "autorestart and auto_restart together",
        "command = \"x\"\nauto_restart = true\nautorestart = false\n",
        &[(Some("autorestart"), Some(3), "both given", "keep only `auto_restart`")],
    ),
    (
        "every type error of a file",
        "command = \"x\"\npriority = \"high\"\nautostart = \"yes\"\n[log]\nmax_size_mb = \"big\"\n",
        &[
            (Some("priority"), Some(2), "`priority` has the wrong type", "whole number"),
            (Some("autostart"), Some(3), "`autostart` has the wrong type", "true or false"),
            (Some("log.max_size_mb"), Some(5), "`log.max_size_mb` has the wrong type", ""),
        ],
    ),
    (
        "a wrong type is not also reported as missing",
        "command = 5\n",
        &[(Some("command"), Some(1), "`command` has the wrong type", "")],
    ),
    (
        "program key outside spec in the wrapped form",
        "type = \"process\"\ncommand = \"x\"\n[spec]\nargs = [\"y\"]\n",
        &[(Some("command"), Some(2), "unknown key `command`", "move `command` into the `spec` table")],
    ),
    (
        "errors inside spec name their spec path",
        "type = \"process\"\n[spec]\ncomand = \"x\"\n",
        &[
            (Some("spec.comand"), Some(3), "unknown key `spec.comand`", "did you mean `command`?"),
            (Some("spec"), Some(2), "`command` or `args` is required", ""),
        ],
    ),
    (
        "spec that is not a table",
        "type = \"process\"\nspec = \"x\"\n",
        &[(Some("spec"), Some(2), "`spec` must be a table", "")],
    ),
    (
        "log sizes",
        "command = \"x\"\n[log]\nmax_size_mb = 0\nmax_backups = -1\n",
        &[
            (Some("log.max_size_mb"), Some(3), "at least 1, got 0", ""),
            (Some("log.max_backups"), Some(4), "at least 0, got -1", ""),
        ],
    ),
    (
        "priority out of range",
        "command = \"x\"\npriority = 9999999999\n",
        &[(Some("priority"), Some(2), "out of range", "")],
    ),
    (
        "env table with a bad key",
        "command = \"x\"\n[env]\nGOOD = \"1\"\n\"BAD-KEY\" = \"2\"\n",
        &[(Some("env.BAD-KEY"), Some(4), "is not a variable name", "")],
    ),
    (
        "empty path",
        "command = \"x\"\nwork_dir = \"\"\n",
        &[(Some("work_dir"), Some(2), "`work_dir` is empty", "")],
    ),
    (
        "type inside spec",
        "type = \"process\"\n[spec]\ncommand = \"x\"\ntype = \"process\"\n",
        &[(Some("spec.type"), Some(4), "unknown key `spec.type`", "next to `spec`")],
    ),
    (
        "a table or list of the wrong type is one error",
        "command = \"x\"\nlog = 5\ndetectors = [1]\n",
        &[
            (Some("log"), Some(2), "`log` has the wrong type", ""),
            (Some("detectors"), Some(3), "`detectors` has the wrong type", ""),
        ],
    ),
    (
        "dependencies: an unknown condition, itself, a condition that is not a string",
        "command = \"x\"\n[depends_on]\ndb = \"healty\"\nweb = \"running\"\ncache = 3\n",
        &[
            (Some("depends_on.db"), Some(3), "not a dependency condition", "`healthy`"),
            (Some("depends_on.web"), Some(4), "cannot depend on itself", "remove"),
            (Some("depends_on.cache"), Some(5), "must be a condition", "completed_successfully"),
        ],
    ),
    (
        "probes: no type, a key of another type, a bad pattern, no port, zero interval",
        "command = \"x\"\n[readiness]\nurl = \"http://x\"\n[liveness]\ntype = \"log\"\npattern = \"(\"\naddress = \"h:1\"\ninterval = \"0s\"\n",
        &[
            (Some("readiness"), Some(2), "`readiness.type` is required", "\"tcp\""),
            (Some("liveness.pattern"), Some(6), "not a regular expression", ""),
            (Some("liveness.address"), Some(7), "does not apply to a `log` probe", ""),
            (Some("liveness.interval"), Some(8), "more than 0s", ""),
        ],
    ),
    (
        "probes: unknown type, tcp without a port, http without a scheme",
        "command = \"x\"\n[readiness]\ntype = \"tpc\"\n[liveness]\ntype = \"tcp\"\naddress = \"localhost\"\n",
        &[
            (Some("readiness.type"), Some(3), "not a probe type", "`tcp`"),
            (Some("liveness.address"), Some(6), "has no port", "host:port"),
        ],
    ),
    (
        "hooks: no name, no command, a duplicate name, an unknown on_failure",
        "command = \"x\"\n[[hooks.pre_start]]\ncommand = \"true\"\n[[hooks.pre_start]]\nname = \"a\"\n[[hooks.post_stop]]\nname = \"b\"\ncommand = \"true\"\non_failure = \"panic\"\n[[hooks.pre_stop]]\nname = \"c\"\ncommand = \"true\"\n[[hooks.post_start]]\nname = \"c\"\ncommand = \"true\"\n",
        &[
            (Some("hooks.pre_start[0]"), Some(2), "`hooks.pre_start[0].name` is required", "prefixes"),
            (Some("hooks.pre_start[1]"), Some(4), "`hooks.pre_start[1].command` is required", "/bin/sh"),
            (Some("hooks.post_stop[0].on_failure"), Some(9), "has an unknown value: unknown variant `panic`", ""),
            (Some("hooks.pre_stop[0].name"), Some(11), "also used by `hooks.post_start[0]`", "unique"),
        ],
    ),
    (
        "cron: a bad schedule and time zone, allow with one instance",
        "schedule = \"61 * * * *\"\ncommand = \"x\"\ntime_zone = \"Mars/Base\"\nconcurrency = \"allow\"\n",
        &[
            (Some("schedule"), Some(1), "not a cron schedule", "@every 30s"),
            (Some("time_zone"), Some(3), "not a time zone", "Europe/Berlin"),
            (Some("concurrency"), Some(4), "`instances` is 1", "instances = 3"),
        ],
    ),
    (
        "cron keys without a schedule",
        "command = \"x\"\nhistory_limit = 3\nretries = 1\n",
        &[
            (Some("history_limit"), Some(2), "applies only to cron jobs", "add `schedule`"),
            (Some("retries"), Some(3), "applies only to cron jobs", ""),
        ],
    ),
    (
        "a cronjob file without a schedule",
        "type = \"cronjob\"\n[spec]\ncommand = \"x\"\n",
        &[(Some("spec"), Some(2), "`spec.schedule` is required for a cron job", "@hourly")],
    ),
    (
        "a process with a schedule, a cron job with auto_restart and two instances",
        "type = \"process\"\n[spec]\ncommand = \"x\"\nschedule = \"@hourly\"\n",
        &[(Some("spec.schedule"), Some(4), "makes a cron job", "type = \"cronjob\"")],
    ),
    (
        "a cron job that restarts, and forbid with instances",
        "schedule = \"@hourly\"\ncommand = \"x\"\nauto_restart = true\ninstances = 2\n",
        &[
            (Some("auto_restart"), Some(3), "does not apply to a cron job", "`retries`"),
            (Some("instances"), Some(4), "must be 1 with concurrency = \"forbid\"", "allow"),
        ],
    ),
];

#[test]
fn every_error_kind_is_reported_with_key_line_and_hint() {
    let f = Fixture::new();
    for (what, text, want) in CASES {
        let errors = match f.check("web.toml", text) {
            Ok(spec) => panic!("{what}: expected errors, got {spec:?}"),
            Err(e) => e,
        };
        let shown = crate::config::render_errors(&errors);
        assert_eq!(errors.len(), want.len(), "{what}: {shown}");
        for (key, line, message, hint) in want.iter() {
            let found = errors.iter().find(|e| {
                e.key.as_deref() == *key && e.line == *line && e.message.contains(message)
            });
            let Some(e) = found else {
                panic!("{what}: no error ({key:?}, {line:?}, {message:?}) in\n{shown}");
            };
            assert!(
                e.hint.as_deref().unwrap_or("").contains(hint),
                "{what}: hint of {e} should contain {hint:?}"
            );
            assert_eq!(e.file, Path::new("/etc/provisr/programs/web.toml"));
        }
    }
}

#[test]
fn name_from_the_file_stem_must_be_valid_too() {
    let f = Fixture::new();
    let errors = f.check("my prog.toml", "command = \"x\"\n").unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message.contains("taken from the file name"),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[0].hint.as_deref(),
        Some("set `name`, or rename the file")
    );
    let spec = f
        .check("my prog.toml", "name = \"ok\"\ncommand = \"x\"\n")
        .unwrap();
    assert_eq!(spec.name, "ok");
}

#[test]
fn not_a_table_is_an_error() {
    let f = Fixture::new();
    let errors = f.check("web.yaml", "- a\n- b\n").unwrap_err();
    assert!(
        errors[0].message.contains("must be a table"),
        "{}",
        errors[0]
    );
    let errors = f.check("web.yaml", "").unwrap_err();
    assert!(errors[0].message.contains("found nothing"), "{}", errors[0]);
}

#[test]
fn defaults_follow_spec_section_2() {
    let f = Fixture::new();
    let spec = f.ok("command = \"sleep 300\"\n");
    let mut want = ProgramSpec::new("web", Exec::Command("sleep 300".into()));
    want.env = f.env.overlay().clone();
    assert_eq!(spec, want);
}

#[test]
fn every_field_is_read() {
    let f = Fixture::new();
    let spec = f.ok(r#"
name = "api"
args = ["/usr/bin/api", "--port", "8000"]
work_dir = "srv"
env = ["PORT=8000", "URL=http://localhost:${PORT}/${GLOBAL_NAME}", "PATH=${PATH}:/opt/bin"]
priority = -5
autostart = false
instances = 3
start_duration = "1.5s"
retry_count = 0
retry_interval = "500ms"
autorestart = true
restart_interval = "2s"
restart_max_interval = "1m"
stop_signal = "sigint"
stop_timeout = "3s"
[log]
stdout = "logs/api.out"
dir = "/var/log/api"
max_size_mb = 50
max_backups = 0
max_age_days = 30
compress = true
[[detectors]]
type = "exec:pid"
[[detectors]]
type = "pidfile"
path = "run/api.pid"
interval = "5s"
failure_threshold = 1
[[detectors]]
type = "command"
command = "curl -fs localhost:8000"
"#);
    assert_eq!(spec.name, "api");
    assert_eq!(
        spec.exec,
        Exec::Args(vec!["/usr/bin/api".into(), "--port".into(), "8000".into()])
    );
    assert_eq!(
        spec.work_dir.as_deref(),
        Some(Path::new("/etc/provisr/programs/srv"))
    );
    assert_eq!(spec.env["URL"], "http://localhost:8000/provisr");
    assert_eq!(spec.env["PATH"], "/bin:/opt/bin");
    assert_eq!(spec.env["GLOBAL_NAME"], "provisr");
    assert!(
        !spec.env.contains_key("HOME"),
        "the overlay holds no base variables"
    );
    assert_eq!(spec.priority, -5);
    assert!(!spec.autostart);
    assert_eq!(spec.instances, 3);
    assert_eq!(spec.start_duration, Dur::from_millis(1500));
    assert_eq!(spec.retry_count, 0);
    assert_eq!(spec.retry_interval, Dur::from_millis(500));
    assert!(spec.auto_restart);
    assert_eq!(spec.restart_interval, Dur::from_secs(2));
    assert_eq!(spec.restart_max_interval, Dur::from_secs(60));
    assert_eq!(spec.stop_signal, "INT");
    assert_eq!(spec.stop_timeout, Dur::from_secs(3));
    assert_eq!(
        *spec.log,
        LogSpec {
            stdout: Some("/etc/provisr/programs/logs/api.out".into()),
            stderr: None,
            dir: Some("/var/log/api".into()),
            max_size_mb: 50,
            max_backups: 0,
            max_age_days: 30,
            compress: true,
        }
    );
    assert_eq!(
        spec.detectors,
        vec![
            DetectorSpec {
                kind: DetectorKind::ExecPid,
                interval: Dur::from_secs(10),
                failure_threshold: 3
            },
            DetectorSpec {
                kind: DetectorKind::Pidfile {
                    path: "/etc/provisr/programs/run/api.pid".into()
                },
                interval: Dur::from_secs(5),
                failure_threshold: 1
            },
            DetectorSpec {
                kind: DetectorKind::Command {
                    command: "curl -fs localhost:8000".into(),
                    timeout: Dur::from_secs(5)
                },
                interval: Dur::from_secs(10),
                failure_threshold: 3
            },
        ]
    );
}

#[test]
fn log_defaults_apply_per_field() {
    let mut f = Fixture::new();
    f.log.dir = Some("/var/log/all".into());
    f.log.max_backups = 9;
    let spec = f.ok("command = \"x\"\n[log]\nmax_backups = 1\n");
    assert_eq!(spec.log.dir.as_deref(), Some(Path::new("/var/log/all")));
    assert_eq!(spec.log.max_backups, 1);
    assert_eq!(spec.log.max_size_mb, 10);
}

#[test]
fn signal_spellings_normalize_to_the_bare_name() {
    let cases: &[(RawSignal, &str)] = &[
        (RawSignal::Name("TERM".into()), "TERM"),
        (RawSignal::Name("SIGTERM".into()), "TERM"),
        (RawSignal::Name("term".into()), "TERM"),
        (RawSignal::Name("sigint".into()), "INT"),
        (RawSignal::Name(" KILL ".into()), "KILL"),
        (RawSignal::Name("HUP".into()), "HUP"),
        (RawSignal::Name("Quit".into()), "QUIT"),
        (RawSignal::Name("USR1".into()), "USR1"),
        (RawSignal::Name("SIGUSR2".into()), "USR2"),
        (RawSignal::Name("15".into()), "TERM"),
        (RawSignal::Number(9), "KILL"),
        (RawSignal::Number(2), "INT"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_signal(raw).as_deref(), Ok(*want), "{raw:?}");
    }
    for bad in [
        RawSignal::Name("".into()),
        RawSignal::Name("SIG".into()),
        RawSignal::Name("TERMINATE".into()),
        RawSignal::Number(0),
        RawSignal::Number(-1),
        RawSignal::Number(1 << 40),
    ] {
        assert!(normalize_signal(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn env_table_form_keeps_written_order() {
    let f = Fixture::new();
    let spec = f.ok("command = \"x\"\n[env]\nZ = \"z\"\nA = \"${Z}-a\"\nPORT = 8080\n");
    assert_eq!(spec.env["A"], "z-a");
    assert_eq!(spec.env["PORT"], "8080");
}

#[test]
fn relative_paths_in_requests_are_errors() {
    let f = Fixture::new();
    let doc = |tree| Document::without_text("<request>", tree);
    let pc = ProgramContext {
        log_defaults: &f.log,
        use_os_env: false,
        env: &f.env,
        base_dir: None,
        fallback_name: None,
    };
    let tree = serde_json::json!({"command": "x", "work_dir": "rel", "log": {"dir": "/abs"}});
    let request = doc(tree);
    let errors = validate(&request, &request.tree, KeyPath::default(), &pc)
        .result
        .unwrap_err();
    let keys: Vec<_> = errors
        .iter()
        .map(|e| e.key.clone().unwrap_or_default())
        .collect();
    assert_eq!(keys, ["name", "work_dir"]);
    assert!(errors[1].hint.as_deref().unwrap().contains("absolute"));
    let tree = serde_json::json!({"name": "n", "command": "x", "work_dir": "/abs"});
    let request = doc(tree);
    let spec = validate(&request, &request.tree, KeyPath::default(), &pc)
        .result
        .unwrap();
    assert!(!spec.use_os_env);
    assert_eq!(spec.work_dir.as_deref(), Some(Path::new("/abs")));
}

#[test]
fn type_errors_keep_going_after_the_first() {
    let f = Fixture::new();
    let errors = f
        .check(
            "web.json",
            r#"{"priority": "a", "instances": "b", "detectors": [{"interval": 5}]}"#,
        )
        .unwrap_err();
    let keys: Vec<_> = errors
        .iter()
        .filter(|e| e.message.contains("has the wrong type"))
        .map(|e| e.key.clone().unwrap())
        .collect();
    assert_eq!(keys, ["priority", "instances", "detectors[0].interval"]);
}

#[test]
fn every_format_gives_the_same_keys_and_lines() {
    let f = Fixture::new();
    let texts = [
        (
            "web.toml",
            "command = \"x\"\ninstances = 0\n[log]\ndirr = \"d\"\n",
        ),
        ("web.yaml", "command: x\ninstances: 0\nlog:\n  dirr: d\n"),
        ("web.yml", "command: x\ninstances: 0\nlog: {\n  dirr: d}\n"),
        (
            "web.json",
            "{\"command\": \"x\",\n\"instances\": 0,\n\"log\": {\n\"dirr\": \"d\"}}\n",
        ),
    ];
    for (file, text) in texts {
        let errors = f.check(file, text).unwrap_err();
        let got: Vec<_> = errors.iter().map(|e| (e.key.as_deref(), e.line)).collect();
        let want = [(Some("log.dirr"), Some(4)), (Some("instances"), Some(2))];
        assert_eq!(
            got,
            want,
            "{file}: {}",
            crate::config::render_errors(&errors)
        );
    }
}

#[test]
fn dependencies_probes_hooks_and_pid_file_are_read() {
    let f = Fixture::new();
    let spec = f.ok(r#"
command = "x"
depends_on = ["db", "cache"]
pid_file = "run/web.pid"
[readiness]
type = "http"
url = "http://127.0.0.1:8000/health"
expect_status = [200, "300-302"]
initial_delay = "1s"
interval = "2s"
timeout = "500ms"
success_threshold = 2
failure_threshold = 4
[liveness]
type = "tcp"
address = "127.0.0.1:8000"
[[hooks.pre_start]]
name = "migrate"
command = "./migrate.sh"
timeout = "1m"
on_failure = "retry"
[[hooks.post_stop]]
name = "cleanup"
command = "rm -f /tmp/x"
on_failure = "ignore"
"#);
    assert_eq!(
        spec.depends_on,
        BTreeMap::from([
            ("db".to_string(), Condition::Running),
            ("cache".to_string(), Condition::Running)
        ])
    );
    assert_eq!(
        spec.pid_file.as_deref(),
        Some(Path::new("/etc/provisr/programs/run/web.pid"))
    );
    let r = spec.readiness.unwrap();
    assert_eq!(r.label(), "http:http://127.0.0.1:8000/health");
    assert_eq!(
        (r.initial_delay, r.interval, r.timeout),
        (Dur::from_secs(1), Dur::from_secs(2), Dur::from_millis(500))
    );
    assert_eq!((r.success_threshold, r.failure_threshold), (2, 4));
    let crate::config::ProbeCheck::Http { expect_status, .. } = r.check else {
        panic!("http");
    };
    assert!(expect_status.accepts(301) && !expect_status.accepts(204));
    let l = spec.liveness.unwrap();
    assert_eq!(l.label(), "tcp:127.0.0.1:8000");
    assert_eq!(
        (l.interval, l.failure_threshold, l.success_threshold),
        (Dur::from_secs(10), 3, 1)
    );
    assert_eq!(spec.hooks.pre_start[0].name, "migrate");
    assert_eq!(spec.hooks.pre_start[0].timeout, Dur::from_secs(60));
    assert_eq!(spec.hooks.pre_start[0].on_failure, OnFailure::Retry);
    assert_eq!(spec.hooks.post_stop[0].timeout, Dur::from_secs(30));
    assert_eq!(spec.hooks.post_stop[0].on_failure, OnFailure::Ignore);
    let table = f.ok("command = \"x\"\ndepends_on = { db = \"healthy\", migrate = \"completed_successfully\" }\n");
    assert_eq!(
        table.depends_on["migrate"],
        Condition::CompletedSuccessfully
    );
    assert_eq!(table.depends_on["db"], Condition::Healthy);
}

#[test]
fn cron_jobs_in_the_wrapped_and_the_flat_form() {
    let f = Fixture::new();
    let wrapped = f.ok(r#"
type = "cronjob"
[spec]
name = "backup"
schedule = "0 3 * * *"
time_zone = "Europe/Berlin"
concurrency = "replace"
suspend = true
starting_deadline = "10m"
history_limit = 3
timeout = "1h"
retries = 2
command = "./backup.sh"
"#);
    let cron = wrapped.cron.clone().unwrap();
    assert_eq!(cron.schedule.as_str(), "0 3 * * *");
    assert_eq!(cron.time_zone.unwrap().to_string(), "Europe/Berlin");
    assert_eq!(cron.concurrency, Concurrency::Replace);
    assert!(cron.suspend);
    assert_eq!(cron.starting_deadline, Some(Dur::from_secs(600)));
    assert_eq!((cron.history_limit, cron.retries), (3, 2));
    assert_eq!(cron.timeout, Some(Dur::from_secs(3600)));
    let flat = f.ok("schedule = \"@every 30s\"\ncommand = \"true\"\n");
    let cron = flat.cron.unwrap();
    assert_eq!(cron.concurrency, Concurrency::Forbid);
    assert_eq!(
        (cron.history_limit, cron.retries, cron.suspend),
        (10, 0, false)
    );
    let allow = f
        .ok("schedule = \"@hourly\"\ncommand = \"true\"\nconcurrency = \"allow\"\ninstances = 3\n");
    assert_eq!(allow.instances, 3);
    // The spec goes through the store as JSON and comes back equal.
    let json = serde_json::to_string(&wrapped).unwrap();
    assert_eq!(serde_json::from_str::<ProgramSpec>(&json).unwrap(), wrapped);
}

#[test]
fn fleet_placement_is_read() {
    let f = Fixture::new();
    let spec = f.ok(
        "command = \"x\"\nplacement = { labels = { role = \"web\", zone = \"a\" } }\nspread = 2\nmovable = true\n",
    );
    let p = &spec.placement;
    assert_eq!(p.node, None);
    assert_eq!(p.labels.len(), 2);
    assert_eq!(p.labels["role"], "web");
    assert_eq!((p.spread, p.movable), (2, true));
    let pinned = f.ok("command = \"x\"\nplacement = { node = \"n1\" }\n");
    assert_eq!(pinned.placement.node.as_deref(), Some("n1"));
    assert_eq!(pinned.placement.spread, 1);
    assert!(f.ok("command = \"x\"\n").placement.is_anywhere());
}
