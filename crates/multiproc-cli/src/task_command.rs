//! How `multiproc worker` turns a task into the command it runs, so that no task text is ever
//! run as code.
//!
//! Tasks come from whoever can put into the queue: their text is untrusted. The command runs
//! without a shell, and the task reaches it three ways, none of which makes it code:
//! - an argument that is exactly `{}` becomes the task, as one argument, whatever it holds;
//! - a `{}` inside a longer argument is replaced by the task quoted as one shell word when the
//!   argument belongs to a shell (`sh -c 'echo {}'`, also behind `timeout 5` or `env`), as
//!   `multiproc run` and GNU parallel quote it, and by the task as it is otherwise
//!   (`fetch http://host/{}`);
//! - the task's bytes are the command's standard input.
//!
//! A `{}` inside the code argument of another interpreter (`python3 -c 'print({})'`, `perl -e`,
//! `awk '{…}'`) would paste the task into a program no quoting protects: such a command is
//! refused before any task is taken.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use multiproc_run::quote_into;

/// The placeholder for the task.
const PLACEHOLDER: &str = "{}";

/// Programs that read an argument as Bourne-shell code.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "ksh", "mksh", "zsh"];

/// Programs that read an argument as code in another language: a task pasted into one of
/// their arguments could run as code, and no quoting of ours would stop it.
const INTERPRETERS: &[&str] = &[
    "python",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "php",
    "lua",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "tclsh",
    "Rscript",
    "fish",
    "csh",
    "tcsh",
    "pwsh",
    "osascript",
    "jq",
    "sed",
];

/// How much of a command's standard error goes into a task's error (the end of it, where the
/// cause usually is).
const STDERR_KEPT: usize = 4096;

/// A worker's command: its words as given, and where a shell starts among them.
#[derive(Debug)]
pub(crate) struct TaskCommand {
    words: Vec<String>,
    /// The index of the first word that names a shell: placeholders inside longer words
    /// after it are quoted for that shell.
    shell_at: Option<usize>,
}

/// What a program is, by its file name (`/usr/bin/python3.11` → `python`).
fn base_name(word: &str) -> &str {
    let name = Path::new(word)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(word);
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
}

impl TaskCommand {
    /// Checks a command given after `--`.
    ///
    /// # Errors
    /// No command, or a `{}` inside code of an interpreter other than a shell.
    pub(crate) fn parse(words: &[String]) -> anyhow::Result<TaskCommand> {
        if words.is_empty() {
            bail!("give a command after `--`, or --square");
        }
        let shell_at = words.iter().position(|w| SHELLS.contains(&base_name(w)));
        let interpreter_at = words
            .iter()
            .position(|w| INTERPRETERS.contains(&base_name(w)));
        let code_placeholder = interpreter_at
            .filter(|&i| shell_at.is_none_or(|s| i < s))
            .and_then(|i| {
                let w = words[i + 1..]
                    .iter()
                    .find(|w| w.contains(PLACEHOLDER) && w.as_str() != PLACEHOLDER)?;
                Some((&words[i], w))
            });
        if let Some((interpreter, w)) = code_placeholder {
            bail!(
                "`{{}}` inside {w:?} would paste each task into {interpreter}'s code, where no \
                 quoting can keep it from running: pass `{{}}` as an argument of its own (e.g. \
                 `python3 -c 'import sys; print(sys.argv[1])' {{}}`) or read the task from \
                 standard input"
            );
        }
        Ok(TaskCommand {
            words: words.to_vec(),
            shell_at,
        })
    }

    /// The program and arguments that run `task`.
    pub(crate) fn argv(&self, task: &[u8]) -> Vec<OsString> {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if w == PLACEHOLDER || !w.contains(PLACEHOLDER) {
                    return if w == PLACEHOLDER {
                        OsString::from_vec(task.to_vec())
                    } else {
                        OsString::from(w)
                    };
                }
                let quoted = self.shell_at.is_some_and(|s| i > s);
                let mut out = Vec::with_capacity(w.len() + task.len() + 8);
                let mut pieces = w.split(PLACEHOLDER);
                if let Some(first) = pieces.next() {
                    out.extend_from_slice(first.as_bytes());
                }
                for piece in pieces {
                    if quoted {
                        quote_into(task, &mut out);
                    } else {
                        out.extend_from_slice(task);
                    }
                    out.extend_from_slice(piece.as_bytes());
                }
                OsString::from_vec(out)
            })
            .collect()
    }

    /// Runs the command for `task`, the task on its standard input; its standard output,
    /// blanks at both ends removed.
    ///
    /// # Errors
    /// The command cannot start (a task too long for an argument, say) or fails: the error
    /// says how, with the end of its standard error.
    pub(crate) fn run(&self, task: &[u8]) -> anyhow::Result<Vec<u8>> {
        let argv = self.argv(task);
        let program = &self.words[0];
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {program:?} for task {} ({} bytes: a task over 128 KiB cannot \
                     be an argument; read it from standard input)",
                    brief(task),
                    task.len()
                )
            })?;
        // Written from a thread: a command that prints much before it reads would otherwise
        // wait for us while we wait for it. One that never reads ends the write early.
        let stdin = child.stdin.take();
        let task_copy = task.to_vec();
        let writer = std::thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&task_copy);
            }
        });
        let out = child
            .wait_with_output()
            .with_context(|| format!("cannot wait for {program:?}"))?;
        let _ = writer.join();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            let cut = stderr.len() > STDERR_KEPT;
            let mut from = stderr.len().saturating_sub(STDERR_KEPT);
            while !stderr.is_char_boundary(from) {
                from += 1;
            }
            bail!(
                "{program:?} failed on task {} ({}): {}{}",
                brief(task),
                out.status,
                if cut { "…" } else { "" },
                &stderr[from..]
            );
        }
        Ok(out.stdout.trim_ascii().to_vec())
    }
}

/// At most this many characters of a task or result in a log line or an error.
const BRIEF_CHARS: usize = 80;

/// `bytes` for a log line: as they are if a short line of printable text, otherwise quoted,
/// control characters and invalid UTF-8 escaped, cut after [`BRIEF_CHARS`] characters with the
/// full length said.
pub(crate) fn brief(bytes: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.len() <= BRIEF_CHARS
        && !text.chars().any(char::is_control)
    {
        return text.to_string();
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(BRIEF_CHARS * 4)]);
    let shown: String = text.chars().take(BRIEF_CHARS).collect();
    let escaped = if std::str::from_utf8(bytes).is_ok() || bytes.len() > BRIEF_CHARS * 4 {
        format!("{shown:?}")
    } else {
        // Invalid UTF-8: the bytes themselves, escaped.
        let b = &bytes[..bytes.len().min(BRIEF_CHARS)];
        format!("b\"{}\"", b.escape_ascii())
    };
    if shown.len() < bytes.len() {
        format!("{escaped}… ({} bytes)", bytes.len())
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> anyhow::Result<TaskCommand> {
        TaskCommand::parse(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>())
    }

    fn argv(words: &[&str], task: &str) -> Vec<String> {
        cmd(words)
            .unwrap()
            .argv(task.as_bytes())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_whole_placeholder_is_the_task_as_it_is() {
        assert_eq!(
            argv(&["sh", "-c", "echo \"$1\"", "sh", "{}"], "$(touch F)"),
            ["sh", "-c", "echo \"$1\"", "sh", "$(touch F)"]
        );
    }

    #[test]
    fn a_placeholder_inside_a_shell_script_is_quoted() {
        assert_eq!(
            argv(&["sh", "-c", "echo {}"], "x; touch F"),
            ["sh", "-c", "echo 'x; touch F'"]
        );
        assert_eq!(
            argv(&["timeout", "5", "/bin/bash", "-c", "echo {}"], "it's"),
            ["timeout", "5", "/bin/bash", "-c", "echo 'it'\"'\"'s'"]
        );
        assert_eq!(
            argv(&["sh", "-c", "echo {}"], "plain"),
            ["sh", "-c", "echo plain"]
        );
    }

    #[test]
    fn a_placeholder_elsewhere_is_the_task_as_it_is() {
        assert_eq!(
            argv(&["echo", "fixed-{}", "{}{}"], "a b"),
            ["echo", "fixed-a b", "a ba b"]
        );
    }

    #[test]
    fn a_placeholder_in_other_interpreters_code_is_refused() {
        for words in [
            &["python3", "-c", "print({})"][..],
            &["/usr/bin/perl", "-e", "print {}"],
            &["env", "awk", "BEGIN { print \"{}\" }"],
        ] {
            let e = cmd(words).unwrap_err().to_string();
            assert!(e.contains("argument of its own"), "{e}");
        }
        // A whole `{}` is an argument, not code: fine.
        cmd(&["python3", "-c", "import sys; print(sys.argv[1])", "{}"]).unwrap();
        // An interpreter started from a shell script: the script quotes it for the shell.
        cmd(&["sh", "-c", "python3 -c 'print(1)' {}"]).unwrap();
    }

    #[test]
    fn brief_cuts_and_escapes() {
        assert_eq!(brief(b"ok then"), "ok then");
        assert_eq!(brief(b"a\nb"), "\"a\\nb\"");
        assert_eq!(brief(b"\xff\xfe"), "b\"\\xff\\xfe\"");
        let long = "x".repeat(10_000);
        let b = brief(long.as_bytes());
        assert!(b.len() < 120 && b.ends_with("… (10000 bytes)"), "{b}");
    }
}
