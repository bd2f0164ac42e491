//! Loading from real files in temp directories: main config keys, env layering across files,
//! scans, duplicates, groups, ignored files, syntax errors per format.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::config::{Dur, Exec, LogSpec, MetricsSettings, ServerSettings, SocketSetting};
use crate::config::{TlsSettings, TokenScope, TokenSpec};

fn env_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn daemon_env() -> BTreeMap<String, String> {
    env_of(&[("PATH", "/daemon/bin"), ("HOME", "/home/d"), ("USER", "d")])
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    path
}

fn show(errors: &[ConfigError]) -> String {
    crate::config::render_errors(errors)
}

#[test]
fn main_config_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "progs/a.toml", "command = \"sleep 1\"\n");
    write(d, "vars.env", "FROM_FILE=f\n");
    let config = write(
        d,
        "config.toml",
        r#"
programs_directory = "progs"
env = ["G=${FROM_FILE}-g"]
env_files = ["vars.env"]
use_os_env = false

[log]
dir = "logs"
max_size_mb = 5
max_backups = 2
max_age_days = 1
compress = true

[[groups]]
name = "all"
members = ["a", "inline", "a"]

[server]
listen = "127.0.0.1:9999"
base_path = "/v1/"
token_file = "secret"
socket = "run/provisr.sock"
allow_users = ["nobody", "4242"]
allow_groups = ["nogroup"]
allow_plaintext = true
tls = { cert = "tls/cert.pem", key = "tls/key.pem" }
tokens = [{ name = "ci", file = "ci.token", scope = "read" }]

[metrics]
enabled = true
listen = "127.0.0.1:9100"

[daemon]
state_dir = "state"

[[processes]]
name = "inline"
command = "sleep 2"
priority = -1
"#,
    );
    let loaded = load(Some(&config), &daemon_env()).unwrap_or_else(|e| panic!("{}", show(&e)));
    let s = &loaded.settings;
    assert_eq!(s.config_file.as_deref(), Some(config.as_path()));
    assert_eq!(s.programs_directory, d.join("progs"));
    assert!(!s.use_os_env);
    assert_eq!(s.env, ["G=${FROM_FILE}-g"]);
    assert_eq!(s.env_files, [d.join("vars.env")]);
    assert_eq!(s.log.dir, Some(d.join("logs")));
    assert_eq!(
        (s.log.max_size_mb, s.log.max_backups, s.log.max_age_days),
        (5, 2, 1)
    );
    assert!(s.log.compress);
    assert_eq!(
        s.server,
        ServerSettings {
            listen: "127.0.0.1:9999".into(),
            base_path: "/v1".into(),
            token: None,
            token_file: Some(d.join("secret")),
            socket: SocketSetting::At(d.join("run/provisr.sock")),
            allow_users: vec![65534, 4242],
            allow_groups: vec![65534],
            tls: Some(TlsSettings {
                cert: d.join("tls/cert.pem"),
                key: d.join("tls/key.pem"),
            }),
            allow_plaintext: true,
            tokens: vec![TokenSpec {
                name: "ci".into(),
                file: d.join("ci.token"),
                scope: TokenScope::Read,
            }],
            allowed_hosts: Vec::new(),
        }
    );
    assert_eq!(
        s.metrics,
        MetricsSettings {
            enabled: true,
            listen: Some("127.0.0.1:9100".into())
        }
    );
    assert_eq!(s.daemon.state_dir, d.join("state"));
    assert_eq!(
        loaded.groups,
        [GroupSpec {
            name: "all".into(),
            members: vec!["a".into(), "inline".into()]
        }]
    );
    assert!(loaded.errors.is_empty(), "{}", show(&loaded.errors));
    let names: Vec<_> = loaded
        .programs
        .iter()
        .map(|p| p.spec.name.as_str())
        .collect();
    assert_eq!(names, ["inline", "a"], "sorted by priority");
    assert_eq!(loaded.programs[0].source, Source::Config);
    assert_eq!(
        loaded.programs[1].source,
        Source::File(d.join("progs/a.toml"))
    );
    let a = &loaded.programs[1].spec;
    assert!(!a.use_os_env);
    assert_eq!(a.env, env_of(&[("FROM_FILE", "f"), ("G", "f-g")]));
    assert_eq!(a.log.dir, Some(d.join("logs")), "[log] defaults apply");
}

#[test]
fn main_config_defaults_and_other_formats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, text) in [
        ("c.toml", ""),
        ("c.yaml", "{}\n"),
        ("c.yml", "# nothing\n"),
        ("c.json", "{}"),
    ] {
        let config = write(d, name, text);
        let loaded = load(Some(&config), &daemon_env()).unwrap_or_else(|e| panic!("{}", show(&e)));
        let s = loaded.settings;
        assert_eq!(s.programs_directory, d.join("programs"), "{name}");
        assert_eq!(s.daemon.state_dir, d.join(".provisr"));
        assert_eq!(s.server, ServerSettings::default());
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.server.base_path, "/api");
        assert_eq!(s.metrics, MetricsSettings::default());
        assert!(s.use_os_env);
        assert_eq!(s.log, LogSpec::default());
        assert!(loaded.programs.is_empty());
    }
    let yaml = write(
        d,
        "full.yaml",
        "programs_directory: p\nserver:\n  listen: 127.0.0.1:1\nprocesses:\n  - name: y\n    args: [sleep, \"1\"]\n",
    );
    let loaded = load(Some(&yaml), &daemon_env());
    // `p` does not exist: an explicit programs_directory must.
    let errors = loaded.unwrap_err();
    assert_eq!(errors.len(), 1, "{}", show(&errors));
    assert_eq!(errors[0].key.as_deref(), Some("programs_directory"));
    assert_eq!(errors[0].line, Some(1));
    fs::create_dir(d.join("p")).unwrap();
    let loaded = load(Some(&yaml), &daemon_env()).unwrap();
    assert_eq!(loaded.settings.server.listen, "127.0.0.1:1");
    assert_eq!(
        loaded.programs[0].spec.exec,
        Exec::Args(vec!["sleep".into(), "1".into()])
    );
}

#[test]
fn no_config_file_is_the_embedded_default() {
    let cwd = std::env::current_dir().unwrap();
    let loaded = load(None, &daemon_env()).unwrap_or_else(|e| panic!("{}", show(&e)));
    assert_eq!(loaded.settings.config_file, None);
    assert_eq!(loaded.settings.programs_directory, cwd.join("programs"));
    assert_eq!(loaded.settings.daemon.state_dir, cwd.join(".provisr"));
    assert_eq!(loaded.settings.server, ServerSettings::default());
}

#[test]
fn main_config_errors_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "programs/bad.toml", "comand = \"x\"\n");
    let config = write(
        d,
        "config.toml",
        r#"use_os_env = true
progams_directory = "x"
env = ["A=${MISSING}"]
env_files = ["missing.env"]

[server]
base_path = "api"
token = "t"
token_file = "f"
lisen = "x"

[[groups]]
name = "g"
members = ["nobody"]

[[groups]]
name = "g"
members = []

[[processes]]
command = "x"
"#,
    );
    let errors = load(Some(&config), &daemon_env()).unwrap_err();
    let got: Vec<(Option<&str>, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_deref(), e.line)).collect();
    assert_eq!(
        got,
        [
            (Some("progams_directory"), Some(2)),
            (Some("env[0]"), Some(3)),
            (Some("env_files[0]"), Some(4)),
            (Some("server.base_path"), Some(7)),
            (Some("server.token_file"), Some(9)),
            (Some("server.lisen"), Some(10)),
            (Some("groups[0].members[0]"), Some(14)),
            (Some("groups[1].name"), Some(17)),
            (Some("processes[0].name"), Some(20)),
            // The program file's errors come in the same report.
            (Some("comand"), Some(1)),
            (None, None),
        ],
        "{}",
        show(&errors)
    );
    assert_eq!(
        errors[0].hint.as_deref(),
        Some("did you mean `programs_directory`?")
    );
    assert_eq!(errors[5].hint.as_deref(), Some("did you mean `listen`?"));
    assert!(errors[0].file == config);
    assert!(errors[9].file.ends_with("programs/bad.toml"));
}

#[test]
fn unreadable_or_unparsable_main_config() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let errors = load(Some(&missing), &daemon_env()).unwrap_err();
    assert!(
        errors[0].message.contains("cannot read the config file"),
        "{}",
        errors[0]
    );
    let bad = write(dir.path(), "c.toml", "a = 1\nb = = 2\n");
    let errors = load(Some(&bad), &daemon_env()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(2), "{}", errors[0]);
    assert!(errors[0].message.starts_with("TOML syntax error"));
    let list = write(dir.path(), "c.json", "[1]");
    let errors = load(Some(&list), &daemon_env()).unwrap_err();
    assert!(errors[0].message.contains("must be a table"));
}

#[test]
fn syntax_errors_name_the_line_in_every_format() {
    let cases = [
        ("x.toml", "command = \"a\"\npriority = \n"),
        ("x.yaml", "command: a\npriority: [1\nname: b\n"),
        ("x.json", "{\n  \"command\": \"a\",\n  \"priority\": ,\n}\n"),
    ];
    for (file, text) in cases {
        let e = Document::parse(
            file.into(),
            text.into(),
            FileFormat::of(Path::new(file)).unwrap(),
        )
        .unwrap_err();
        let line = e.line.unwrap_or_else(|| panic!("{file}: no line in {e}"));
        assert!((2..=3).contains(&line), "{file}: {e}");
        assert!(e.message.contains("syntax error"), "{e}");
    }
}

#[test]
fn env_layers_across_files_global_and_program() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "one.env",
        "# first file\nexport PATH=${PATH}:/one\nNAME='${literal}'\nSHARED=one\n",
    );
    write(d, "two.env", "SHARED=\"${SHARED}-two\"\n");
    write(
        d,
        "programs/p.toml",
        "command = \"x\"\nenv = [\"CHAIN=${GLOBAL_NAME}-x\", \"SHARED=${SHARED}-prog\", \"COST=$$5\", \"WHO=${USER}\"]\n",
    );
    let config = write(
        d,
        "config.toml",
        "env_files = [\"one.env\", \"two.env\"]\nenv = [\"GLOBAL_NAME=provisr\", \"PATH=${PATH}:/global\"]\n",
    );
    let loaded = load(Some(&config), &daemon_env()).unwrap_or_else(|e| panic!("{}", show(&e)));
    let spec = &loaded.programs[0].spec;
    assert_eq!(
        spec.env,
        env_of(&[
            ("PATH", "/daemon/bin:/one:/global"),
            ("NAME", "${literal}"),
            ("SHARED", "one-two-prog"),
            ("GLOBAL_NAME", "provisr"),
            ("CHAIN", "provisr-x"),
            ("COST", "$5"),
            ("WHO", "d"),
        ])
    );
    assert!(spec.use_os_env);
}

#[test]
fn without_os_env_only_path_and_home_are_visible() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "programs/p.toml",
        "command = \"x\"\nenv = [\"P=${PATH}\", \"H=${HOME}\", \"U=${USER}\"]\n",
    );
    let config = write(d, "config.toml", "use_os_env = false\n");
    let loaded = load(Some(&config), &daemon_env()).unwrap();
    assert!(loaded.programs.is_empty());
    assert_eq!(loaded.errors.len(), 1, "{}", show(&loaded.errors));
    let e = &loaded.errors[0];
    assert_eq!(e.key.as_deref(), Some("env[2]"));
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("unknown variable `${USER}`"), "{e}");
    write(
        d,
        "programs/p.toml",
        "command = \"x\"\nenv = [\"P=${PATH}\", \"H=${HOME}\"]\n",
    );
    let loaded = load(Some(&config), &daemon_env()).unwrap();
    assert_eq!(
        loaded.programs[0].spec.env,
        env_of(&[("P", "/usr/local/bin:/usr/bin:/bin"), ("H", "/home/d")])
    );
}

#[test]
fn env_file_errors_name_the_env_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env_file = write(d, "bad.env", "OK=1\nnot a line\nX=${NOPE}\n");
    write(d, "programs/p.toml", "command = \"x\"\n");
    let config = write(d, "config.toml", "env_files = [\"bad.env\"]\n");
    let errors = load(Some(&config), &daemon_env()).unwrap_err();
    let got: Vec<_> = errors
        .iter()
        .map(|e| (&e.file, e.line, e.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        [(&env_file, Some(2), None), (&env_file, Some(3), Some("X"))],
        "{}",
        show(&errors)
    );
    // A rescan with settings already loaded keeps the program file's last good spec: its
    // outcome is an error, so nothing replaces it.
    let mut settings = Settings::embedded_default(d);
    settings.env_files = vec![env_file.clone()];
    let scan = scan_programs(&settings, &daemon_env());
    assert!(scan.programs.is_empty());
    assert_eq!(scan.files.len(), 1);
    assert!(scan.files[0].result.is_err());
    assert_eq!(scan.errors.len(), 2, "{}", show(&scan.errors));
}

#[test]
fn duplicate_names_are_an_error_for_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "programs/web.toml", "command = \"a\"\n");
    write(d, "programs/other.yaml", "name: web\ncommand: b\n");
    write(d, "programs/fine.json", "{\"command\": \"c\"}");
    let settings = Settings::embedded_default(d);
    let scan = scan_programs(&settings, &daemon_env());
    let names: Vec<_> = scan.programs.iter().map(|p| p.spec.name.as_str()).collect();
    assert_eq!(names, ["fine"]);
    assert_eq!(scan.errors.len(), 2, "{}", show(&scan.errors));
    let other = &scan.errors[0];
    assert!(other.file.ends_with("other.yaml"));
    assert_eq!((other.key.as_deref(), other.line), (Some("name"), Some(1)));
    assert!(other.message.contains("also used by"), "{other}");
    assert!(other.message.contains("web.toml"), "{other}");
    let web = &scan.errors[1];
    assert!(web.file.ends_with("web.toml"));
    assert!(web.message.contains("other.yaml"), "{web}");
    assert_eq!(scan.files.iter().filter(|f| f.result.is_err()).count(), 2);
    assert!(scan.files.iter().all(|f| f.name.is_some()));
}

#[test]
fn duplicates_between_inline_and_file_and_unknown_group_members() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "programs/web.toml", "command = \"a\"\n");
    write(d, "programs/broken.toml", "comand = \"a\"\n");
    let config = write(
        d,
        "config.toml",
        "[[groups]]\nname = \"g\"\nmembers = [\"broken\", \"wbe\", \"web\"]\n\n[[processes]]\nname = \"web\"\ncommand = \"b\"\n",
    );
    let errors = load(Some(&config), &daemon_env()).unwrap_err();
    let got: Vec<_> = errors
        .iter()
        .map(|e| {
            (
                e.file.file_name().unwrap().to_str().unwrap(),
                e.key.as_deref(),
                e.line,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // A broken file still claims its name: `broken` is a known member.
            ("config.toml", Some("groups[0].members[1]"), Some(3)),
            ("config.toml", Some("processes[0].name"), Some(6)),
            ("broken.toml", Some("comand"), Some(1)),
            ("broken.toml", None, None),
            ("web.toml", None, None),
        ],
        "{}",
        show(&errors)
    );
    assert_eq!(errors[0].hint.as_deref(), Some("did you mean `web`?"));
}

#[test]
fn unknown_group_member_on_rescan_is_dropped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "programs/a.toml", "command = \"a\"\n");
    let mut settings = Settings::embedded_default(d);
    settings.groups = vec![GroupSpec {
        name: "g".into(),
        members: vec!["a".into(), "gone".into()],
    }];
    let scan = scan_programs(&settings, &daemon_env());
    assert_eq!(scan.groups[0].members, ["a"]);
    assert_eq!(scan.errors.len(), 1);
    assert!(scan.errors[0]
        .message
        .contains("member `gone` is not a program"));
    assert_eq!(scan.programs.len(), 1);
}

#[test]
fn only_program_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("programs");
    write(d, "programs/real.toml", "command = \"x\"\n");
    for ignored in [
        ".hidden.toml",
        "real.toml~",
        "real.toml.swp",
        ".real.toml.swp",
        "real.toml.swx",
        ".#real.toml",
        "4913",
        "real.toml.tmp",
        "notes.txt",
        "README.md",
        "#real.toml#",
    ] {
        write(d, &format!("programs/{ignored}"), "this is not valid = = =");
    }
    write(d, "programs/sub/nested.toml", "command = \"y\"\n");
    fs::create_dir(p.join("dir.toml")).unwrap();
    let scan = scan_programs(&Settings::embedded_default(d), &daemon_env());
    assert!(scan.errors.is_empty(), "{}", show(&scan.errors));
    let files: Vec<_> = scan.files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(files, [p.join("real.toml")]);
    for yes in ["a.toml", "a.yaml", "a.yml", "a.json"] {
        assert!(is_program_file_name(Path::new(yes)), "{yes}");
    }
}

#[test]
fn relative_paths_resolve_against_the_program_file_or_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "conf/programs/a.toml",
        "command = \"x\"\nwork_dir = \"../work\"\n[log]\nstdout = \"out.log\"\n[[detectors]]\ntype = \"pidfile\"\npath = \"/abs/a.pid\"\n",
    );
    write(
        d,
        "conf/programs/b.yaml",
        "command: x\nwork_dir: /srv/b\ndetectors:\n  - type: pidfile\n    path: run/b.pid\n",
    );
    let config = write(
        d,
        "conf/config.toml",
        "[log]\ndir = \"logs\"\n[[processes]]\nname = \"c\"\ncommand = \"x\"\nwork_dir = \"cwork\"\n",
    );
    let loaded = load(Some(&config), &daemon_env()).unwrap_or_else(|e| panic!("{}", show(&e)));
    let get = |n: &str| {
        loaded
            .programs
            .iter()
            .find(|p| p.spec.name == n)
            .unwrap()
            .spec
            .clone()
    };
    let programs = d.join("conf/programs");
    let a = get("a");
    assert_eq!(a.work_dir, Some(programs.join("../work")));
    assert_eq!(a.log.stdout, Some(programs.join("out.log")));
    assert_eq!(a.log.dir, Some(d.join("conf/logs")));
    let b = get("b");
    assert_eq!(b.work_dir, Some(PathBuf::from("/srv/b")));
    assert_eq!(
        b.detectors[0].kind,
        crate::config::DetectorKind::Pidfile {
            path: programs.join("run/b.pid")
        }
    );
    assert_eq!(get("c").work_dir, Some(d.join("conf/cwork")));
}

#[test]
fn relative_config_path_resolves_against_the_cwd() {
    let cwd = std::env::current_dir().unwrap();
    let dir = tempfile::tempdir_in(&cwd).unwrap();
    let config = write(dir.path(), "config.toml", "");
    let rel = config.strip_prefix(&cwd).unwrap();
    let loaded = load(Some(rel), &daemon_env()).unwrap();
    assert_eq!(
        loaded.settings.config_file.as_deref(),
        Some(config.as_path())
    );
    assert_eq!(
        loaded.settings.programs_directory,
        dir.path().join("programs")
    );
}

#[test]
fn program_from_json_uses_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded_default(dir.path());
    settings.env = vec!["G=1".into()];
    let spec = program_from_json(
        &serde_json::json!({"name": "adhoc", "command": "sleep 5", "auto_restart": true, "instances": 2, "env": ["X=${G}"]}),
        &settings,
        &daemon_env(),
    )
    .unwrap();
    assert_eq!(spec.name, "adhoc");
    assert!(spec.auto_restart);
    assert_eq!(spec.instances, 2);
    assert_eq!(spec.env, env_of(&[("G", "1"), ("X", "1")]));
    assert_eq!(spec.stop_timeout, Dur::from_secs(10));
    let wrapped = program_from_json(
        &serde_json::json!({"type": "process", "spec": {"name": "adhoc", "command": "sleep 5", "autorestart": true, "instances": 2, "env": {"X": "${G}"}}}),
        &settings,
        &daemon_env(),
    )
    .unwrap();
    assert_eq!(wrapped, spec);
    let errors = program_from_json(
        &serde_json::json!({"comand": "x", "instances": 0}),
        &settings,
        &daemon_env(),
    )
    .unwrap_err();
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_deref()).collect();
    assert_eq!(
        keys,
        [Some("comand"), Some("name"), None, Some("instances")]
    );
    assert!(errors
        .iter()
        .all(|e| e.file == Path::new("<request>") && e.line.is_none()));
}

#[test]
fn instance_names_must_not_clash_with_other_programs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "programs/web.toml", "command = \"a\"\ninstances = 2\n");
    write(d, "programs/web-2.toml", "command = \"b\"\n");
    write(d, "programs/web-3.toml", "command = \"c\"\n");
    let scan = scan_programs(&Settings::embedded_default(d), &daemon_env());
    let names: Vec<_> = scan.programs.iter().map(|p| p.spec.name.as_str()).collect();
    assert_eq!(names, ["web-3"]);
    assert_eq!(scan.errors.len(), 2, "{}", show(&scan.errors));
    assert!(
        scan.errors[0]
            .message
            .contains("instance name `web-2` of program `web-2` is also an instance of `web`"),
        "{}",
        scan.errors[0]
    );
    assert!(scan.errors[1].file.ends_with("web.toml"));
}

#[test]
fn the_token_is_never_serialized() {
    let mut settings = Settings::embedded_default(Path::new("/x"));
    settings.server.token = Some("secret-token".into());
    let json = serde_json::to_string(&settings).unwrap();
    assert!(!json.contains("secret-token"), "{json}");
}

#[test]
fn a_parsed_config_keeps_its_text_out_of_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "c.toml", "[server]\ntoken = \"secret-token\"\n");
    let loaded = load(Some(&config), &daemon_env()).unwrap();
    let shown = format!("{:?}", loaded.settings.document);
    assert!(shown.contains("c.toml"), "{shown}");
    assert!(!shown.contains("secret-token"), "{shown}");
}

#[test]
fn dependencies_must_name_programs_on_no_later_level_and_form_no_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "programs/web.toml",
        "command = \"a\"\npriority = 10\n[depends_on]\ndb = \"healthy\"\nmigrate = \"completed_successfully\"\n",
    );
    write(d, "programs/db.toml", "command = \"a\"\n");
    write(
        d,
        "programs/migrate.yaml",
        "command: a\ndepends_on:\n  - db\n  - cahce\n",
    );
    write(
        d,
        "programs/early.toml",
        "command = \"a\"\npriority = -5\ndepends_on = [\"db\"]\n",
    );
    write(
        d,
        "config.toml",
        "[[processes]]\nname = \"a\"\ncommand = \"x\"\ndepends_on = [\"b\"]\n[[processes]]\nname = \"b\"\ncommand = \"x\"\ndepends_on = [\"c\"]\n[[processes]]\nname = \"c\"\ncommand = \"x\"\ndepends_on = [\"a\"]\n",
    );
    let settings = read_main(&d.join("config.toml"), d).unwrap().0;
    let scan = scan_programs(&settings, &daemon_env());
    let shown = show(&scan.errors);
    let names: Vec<_> = scan.programs.iter().map(|p| p.spec.name.as_str()).collect();
    // `web` waits for `migrate`, which is invalid; it is still valid itself.
    assert_eq!(names, ["db", "web"], "{shown}");
    let unknown = scan
        .errors
        .iter()
        .find(|e| e.file.ends_with("migrate.yaml"))
        .unwrap();
    assert_eq!(
        (unknown.key.as_deref(), unknown.line),
        (Some("depends_on[1]"), Some(4)),
        "{shown}"
    );
    assert!(
        unknown.message.contains("no program is named `cahce`"),
        "{shown}"
    );
    assert!(
        unknown
            .hint
            .as_deref()
            .unwrap()
            .contains("add a program named `cahce`"),
        "{shown}"
    );
    let early = scan
        .errors
        .iter()
        .find(|e| e.file.ends_with("early.toml"))
        .unwrap();
    assert!(
        early
            .message
            .contains("`early` (priority -5) depends on `db`, which has the later priority 0"),
        "{shown}"
    );
    assert_eq!(early.key.as_deref(), Some("depends_on[0]"));
    let cycle: Vec<_> = scan
        .errors
        .iter()
        .filter(|e| e.message.contains("dependency cycle"))
        .collect();
    assert_eq!(cycle.len(), 3, "{shown}");
    assert!(cycle[0].message.contains("a → b → c → a"), "{shown}");
    assert_eq!(cycle[0].key.as_deref(), Some("processes[0].depends_on[0]"));
    assert_eq!(cycle[0].line, Some(4));
}
