//! `multiproc completions` (the scripts parse, and bash and fish complete from them), `multiproc
//! man` (the page renders and names the subcommands; `--dir` writes one per subcommand), and
//! the `-v`/`-q` of the subcommands: a warning the library logs reaches standard error unless
//! `-q` says otherwise, and `run` keeps its own `-v` and `-q`.
//!
//! A shell or man page renderer that is not installed skips its part with a note (a failure
//! under CI, which installs them).

#[path = "../../multiproc/tests/common/redis.rs"]
mod redis_server;

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::hostile::WorkDir;
use redis_server::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

/// How long any one command may take before the test kills it and fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `cmd` to its end with its output captured (standard input empty, `RUST_LOG` unset
/// unless the caller set it after); kills it and fails the test after [`TIMEOUT`].
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {shown}: {e}")),
        Err(_) => {
            // Not reaped yet (the waiting thread has not returned), so the pid is still ours.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{shown} did not end within {TIMEOUT:?}");
        }
    }
}

/// `multiproc ARGS`, without RUST_LOG from the test's environment.
fn multiproc(args: &[&str]) -> Output {
    run(Command::new(BIN).args(args).env_remove("RUST_LOG"))
}

/// What a command printed on standard output, once it succeeded.
fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// Whether `program` is on the PATH; if not, says which part of the test it skips (under CI,
/// whose `.ci/run` installs them all, its absence is a failure).
fn installed(program: &str, skipping: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is not installed, and CI is set: {skipping} would be skipped"
        );
        eprintln!("note: {program} is not installed: skipped {skipping}");
    }
    found
}

/// Writes `text` to `name` in `dir`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// What bash's completion offers for `line` (its last word is the one being completed), with
/// the script from `multiproc completions bash` loaded.
fn bash_complete(script: &Path, line: &[&str]) -> Vec<String> {
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _multiproc multiproc '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        words.join(" "),
        line.len() - 1,
        line.join(" "),
        line[line.len() - 1],
        line[line.len() - 2],
    );
    let out = run(Command::new("bash").arg("-c").arg(program));
    stdout_of(&out).lines().map(str::to_string).collect()
}

/// The subcommands that take the library's -v/-q (every one but `run`, `completions` and
/// `man`).
const LOGGED: [&str; 8] = [
    "demo",
    "serve",
    "worker",
    "submit",
    "collect",
    "status",
    "dead",
    "dashboard",
];

#[test]
fn bash_completions_parse_and_complete_subcommands_and_options() {
    let script = stdout_of(&multiproc(&["completions", "bash"]));
    for word in ["run", "worker", "--joblog", "--verbose", "--quiet"] {
        assert!(script.contains(word), "no {word} in:\n{script}");
    }
    let dir = WorkDir::new("completions-bash");
    let path = write(&dir.0, "multiproc.bash", &script);
    let syntax = run(Command::new("bash").arg("-n").arg(&path));
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // The completion function itself, as bash calls it on Tab.
    assert_eq!(bash_complete(&path, &["multiproc", "wor"]), ["worker"]);
    assert_eq!(
        bash_complete(&path, &["multiproc", "run", "--jobl"]),
        ["--joblog"]
    );
    assert_eq!(
        bash_complete(&path, &["multiproc", "dead", "ls", "--qu"]),
        ["--quiet"]
    );
    // `run`'s -q is GNU parallel's --quote; the log's --quiet is not among its options.
    assert_eq!(
        bash_complete(&path, &["multiproc", "run", "--qu"]),
        ["--quote"]
    );
}

#[test]
fn zsh_completions_parse_and_register() {
    if !installed("zsh", "the zsh completion check") {
        return;
    }
    let script = stdout_of(&multiproc(&["completions", "zsh"]));
    for word in ["run", "worker", "--joblog"] {
        assert!(script.contains(word), "no {word} in:\n{script}");
    }
    let dir = WorkDir::new("completions-zsh");
    let path = write(&dir.0, "_multiproc", &script);
    let syntax = run(Command::new("zsh").arg("-n").arg(&path));
    assert!(
        syntax.status.success(),
        "zsh -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // Loaded after compinit, the script makes `_multiproc` complete `multiproc`.
    let program = format!(
        "autoload -Uz compinit && compinit -u -D && source '{}' && print -r -- ${{_comps[multiproc]}}",
        path.display()
    );
    let out = run(Command::new("zsh")
        .arg("-fc")
        .arg(program)
        .env("HOME", &dir.0)
        .env("ZDOTDIR", &dir.0));
    assert_eq!(stdout_of(&out).trim(), "_multiproc");
}

#[test]
fn fish_completions_parse_and_complete() {
    if !installed("fish", "the fish completion check") {
        return;
    }
    let script = stdout_of(&multiproc(&["completions", "fish"]));
    for word in ["run", "worker", "joblog"] {
        assert!(script.contains(word), "no {word} in:\n{script}");
    }
    let dir = WorkDir::new("completions-fish");
    let path = write(&dir.0, "multiproc.fish", &script);
    let syntax = run(Command::new("fish").arg("--no-execute").arg(&path));
    assert!(
        syntax.status.success(),
        "fish --no-execute: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let complete = |line: &str| -> Vec<String> {
        let program = format!("source '{}'; complete -C '{line}'", path.display());
        let out = run(Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(program)
            .env("HOME", &dir.0));
        // Each candidate, without its description.
        stdout_of(&out)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(complete("multiproc wor"), ["worker"]);
    assert_eq!(complete("multiproc run --jobl"), ["--joblog"]);
    assert_eq!(complete("multiproc status --qu"), ["--quiet"]);
}

#[test]
fn the_other_shells_get_a_script_too() {
    for shell in ["elvish", "powershell"] {
        let script = stdout_of(&multiproc(&["completions", shell]));
        assert!(
            script.contains("worker") && script.contains("--joblog"),
            "{shell}:\n{script}"
        );
    }
    let out = multiproc(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

/// A man page as a terminal shows it, with the renderer's warnings: groff's (`-ww`: all of
/// them), else man's; `None` with a note when neither is installed.
fn render(page: &Path) -> Option<(String, String)> {
    let out = if installed("groff", "rendering with groff") {
        // -k: the page is UTF-8 (clap_mangen writes `…` as it is); -P-cbu: plain characters,
        // no bold or underline by escapes or overstriking.
        run(Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-u"])
            .arg(page))
    } else if installed("man", "rendering with man") {
        run(Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"))
    } else {
        return None;
    };
    let text = stdout_of(&out)
        // groff may set `\-` as a minus sign or a hyphen.
        .replace(['\u{2212}', '\u{2010}'], "-");
    Some((text, String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn the_man_page_renders_with_its_sections_and_subcommands() {
    let page = stdout_of(&multiproc(&["man"]));
    assert!(page.contains(".TH multiproc 1"), "{page}");
    assert!(page.contains(".SH NAME"), "{page}");
    let dir = WorkDir::new("man-stdout");
    let path = write(&dir.0, "multiproc.1", &page);
    let Some((text, warnings)) = render(&path) else {
        return;
    };
    assert_eq!(warnings, "", "the renderer complained about:\n{page}");
    for line in ["NAME", "SYNOPSIS", "DESCRIPTION", "SUBCOMMANDS"] {
        assert!(
            text.lines().any(|l| l == line),
            "no section {line} in:\n{text}"
        );
    }
    assert!(
        text.contains("multiproc - The multiproc command line"),
        "{text}"
    );
    for sub in LOGGED.iter().chain(&["run", "completions", "man"]) {
        assert!(
            text.contains(&format!("multiproc-{sub}(1)")),
            "no {sub} in:\n{text}"
        );
    }
    // No page for clap's `help` subcommand: every page has --help.
    assert!(!text.contains("multiproc-help(1)"), "{text}");
}

#[test]
fn man_dir_writes_a_page_per_subcommand() {
    let dir = WorkDir::new("man-dir");
    // A directory that does not exist yet is made.
    let man1 = dir.0.join("share/man1");
    let out = multiproc(&["man", "--dir", man1.to_str().unwrap()]);
    assert_eq!(stdout_of(&out), "");
    let mut names: Vec<String> = std::fs::read_dir(&man1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "multiproc-collect.1",
            "multiproc-completions.1",
            "multiproc-dashboard.1",
            "multiproc-dead-ls.1",
            "multiproc-dead-purge.1",
            "multiproc-dead-requeue.1",
            "multiproc-dead.1",
            "multiproc-demo.1",
            "multiproc-man.1",
            "multiproc-run.1",
            "multiproc-serve.1",
            "multiproc-status.1",
            "multiproc-submit.1",
            "multiproc-worker.1",
            "multiproc.1",
        ]
    );
    let run_page = std::fs::read_to_string(man1.join("multiproc-run.1")).unwrap();
    assert!(run_page.contains(".TH multiproc-run 1"), "{run_page}");
    assert!(run_page.contains(r"\-\-joblog"), "{run_page}");
    let Some((text, warnings)) = render(&man1.join("multiproc-run.1")) else {
        return;
    };
    assert_eq!(warnings, "", "the renderer complained about:\n{run_page}");
    assert!(text.contains("--joblog"), "{text}");
    for name in &names {
        let (_, warnings) = render(&man1.join(name)).expect("rendered above");
        assert_eq!(warnings, "", "{name}");
    }
}

/// A TCP server that speaks just enough of Redis's protocol (RESP) to play a broker that is
/// still loading its data: to the first XGROUP (the first command multiproc sends on a queue)
/// it answers `-LOADING`, an error the library retries after logging a warning; to the next
/// one `-ERR`, which ends the command with an error. Every other command gets `+OK`.
struct LoadingBroker {
    /// `redis://127.0.0.1:PORT`.
    url: String,
}

impl LoadingBroker {
    /// Listens on a free port of the loopback, each connection answered by a thread of its
    /// own, for as long as the test runs.
    fn start() -> LoadingBroker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let xgroups = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let xgroups = Arc::clone(&xgroups);
                std::thread::spawn(move || LoadingBroker::serve(conn, &xgroups));
            }
        });
        LoadingBroker { url }
    }

    /// Answers the commands on one connection until the client closes it.
    fn serve(conn: TcpStream, xgroups: &AtomicUsize) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut writer = conn;
        while let Some(command) = read_command(&mut reader) {
            let reply: &[u8] = if command.eq_ignore_ascii_case("XGROUP") {
                if xgroups.fetch_add(1, Ordering::SeqCst) == 0 {
                    b"-LOADING Redis is loading the dataset in memory\r\n"
                } else {
                    b"-ERR this broker refuses everything\r\n"
                }
            } else {
                b"+OK\r\n"
            };
            if writer.write_all(reply).is_err() {
                return;
            }
        }
    }
}

/// The name of the next command on a RESP connection (an array of bulk strings), its
/// arguments read and dropped; `None` at the end of the connection.
fn read_command(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let count: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut name = None;
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; len + 2];
        reader.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        name.get_or_insert_with(|| String::from_utf8_lossy(&arg).into_owned());
    }
    name
}

/// `multiproc status` on a [`LoadingBroker`] with `flags` and, if given, `RUST_LOG`: what it
/// printed on standard error, once it failed as it must (the broker refuses in the end).
fn status_on_loading_broker(flags: &[&str], rust_log: Option<&str>) -> String {
    let broker = LoadingBroker::start();
    let mut cmd = Command::new(BIN);
    cmd.args(["status", "-b", &broker.url, "task"])
        .args(flags)
        .env_remove("RUST_LOG");
    if let Some(spec) = rust_log {
        cmd.env("RUST_LOG", spec);
    }
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
    // The command's own error is printed whatever -q says.
    assert!(
        stderr.contains("multiproc: ") && stderr.contains("this broker refuses everything"),
        "{flags:?}: {stderr}"
    );
    stderr
}

/// The warning the library logs before it retries a broker that answered LOADING.
const RETRYING: &str = "multiproc: warning: broker unreachable; retrying queue=task error=";

#[test]
fn a_library_warning_reaches_stderr_unless_quiet() {
    let stderr = status_on_loading_broker(&[], None);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(RETRYING) && l.contains("Redis is loading the dataset")),
        "no warning in: {stderr}"
    );
    let stderr = status_on_loading_broker(&["-v"], None);
    assert!(stderr.contains(RETRYING), "-v: {stderr}");
    for quiet in [&["-q"][..], &["-qq"][..], &["--quiet"][..]] {
        let stderr = status_on_loading_broker(quiet, None);
        assert!(!stderr.contains("warning"), "{quiet:?}: {stderr}");
    }
    // RUST_LOG decides when set, whatever -v/-q say.
    let stderr = status_on_loading_broker(&["-vv"], Some("off"));
    assert!(!stderr.contains("warning"), "RUST_LOG=off: {stderr}");
    let stderr = status_on_loading_broker(&["-qq"], Some("multiproc=warn"));
    assert!(
        stderr.contains(RETRYING),
        "RUST_LOG=multiproc=warn: {stderr}"
    );
}

#[test]
fn a_worker_warns_of_a_malformed_task_unless_quiet() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    for queue in ["bad1", "bad2"] {
        let stream = format!("multiproc:{queue}");
        let added = redis.cli(&["XADD", &stream, "*", "codec", "json", "body", "{not json"]);
        assert!(added.status.success(), "{added:?}");
    }
    let worker = |queue: &str, flags: &[&str]| {
        let mut args = vec![
            "worker", "-b", &url, "--tasks", queue, "--idle", "0.2", "--square",
        ];
        args.extend_from_slice(flags);
        let out = multiproc(&args);
        assert!(stdout_of(&out).contains("0 tasks done, 0 failed"));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = worker("bad1", &[]);
    assert!(
        stderr.contains("multiproc: warning: dead-lettered a malformed entry queue=bad1"),
        "{stderr}"
    );
    let stderr = worker("bad2", &["-q"]);
    assert_eq!(stderr, "");
    // The entry did go to the dead letters; -q after `dead`'s action is taken too.
    let letters = stdout_of(&multiproc(&["dead", "-b", &url, "ls", "bad2", "-q"]));
    assert!(letters.contains("body does not decode"), "{letters}");
}

#[test]
fn v_and_q_belong_to_the_subcommands_but_run() {
    for sub in LOGGED {
        let help = stdout_of(&multiproc(&[sub, "--help"]));
        assert!(
            help.contains("-v, --verbose...") && help.contains("-q, --quiet..."),
            "{sub}:\n{help}"
        );
    }
    // `run`'s -v and -q are GNU parallel's (print the command, quote it).
    let help = stdout_of(&multiproc(&["run", "--help"]));
    assert!(help.contains("-q, --quote"), "{help}");
    assert!(!help.contains("--quiet"), "{help}");
    // Not `multiproc`'s own: before the subcommand they are refused.
    let out = multiproc(&["-q", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '-q'"));
}
