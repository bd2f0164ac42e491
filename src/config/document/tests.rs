//! Lines of keys from each parser's own positions, and typo suggestions.

use super::*;

fn path(s: &[&str]) -> KeyPath {
    KeyPath(
        s.iter()
            .map(|p| match p.parse::<usize>() {
                Ok(i) => Seg::Index(i),
                Err(_) => Seg::Key(p.to_string()),
            })
            .collect(),
    )
}

fn doc(text: &str, format: FileFormat) -> Document {
    Document::parse("f".into(), text.to_string(), format).unwrap()
}

#[test]
fn key_paths_render_dotted_with_indices() {
    let p = k("detectors").index(1).key("interval");
    assert_eq!(p.to_string(), "detectors[1].interval");
    assert_eq!(k("spec").to_string(), "spec");
}

#[test]
fn finds_toml_lines() {
    let text = r#"# comment
type = "process"
[spec]
name = "web"
comand = "x"
log = { dir = "logs" }
env = [
  "A=1",
  "B=${X}",
]

[[spec.detectors]]
type = "command"

[[spec.detectors]]
type = "pidfile"
intervall = "1s"
"#;
    let t = doc(text, FileFormat::Toml);
    let cases: &[(&[&str], Option<usize>)] = &[
        (&["type"], Some(2)),
        (&["spec"], Some(3)),
        (&["spec", "comand"], Some(5)),
        (&["spec", "log", "dir"], Some(6)),
        (&["spec", "env", "1"], Some(9)),
        (&["spec", "detectors", "0", "type"], Some(13)),
        (&["spec", "detectors", "1", "type"], Some(16)),
        (&["spec", "detectors", "1", "intervall"], Some(17)),
        (&["spec", "missing"], Some(3)),
        (&["nothing"], None),
        (&[], None),
    ];
    for (p, want) in cases {
        assert_eq!(t.line_of(&path(p)), *want, "{p:?}");
    }
}

#[test]
fn finds_toml_lines_of_inline_processes() {
    let text = "[[processes]]\nname = \"a\"\n\n[[processes]]\nname = \"b\"\n[processes.log]\ndirr = \"x\"\n";
    let t = doc(text, FileFormat::Toml);
    assert_eq!(t.line_of(&path(&["processes", "1", "name"])), Some(5));
    assert_eq!(
        t.line_of(&path(&["processes", "1", "log", "dirr"])),
        Some(7)
    );
    assert_eq!(t.line_of(&path(&["processes", "0", "command"])), Some(1));
}

#[test]
fn finds_yaml_lines() {
    let text = "name: web\ncommand: |\n  echo a: b\nenv:\n  - A=1\n  - B=2\ndetectors:\n- type: command\n  command: x\n- type: pidfile\n  path: /p\nlog:\n  dir: logs\n";
    let t = doc(text, FileFormat::Yaml);
    let cases: &[(&[&str], Option<usize>)] = &[
        (&["name"], Some(1)),
        (&["command"], Some(2)),
        (&["env"], Some(4)),
        (&["env", "1"], Some(6)),
        (&["detectors", "0", "type"], Some(8)),
        (&["detectors", "0", "command"], Some(9)),
        (&["detectors", "1", "type"], Some(10)),
        (&["detectors", "1", "path"], Some(11)),
        (&["log"], Some(12)),
        (&["log", "dir"], Some(13)),
    ];
    for (p, want) in cases {
        assert_eq!(t.line_of(&path(p)), *want, "{p:?}");
    }
    // The block scalar's text is not taken for keys.
    assert_eq!(t.line_of(&path(&["command", "echo a"])), Some(2));
}

#[test]
fn finds_json_lines() {
    let text = "{\n  \"name\": \"web\",\n  \"args\": [\"a\",\n    \"b\"],\n  \"detectors\": [\n    {\"type\": \"command\"},\n    {\n      \"type\": \"pidfile\"\n    }\n  ]\n}\n";
    let t = doc(text, FileFormat::Json);
    assert_eq!(t.line_of(&path(&["name"])), Some(2));
    assert_eq!(t.line_of(&path(&["args", "1"])), Some(4));
    assert_eq!(t.line_of(&path(&["detectors", "0", "type"])), Some(6));
    assert_eq!(t.line_of(&path(&["detectors", "1", "type"])), Some(8));
}

#[test]
fn a_request_body_has_no_lines() {
    let request = Document::without_text("<request>", serde_json::json!({"name": "x"}));
    assert_eq!(request.line_of(&k("name")), None);
    let e = request.error(&k("name"), "bad");
    assert_eq!((e.key.as_deref(), e.line), (Some("name"), None));
}

#[test]
fn suggests_close_keys_only() {
    let keys = ["command", "args", "name", "stop_signal", "auto_restart"];
    let said = |c: &str| Some(format!("did you mean `{c}`?"));
    assert_eq!(did_you_mean("comand", &keys), said("command"));
    assert_eq!(did_you_mean("COMMAND", &keys), said("command"));
    assert_eq!(did_you_mean("stop_sigal", &keys), said("stop_signal"));
    assert_eq!(did_you_mean("restart", &keys), said("auto_restart"));
    assert_eq!(did_you_mean("zzz", &keys), None);
    assert_eq!(did_you_mean("colour", &keys), None);
    // A swap of two letters is one edit.
    assert_eq!(strsim::osa_distance("wbe", "web"), 1);
    assert_eq!(did_you_mean("wbe", &["web", "api"]), said("web"));
    assert_eq!(did_you_mean("x", &["t", "ab"]), None);
}

#[test]
fn syntax_errors_carry_the_parser_line() {
    let e =
        Document::parse("x.toml".into(), "a = 1\nb = = 2\n".into(), FileFormat::Toml).unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.starts_with("TOML syntax error"), "{e}");
    // TOML datetimes become strings, so validation can name their type.
    let d = doc("at = 1979-05-27T07:32:00Z\n", FileFormat::Toml);
    assert_eq!(d.tree, serde_json::json!({"at": "1979-05-27T07:32:00Z"}));
}
