//! `ProcessPoolExecutor`, `ThreadPoolExecutor`, futures, `wait` and `as_completed`.

use std::sync::mpsc;
use std::time::Duration;

use multiproc::{
    ErrorKind, ProcessPoolExecutor, ReturnWhen, ThreadPoolExecutor, Waitable, as_completed,
    as_completed_timeout, wait_timeout,
};

const LONG: Duration = Duration::from_secs(30);

fn cube(x: i64) -> i64 {
    x * x * x
}

#[test]
fn process_executor_submits_maps_and_reports_failures() {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let f = ex.submit(cube, 4).unwrap();
    assert_eq!(f.result_timeout(LONG).unwrap(), 64);
    assert!(f.done() && !f.cancelled());
    let cubes: Vec<i64> = ex
        .map(cube, 0..10, Some(LONG))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(cubes[9], 729);
    let failed = ex.submit(|x: i64| -> i64 { panic!("bad {x}") }, 1).unwrap();
    let err = failed.result_timeout(LONG).unwrap_err();
    assert!(err.to_string().contains("bad 1"), "{err}");
    assert!(failed.exception().unwrap().contains("bad 1"));
    let lost = ex
        .submit(
            |_: u32| -> u32 {
                // SAFETY: raise has no preconditions; the worker dies under its task.
                unsafe { libc::raise(libc::SIGKILL) };
                0
            },
            0,
        )
        .unwrap();
    assert_eq!(
        lost.result_timeout(LONG).unwrap_err().kind(),
        ErrorKind::WorkerLost
    );
    assert_eq!(ex.submit(cube, 2).unwrap().result_timeout(LONG).unwrap(), 8);
    ex.shutdown(true, false).unwrap();
    assert_eq!(
        ex.submit(cube, 1).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
}

#[test]
fn thread_executor_runs_capturing_closures_and_survives_panics() {
    let ex = ThreadPoolExecutor::new(2).unwrap();
    let name = String::from("ada");
    let f = ex.submit(move || format!("hello {name}")).unwrap();
    assert_eq!(f.result_timeout(LONG).unwrap(), "hello ada");
    let p = ex.submit(|| -> u32 { panic!("oops") }).unwrap();
    assert_eq!(
        p.result_timeout(LONG).unwrap_err().kind(),
        ErrorKind::Panicked
    );
    let doubled: Vec<u32> = ex
        .map(|x: u32| x * 2, 0..5, None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(doubled, [0, 2, 4, 6, 8]);
}

#[test]
fn a_queued_task_can_be_cancelled_a_running_one_cannot() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let blocker = ex
        .submit(move || {
            started_tx.send(()).unwrap();
            gate.recv_timeout(LONG).is_ok()
        })
        .unwrap();
    started.recv_timeout(LONG).unwrap();
    assert!(blocker.running());
    let queued = ex.submit(|| 1).unwrap();
    assert!(!queued.running());
    assert!(queued.cancel());
    assert!(queued.cancelled() && queued.done());
    assert_eq!(queued.result().unwrap_err().kind(), ErrorKind::InvalidState);
    assert!(!blocker.cancel());
    release.send(()).unwrap();
    assert!(blocker.result_timeout(LONG).unwrap());
}

#[test]
fn done_callbacks_run_once_done_and_at_once_when_already_done() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let (release, gate) = mpsc::channel::<()>();
    let f = ex
        .submit(move || gate.recv_timeout(LONG).map(|_| 7).unwrap_or(0))
        .unwrap();
    let tx2 = tx.clone();
    f.add_done_callback(move |r| tx2.send(*r.unwrap()).unwrap());
    release.send(()).unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), 7);
    assert!(f.wait_timeout(LONG));
    f.add_done_callback(move |r| tx.send(r.unwrap() + 1).unwrap());
    assert_eq!(
        rx.try_recv().unwrap(),
        8,
        "an added callback on a done future runs at once"
    );
}

#[test]
fn wait_and_as_completed_follow_completion() {
    let ex = ThreadPoolExecutor::new(3).unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let slow = ex.submit(move || gate.recv_timeout(LONG).is_ok()).unwrap();
    let quick = ex.submit(|| true).unwrap();
    let failing = ex.submit(|| -> bool { panic!("failed early") }).unwrap();
    let all: [&dyn Waitable; 3] = [&slow, &quick, &failing];

    let first = wait_timeout(&all, LONG, ReturnWhen::FirstCompleted);
    assert!(!first.done.is_empty() && first.not_done.contains(&0));
    let exception = wait_timeout(&all, LONG, ReturnWhen::FirstException);
    assert!(exception.done.contains(&2) && exception.not_done == [0]);
    let timed_out = wait_timeout(&all, Duration::from_millis(50), ReturnWhen::AllCompleted);
    assert_eq!(timed_out.not_done, [0]);

    let mut order = as_completed_timeout(&all, Duration::from_millis(50));
    let mut seen: Vec<usize> = order.by_ref().take(2).map(Result::unwrap).collect();
    seen.sort();
    assert_eq!(seen, [1, 2]);
    assert_eq!(
        order.next().unwrap().unwrap_err().kind(),
        ErrorKind::Timeout
    );

    release.send(()).unwrap();
    let done = wait_timeout(&all, LONG, ReturnWhen::AllCompleted);
    assert_eq!(done.done, [0, 1, 2]);
    let finished: Vec<usize> = as_completed(&all).map(Result::unwrap).collect();
    assert_eq!(finished.len(), 3);
}

#[test]
fn shutdown_with_cancel_futures_cancels_what_has_not_started() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let running = ex
        .submit(move || {
            started_tx.send(()).unwrap();
            gate.recv_timeout(LONG).is_ok()
        })
        .unwrap();
    started.recv_timeout(LONG).unwrap();
    let queued: Vec<_> = (0..3).map(|i| ex.submit(move || i).unwrap()).collect();
    // Cancel while the only thread is still busy, then let it finish and wait.
    ex.shutdown(false, true);
    release.send(()).unwrap();
    ex.shutdown(true, false);
    assert!(running.result().unwrap());
    assert!(queued.iter().all(|f| f.cancelled()));
    assert_eq!(ex.submit(|| 0).unwrap_err().kind(), ErrorKind::InvalidState);
}

#[test]
fn process_executor_shutdown_cancels_queued_tasks() {
    let flag = multiproc::SharedMemory::create(None, 64).unwrap();
    let ex = ProcessPoolExecutor::new(1).unwrap();
    // Runs until the test sets the flag.
    let busy = ex
        .submit(
            |name: String| {
                let block = multiproc::SharedMemory::open(&name).unwrap();
                let mut b = [0u8];
                loop {
                    block.read(0, &mut b);
                    if b[0] != 0 {
                        return 300u64;
                    }
                    std::thread::park_timeout(Duration::from_millis(1));
                }
            },
            flag.name().to_string(),
        )
        .unwrap();
    // One task runs, one waits in the worker's queue, the rest wait in the pool.
    let queued: Vec<_> = (0..5).map(|i| ex.submit(cube, i).unwrap()).collect();
    ex.shutdown(false, true).unwrap();
    flag.write(0, &[1]);
    ex.shutdown(true, false).unwrap();
    flag.unlink().unwrap();
    assert_eq!(busy.result().unwrap(), 300);
    let cancelled = queued.iter().filter(|f| f.cancelled()).count();
    assert!(cancelled >= 3, "{cancelled} cancelled");
    for f in queued.iter().filter(|f| !f.cancelled()) {
        assert!(f.result_timeout(LONG).is_ok());
    }
}

#[test]
fn results_come_in_four_forms_and_the_try_form_never_waits() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let pending = ex
        .submit(move || gate.recv_timeout(LONG).map(|()| 5))
        .unwrap();
    assert!(!pending.done());
    assert_eq!(pending.try_result().unwrap_err().kind(), ErrorKind::Timeout);
    let soon = std::time::Instant::now() + Duration::from_millis(20);
    assert!(!pending.wait_deadline(soon));
    assert_eq!(
        pending
            .result_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    release.send(()).unwrap();
    pending.wait();
    assert_eq!(pending.try_result().unwrap(), Ok(5));
    // Taken once: every form then says so.
    let err = pending
        .result_deadline(std::time::Instant::now())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
}

/// Squares `x` once the test lets it: it connects to the test's socket at `path` and waits
/// for a byte.
fn gated_square((path, x): (String, u64)) -> u64 {
    use std::io::Read;
    let mut gate = std::os::unix::net::UnixStream::connect(path).unwrap();
    gate.set_read_timeout(Some(LONG)).unwrap();
    gate.read_exact(&mut [0u8]).unwrap();
    x * x
}

#[test]
fn pool_results_come_in_four_forms() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("multiproc-forms-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let gate = std::os::unix::net::UnixListener::bind(&dir).unwrap();
    let path = dir.to_string_lossy().into_owned();
    let pool = multiproc::Pool::new(1).unwrap();
    let one = pool.apply_async(gated_square, (path.clone(), 3)).unwrap();
    let many = pool
        .map_async(gated_square, [(path.clone(), 1), (path.clone(), 2)], None)
        .unwrap();
    // The first task is held at the gate: nothing is there yet.
    let (mut held, _) = gate.accept().unwrap();
    assert_eq!(one.try_get().unwrap_err().kind(), ErrorKind::Timeout);
    assert_eq!(many.try_get().unwrap_err().kind(), ErrorKind::Timeout);
    assert!(!one.wait_timeout(Duration::from_millis(1)));
    assert!(!many.wait_deadline(std::time::Instant::now()));
    held.write_all(b"go").unwrap();
    assert_eq!(
        one.get_deadline(std::time::Instant::now() + LONG).unwrap(),
        9
    );
    // The map's two chunks, one after the other.
    for _ in 0..2 {
        let (mut next, _) = gate.accept().unwrap();
        next.write_all(b"go").unwrap();
    }
    many.wait();
    assert!(many.ready());
    assert_eq!(many.try_get().unwrap(), [1, 4]);
    let _ = std::fs::remove_file(&dir);
}
