//! `multiproc run`: its output and exit status compared with GNU parallel's on the same input
//! (when /usr/bin/parallel is there: with `CI` set its absence is a failure, otherwise those
//! comparisons are skipped with a note), and its process handling: timeouts, Ctrl-C, SIGTERM,
//! retries, `--halt`, the joblog, `--resume`, `--results`, `--line-buffer`.
//!
//! No test sleeps to synchronise: they wait for files or output to appear, with a deadline.
//! Every runner is started in its own process group and killed (with its jobs) if a test
//! fails half-way.

mod run_harness;

use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use run_harness::*;

// ---- compared with GNU parallel ----

#[test]
fn placeholders_match_gnu() {
    if !have_gnu("placeholders_match_gnu") {
        return;
    }
    let paths = [
        "a/b.c.txt",
        "/x",
        "noext",
        "./a.b/c",
        ".hidden",
        "a/",
        "",
        "sp ace.x/y z.w",
        "a.",
        "/",
        "//a//b//",
    ];
    let mut args = vec![
        "-k", "-j1", "echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}", ":::",
    ];
    args.extend(paths);
    same_as_gnu(&args, b"");
    same_as_gnu(
        &["-k", "--dry-run", "echo", "x{}y", "{.}.bak", ":::"]
            .iter()
            .chain(&paths)
            .copied()
            .collect::<Vec<_>>(),
        b"",
    );
    same_as_gnu(
        &[
            "-k", "echo", "{1}", "{2}", "{1.}", "{2/}", "{1//}", "{2/.}", "{-1}", "{3}", ":::",
            "a/b.c", "x", ":::", "/y/z.q", "w",
        ],
        b"",
    );
}

#[test]
fn dry_run_quoting_matches_gnu() {
    if !have_gnu("dry_run_quoting_matches_gnu") {
        return;
    }
    same_as_gnu(
        &[
            "-k",
            "--dry-run",
            "echo",
            ":::",
            "a b",
            "it's",
            "$HOME",
            "*",
            "a\"b",
            "",
            "plain",
            "x=1",
            "~",
            "a\\b",
            "é",
            "'",
            "''a''",
            "`id`",
            "a;b",
            "tab\there",
        ],
        b"",
    );
    // And what the shell makes of them is the arguments, unchanged.
    same_as_gnu(
        &[
            "-k", "echo", ":::", "a b", "it's", "$HOME", "*", "a\"b", "x=1", "~", "a\\b", "`id`",
        ],
        b"",
    );
}

#[test]
fn keep_order_and_tag_match_gnu() {
    if !have_gnu("keep_order_and_tag_match_gnu") {
        return;
    }
    same_as_gnu(
        &["-k", "-j4", "sleep 0.0$(( {} % 3 )); echo {}"],
        b"1\n2\n3\n4\n5\n6\n7\n8\n",
    );
    same_as_gnu(
        &["-k", "--tag", "echo {}; echo two", ":::", "a", "b c"],
        b"",
    );
    same_as_gnu(
        &["-k", "--tag", "echo", ":::", "a", "b", ":::", "x", "y z"],
        b"",
    );
    same_as_gnu(
        &["-k", "--tag", "-n", "2", "echo", ":::", "a", "b", "c"],
        b"",
    );
}

#[test]
fn max_args_colsep_and_products_match_gnu() {
    if !have_gnu("max_args_colsep_and_products_match_gnu") {
        return;
    }
    same_as_gnu(&["-k", "-n", "2", "echo", ":::", "a", "b", "c"], b"");
    same_as_gnu(
        &["-k", "-n", "2", "echo", "{1}+{2}", ":::", "a", "b", "c"],
        b"",
    );
    same_as_gnu(
        &[
            "-k",
            "-n",
            "2",
            "--dry-run",
            "echo",
            "{}",
            "{.}",
            ":::",
            "a.x",
            "b.y",
            "c",
        ],
        b"",
    );
    same_as_gnu(
        &["-k", "--colsep", "\\t", "echo", "{2}-{1}"],
        b"a b\tc\n1\t2\n",
    );
    same_as_gnu(
        &["-k", "--colsep", "[0-9]+", "echo", "{1}:{2}:{3}"],
        b"a1b22c\n",
    );
    same_as_gnu(&["-k", "--colsep", " ", "echo"], b"a b\nc d e\n");
    same_as_gnu(
        &[
            "-k", "echo", ":::", "a", "b", ":::", "1", "2", ":::", "x", "y",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "-k",
            "echo",
            "{3}{2}{1}",
            ":::",
            "a",
            "b",
            ":::",
            "1",
            ":::",
            "x",
            "y",
        ],
        b"",
    );
    let dir = TempDir::new("products");
    std::fs::write(dir.join("in.txt"), "1\n2\n3\n").expect("write");
    let f = dir.join("in.txt");
    let f = f.to_str().expect("utf-8 path");
    same_as_gnu(&["-k", "echo", "::::", f, ":::", "x", "y"], b"");
    same_as_gnu(&["-k", "-a", f, "echo"], b"");
    same_as_gnu(&["-k", "-a", f, "-a", f, "echo"], b"");
    same_as_gnu(&["-k", "-a", "-", "echo"], b"from\nstdin\n");
}

#[test]
fn input_delimiters_match_gnu() {
    if !have_gnu("input_delimiters_match_gnu") {
        return;
    }
    same_as_gnu(&["-0", "-k", "echo", "[{}]"], b"a\0b c\0\0last");
    same_as_gnu(&["--null", "-k", "echo", "[{}]"], b"x\ny\0z");
    same_as_gnu(&["-d", ",", "-k", "echo", "[{}]"], b"a,b,,c");
    same_as_gnu(&["-k", "echo", "[{}]"], b"a\n\nb\n");
    same_as_gnu(&["-k", "echo", "[{}]"], b"no final newline");
    same_as_gnu(&["-k", "echo"], b"");
}

#[test]
fn exit_status_matches_gnu() {
    if !have_gnu("exit_status_matches_gnu") {
        return;
    }
    same_as_gnu(&["exit {}", ":::", "0", "0"], b"");
    same_as_gnu(&["exit {}", ":::", "0", "1", "2", "3"], b"");
    let many: String = (1..=103).map(|i| format!("{i}\n")).collect();
    same_as_gnu(&["-j4", "false"], many.as_bytes());
    // --halt, one job at a time so that the order is fixed.
    same_as_gnu(
        &[
            "--halt",
            "now,fail=1",
            "-j1",
            "-k",
            "echo {}; exit {}",
            ":::",
            "0",
            "3",
            "0",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "--halt",
            "soon,fail=1",
            "-j1",
            "exit {}",
            ":::",
            "0",
            "2",
            "5",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "--halt",
            "soon,fail=2",
            "-j1",
            "exit {}",
            ":::",
            "1",
            "0",
            "2",
            "3",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "--halt",
            "now,success=1",
            "-j1",
            "exit {}",
            ":::",
            "1",
            "0",
            "1",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "--halt",
            "now,fail=50%",
            "-j1",
            "exit {}",
            ":::",
            "0",
            "1",
            "1",
            "0",
        ],
        b"",
    );
    same_as_gnu(
        &["--halt", "2", "-j1", "exit {}", ":::", "0", "4", "0"],
        b"",
    );
}

/// The fields of a joblog's lines.
fn joblog_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).expect("read joblog");
    text.lines()
        .map(|l| l.splitn(9, '\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn joblog_matches_gnu() {
    if !have_gnu("joblog_matches_gnu") {
        return;
    }
    let dir = TempDir::new("joblog");
    let (a, b) = (dir.join("ours.log"), dir.join("gnu.log"));
    let args = |log: &Path| -> Vec<String> {
        [
            "--joblog",
            log.to_str().expect("utf-8"),
            "-k",
            "-j1",
            "echo {}; exit {}",
            ":::",
            "0",
            "1",
            "2",
        ]
        .map(String::from)
        .to_vec()
    };
    let mine = ours(
        &args(&a).iter().map(String::as_str).collect::<Vec<_>>(),
        b"",
    );
    let theirs = gnu_in(
        None,
        &args(&b).iter().map(String::as_str).collect::<Vec<_>>(),
        b"",
    );
    assert_eq!(mine.code, theirs.code);
    let (mut ours_rows, mut gnu_rows) = (joblog_rows(&a), joblog_rows(&b));
    assert_eq!(ours_rows[0], gnu_rows[0], "header");
    assert_eq!(ours_rows.len(), gnu_rows.len());
    let start = regex::Regex::new(r"^\d{10}\.\d{3}$").expect("regex");
    let runtime = regex::Regex::new(r"^ *\d+\.\d{3}$").expect("regex");
    for rows in [&mut ours_rows, &mut gnu_rows] {
        rows[1..].sort_by_key(|r| r[0].parse::<u64>().expect("seq"));
        for r in &rows[1..] {
            assert_eq!(r.len(), 9, "{r:?}");
            assert!(start.is_match(&r[2]), "Starttime {:?}", r[2]);
            assert!(
                runtime.is_match(&r[3]) && r[3].len() >= 10,
                "JobRuntime {:?}",
                r[3]
            );
        }
    }
    for (o, g) in ours_rows[1..].iter().zip(&gnu_rows[1..]) {
        // Seq, Host, Send, Receive, Exitval, Signal, Command.
        for i in [0, 1, 4, 5, 6, 7, 8] {
            assert_eq!(o[i], g[i], "column {i} of {o:?} vs {g:?}");
        }
    }
}

// ---- process handling ----

#[test]
fn timeout_kills_the_job_and_its_children() {
    let dir = TempDir::new("timeout");
    let log = dir.join("log");
    let job = "sh -c 'sleep 100 & echo $! > gpid.{}; wait'";
    let mut r = Runner::start(
        bin(),
        &[
            "run",
            "--timeout",
            "1",
            "--joblog",
            log.to_str().expect("utf-8"),
            job,
            ":::",
            "a",
        ],
        Some(dir.path()),
        b"",
    );
    r.pid_files = Some((dir.path().to_path_buf(), "gpid."));
    wait_for("the grandchild's pid", || {
        !pids_in(dir.path(), "gpid.").is_empty()
    });
    let grandchild = pids_in(dir.path(), "gpid.")[0];
    let out = r.finish();
    assert!(out.elapsed < PATIENCE, "took {:?}", out.elapsed);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.err.contains("timed out"), "{out:?}");
    wait_for("the grandchild to die", || gone(grandchild));
    let rows = joblog_rows(&log);
    assert_eq!(rows[1][6], "-1", "Exitval of {:?}", rows[1]);
    assert_eq!(rows[1][7], "15", "Signal of {:?}", rows[1]);
}

/// Starts two jobs that record their pids and their children's, and wait for a `go` file.
fn start_two_waiting_jobs(dir: &TempDir) -> Runner {
    let job = "echo $$ > pid.{}; sleep 100 & echo $! > gpid.{}; \
               while [ ! -e go ]; do sleep 0.02; done; echo finished {}";
    let mut r = Runner::start(
        bin(),
        &["run", "-j2", "-k", job, ":::", "1", "2", "3", "4"],
        Some(dir.path()),
        b"",
    );
    r.pid_files = Some((dir.path().to_path_buf(), "gpid."));
    wait_for("two jobs to start", || {
        pids_in(dir.path(), "gpid.").len() == 2
    });
    r
}

#[test]
fn sighup_lets_running_jobs_finish_and_starts_no_more() {
    let dir = TempDir::new("sighup");
    let r = start_two_waiting_jobs(&dir);
    r.signal(Signal::SIGHUP);
    wait_for("the notice", || r.stderr().contains("SIGHUP received"));
    std::fs::write(dir.join("go"), "").expect("write go");
    let out = r.finish();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.err.contains("Waiting for these 2 jobs to finish"),
        "{out:?}"
    );
    assert!(
        out.out.contains("finished 1") && out.out.contains("finished 2"),
        "{out:?}"
    );
    assert!(
        !dir.join("pid.3").exists() && !dir.join("pid.4").exists(),
        "new jobs started"
    );
    for p in pids_in(dir.path(), "gpid.") {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// As GNU parallel: SIGINT (Ctrl-C) and SIGTERM kill every job, say nothing, and exit 255.
fn stop_signal_kills_every_job(sig: Signal) {
    let dir = TempDir::new("stop");
    let r = start_two_waiting_jobs(&dir);
    let pids: Vec<i32> = [pids_in(dir.path(), "pid."), pids_in(dir.path(), "gpid.")].concat();
    assert_eq!(pids.len(), 4);
    r.signal(sig);
    let out = r.finish();
    assert_eq!(out.code, Some(255), "{out:?}");
    assert_eq!(out.err, "", "GNU parallel says nothing");
    assert!(!out.out.contains("finished"), "{out:?}");
    for p in pids {
        wait_for(&format!("process {p} to die"), || gone(p));
    }
    assert!(!dir.join("pid.3").exists(), "a new job started");
}

#[test]
fn ctrl_c_kills_every_job_and_leaves_no_process() {
    stop_signal_kills_every_job(Signal::SIGINT);
}

#[test]
fn sigterm_kills_every_job() {
    stop_signal_kills_every_job(Signal::SIGTERM);
}

#[test]
fn halt_now_kills_the_running_jobs() {
    let dir = TempDir::new("halt");
    // The pid file appears whole (written aside, then renamed): the failing job, which waits
    // for it, must not end the run while the file is still empty.
    let job = "if [ {} = slow ]; then sleep 100 & echo $! > tmp.slow; mv tmp.slow gpid.slow; \
               wait; else while [ ! -e gpid.slow ]; do sleep 0.02; done; exit 3; fi";
    let mut r = Runner::start(
        bin(),
        &[
            "run",
            "-j2",
            "--halt",
            "now,fail=1",
            job,
            ":::",
            "slow",
            "fail",
            "never",
        ],
        Some(dir.path()),
        b"",
    );
    r.pid_files = Some((dir.path().to_path_buf(), "gpid."));
    wait_for("the slow job", || !pids_in(dir.path(), "gpid.").is_empty());
    let grandchild = pids_in(dir.path(), "gpid.")[0];
    let out = r.finish();
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.err.contains("This job failed"), "{out:?}");
    wait_for("the slow job's child to die", || gone(grandchild));
}

#[test]
fn retries_rerun_a_failing_job() {
    let dir = TempDir::new("retries");
    let d = Some(dir.path());
    let out = ours_in(
        d,
        &[
            "--retries",
            "3",
            "echo try; echo x >> count; exit 1",
            ":::",
            "a",
        ],
        b"",
    );
    assert_eq!(out.code, Some(1));
    assert_eq!(out.out, "try\n", "only the last try's output is printed");
    let tries = std::fs::read_to_string(dir.join("count")).expect("count");
    assert_eq!(tries.lines().count(), 3);
    // Succeeds on its second try, after a backoff.
    let job = "echo x >> count2; [ $(wc -l < count2) -ge 2 ] && echo ok";
    let out = ours_in(
        d,
        &["--retries", "5", "--retry-delay", "0.05", job, ":::", "a"],
        b"",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.out, "ok a\n");
    let tries = std::fs::read_to_string(dir.join("count2")).expect("count");
    assert_eq!(tries.lines().count(), 2);
}

#[test]
fn resume_skips_done_jobs_and_resume_failed_reruns_failed_ones() {
    let dir = TempDir::new("resume");
    let log = dir.join("log");
    let log = log.to_str().expect("utf-8");
    let out = ours(
        &["--joblog", log, "-j1", "exit {}", ":::", "0", "1", "0"],
        b"",
    );
    assert_eq!(out.code, Some(1));
    let out = ours(
        &[
            "--joblog",
            log,
            "--resume",
            "-j1",
            "echo ran {#}",
            ":::",
            "0",
            "1",
            "0",
            "x",
        ],
        b"",
    );
    assert_eq!(out.out, "ran 4\n", "{out:?}");
    let out = ours(
        &[
            "--joblog",
            log,
            "--resume-failed",
            "-j1",
            "echo again {#}",
            ":::",
            "0",
            "1",
            "0",
            "x",
            "y",
        ],
        b"",
    );
    assert_eq!(out.out, "again 2\nagain 5\n", "{out:?}");
    let seqs: Vec<String> = joblog_rows(Path::new(log))[1..]
        .iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(seqs, ["1", "2", "3", "4", "2", "5"]);
    let out = ours(&["--resume", "true"], b"");
    assert_eq!(out.code, Some(255), "--resume needs --joblog");
}

#[test]
fn results_are_stored_as_gnu_parallel_does() {
    let dir = TempDir::new("results");
    let res = dir.join("res");
    let out = ours(
        &[
            "--results",
            res.to_str().expect("utf-8"),
            "echo {}; echo err {} >&2",
            ":::",
            "a",
            "b/c",
            ":::",
            "x",
        ],
        b"",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let read = |p: &str| std::fs::read_to_string(res.join(p)).expect(p);
    assert_eq!(read("1/a/2/x/stdout"), "a x\n");
    assert_eq!(read("1/a/2/x/stderr"), "err a x\n");
    assert_eq!(read("1/a/2/x/seq"), "1");
    assert_eq!(read("1/b\\_c/2/x/stdout"), "b/c x\n");
    assert_eq!(read("1/b\\_c/2/x/seq"), "2");
    // The output goes to the files only, as GNU parallel's does.
    assert!(out.out.is_empty() && out.err.is_empty(), "{out:?}");
    if have_gnu("results_are_stored_as_gnu_parallel_does") {
        let again = dir.join("again");
        let again = again.to_str().expect("utf-8");
        same_as_gnu(&["--results", again, "-k", "echo", ":::", "a", "b"], b"");
    }
}

#[test]
fn output_is_grouped_per_job() {
    // Each job writes 50 lines in two writes each; grouped, a job's lines stay together.
    let job = "for i in $(seq 50); do printf %s {}-; printf '%s\\n' $i; done";
    let out = ours(&["-j4", job, ":::", "a", "b", "c", "d", "e", "f"], b"");
    assert_eq!(out.code, Some(0));
    let lines: Vec<&str> = out.out.lines().collect();
    assert_eq!(lines.len(), 300);
    for block in lines.chunks(50) {
        let job = block[0].split('-').next().expect("job");
        for (i, l) in block.iter().enumerate() {
            assert_eq!(*l, format!("{job}-{}", i + 1), "interleaved:\n{}", out.out);
        }
    }
}

#[test]
fn line_buffer_prints_whole_lines_as_they_come() {
    let job = "for i in $(seq 200); do printf %s {}-; printf '%s\\n' $i; done";
    let out = ours(
        &["--line-buffer", "-j4", job, ":::", "a", "b", "c", "d"],
        b"",
    );
    assert_eq!(out.code, Some(0));
    let line = regex::Regex::new(r"^[a-d]-\d+$").expect("regex");
    let mut count = std::collections::HashMap::new();
    for l in out.out.lines() {
        assert!(line.is_match(l), "a split line: {l:?}");
        *count.entry(&l[..1]).or_insert(0) += 1;
    }
    assert!(count.values().all(|&n| n == 200), "{count:?}");
    // A line shows before its job ends (the job waits for the test to see it).
    let dir = TempDir::new("linebuffer");
    let r = Runner::start(
        bin(),
        &[
            "run",
            "--line-buffer",
            "--tag",
            "echo first; while [ ! -e release ]; do sleep 0.02; done; printf last",
            ":::",
            "j",
        ],
        Some(dir.path()),
        b"",
    );
    wait_for("the first line", || r.stdout() == "j\tfirst\n");
    std::fs::write(dir.join("release"), "").expect("write");
    let out = r.finish();
    assert_eq!(out.out, "j\tfirst\nj\tlast");
}

#[test]
fn line_buffer_with_keep_order() {
    let out = ours(
        &[
            "--line-buffer",
            "-k",
            "-j3",
            "sleep 0.0{}; echo {}; echo {} again",
            ":::",
            "3",
            "1",
            "2",
        ],
        b"",
    );
    assert_eq!(out.out, "3\n3 again\n1\n1 again\n2\n2 again\n");
}

#[test]
fn delay_spaces_job_starts() {
    let dir = TempDir::new("delay");
    let log = dir.join("log");
    let out = ours(
        &[
            "--delay",
            "0.2",
            "-j3",
            "--joblog",
            log.to_str().expect("utf-8"),
            "true",
            ":::",
            "a",
            "b",
            "c",
        ],
        b"",
    );
    assert_eq!(out.code, Some(0));
    let mut starts: Vec<f64> = joblog_rows(&log)[1..]
        .iter()
        .map(|r| r[2].parse().expect("start"))
        .collect();
    starts.sort_by(f64::total_cmp);
    for w in starts.windows(2) {
        assert!(w[1] - w[0] >= 0.19, "starts {starts:?}");
    }
}

#[test]
fn jobs_option_forms() {
    for j in ["1", "2", "+1", "-1", "50%", "0"] {
        let out = ours(&["-j", j, "-k", "echo {%} {}", ":::", "a", "b", "c"], b"");
        assert_eq!(out.code, Some(0), "-j {j}: {out:?}");
        assert_eq!(out.out.lines().count(), 3, "-j {j}: {out:?}");
        if j == "1" {
            assert_eq!(out.out, "1 a\n1 b\n1 c\n");
        }
    }
    // Two at a time: the slots are 1 and 2.
    let out = ours(&["-j2", "echo {%}", ":::", "a", "b", "c", "d", "e"], b"");
    assert!(out.out.lines().all(|l| l == "1" || l == "2"), "{out:?}");
}

#[test]
fn bad_options_exit_255_with_a_message() {
    for args in [
        &["-j", "x", "true"][..],
        &["--timeout", "1x", "true"],
        &["--timeout", "0", "true"],
        &["--delay", "-1", "true"],
        &["--halt", "sometimes", "true"],
        &["-0", "-d", ",", "true"],
        &["--colsep", "", "true"],
        &["--no-such-option", "true"],
        &["-a", "/nonexistent/file", "true"],
        &["true", "::::", "/nonexistent/file"],
        &["echo", "{= $_ =}", ":::", "a"],
        &["-s", "0", "true"],
        &["-I", "", "true"],
        &["-m", "-X", "true"],
    ] {
        let out = ours(args, b"");
        assert_eq!(out.code, Some(255), "{args:?}: {out:?}");
        assert!(!out.err.is_empty(), "{args:?}: no message");
        assert!(out.out.is_empty(), "{args:?}: {out:?}");
    }
    let out = ours(&["-j", "x", "true"], b"");
    assert!(
        out.err.starts_with("multiproc: Error: bad --jobs"),
        "{}",
        out.err
    );
}

#[test]
fn no_shell_passes_arguments_as_they_are() {
    let out = ours(
        &[
            "--no-shell",
            "-k",
            "printf",
            "%s|\\n",
            ":::",
            "a b",
            "$HOME",
            "*",
        ],
        b"",
    );
    assert_eq!(out.out, "a b|\n$HOME|\n*|\n");
    let out = ours(
        &["--no-shell", "--dry-run", "printf", "%s", ":::", "a b"],
        b"",
    );
    assert_eq!(out.out, "printf '%s' 'a b'\n");
}

#[test]
fn commands_without_the_shell_behave_as_with_it() {
    // `printenv` needs no shell, so it runs directly; the result is the same.
    let out = ours(
        &[
            "-k",
            "-j1",
            "printenv",
            ":::",
            "PARALLEL_SEQ",
            "PARALLEL_JOBSLOT",
        ],
        b"",
    );
    assert_eq!(out.out, "1\n1\n");
    // A missing program: the shell's message and 127, as always.
    let out = ours(&["no-such-program-here", ":::", "a"], b"");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.err.contains("no-such-program-here"), "{out:?}");
    // Several values of one replacement string in a plain command are separate words.
    let out = ours(
        &["-n", "2", "/usr/bin/printf", "%s,", ":::", "a b", "c"],
        b"",
    );
    assert_eq!(out.out, "a b,c,");
}

#[test]
fn jobs_read_nothing_from_stdin_and_no_command_runs_the_arguments() {
    let out = ours(&["cat; echo {}", ":::", "a"], b"not for the job\n");
    assert_eq!(out.out, "a\n");
    let out = ours(&["-k", ":::", "echo one", "echo 'two  words'"], b"");
    assert_eq!(out.out, "one\ntwo  words\n");
    let out = ours(&["-k", "echo"], b"x y\n");
    assert_eq!(out.out, "x y\n");
}

#[test]
fn bar_is_written_as_lines_where_stderr_is_no_terminal() {
    // As GNU parallel, which draws its bar on a log too: one line per finished job.
    let out = ours(&["--bar", "-k", "echo", ":::", "a", "b"], b"");
    assert_eq!(out.out, "a\nb\n");
    // GNU's text: the percentage alone, then the bar in reverse video up to it.
    assert!(out.err.contains("\r50\r\x1b[7m50% 1:1="), "{out:?}");
    assert!(out.err.contains("\r100\r\x1b[7m100% 2:0=0s b"), "{out:?}");
}

#[test]
fn bar_is_drawn_on_a_terminal() {
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("bar_is_drawn_on_a_terminal: skipped: no /usr/bin/script to make a terminal");
        return;
    }
    let cmd = format!("{} run --bar -j2 true ::: 1 2 3", bin());
    let out = Runner::start("/usr/bin/script", &["-qec", &cmd, "/dev/null"], None, b"").finish();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.out.contains("3/3"), "{out:?}");
}

#[test]
fn dry_run_runs_nothing() {
    let dir = TempDir::new("dryrun");
    let out = ours_in(
        Some(dir.path()),
        &["--dry-run", "touch", "{}", ":::", "f1", "f2"],
        b"",
    );
    assert_eq!(out.out, "touch f1\ntouch f2\n");
    assert!(!dir.join("f1").exists());
}

/// Without `$SHELL` or `$PARALLEL_SHELL`, jobs run in the shell that started the runner, found
/// up the process tree, as GNU parallel does (dash's `echo` would turn `a\b` into a backspace).
#[test]
fn jobs_run_in_the_shell_that_started_the_runner() {
    for shell in ["/bin/bash", "/bin/dash"] {
        if !Path::new(shell).exists() {
            eprintln!("{shell} is not installed: that case is skipped");
            continue;
        }
        let real = std::fs::canonicalize(shell).expect("canonicalize shell");
        // `; exit` keeps the shell from exec'ing the runner in its own place; the job's `$$`
        // is its shell, still waiting for the command substitution.
        let out = Command::new(shell)
            .arg("-c")
            .arg(r#""$0" run -k 'x={}; echo $(readlink /proc/$$/exe)' ::: 1; exit $?"#)
            .arg(bin())
            .env_remove("SHELL")
            .env_remove("PARALLEL_SHELL")
            .stdin(Stdio::null())
            .output()
            .expect("run the shell");
        assert!(out.status.success(), "{shell}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            real.to_string_lossy(),
            "{shell}"
        );
    }
}

/// Jobs start with no signal blocked and SIGPIPE at its default (the runner ignores it), so a
/// pipeline whose reader stops early ends quietly, as in a terminal.
#[test]
fn jobs_start_with_default_signals() {
    // `cat` needs no shell: it is spawned directly and shows its own signal masks.
    let out = ours(&["cat", ":::", "/proc/self/status"], b"");
    assert_eq!(out.code, Some(0), "{out:?}");
    let mask = |name: &str| -> u64 {
        let line = out
            .out
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {out:?}"));
        u64::from_str_radix(line.trim(), 16).expect("a hex mask")
    };
    assert_eq!(mask("SigBlk:"), 0, "{out:?}");
    let sigpipe_bit = 1 << (13 - 1);
    assert_eq!(mask("SigIgn:") & sigpipe_bit, 0, "{out:?}");
    // Through the shell: `yes` dies of SIGPIPE instead of complaining of EPIPE.
    let out = ours(&["yes {} | head -n 1", ":::", "x"], b"");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.out, "x\n");
    assert_eq!(out.err, "", "{out:?}");
}

/// A job that closes its output and goes on is still waited for: its exit status counts, and
/// what it printed before is kept.
#[test]
fn a_job_that_closes_its_output_early_is_waited_for() {
    let out = ours(
        &[
            "-k",
            "echo before {}; exec >&- 2>&-; sleep 0.3; exit {}",
            ":::",
            "0",
            "3",
        ],
        b"",
    );
    assert_eq!(out.out, "before 0\nbefore 3\n");
    assert_eq!(out.code, Some(1), "one job failed: {out:?}");
}

/// Output far beyond a pipe's buffer, on both streams at once, comes through whole: the runner
/// reads while the jobs write (they would block for ever otherwise).
#[test]
fn large_output_on_both_streams_comes_through_whole() {
    // 2 MB on stdout and 1 MB on stderr per job, interleaved by the job itself.
    let job = "head -c 2000000 /dev/zero | tr '\\0' {}; head -c 1000000 /dev/zero | tr '\\0' e >&2; \
               head -c 1 /dev/zero | tr '\\0' {}";
    let out = ours(&["-k", "-j2", job, ":::", "a", "b"], b"");
    assert_eq!(out.code, Some(0), "{}", out.err.len());
    assert_eq!(out.out.len(), 2 * 2_000_001);
    assert!(out.out[..2_000_001].bytes().all(|b| b == b'a'));
    assert!(out.out[2_000_001..].bytes().all(|b| b == b'b'));
    assert_eq!(out.err.len(), 2_000_000);
}

#[test]
fn gnu_spellings_of_our_options_match_gnu() {
    if !have_gnu("gnu_spellings_of_our_options_match_gnu") {
        return;
    }
    let dir = TempDir::new("spellings");
    std::fs::write(dir.join("in.txt"), "1\n2\n3\n").expect("write");
    let f = dir.join("in.txt");
    let f = f.to_str().expect("utf-8 path");
    // -P / --max-procs (-j), --keeporder (-k), --maxargs (-n), --argfile (-a), --dryrun.
    same_as_gnu(
        &["-P", "2", "--keeporder", "echo", ":::", "a", "b", "c"],
        b"",
    );
    same_as_gnu(
        &[
            "--max-procs",
            "1",
            "-k",
            "--maxargs",
            "2",
            "echo",
            ":::",
            "a",
            "b",
            "c",
        ],
        b"",
    );
    same_as_gnu(&["-k", "--argfile", f, "echo", "x"], b"");
    same_as_gnu(&["-k", "--dryrun", "echo", "{}", ":::", "a b", "c"], b"");
    // -C / --col-sep (--colsep).
    same_as_gnu(&["-k", "-C", " ", "echo", "{2}-{1}"], b"a b\nc d\n");
    same_as_gnu(&["-k", "--col-sep", ",", "echo", "{2}"], b"a,b\nc,d\n");
    // --group (the default) and --linebuffer / --line-buffered (--line-buffer).
    same_as_gnu(&["-k", "--group", "echo", ":::", "a", "b"], b"");
    same_as_gnu(&["-k", "--linebuffer", "echo", ":::", "a", "b"], b"");
    same_as_gnu(&["-k", "--line-buffered", "echo", ":::", "a", "b"], b"");
    // --halt-on-error (--halt), and an old-style negative --halt as its own word.
    let fail_then = |halt: &[&str]| {
        let mut args = vec!["-j1", "-k"];
        args.extend_from_slice(halt);
        args.extend(["sh", "-c", "echo {}; exit {}", ":::", "0", "1", "0"]);
        same_as_gnu(&args, b"");
    };
    fail_then(&["--halt-on-error", "2"]);
    fail_then(&["--halt", "-1"]);
    fail_then(&["--halt", "1"]);
    // Abbreviated long options, as GNU accepts any unique prefix.
    same_as_gnu(&["--keep-o", "--dry", "echo", ":::", "a", "b"], b"");
    same_as_gnu(&["-k", "--max-a", "2", "echo", ":::", "a", "b", "c"], b"");
    // --jl (--joblog) and --res / --result (--results) write what the long spellings write.
    let log = dir.join("log");
    let out = ours(
        &["--jl", log.to_str().unwrap(), "true", ":::", "a", "b"],
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.err);
    assert_eq!(joblog_rows(&log).len(), 3, "a header and two jobs");
    for spelling in ["--res", "--result"] {
        let res = dir.join(spelling.trim_start_matches('-'));
        let res_str = res.to_str().unwrap();
        let out = ours(&[spelling, res_str, "echo", ":::", "a"], b"");
        assert_eq!(out.code, Some(0), "{spelling}: {}", out.err);
        let stored = std::fs::read_to_string(res.join("1").join("a").join("stdout"));
        assert_eq!(stored.expect(spelling), "a\n");
    }
}

#[test]
fn verbose_and_the_counts_match_gnu() {
    if !have_gnu("verbose_and_the_counts_match_gnu") {
        return;
    }
    same_as_gnu(&["-k", "-v", "echo", ":::", "a", "b c"], b"");
    same_as_gnu(&["-k", "-v", "--tag", "echo", ":::", "a", "b"], b"");
    same_as_gnu(&["-k", "-v", "--dry-run", "echo", ":::", "a"], b"");
    // -n0: a job per input, run without it.
    same_as_gnu(&["-k", "-n0", "echo", "x", ":::", "1", "2"], b"");
    same_as_gnu(&["-k", "-n", "0", "echo", "x"], b"1\n2\n3\n");
    // -d splits ::: arguments too; --colsep trims blanks around fields (GNU's implied
    // --trim rl); a value in the command's first word is not quoted.
    same_as_gnu(
        &["-k", "-d", ",", "echo", "[{}]", ":::", "a,b,", ",c", ""],
        b"",
    );
    same_as_gnu(&["-k", "--colsep", "%+", "echo", "[{2}]"], b"a% c %%b\n");
    same_as_gnu(
        &["-k", "--colsep", ",", "echo", "[{1}]", "[{2}]"],
        b"a , b \n",
    );
    same_as_gnu(&["{}", "x"], b"echo a  b\n");
    same_as_gnu(&["-k", "--dry-run", "{}", "'x y'"], b"echo a\n");
    same_as_gnu(&["--number-of-cores"], b"");
    same_as_gnu(&["--number-of-threads"], b"");
    same_as_gnu(&["--number-of-cpus"], b"");
    let version = ours(&["--version"], b"");
    assert_eq!(version.code, Some(0));
    assert!(version.out.starts_with("multiproc run "), "{}", version.out);
}

#[test]
fn joblog_on_stdout_matches_gnu() {
    if !have_gnu("joblog_on_stdout_matches_gnu") {
        return;
    }
    // The times differ from run to run: compare every other column, line by line.
    let stable = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                match f.len() {
                    9 => [f[0], f[1], f[4], f[6], f[7], f[8]].join("\t"),
                    _ => l.to_string(),
                }
            })
            .collect()
    };
    let args = [
        "-j1",
        "--joblog",
        "-",
        "sh",
        "-c",
        "echo {}; exit {}",
        ":::",
        "0",
        "1",
    ];
    let theirs = gnu_in(None, &args, b"");
    let mine = ours(&args, b"");
    assert_eq!(stable(&mine.out), stable(&theirs.out), "{}", mine.err);
    assert_eq!(mine.code, theirs.code);
}
