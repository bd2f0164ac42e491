//! The argv a program's `exec` turns into (`docs/configuration.md`).
//!
//! `command` goes through `/bin/sh -c` only when it needs a shell; a plain `prog arg arg` is split on
//! whitespace and exec'd directly, so the supervised pid is the program itself, not a shell wrapped
//! around it (signals then reach the program, and `exec:pid` watches the right process).

use crate::config::Exec;

/// Characters that make a `command` string need a shell: quoting, expansion, redirection, globbing,
/// pipelines, job control, grouping, assignments and comments.
const SHELL_SYNTAX: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '=', '%', '{', '}', '\n',
];

/// True when `command` must be run by `/bin/sh -c` rather than split on whitespace.
pub fn needs_shell(command: &str) -> bool {
    command.contains(SHELL_SYNTAX)
}

/// The argv to exec for `exec`: `["/bin/sh", "-c", s]` for a command with shell syntax, the
/// whitespace-separated words of a plain command, or the `args` list as given.
///
/// An empty result (blank command, empty `args`) is reported by the spawner as an error.
pub fn argv(exec: &Exec) -> Vec<String> {
    match exec {
        Exec::Command(s) if needs_shell(s) => {
            vec!["/bin/sh".to_string(), "-c".to_string(), s.clone()]
        }
        Exec::Command(s) => s.split_whitespace().map(str::to_string).collect(),
        Exec::Args(v) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Vec<String> {
        argv(&Exec::Command(s.to_string()))
    }

    #[test]
    fn plain_commands_are_split_on_whitespace() {
        assert_eq!(cmd("sleep 300"), ["sleep", "300"]);
        assert_eq!(cmd("  /usr/bin/env\t-i  x "), ["/usr/bin/env", "-i", "x"]);
        assert_eq!(
            cmd("python3 -m http.server 8000"),
            ["python3", "-m", "http.server", "8000"]
        );
        assert!(cmd("   ").is_empty());
    }

    #[test]
    fn every_shell_character_selects_the_shell() {
        for c in SHELL_SYNTAX {
            let s = format!("echo a{c}b");
            assert_eq!(cmd(&s), ["/bin/sh", "-c", s.as_str()], "{c:?}");
        }
        assert_eq!(cmd("sleep 1 && echo x")[0], "/bin/sh");
        assert_eq!(cmd("FOO=1 prog")[0], "/bin/sh");
        assert_eq!(cmd("echo ~")[0], "/bin/sh");
    }

    #[test]
    fn args_are_taken_verbatim() {
        let v = vec![
            "/bin/echo".to_string(),
            "a b".to_string(),
            "$HOME".to_string(),
        ];
        assert_eq!(argv(&Exec::Args(v.clone())), v);
        assert!(argv(&Exec::Args(vec![])).is_empty());
    }
}
