//! Configuration loading against checked-in fixtures (`tests/fixtures/config/`): the same programs
//! in four formats and two forms give identical specs; a directory of broken files is reported
//! whole in one load; duplicates, groups, ignored files and relative paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use provisr::config::{
    self, DetectorKind, DetectorSpec, Dur, Exec, LogSpec, ProgramSpec, Settings, Source,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

fn base_env() -> BTreeMap<String, String> {
    [("PATH", "/usr/bin:/bin"), ("HOME", "/home/tester")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The spec with every path made relative to `dir`, so files in different directories compare.
fn relative_to(spec: &ProgramSpec, dir: &Path) -> ProgramSpec {
    let rel = |p: &Path| p.strip_prefix(dir).unwrap_or(p).to_path_buf();
    let mut spec = spec.clone();
    spec.work_dir = spec.work_dir.as_deref().map(rel);
    spec.log.stdout = spec.log.stdout.as_deref().map(rel);
    spec.log.stderr = spec.log.stderr.as_deref().map(rel);
    spec.log.dir = spec.log.dir.as_deref().map(rel);
    for d in &mut spec.detectors {
        if let DetectorKind::Pidfile { path } = &mut d.kind {
            *path = rel(path);
        }
    }
    spec
}

/// The `long-sleeper` example of `docs/configuration.md`, as every fixture writes it.
fn long_sleeper() -> ProgramSpec {
    let mut spec = ProgramSpec::new("long-sleeper", Exec::Command("sleep 300".into()));
    spec.priority = 10;
    spec.auto_restart = true;
    spec.restart_interval = Dur::from_secs(1);
    spec.detectors = vec![DetectorSpec {
        kind: DetectorKind::Command {
            command: "pgrep -f 'sleep 300'".into(),
            timeout: Dur::from_secs(5),
        },
        interval: Dur::from_secs(10),
        failure_threshold: 3,
    }];
    spec
}

/// The fixtures' `api`, which sets every field; paths relative to its directory.
fn api() -> ProgramSpec {
    let mut spec = ProgramSpec::new(
        "api",
        Exec::Args(
            ["/usr/bin/env", "python3", "-m", "http.server", "8000"]
                .map(String::from)
                .to_vec(),
        ),
    );
    spec.work_dir = Some("srv".into());
    spec.env = [
        ("PORT", "8000"),
        ("URL", "http://127.0.0.1:8000/"),
        ("PATH", "/usr/bin:/bin:/opt/api/bin"),
        ("PRICE", "$5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    spec.priority = -1;
    spec.autostart = false;
    spec.instances = 2;
    spec.start_duration = Dur::from_millis(1500);
    spec.retry_count = 5;
    spec.retry_interval = Dur::from_millis(500);
    spec.auto_restart = true;
    spec.restart_interval = Dur::from_secs(2);
    spec.restart_max_interval = Dur::from_secs(60);
    spec.stop_signal = "INT".into();
    spec.stop_timeout = Dur::from_secs(3);
    spec.log = LogSpec {
        stdout: Some("logs/api.out.log".into()),
        stderr: None,
        dir: Some("logs".into()),
        max_size_mb: 20,
        max_backups: 5,
        max_age_days: 14,
        compress: true,
    }
    .into();
    spec.detectors = vec![
        DetectorSpec {
            kind: DetectorKind::ExecPid,
            interval: Dur::from_secs(10),
            failure_threshold: 3,
        },
        DetectorSpec {
            kind: DetectorKind::Pidfile {
                path: "run/api.pid".into(),
            },
            interval: Dur::from_secs(5),
            failure_threshold: 2,
        },
        DetectorSpec {
            kind: DetectorKind::Command {
                command: "curl -fsS http://127.0.0.1:8000/".into(),
                timeout: Dur::from_secs(2),
            },
            interval: Dur::from_secs(30),
            failure_threshold: 3,
        },
    ];
    spec
}

#[test]
fn every_format_and_form_gives_the_same_specs() {
    for format in ["toml", "yaml", "yml", "json"] {
        for form in ["wrapped", "flat"] {
            let dir = fixtures().join(format!("formats/{format}-{form}"));
            let mut settings = Settings::embedded_default(&dir);
            settings.programs_directory = dir.clone();
            let scan = config::scan_programs(&settings, &base_env());
            assert!(
                scan.errors.is_empty(),
                "{format}-{form}:\n{}",
                config::render_errors(&scan.errors)
            );
            let specs: Vec<ProgramSpec> = scan
                .programs
                .iter()
                .map(|p| relative_to(&p.spec, &dir))
                .collect();
            assert_eq!(specs, [api(), long_sleeper()], "{format}-{form}");
            for p in &scan.programs {
                let Source::File(path) = &p.source else {
                    panic!("{format}-{form}: source {:?}", p.source);
                };
                assert_eq!(path.extension().unwrap(), format);
            }
            assert_eq!(scan.files.len(), 2);
        }
    }
}

#[test]
fn a_directory_mixing_all_four_formats() {
    let dir = fixtures().join("mixed");
    let programs = dir.join("programs");
    let loaded = config::load(Some(&dir.join("config.toml")), &base_env())
        .unwrap_or_else(|e| panic!("{}", config::render_errors(&e)));
    assert!(
        loaded.errors.is_empty(),
        "{}",
        config::render_errors(&loaded.errors)
    );
    // Editor temp files, hidden files, other extensions and subdirectories are not programs.
    let files: Vec<_> = loaded
        .files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        files,
        ["api.json", "long-sleeper.yml", "web.toml", "worker.yaml"]
    );
    let names: Vec<_> = loaded
        .programs
        .iter()
        .map(|p| p.spec.name.as_str())
        .collect();
    assert_eq!(names, ["api", "web", "worker", "long-sleeper"]);

    let global = ("GLOBAL_NAME".to_string(), "provisr".to_string());
    let mut want_api = api();
    want_api.env.insert(global.0.clone(), global.1.clone());
    assert_eq!(relative_to(&loaded.programs[0].spec, &programs), want_api);
    let mut want_sleeper = long_sleeper();
    want_sleeper.env.insert(global.0.clone(), global.1.clone());
    assert_eq!(*loaded.programs[3].spec, want_sleeper);

    let web = &loaded.programs[1].spec;
    assert_eq!(web.exec.argv(), ["python3", "-m", "http.server", "8080"]);
    assert_eq!(web.work_dir, Some(programs.join("../www")));
    let worker = &loaded.programs[2].spec;
    assert_eq!(worker.env["CHAIN"], "provisr-x");
    assert_eq!(worker.log.dir, Some(programs.join("logs")));
    assert_eq!(
        loaded.groups,
        [config::GroupSpec {
            name: "backend".into(),
            members: vec!["api".into(), "worker".into()]
        }]
    );
}

#[test]
fn one_load_reports_every_broken_file() {
    let dir = fixtures().join("errors");
    let programs = dir.join("programs");
    let loaded = config::load(Some(&dir.join("config.toml")), &base_env())
        .unwrap_or_else(|e| panic!("{}", config::render_errors(&e)));
    let shown = config::render_errors(&loaded.errors);

    let first = &loaded.errors[0];
    assert_eq!(first.file, programs.join("a-typo.toml"), "{shown}");
    assert_eq!(first.key.as_deref(), Some("comand"), "{shown}");
    assert_eq!(first.line, Some(3), "{shown}");
    assert_eq!(first.hint.as_deref(), Some("did you mean `command`?"));
    assert_eq!(
        first.to_string(),
        format!(
            "{}:3: unknown key `comand` — did you mean `command`?",
            programs.join("a-typo.toml").display()
        )
    );

    // Every broken file is reported in the same run, and only the good one loads.
    let mut broken: Vec<_> = loaded
        .errors
        .iter()
        .map(|e| e.file.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    broken.dedup();
    assert_eq!(
        broken,
        [
            "a-typo.toml",
            "bad-values.yaml",
            "both.yml",
            "broken.json",
            "dup-one.toml",
            "dup-two.json",
            "env.toml",
            "other-type.toml"
        ],
        "{shown}"
    );
    let names: Vec<_> = loaded
        .programs
        .iter()
        .map(|p| p.spec.name.as_str())
        .collect();
    assert_eq!(names, ["good"]);

    let has = |file: &str, key: Option<&str>, line: Option<usize>, words: &str| {
        assert!(
            loaded.errors.iter().any(|e| e.file == programs.join(file)
                && e.key.as_deref() == key
                && e.line == line
                && e.message.contains(words)),
            "no error {file}:{line:?} {key:?} {words:?} in\n{shown}"
        );
    };
    // Within one file, every semantic error.
    has("bad-values.yaml", Some("instances"), Some(2), "at least 1");
    has(
        "bad-values.yaml",
        Some("start_duration"),
        Some(3),
        "invalid duration",
    );
    has(
        "bad-values.yaml",
        Some("stop_signal"),
        Some(4),
        "not a known signal",
    );
    has(
        "bad-values.yaml",
        Some("detectors[0].type"),
        Some(6),
        "not a detector type",
    );
    has("broken.json", None, Some(3), "JSON syntax error");
    has("both.yml", Some("args"), Some(2), "both given");
    has("dup-one.toml", Some("name"), Some(1), "also used by");
    has("dup-two.json", Some("name"), Some(1), "also used by");
    has(
        "env.toml",
        Some("env[0]"),
        Some(2),
        "unknown variable `${UNDEFINED_VARIABLE}`",
    );
    has("other-type.toml", Some("type"), Some(1), "only \"process\"");

    // Each file's outcome carries its own errors, for a reload to keep its last good spec.
    let typo = loaded
        .files
        .iter()
        .find(|f| f.path == programs.join("a-typo.toml"))
        .unwrap();
    assert_eq!(typo.name.as_deref(), Some("typo"));
    assert!(typo
        .result
        .as_ref()
        .is_err_and(|e| e[0].key.as_deref() == Some("comand")));
    // The errors serialize for the API.
    let json = serde_json::to_value(&loaded.errors[0]).unwrap();
    assert_eq!(json["key"], "comand");
    assert_eq!(json["line"], 3);
}

#[test]
fn duplicates_groups_and_relative_paths_in_a_temp_tree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |rel: &str, text: &str| {
        let p = d.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "etc/programs/a.toml",
        "command = \"sleep 1\"\nwork_dir = \"data\"\n",
    );
    write("etc/programs/b.yaml", "name: a\ncommand: sleep 2\n");
    write(
        "etc/programs/c.json",
        "{\"command\": \"sleep 3\", \"log\": {\"dir\": \"logs\"}}",
    );
    write("etc/programs/c.json~", "{\"command\": \"editor backup\"}");
    write(
        "etc/provisr.toml",
        "[[groups]]\nname = \"g\"\nmembers = [\"a\", \"c\", \"ghost\"]\n",
    );
    let errors = config::load(Some(&d.join("etc/provisr.toml")), &base_env()).unwrap_err();
    let shown = config::render_errors(&errors);
    let got: Vec<_> = errors
        .iter()
        .map(|e| {
            (
                e.file.strip_prefix(d).unwrap().to_path_buf(),
                e.key.clone(),
                e.line,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "etc/provisr.toml".into(),
                Some("groups[0].members[2]".into()),
                Some(3)
            ),
            ("etc/programs/a.toml".into(), None, None),
            ("etc/programs/b.yaml".into(), Some("name".into()), Some(1)),
        ],
        "{shown}"
    );

    // Fix the group and the duplicate: everything loads, paths resolved per file.
    write("etc/programs/b.yaml", "name: b\ncommand: sleep 2\n");
    write(
        "etc/provisr.toml",
        "[[groups]]\nname = \"g\"\nmembers = [\"a\", \"c\"]\n",
    );
    let loaded = config::load(Some(&d.join("etc/provisr.toml")), &base_env())
        .unwrap_or_else(|e| panic!("{}", config::render_errors(&e)));
    assert!(loaded.errors.is_empty());
    let spec = |n: &str| {
        loaded
            .programs
            .iter()
            .find(|p| p.spec.name == n)
            .map(|p| p.spec.clone())
            .unwrap()
    };
    assert_eq!(spec("a").work_dir, Some(d.join("etc/programs/data")));
    assert_eq!(spec("c").log.dir, Some(d.join("etc/programs/logs")));
    assert_eq!(loaded.settings.programs_directory, d.join("etc/programs"));
    assert_eq!(loaded.settings.daemon.state_dir, d.join("etc/.provisr"));
    assert_eq!(loaded.files.len(), 3, "the editor backup is not a program");
}
