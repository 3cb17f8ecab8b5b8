//! `multiproc run` with the options GNU parallel users reach for most after the basic ones,
//! each compared with GNU parallel on the same input: replacement strings (`-I`), input
//! filters (`-E`, `-r`, `-L`), linked sources (`--link`, `:::+`), quoting (`-q`), many
//! arguments per command line (`-m`, `-X`, `-s`) and GNU's limit on its length, tags
//! (`--tagstring`), output as it comes (`-u`), output in files (`--files`), `-j FILE`, and
//! fewer jobs when descriptors run short.

mod run_harness;

use std::os::unix::fs::PermissionsExt;

use run_harness::*;

#[test]
fn replacement_strings_match_gnu() {
    if !have_gnu("replacement_strings_match_gnu") {
        return;
    }
    same_as_gnu(
        &["-k", "-I", ",,", "echo", ",,", "{}", ":::", "a", "b"],
        b"",
    );
    same_as_gnu(&["-k", "-I", ",,", "echo", ",,.", "{.}", ":::", "a.x"], b"");
    same_as_gnu(&["-k", "-I", ",,", "echo", ":::", "a b"], b"");
    same_as_gnu(&["-k", "--replace=@@", "echo", "@@", "{}", ":::", "a"], b"");
    same_as_gnu(&["-k", "-I", "{}", "echo", "x{}", ":::", "a"], b"");
    // A replacement string in the command's first word: no value is quoted (GNU's rule);
    // otherwise every value is, in one word or several.
    same_as_gnu(&["-k", "echo {}", ":::", "a  b"], b"");
    same_as_gnu(&["-k", "echo {} {}", ":::", "a  b"], b"");
    same_as_gnu(&["-k", "--dry-run", "{#} {}", ":::", "a  b"], b"");
    same_as_gnu(&["-k", "--dry-run", "x{} {}", ":::", "a  b"], b"");
    same_as_gnu(&["-k", "V={} sh -c 'echo \"$V\"'", ":::", "a  b"], b"");
}

#[test]
fn input_filters_match_gnu() {
    if !have_gnu("input_filters_match_gnu") {
        return;
    }
    let dir = TempDir::new("filters");
    let lines = dir.join("lines");
    std::fs::write(&lines, "a b\nc d\ne\nf\ng\n").expect("write");
    let lines = lines.to_str().expect("utf-8 path");
    let cont = dir.join("continued");
    std::fs::write(&cont, "a \nb\nc\n").expect("write");
    let cont = cont.to_str().expect("utf-8 path");
    // -E / --eof=: a record equal to it ends the input, from ::: too.
    same_as_gnu(&["-k", "-E", "b", "echo", ":::", "a", "b", "c"], b"");
    same_as_gnu(&["-k", "-E", "STOP", "echo"], b"x\nSTOP\ny\n");
    same_as_gnu(&["-k", "--eof=c", "echo", "::::", cont], b"");
    // -r: blank records are left out.
    same_as_gnu(&["-k", "-r", "echo", "[{}]", ":::", "a", "", " ", "c"], b"");
    same_as_gnu(&["-k", "-r", "echo", "[{}]"], b"a\n\n \t\nb\n");
    same_as_gnu(&["-k", "-r", "echo", "x"], b"  \n\n");
    // -L / -l / --max-lines: lines per job, and a line ending in a blank goes on.
    same_as_gnu(&["-k", "-L2", "echo", "::::", lines], b"");
    same_as_gnu(&["-k", "-L", "2", "echo", "{1}+{2}", "::::", lines], b"");
    same_as_gnu(&["-k", "-l", "echo", "::::", lines], b"");
    same_as_gnu(&["-k", "-l2", "echo", "::::", lines], b"");
    same_as_gnu(&["-k", "--max-lines=2", "echo", "::::", lines], b"");
    same_as_gnu(&["-k", "-L1", "echo", "[{1}]", "[{2}]", "::::", cont], b"");
    same_as_gnu(&["-k", "-L2", "echo", "[{1}]", "[{2}]", "::::", cont], b"");
    // -N: as -n.
    same_as_gnu(&["-k", "-N2", "echo", "{1}-{2}", ":::", "a", "b", "c"], b"");
    same_as_gnu(&["-k", "-N0", "echo", "x", ":::", "a", "b"], b"");
}

#[test]
fn linked_sources_match_gnu() {
    if !have_gnu("linked_sources_match_gnu") {
        return;
    }
    let dir = TempDir::new("link");
    let f = dir.join("f");
    std::fs::write(&f, "x\ny\nz\n").expect("write");
    let f = f.to_str().expect("utf-8 path");
    same_as_gnu(
        &[
            "-k", "--link", "echo", ":::", "a", "b", "c", ":::", "1", "2",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "-k", "--xapply", "echo", ":::", "a", "b", ":::", "1", "2", "3",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2", ":::", "X", "Y",
        ],
        b"",
    );
    same_as_gnu(&["-k", "echo", ":::", "a", "b", "::::+", f], b"");
    same_as_gnu(&["-k", "--link", "echo", "::::", f, ":::", "1", "2"], b"");
    // Linked to the first source of a product.
    same_as_gnu(
        &[
            "-k", "echo", ":::", "a", "b", ":::+", "1", "2", ":::", "p", "q",
        ],
        b"",
    );
}

#[test]
fn quoting_whole_words_matches_gnu() {
    if !have_gnu("quoting_whole_words_matches_gnu") {
        return;
    }
    same_as_gnu(&["-k", "-q", "echo", "a  b", "{}", ":::", "x  y"], b"");
    same_as_gnu(
        &["-k", "-q", "sh", "-c", "echo $0", "{}", ":::", "x  y"],
        b"",
    );
    same_as_gnu(
        &[
            "-k",
            "--dry-run",
            "-q",
            "echo",
            "a  b|c",
            "x{}y",
            ":::",
            "x  y",
        ],
        b"",
    );
    same_as_gnu(&["-k", "-q", "echo", "$HOME", "{}", ":::", "$PATH"], b"");
    same_as_gnu(
        &["-k", "-j1", "-q", "-X", "echo", "x{}y", ":::", "a b", "c"],
        b"",
    );
    // With the command in the input, -q makes each argument one word: `'echo x'` is no
    // command (GNU's par_macron).
    same_as_gnu(&["-k", "-q", ":::", "echo x", "echo"], b"");
    same_as_gnu(&["-k", "-q", "-X", ":::", "echo x"], b"");
}

#[test]
fn many_arguments_per_line_match_gnu() {
    if !have_gnu("many_arguments_per_line_match_gnu") {
        return;
    }
    let abcd = [":::", "a", "b", "c", "d"];
    let with = |opts: &[&str], tail: &[&str]| {
        let mut v = vec!["-k"];
        v.extend_from_slice(opts);
        v.extend_from_slice(tail);
        same_as_gnu(&v, b"");
    };
    // -X repeats the word around {}; -m puts all the arguments in {}; both spread the last
    // line over the job slots.
    for opts in [
        &["-X"][..],
        &["-m"],
        &["-j1", "-X"],
        &["-j1", "-m"],
        &["-j3", "-X"],
    ] {
        let mut tail = vec!["echo", "pre{}post"];
        tail.extend_from_slice(&abcd);
        with(opts, &tail);
        with(opts, &["echo", ":::", "1", "2", "3", "4", "5", "6", "7"]);
        with(
            opts,
            &["echo", "{#}", "{.}", "{1}", "x{1}y", ":::", "a.1", "b.2"],
        );
        with(opts, &["echo", "x{}y", ":::", "a", "b", ":::", "1", "2"]);
        with(opts, &["--dry-run", "echo", "x{}", ":::", "a b", "c'd"]);
    }
    with(&["-j1", "-X"], &["echo", "x{}y{1}z", ":::", "a", "b", "c"]);
    with(&["-j1", "-X"], &["echo", "x{}y{}", ":::", "a", "b", "c"]);
    // Within one argument, only the blank-delimited part around `{}` repeats.
    with(&["-j1", "-X"], &["echo {} | wc -w", ":::", "1", "2", "3"]);
    with(&["-j1", "-X"], &["echo", "a{}b  c", ":::", "1", "2", "3"]);
    with(
        &["-j1", "-X", "--dry-run"],
        &["echo x{}y z{} ", ":::", "1", "2"],
    );
    with(
        &["-j1", "-X", "-n2"],
        &["echo", ":::", "1", "2", "3", "4", "5"],
    );
    // -s: the line stays shorter; GNU's error and exit status for an argument too long.
    let six = [":::", "aaaa", "bbbb", "cccc", "dddd", "eeee", "ffff"];
    let mut tail = vec!["echo"];
    tail.extend_from_slice(&six);
    with(&["-j1", "-s", "20", "-X"], &tail);
    with(&["-j1", "-s", "8", "-m"], &tail);
    with(&["-j1", "-s", "12", "-X"], &["echo", ":::", "a b", "c"]);
    with(&["-j1", "-s", "14", "-X"], &["echo", ":::", "a b", "c"]);
    let mut tail = vec!["echo", "pre{}post"];
    tail.extend_from_slice(&six);
    with(&["-j1", "-s", "20", "-m"], &tail);
    with(
        &["-j1", "-s", "10"],
        &["echo", ":::", "a", "bbbbbbbbbbbb", "c"],
    );
    let out = ours(
        &["-j1", "-s", "10", "echo", ":::", "a", "bbbbbbbbbbbb"],
        b"",
    );
    assert!(
        out.err.contains(
            "multiproc: Error: Command line too long (17 >= 10) at input 0: bbbbbbbbbbbb"
        ),
        "{}",
        out.err
    );
}

#[test]
fn a_command_line_over_the_default_limit_stops_as_gnu_does() {
    if !have_gnu("a_command_line_over_the_default_limit_stops_as_gnu_does") {
        return;
    }
    // 70,000 bytes: over both GNU's probed limit and ours, under what Linux allows.
    let big = "x".repeat(70_000);
    same_as_gnu(
        &["-k", "-j1", "echo", "{}", "|", "wc", "-c"],
        format!("a\n{big}\nb\n").as_bytes(),
    );
    let out = ours(
        &["-j1", "echo", "{}", "|", "wc", "-c"],
        format!("{big}\n").as_bytes(),
    );
    assert_eq!(out.code, Some(255));
    assert!(out.err.contains("Command line too long ("), "{}", out.err);
    assert!(
        out.err.contains(&format!("{}...", "x".repeat(50))),
        "{}",
        out.err
    );
}

#[test]
fn tags_and_ungrouped_output_match_gnu() {
    if !have_gnu("tags_and_ungrouped_output_match_gnu") {
        return;
    }
    same_as_gnu(
        &[
            "-k",
            "--tagstring",
            "{#}:{}",
            "echo",
            "x",
            ":::",
            "a b",
            "c",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "-k",
            "--tagstring",
            "{#}",
            "-X",
            "-j1",
            "echo",
            ":::",
            "a",
            "b",
        ],
        b"",
    );
    same_as_gnu(
        &["-k", "--tagstring", "[{1}]", "echo", ":::", "a", ":::", "b"],
        b"",
    );
    same_as_gnu(&["-u", "-j1", "--tag", "echo", ":::", "a", "b"], b"");
    same_as_gnu(&["--ungroup", "-j1", "printf", "%s", ":::", "a", "b"], b"");
    same_as_gnu(&["-k", "--compress", "echo", ":::", "a", "b"], b"");
}

#[test]
fn ungrouped_output_comes_before_the_job_ends() {
    let dir = TempDir::new("ungroup");
    let gate = dir.join("gate");
    // The job prints half a line, then waits for the gate, which the test opens only once it
    // has seen that half line.
    let script = format!(
        "printf half-{{}}; while [ ! -e {} ]; do sleep 0.01; done; echo done",
        gate.display()
    );
    let r = Runner::start(bin(), &["run", "-u", &script, ":::", "x"], None, b"");
    wait_for("the half line", || r.stdout() == "half-x");
    std::fs::write(&gate, "").expect("open the gate");
    let out = r.finish();
    assert_eq!(out.out, "half-xdone\n");
    assert_eq!(out.code, Some(0));
}

#[test]
fn files_hold_the_output_and_their_names_are_printed() {
    if !have_gnu("files_hold_the_output_and_their_names_are_printed") {
        return;
    }
    let dir = TempDir::new("files");
    let dir_str = dir.path().to_str().expect("utf-8 path").to_string();
    let args = [
        "-k", "--files", "--tmpdir", &dir_str, "echo", ":::", "a", "b c",
    ];
    let out = ours(&args, b"");
    assert_eq!(out.code, Some(0), "{}", out.err);
    let names: Vec<&str> = out.out.lines().collect();
    assert_eq!(names.len(), 2, "{}", out.out);
    for (name, want) in names.iter().zip(["a\n", "b c\n"]) {
        let file = std::path::Path::new(name);
        assert_eq!(file.parent(), Some(dir.path()), "{name}");
        let base = file.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(
            base.starts_with("par") && base.ends_with(".par") && base.len() == 12,
            "{base}"
        );
        assert_eq!(std::fs::read_to_string(file).expect("read"), want);
        let mode = std::fs::metadata(file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // GNU prints as many names, one per job; with --tag, after the tag.
    let theirs = gnu_in(None, &args, b"");
    assert_eq!(theirs.out.lines().count(), 2);
    let tagged = ours(
        &["--tag", "--files", "--tmpdir", &dir_str, "true", ":::", "q"],
        b"",
    );
    assert!(
        tagged.out.starts_with(&format!("q\t{dir_str}/par")),
        "{}",
        tagged.out
    );
    // A directory that is not there: a clear error, not a panic.
    let bad = ours(
        &["--files", "--tmpdir", "/nonexistent/x", "echo", ":::", "a"],
        b"",
    );
    assert!(
        bad.err.contains("cannot create a file in /nonexistent/x"),
        "{}",
        bad.err
    );
}

#[test]
fn jobs_from_a_file_match_gnu() {
    if !have_gnu("jobs_from_a_file_match_gnu") {
        return;
    }
    let dir = TempDir::new("jobsfile");
    let f = dir.join("procs");
    std::fs::write(&f, "1\n").expect("write");
    let f = f.to_str().expect("utf-8 path");
    // One job at a time: every job gets slot 1.
    same_as_gnu(&["-k", "-j", f, "echo", "{%}", ":::", "a", "b", "c"], b"");
    std::fs::write(dir.join("procs"), "nonsense\n").expect("write");
    let out = ours(&["-j", f, "echo", ":::", "a"], b"");
    assert_eq!(out.code, Some(255));
    assert!(out.err.contains("bad --jobs"), "{}", out.err);
}

#[test]
fn too_few_descriptors_lower_the_job_count_as_gnu_does() {
    if !have_gnu("too_few_descriptors_lower_the_job_count_as_gnu_does") {
        return;
    }
    let run = |program: &str, prefix: &str| {
        let script = format!(
            "ulimit -n 50; {program} {prefix} -j20 -k 'echo {{}}; sleep 0.2' ::: $(seq 30)"
        );
        Runner::start("/bin/sh", &["-c", &script], None, b"").finish()
    };
    let mine = run(bin(), "run");
    let theirs = run(GNU, "--will-cite");
    assert_eq!(mine.code, Some(0), "{}", mine.err);
    assert_eq!(mine.out, theirs.out);
    assert!(
        mine.err.contains("Only enough file handles to run"),
        "{}",
        mine.err
    );
    assert!(!mine.err.contains("Too many open files"), "{}", mine.err);
    // -j0 (as many as possible): the same warning once a job waits (GNU's par_k); none when
    // every job fits.
    for (n, warned) in [(30, true), (3, false)] {
        let count = |err: &str| err.matches("Only enough file handles").count();
        let run0 = |program: &str, prefix: &str| {
            let script = format!(
                "ulimit -n 50; {program} {prefix} -j0 -k 'echo {{}}; sleep 0.2' ::: $(seq {n})"
            );
            Runner::start("/bin/sh", &["-c", &script], None, b"").finish()
        };
        let mine = run0(bin(), "run");
        let theirs = run0(GNU, "--will-cite");
        assert_eq!(mine.out, theirs.out);
        assert_eq!(count(&mine.err), usize::from(warned), "{}", mine.err);
        assert_eq!(
            count(&theirs.err),
            usize::from(warned),
            "GNU's: {}",
            theirs.err
        );
    }
}

#[test]
fn large_arguments_are_not_all_held_in_memory() {
    // 1,200 arguments of 50 kB (60 MB): the runner holds what running jobs need and a few
    // batches ahead, not the input. The last job waits for a gate, so that the runner's
    // high-water mark can be read once it has read everything.
    let dir = TempDir::new("memory");
    let input = dir.join("input");
    let mut data = Vec::with_capacity(61_000_000);
    for i in 0..1200 {
        data.extend_from_slice(format!("{i:05}").as_bytes());
        data.extend(std::iter::repeat_n(b'x', 50_000));
        data.push(b'\n');
    }
    std::fs::write(&input, &data).expect("write");
    drop(data);
    let gate = dir.join("gate");
    let job = format!(
        "[ {{#}} -lt 1200 ] || until [ -e {} ]; do sleep 0.01; done; : {{}}",
        gate.display()
    );
    let input = input.to_str().expect("utf-8 path");
    let r = Runner::start(bin(), &["run", "-j2", &job, "::::", input], None, b"");
    let pid = r.pid().as_raw();
    // The last job has started when a shell child of the runner has 1200 in its command line.
    let status = format!("/proc/{pid}/status");
    wait_for("the last job", || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|cmd| cmd.windows(9).any(|w| w == b"[ 1200 -l"))
            })
    });
    let hwm_kb: u64 = std::fs::read_to_string(&status)
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    std::fs::write(&gate, "").expect("open the gate");
    let out = r.finish();
    assert_eq!(out.code, Some(0), "{}", out.err);
    assert!(
        hwm_kb < 30_000,
        "the runner peaked at {hwm_kb} kB for 60 MB of input"
    );
}

/// `seq 1..=n`, one number a line.
fn seq(n: u32) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn pipe_blocks_match_gnu() {
    if !have_gnu("pipe_blocks_match_gnu") {
        return;
    }
    let ten = seq(10);
    same_as_gnu(&["--pipe", "-N3", "-k", "wc", "-l"], &ten);
    same_as_gnu(&["--pipe", "-L3", "-k", "wc", "-l"], &ten);
    same_as_gnu(&["--pipe", "-N2", "-j1", "-k", "--tag", "cat"], &ten);
    same_as_gnu(&["--pipe", "-N2", "-k", "--dry-run", "cat"], &ten);
    same_as_gnu(&["--pipe", "-N3", "-k", "cat; echo {#} {}"], &ten);
    same_as_gnu(&["--pipe", "--recend", "5", "-k", "wc", "-c"], &ten);
    same_as_gnu(&["--pipe", "--block", "4", "-k", "wc", "-c"], &ten);
    same_as_gnu(&["--pipe", "--block", "10", "-k", "wc", "-c"], &seq(20));
    same_as_gnu(&["--pipe", "-k", "wc", "-c"], b"a\nb");
    same_as_gnu(&["--pipe", "-k", "echo", "x"], b"");
    same_as_gnu(&["--pipe", "-k", "head", "-1"], &ten);
    let big = seq(100_000);
    same_as_gnu(&["--pipe", "--block", "100k", "-k", "wc", "-c"], &big);
    same_as_gnu(&["--pipe", "--block", "100K", "-k", "md5sum"], &big);
    // The default block (1 MiB), and a job that reads nothing of its block.
    same_as_gnu(&["--pipe", "-k", "wc", "-l"], &seq(400_000));
}

#[test]
fn pipe_gives_every_byte_once_and_logs_what_it_sent() {
    // Ten jobs at once, each getting 64 kB blocks through its stdin while others run.
    let input = seq(300_000);
    let dir = TempDir::new("pipe");
    let log = dir.join("log");
    let log_str = log.to_str().expect("utf-8 path");
    let out = ours(
        &[
            "--pipe", "--block", "64K", "-j10", "--joblog", log_str, "cat",
        ],
        &input,
    );
    assert_eq!(out.code, Some(0), "{}", out.err);
    let mut got: Vec<&str> = out.out.lines().collect();
    got.sort_unstable_by_key(|l| l.parse::<u32>().expect("a number"));
    let want: Vec<String> = (1..=300_000).map(|i| i.to_string()).collect();
    assert!(got == want, "lost, doubled or cut lines");
    // The joblog's Send column holds each block's size; together, the input.
    let text = std::fs::read_to_string(&log).expect("joblog");
    let sent: u64 = text
        .lines()
        .skip(1)
        .map(|l| {
            l.split('\t')
                .nth(4)
                .expect("Send")
                .parse::<u64>()
                .expect("bytes")
        })
        .sum();
    assert_eq!(sent, input.len() as u64);
    // --pipe with arguments of its own, or with -X, is refused.
    let bad = ours(&["--pipe", "echo", ":::", "a"], b"");
    assert_eq!(bad.code, Some(255));
    let bad = ours(&["--pipe", "-X", "echo"], b"");
    assert_eq!(bad.code, Some(255));
    let bad = ours(&["--block", "1M", "cat"], b"");
    assert_eq!(bad.code, Some(255), "--block without --pipe");
}

#[test]
fn headers_name_columns_as_gnu_does() {
    if !have_gnu("headers_name_columns_as_gnu_does") {
        return;
    }
    let table = b"f1\tf2\nx\ty\nz\tw\n";
    same_as_gnu(
        &[
            "-k", "--header", ":", "echo", "{a}-{b}", ":::", "a", "1", "2", ":::", "b", "3",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "-k", "--header", ":", "--colsep", "\t", "echo", "{f2}", "{1}",
        ],
        table,
    );
    same_as_gnu(&["-k", "--header", ":", "echo", "{f2}", "{}"], table);
    same_as_gnu(
        &[
            "-k", "--header", ":", "--colsep", ",", "echo", "{f1.}", "{f2/}", "{f2//}",
        ],
        b"f1,f2\nx.c,y/z\n",
    );
    same_as_gnu(&["-k", "--header", ":", "echo", "x"], b"h\n");
    // With --pipe, the header goes before every block.
    same_as_gnu(
        &["--pipe", "-N1", "--header", ":", "-k", "cat"],
        b"h\n1\n2\n3\n",
    );
    same_as_gnu(
        &["--pipe", "-N2", "--header", "2", "-k", "cat"],
        b"h1\nh2\n1\n2\n3\n",
    );
    let bad = ours(&["--header", "x+", "echo"], b"");
    assert_eq!(bad.code, Some(255));
    assert!(bad.err.contains("--header"), "{}", bad.err);
}

/// Every file under `root`, as paths relative to it, sorted, with their contents.
fn tree(root: &std::path::Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                found.push((
                    rel.to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).expect("read"),
                ));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn results_names_too_long_for_the_file_system_are_cut_as_gnu_cuts_them() {
    if !have_gnu("results_names_too_long_for_the_file_system_are_cut_as_gnu_cuts_them") {
        return;
    }
    let dir = TempDir::new("results-long");
    let long = "x".repeat(300);
    let tab = "a\tb/c";
    let run = |program: &str, name: &str| {
        let res = dir.join(name);
        let res = res.to_str().expect("utf-8 path").to_string();
        let args: Vec<&str> = match program {
            "gnu" => vec!["--will-cite", "--results", &res, "echo", ":::", &long, tab],
            _ => vec!["run", "--results", &res, "echo", ":::", &long, tab],
        };
        let prog = if program == "gnu" { GNU } else { bin() };
        let out = Runner::start(prog, &args, None, b"").finish();
        assert_eq!(out.code, Some(0), "{program}: {}", out.err);
        tree(&dir.join(name))
    };
    let theirs = run("gnu", "gnu");
    let mine = run("ours", "ours");
    assert_eq!(mine, theirs);
    assert!(
        mine.iter()
            .any(|(p, _)| p.starts_with(&format!("1/{}/", "x".repeat(255))))
    );
}

#[test]
fn eta_and_progress_write_gnus_lines() {
    if !have_gnu("eta_and_progress_write_gnus_lines") {
        return;
    }
    // par_bar_m: the bar's percentages, as `zenity --progress` reads them.
    let numbers = |err: &str| -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for piece in err.split(['\r', '\n']) {
            let piece = piece.trim_end();
            if !piece.is_empty()
                && piece.bytes().all(|b| b.is_ascii_digit())
                && seen.last().map(String::as_str) != Some(piece)
            {
                seen.push(piece.to_string());
            }
        }
        seen
    };
    let bar = [
        "--bar", "-P", "2", "-m", "sleep", ":::", "0.1", "0.1", "0.2", "0.2", "0.3", "0.3",
    ];
    let mine = numbers(&ours(&bar, b"").err);
    assert_eq!(mine, ["0", "50", "100"]);
    // GNU's bar is redrawn on a timer too, so its first "0" may come or not.
    let theirs = numbers(&gnu_in(None, &bar, b"").err);
    assert!(mine.ends_with(&theirs), "GNU's {theirs:?}");
    for (option, last) in [
        ("--eta", "Left: 0 AVG: "),
        ("--progress", "local:0/3/100%/"),
    ] {
        let args = ["-j2", "-k", option, "echo", ":::", "a", "b", "c"];
        let mine = ours(&args, b"");
        let theirs = gnu_in(None, &args, b"");
        assert_eq!(mine.out, theirs.out, "{option}");
        for err in [&mine.err, &theirs.err] {
            assert!(
                err.contains("Computers / CPU cores / Max jobs to run\n1:local / "),
                "{option}: {err}"
            );
            assert!(err.contains(last), "{option}: {err}");
        }
    }
    // The bar's last drawing, reverse video up to the percentage and 80 columns wide where
    // there is no terminal, as GNU's (par_bug43654).
    let last_bar = |err: &str| err.rsplit('\r').next().unwrap_or("").to_string();
    let args = ["--bar", "-j1", "true", "{.}", ":::", "1", "2", "3"];
    let mine = last_bar(&ours(&args, b"").err);
    assert_eq!(mine, last_bar(&gnu_in(None, &args, b"").err));
    assert!(mine.starts_with("\x1b[7m100% 3:0=0s 3 "), "{mine:?}");
    // No job at all (GNU's par_eta, par_progress): no column header, and `0` where the
    // computers go.
    for (option, line) in [
        ("--eta", "\rETA: 0s Left: 0 AVG: 0.00s  0\n"),
        ("--progress", "\r0\n"),
    ] {
        let args = [option, "echo"];
        for err in [ours(&args, b"").err, gnu_in(None, &args, b"").err] {
            assert!(err.ends_with(line), "{option}: {err:?}");
            assert!(!err.contains("Computer:jobs"), "{option}: {err:?}");
        }
    }
}

/// Runs `program args` with `PARALLEL` set to `env`; stdout, stderr and the exit code.
fn with_parallel_env(program: &str, args: &[&str], env: &str) -> (String, String, Option<i32>) {
    let out = std::process::Command::new(program)
        .args(args)
        .env("PARALLEL", env)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

#[test]
fn gnu_details_match_gnu() {
    if !have_gnu("gnu_details_match_gnu") {
        return;
    }
    // Options in $PARALLEL come first, even with a leading blank.
    let args = ["-k", "echo", ":::", "space in envvar OK"];
    let mut ours_args = vec!["run"];
    ours_args.extend_from_slice(&args);
    let mut gnu_args = vec!["--will-cite"];
    gnu_args.extend_from_slice(&args);
    let mine = with_parallel_env(bin(), &ours_args, " -v --tag");
    let theirs = with_parallel_env(GNU, &gnu_args, " -v --tag");
    assert_eq!(mine.0, theirs.0);
    assert!(mine.0.contains("echo 'space in envvar OK'"), "{}", mine.0);
    // -l0 is -l1.
    same_as_gnu(&["-k", "-l0", "echo", "l0"], b"1\n2\n");
    // --pipe needs a command: GNU's error and exit status.
    same_as_gnu(&["--pipe"], b"1\n");
    let mine = ours(&["--pipe"], b"1\n").err;
    let theirs = gnu_in(None, &["--pipe"], b"1\n").err;
    assert_eq!(mine.replace("multiproc:", "parallel:"), theirs);
    // A bad --halt: GNU's messages.
    for (halt, says) in [
        ("error", "--halt must have 'never', 'soon', or 'now'."),
        ("soon", "--halt soon must be followed by ,success or ,fail."),
        (
            "now,fail=x",
            "--halt now,fail must be followed by ,number or ,percent%.",
        ),
    ] {
        let out = ours(&["--halt", halt, "true", ":::", "a"], b"");
        assert_eq!(out.code, Some(255), "{halt}");
        assert!(
            out.err.contains(&format!("multiproc: Error: {says}")),
            "{halt}: {}",
            out.err
        );
        let theirs = gnu_in(None, &["--halt", halt, "true", ":::", "a"], b"");
        assert!(theirs.err.contains(says), "GNU's {halt}: {}", theirs.err);
    }
    // Input ending in CR-NL: GNU's warning.
    let out = ours(&["-k", "echo"], b"a\r\nb\r\nc\r\n");
    assert!(
        out.err.contains("The first three values end in CR-NL"),
        "{}",
        out.err
    );
    let plain = ours(&["-k", "echo"], b"a\r\nb\nc\r\n");
    assert!(!plain.err.contains("CR-NL"), "{}", plain.err);
}

#[test]
fn a_joblog_with_a_plus_is_appended_to_as_gnus_is() {
    if !have_gnu("a_joblog_with_a_plus_is_appended_to_as_gnus_is") {
        return;
    }
    let dir = TempDir::new("append-joblog");
    for (program, name) in [(bin(), "ours"), (GNU, "gnu")] {
        let log = dir.join(name);
        let log = log.to_str().expect("utf-8 path").to_string();
        let plus = format!("+{log}");
        for target in [&log, &plus] {
            let mut args: Vec<&str> = if program == GNU {
                vec!["--will-cite"]
            } else {
                vec!["run"]
            };
            args.extend(["--joblog", target, "echo", ":::", "1"]);
            let out = Runner::start(program, &args, None, b"").finish();
            assert_eq!(out.code, Some(0), "{name}: {}", out.err);
        }
        let lines = std::fs::read_to_string(&log)
            .expect("joblog")
            .lines()
            .count();
        assert_eq!(lines, 3, "{name}: a header and two jobs");
    }
}

#[test]
fn gnus_own_cases_for_linking_context_and_eof_match_gnu() {
    if !have_gnu("gnus_own_cases_for_linking_context_and_eof_match_gnu") {
        return;
    }
    // From GNU parallel's test suite (par_link_files_as_only_arg, par_tricolonplus,
    // par_test_L_context_replace, par_trailing_space_line_continuation,
    // par_test_r_with_pipe), with files for the process substitutions.
    let dir = TempDir::new("gnu-cases");
    let file = |name: &str, lines: std::ops::RangeInclusive<u32>| {
        let p = dir.join(name);
        let text: String = lines.map(|i| format!("{i}\n")).collect();
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf-8 path").to_string()
    };
    let (s10, s3, s4, s21) = (
        file("s10", 1..=10),
        file("s3", 1..=3),
        file("s4", 1..=4),
        file("s21", 21..=23),
    );
    same_as_gnu(&["-k", "echo", "::::+", &s10, &s3, &s4], b"");
    same_as_gnu(
        &[
            "-k", "echo", ":::", "11", "22", "33", "::::+", &s3, &s21, ":::", "a", "b", "c",
            ":::+", "aa", "bb", "cc",
        ],
        b"",
    );
    same_as_gnu(
        &[
            "-k", "echo", "::::", &s3, "::::", &s21, ":::+", "a", "b", "c", ":::", "aa", "bb", "cc",
        ],
        b"",
    );
    let nineteen: String = (1..=19).map(|i| format!("{i}\n")).collect();
    same_as_gnu(&["-k", "-L", "10", "echo", "a{}b"], nineteen.as_bytes());
    same_as_gnu(&["-k", "-N", "10", "echo", "a{}b"], nineteen.as_bytes());
    same_as_gnu(&["-k", "-n", "2", "echo", "a{}b"], b"1\n2\n3\n4\n");
    same_as_gnu(
        &[
            "-k", "-N2", "echo", "a{}b", ":::", "1", "2", ":::", "3", "4",
        ],
        b"",
    );
    let lines = b"foo\n\nole \nbar\nquux\n";
    same_as_gnu(&["-kr", "-L2", "echo"], lines);
    same_as_gnu(&["-kr", "-L2", "-E", "bar", "echo"], lines);
    same_as_gnu(
        &[
            "-kr", "-L2", "-E", "bar", "echo", ":::", "foo", "", "ole ", "bar", "quux",
        ],
        b"",
    );
    same_as_gnu(&["-r", "-N1", "--pipe", "cat"], b"\n");
    same_as_gnu(&["-N1", "--pipe", "cat"], b"\n");
    // par_test_gt_quoting: --max-lines takes the next word when it is a number.
    same_as_gnu(&["--max-lines", "3", "echo"], b"> \n> \n>\n");
    same_as_gnu(&["echo"], b">/dev/null\n");
}

#[test]
fn lines_packed_to_the_default_limit_match_gnu() {
    if !have_gnu("lines_packed_to_the_default_limit_match_gnu") {
        return;
    }
    // Enough arguments for several lines of GNU's default limit (63,664 bytes on Linux).
    let input: String = (1..=40_000).map(|i| format!("{i}\n")).collect();
    for opts in [
        &["-X", "-j2"][..],
        &["-m", "-j1"],
        &["-m", "-j3", "-I", ",,"],
    ] {
        let mut args = opts.to_vec();
        args.extend(["--dry-run", "echo", "a{}b", ",,"]);
        same_as_gnu(&args, input.as_bytes());
    }
    let warned = ours(&["-s", "100000000", "echo", ":::", "a"], b"");
    assert!(
        warned
            .err
            .contains("Value for option -s should be < 63664."),
        "{}",
        warned.err
    );
}

#[test]
fn results_paths_with_replacement_strings_and_header_names_match_gnu() {
    if !have_gnu("results_paths_with_replacement_strings_and_header_names_match_gnu") {
        return;
    }
    let dir = TempDir::new("results-templates");
    // Each case run by both, each in a directory of its own; the trees must be the same.
    let cases: [(&str, &[&str], &[u8]); 6] = [
        (
            "file",
            &["-k", "--results", "R/par_{}_x", "echo", ":::", "foo", "bar"],
            b"",
        ),
        (
            "dir",
            &[
                "-k",
                "--results",
                "R/par_{1}-{2}/",
                "echo",
                ":::",
                "foo",
                "bar",
                ":::",
                "A",
            ],
            b"",
        ),
        (
            "header",
            &[
                "-k",
                "--header",
                ":",
                "--results",
                "R/h",
                "echo",
                ":::",
                "a",
                "I",
                "II",
                ":::",
                "b",
                "III",
            ],
            b"",
        ),
        (
            "plain",
            &[
                "-k",
                "--results",
                "R/p",
                "echo",
                ":::",
                "I",
                "II",
                ":::",
                "III",
            ],
            b"",
        ),
        (
            // Columns sorted by name, not by position (GNU's par_result).
            "swapped",
            &[
                "-k",
                "--header",
                ":",
                "--results",
                "R/s",
                "echo",
                "{a}",
                "{b}",
                ":::",
                "b",
                "III",
                ":::",
                "a",
                "I",
            ],
            b"",
        ),
        (
            // A header ending in a TAB names one column; a NUL becomes `\0`.
            "stdin",
            &["--header", ":", "--results", "R/t", "true"],
            b"Col1\t\nv1\tv2\tv3\nback\\slash\tsl/ash\0nul\n",
        ),
    ];
    for (name, args, stdin) in cases {
        for (program, side) in [(bin(), "ours"), (GNU, "gnu")] {
            let cwd = dir.join(&format!("{name}-{side}"));
            std::fs::create_dir_all(cwd.join("R")).expect("mkdir");
            let mut all: Vec<&str> = if program == GNU {
                vec!["--will-cite"]
            } else {
                vec!["run"]
            };
            all.extend_from_slice(args);
            let out = Runner::start(program, &all, Some(&cwd), stdin).finish();
            assert_eq!(out.code, Some(0), "{name} {side}: {}", out.err);
            if name == "stdin" {
                assert!(out.err.contains("A NUL character in the input"), "{out:?}");
            }
        }
        let ours = tree(&dir.join(&format!("{name}-ours")));
        let theirs = tree(&dir.join(&format!("{name}-gnu")));
        assert!(!ours.is_empty(), "{name}: nothing stored");
        assert_eq!(ours, theirs, "{name}");
    }
    // --header as GNU's manual writes it: `.*\n` once per line.
    same_as_gnu(
        &[
            "-j1",
            "--pipe",
            "-N2",
            "-k",
            "--header",
            ".*\\n.*\\n",
            "echo Start;cat;echo Stop",
        ],
        b"h1\nh2\n1a\n1b\n2a\n2b\n3a\n",
    );
}

#[test]
fn optional_values_counts_with_suffixes_and_repeated_flags_match_gnu() {
    if !have_gnu("optional_values_counts_with_suffixes_and_repeated_flags_match_gnu") {
        return;
    }
    // -e/--eof: GNU's other spelling of -E, its value attached, the next word when that
    // is no option, or none at all (then no record ends the input).
    let input = b"a\n_\nb\nEND\nc\n";
    for eof in [
        &["-eEND"][..],
        &["-e", "END"],
        &["--eof", "END"],
        &["--eof=b"],
        &["-e", "-k"],
        &["--eof"],
        &["-E", ""],
    ] {
        let mut args = vec!["-k"];
        args.extend_from_slice(eof);
        args.push("echo");
        same_as_gnu(&args, input);
    }
    // Counts with GNU's suffixes: k is 1000, K 1024, fractions allowed.
    let many = seq(5000);
    for count in [
        &["-N", "1.5k"][..],
        &["-n", "1K"],
        &["-L", "1k"],
        &["-m", "-s", "2k"],
    ] {
        let mut args = vec!["-k"];
        args.extend_from_slice(count);
        args.push("echo");
        same_as_gnu(&args, &many);
    }
    // -i takes the next word as the replacement string unless it is an option, as -e does;
    // -L, -N and -E take the next word even when it starts with a dash (GNU's par_opt_arg_eaten).
    let nul = b"1\x002\x003\x00";
    same_as_gnu(&["-k", "-0", "-i", "repl", "echo", "repl", "OK"], nul);
    same_as_gnu(&["-k", "-i", "-0", "echo", "{}", "OK"], nul);
    same_as_gnu(&["-k", "-iXX", "echo", "XX", ":::", "a"], b"");
    same_as_gnu(&["-k", "-0", "-L", "-0", "echo", "{}", "OK"], nul);
    same_as_gnu(&["-k", "-E", "-x", "echo"], b"a\n-x\nb\n");
    // A flag given twice is the flag once; -vv is -v.
    same_as_gnu(&["-k", "-k", "-vv", "echo", ":::", "1", "2"], b"");
    same_as_gnu(
        &["-j1", "-j2", "-k", "--tag", "--tag", "echo", ":::", "x"],
        b"",
    );
}

#[test]
fn an_empty_source_is_one_empty_value_as_gnus() {
    if !have_gnu("an_empty_source_is_one_empty_value_as_gnus") {
        return;
    }
    same_as_gnu(&["-k", "echo", ":::", "a", "b", "::::", "/dev/null"], b"");
    same_as_gnu(&["-k", "echo", "::::", "/dev/null", ":::", "a", "b"], b"");
    same_as_gnu(
        &["-k", "echo", "::::", "/dev/null", "::::", "/dev/null"],
        b"",
    );
    same_as_gnu(&["-k", "echo", ":::", "a", "b", ":::"], b"");
    // -E empties a source (GNU's par_test_E); stdin alone empty runs nothing.
    let hundred = seq(100);
    for (stdin, group) in [
        (&hundred, &["2", "3", "4"][..]),
        (&hundred, &["3", "4"]),
        (&b"3\n4\n".to_vec(), &["3", "4"]),
    ] {
        let mut args = vec!["-k", "-E", "3", "echo", "::::", "-", ":::"];
        args.extend_from_slice(group);
        args.extend_from_slice(&[":::", "3", "4"]);
        same_as_gnu(&args, stdin);
    }
    same_as_gnu(&["-k", "echo", "x"], b"");
}
