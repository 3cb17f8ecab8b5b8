//! `multiproc run` with jobs that write more than memory should hold: output past a
//! megabyte waits in a temporary file (as GNU parallel keeps all output in files), comes out
//! whole and in order with `-k`, `--tag`, `--line-buffer` and `--results`, and a long line
//! without a newline costs time in proportion to its length.

mod run_harness;

use run_harness::*;

/// The runner's peak resident memory in kB, from its `/proc/PID/status`.
fn peak_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

#[test]
fn a_job_writing_hundreds_of_megabytes_is_not_held_in_memory() {
    // The job writes 200 MB, then waits at a gate: the runner has read all but a pipe's worth
    // of it when `ready` appears, and holds it until the job ends. Its peak memory is read
    // then. The output goes through `wc -c`, so the test holds none of it.
    let dir = TempDir::new("large-output");
    let (ready, gate) = (dir.join("ready"), dir.join("gate"));
    let job = format!(
        "head -c 200000000 /dev/zero; touch {}; until [ -e {} ]; do sleep 0.01; done; : {{}}",
        ready.display(),
        gate.display()
    );
    let script = format!(
        "\"$0\" run --tmpdir {} '{job}' ::: 1 | wc -c",
        dir.path().display()
    );
    let r = Runner::start("sh", &["-c", &script, bin()], None, b"");
    let sh = r.pid().as_raw();
    wait_for("the job to write its output", || ready.exists());
    let runner = children(sh)
        .into_iter()
        .find(|&c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|&b| b == 0).nth(1) == Some(b"run"))
        })
        .expect("the runner among the shell's children");
    let peak = peak_kb(runner);
    std::fs::write(&gate, "").expect("open the gate");
    let out = r.finish();
    assert_eq!(out.code, Some(0), "{}", out.err);
    assert_eq!(out.out.trim(), "200000000", "every byte printed");
    assert!(
        peak < 60_000,
        "the runner peaked at {peak} kB holding a job's 200 MB"
    );
}

#[test]
fn large_outputs_come_out_as_gnus() {
    if !have_gnu("large_outputs_come_out_as_gnus") {
        return;
    }
    // Each job writes 2–3 MB (past the memory limit), the first one last, so that `-k` holds
    // the second one back meanwhile.
    let jobs = ["sleep 0.{}; seq 300000 | sed s/^/{}:/", ":::", "3", "0"];
    for opts in [
        &["-k"][..],
        &["-k", "--tag"],
        &["-k", "--lb"],
        &["-k", "--lb", "--tag"],
    ] {
        let mut args = opts.to_vec();
        args.extend_from_slice(&jobs);
        same_as_gnu(&args, b"");
    }
    // Standard error too, after the job's standard output.
    same_as_gnu(
        &["-k", "--tag", "seq 200000 >&2; seq {}", ":::", "200000"],
        b"",
    );
}

#[test]
fn large_results_are_stored_whole() {
    let dir = TempDir::new("large-results");
    let res = dir.join("res");
    let out = ours(
        &[
            "--results",
            res.to_str().expect("utf-8"),
            "seq {}; seq 5 >&2",
            ":::",
            "400000",
        ],
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.err);
    let stored = std::fs::read(res.join("1/400000/stdout")).expect("stdout file");
    let want: String = (1..=400_000).map(|i| format!("{i}\n")).collect();
    assert!(stored == want.as_bytes(), "the stored stdout differs");
    let err = std::fs::read_to_string(res.join("1/400000/stderr")).expect("stderr file");
    assert_eq!(err, "1\n2\n3\n4\n5\n");
}

#[test]
fn a_long_line_is_printed_whole_with_line_buffer() {
    // 30 MB without a newline, then one: the line buffer looks for newlines only in what
    // came since it last looked (a rescan from the line's start each read took minutes).
    let out = ours(
        &[
            "--lb",
            "--tag",
            "head -c 30000000 /dev/zero | tr '\\0' x; echo; echo {}",
            ":::",
            "end",
        ],
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.err);
    let lines: Vec<&str> = out.out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].len(), "end\t".len() + 30_000_000);
    assert!(lines[0].starts_with("end\txxx"));
    assert_eq!(lines[1], "end\tend");
}
