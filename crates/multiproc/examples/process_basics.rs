//! The seeds' first process examples, with `multiproc::Process`.
//!
//! Run with `cargo run --example process_basics -p multiproc`.

use multiproc::{Process, StartMethod, current_process, parent_process};

/// The child half of the `os.fork()` snippet:
/// `print('I am child process (%s) and my parent is %s.' % (os.getpid(), os.getppid()))`
fn fork_child(_: ()) {
    println!(
        "I am child process ({}) and my parent is {}.",
        std::process::id(),
        std::os::unix::process::parent_id()
    );
}

/// `def run_proc(name): print('Run child process %s (%s)...' % (name, os.getpid()))`
fn run_proc(name: String) {
    println!("Run child process {name} ({})...", std::process::id());
}

/// `def run_task(i): print(f"{i}子进程{os.getpid()}正在运行!")`
fn run_task(i: u32) {
    println!(
        "{i}: child process {} ({}) is running!",
        std::process::id(),
        current_process().name()
    );
}

/// A target can return a value, which comes back to the parent (the seeds' pool examples do
/// `return 'msg: %s' % msg`; a plain Python `Process` cannot).
fn task(msg: u32) -> String {
    format!("msg: {msg}")
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    // print('Process(%s) start...' % os.getpid()); pid = os.fork()
    println!("== 1. os.fork() ==");
    println!("Process ({}) start...", std::process::id());
    // `StartMethod::Fork` really forks, like `os.fork()` (refused if this process had threads).
    let mut p = Process::new(fork_child, ())
        .start_method(StartMethod::Fork)
        .start()?;
    println!(
        "I ({}) just created a child process ({}).",
        std::process::id(),
        p.pid()
    );
    p.join()?;

    // p = Process(target=run_proc, args=('test',)); p.start(); p.join()
    println!("\n== 2. Process(target=run_proc, args=('test',)) ==");
    println!("Parent process {}.", std::process::id());
    let p = Process::new(run_proc, "test".to_string());
    println!("Child process will start.");
    let mut p = p.start()?;
    p.join()?;
    println!("Child process end.");

    // for i in range(1, 5): p = Process(target=run_task, args=(i,)); p.start() ... p.join()
    println!("\n== 3. four children ==");
    let mut children = Vec::new();
    for i in 1..=4 {
        children.push(Process::new(run_task, i).start()?);
    }
    for p in &mut children {
        p.join()?;
    }
    println!("Main process ends (all 4 children joined).");

    println!("\n== 4. a child returning a value ==");
    let p = Process::new(task, 7).name("returner").start()?;
    let name = p.name().to_string();
    let value = p.into_result()?;
    println!("{name} returned {value:?}");
    assert_eq!(value, "msg: 7");
    assert!(
        parent_process().is_none(),
        "the main program has no parent process"
    );
    Ok(())
}
