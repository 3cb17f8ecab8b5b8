//! Python's `threading` API: names and idents, `current_thread`/`enumerate`, joins with
//! timeout, panics, daemon flags, `ThreadLocal` and `Timer`.
//!
//! Threads started here from test threads inherit their daemon flag (a test harness thread is
//! a `Dummy`, hence a daemon), so that `join_non_daemon` only waits for the threads of the
//! test that calls it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiproc::{
    Barrier, Error, ErrorKind, Thread, ThreadBuilder, ThreadLocal, Timer, active_count,
    current_thread, enumerate, join_non_daemon_timeout, main_thread,
};

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(20);

fn number(name: &str) -> u64 {
    name.strip_prefix("Thread-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name:?} is not a default thread name"))
}

#[test]
fn thread_names_given_and_default() {
    let named = Thread::builder().name("worker-1").spawn(|| ()).unwrap();
    assert_eq!(named.name(), "worker-1");
    named.join().unwrap();

    let first = Thread::spawn(|| ()).unwrap();
    let second = ThreadBuilder::new().spawn(|| ()).unwrap();
    assert!(number(first.name()) < number(second.name()));
    assert_ne!(first.ident(), second.ident());
    first.join().unwrap();
    second.join().unwrap();
}

#[test]
fn thread_current_thread_inside_spawned_thread() {
    let t = Thread::builder()
        .name("inside")
        .daemon(false)
        .spawn(current_thread)
        .unwrap();
    let (name, ident) = (t.name().to_string(), t.ident());
    let seen = t.join().unwrap();
    assert_eq!(seen.name(), name);
    assert_eq!(seen.ident(), ident);
    assert!(!seen.daemon());
    // Asking twice gives the same answer.
    let twice = Thread::spawn(|| (current_thread(), current_thread()))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(twice.0, twice.1);
}

#[test]
fn thread_main_and_dummy_threads() {
    let main = main_thread();
    assert_eq!(
        (main.name(), main.ident(), main.daemon()),
        ("MainThread", 1, false)
    );
    assert_eq!(enumerate()[0], main);

    // A plain std thread becomes `Dummy-N`, a daemon, listed until it exits.
    let (tx, rx) = mpsc::channel();
    let (release, wait) = mpsc::channel::<()>();
    let plain = std::thread::spawn(move || {
        tx.send(current_thread()).unwrap();
        let _ = wait.recv_timeout(LONG);
    });
    let dummy = rx.recv_timeout(LONG).unwrap();
    assert!(dummy.name().starts_with("Dummy-"), "{dummy:?}");
    assert!(dummy.daemon());
    assert!(enumerate().contains(&dummy));
    release.send(()).unwrap();
    plain.join().unwrap();
    assert!(!enumerate().contains(&dummy));
}

#[test]
fn thread_panic_becomes_error_with_message() {
    let t = Thread::builder()
        .name("doomed")
        .spawn(|| -> u32 { panic!("boom {}", 42) })
        .unwrap();
    let err = t.join().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    match &err {
        Error::Panicked { name, message, .. } => {
            assert_eq!(name, "doomed");
            assert_eq!(message, "boom 42");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("boom 42"), "{err}");
}

#[test]
fn thread_join_timeout_on_blocked_thread() {
    let (go, wait) = mpsc::channel::<u32>();
    let mut t = Thread::spawn(move || wait.recv_timeout(LONG).map(|n| n + 1)).unwrap();
    assert!(matches!(t.join_timeout(SHORT), Ok(None)));
    assert!(t.is_alive());
    let deadline = Instant::now() + SHORT;
    assert!(matches!(t.join_deadline(deadline), Ok(None)));
    assert!(Instant::now() >= deadline);

    go.send(41).unwrap();
    assert_eq!(t.join_timeout(LONG).unwrap(), Some(Ok(42)));
    assert!(!t.is_alive());
    let again = t.join_timeout(LONG).unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidState);
}

#[test]
fn thread_cannot_join_itself() {
    let (give, receive) = mpsc::channel::<Thread<()>>();
    let (report, outcome) = mpsc::channel();
    let t = Thread::spawn(move || {
        let Ok(mut me) = receive.recv_timeout(LONG) else {
            return;
        };
        let _ = report.send(me.join_timeout(LONG).map(|_| ()));
    })
    .unwrap();
    give.send(t).unwrap();
    let err = outcome.recv_timeout(LONG).unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
    assert!(err.to_string().contains("cannot join itself"), "{err}");
}

#[test]
fn thread_name_with_nul_is_refused() {
    let err = Thread::builder().name("a\0b").spawn(|| ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
}

#[test]
fn thread_daemon_flag_is_inherited_or_given() {
    let inherited = |daemon: bool| {
        Thread::builder()
            .daemon(daemon)
            .spawn(|| {
                let child = Thread::spawn(|| ()).unwrap();
                let daemon = child.daemon();
                child.join().unwrap();
                daemon
            })
            .unwrap()
            .join()
            .unwrap()
    };
    assert!(inherited(true));
    assert!(!inherited(false));
}

#[test]
fn thread_active_count_and_enumerate() {
    let (release, wait) = mpsc::channel::<()>();
    let t = Thread::builder()
        .name("listed")
        .spawn(move || wait.recv_timeout(LONG))
        .unwrap();
    let info = t.info().clone();
    assert!(enumerate().contains(&info));
    assert!(active_count() >= 2);

    release.send(()).unwrap();
    t.join().unwrap().unwrap();
    assert!(!enumerate().iter().any(|i| i.ident() == info.ident()));
}

#[test]
fn thread_join_non_daemon_waits_for_detached_threads() {
    let (release, wait) = mpsc::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let t = Thread::builder()
        .daemon(false)
        .spawn(move || {
            let _ = wait.recv_timeout(LONG);
            flag.store(true, Ordering::SeqCst);
        })
        .unwrap();
    drop(t); // detached
    assert!(!join_non_daemon_timeout(SHORT));
    release.send(()).unwrap();
    assert!(join_non_daemon_timeout(LONG));
    assert!(done.load(Ordering::SeqCst));
}

/// The seeds' `threading.local` example: each thread sees its own student.
#[test]
fn thread_local_gives_each_thread_its_own_value() {
    static LOCAL_SCHOOL: ThreadLocal<String> = ThreadLocal::new();

    fn process_student() -> String {
        let std = LOCAL_SCHOOL.get().expect("set by process_thread");
        format!("hello, {std} (in {})", current_thread().name())
    }

    let both_set = Barrier::new(2).unwrap();
    let spawn = |student: &'static str, name: &str| {
        let both_set = both_set.clone();
        Thread::builder()
            .name(name)
            .spawn(move || {
                LOCAL_SCHOOL.set(student.to_string());
                // Both threads hold a value at once: neither overwrote the other's.
                both_set.wait_timeout(LONG).unwrap();
                process_student()
            })
            .unwrap()
    };
    let t1 = spawn("alice", "Thread-A");
    let t2 = spawn("bob", "Thread-B");
    assert_eq!(t1.join().unwrap(), "hello, alice (in Thread-A)");
    assert_eq!(t2.join().unwrap(), "hello, bob (in Thread-B)");
    assert_eq!(LOCAL_SCHOOL.get(), None);
}

#[test]
fn thread_local_new_thread_starts_empty() {
    let tls = Arc::new(ThreadLocal::new());
    for round in 0..3 {
        let tls = tls.clone();
        let seen = Thread::spawn(move || {
            let before = tls.get();
            tls.set(round);
            before
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(seen, None);
    }
    assert_eq!(tls.get_or(|| 7), 7);
    assert_eq!(tls.take(), Some(7));
    assert_eq!(tls.get(), None);
}

#[test]
fn thread_local_value_dropped_when_its_thread_exits() {
    struct Noisy(mpsc::Sender<&'static str>);
    impl Drop for Noisy {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }

    let tls = Arc::new(ThreadLocal::new());
    let (tx, rx) = mpsc::channel();
    let mine = tls.clone();
    Thread::spawn(move || mine.set(Noisy(tx)))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(rx.recv_timeout(LONG), Ok("dropped"));
    // The value went with its thread, not with the `ThreadLocal`, which lives on.
    assert!(tls.with(|v| v.is_none()));
}

#[test]
fn thread_local_value_dropped_with_the_local_in_its_thread() {
    let dropped = Arc::new(Mutex::new(0));
    struct Counted(Arc<Mutex<u32>>);
    impl Drop for Counted {
        fn drop(&mut self) {
            *self.0.lock().unwrap() += 1;
        }
    }
    let tls = ThreadLocal::new();
    tls.set(Counted(dropped.clone()));
    tls.set(Counted(dropped.clone()));
    assert_eq!(*dropped.lock().unwrap(), 1); // replaced
    drop(tls);
    assert_eq!(*dropped.lock().unwrap(), 2);
}

#[test]
fn timer_fires_once_after_its_interval() {
    let interval = Duration::from_millis(50);
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let timer = Timer::new(interval, move || tx.send(Instant::now()).unwrap())
        .name("bell")
        .start()
        .unwrap();
    assert_eq!(timer.name(), "bell");
    let early = rx.try_recv();
    if started.elapsed() < interval {
        assert!(early.is_err(), "fired before its interval");
    }
    let fired = match early {
        Ok(at) => at,
        Err(_) => rx.recv_timeout(LONG).unwrap(),
    };
    assert!(fired.duration_since(started) >= interval);
    assert!(timer.join().unwrap());
    // Once: the function (and its sender) is gone.
    assert_eq!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn timer_cancel_before_firing_prevents_the_call() {
    let (tx, rx) = mpsc::channel::<()>();
    let mut timer = Timer::new(Duration::from_secs(3600), move || tx.send(()).unwrap())
        .start()
        .unwrap();
    assert!(timer.is_alive());
    assert!(timer.cancel());
    assert!(timer.cancel());
    assert_eq!(timer.join_timeout(LONG).unwrap(), Some(false));
    assert_eq!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn timer_cancel_after_firing_has_no_effect() {
    let (tx, rx) = mpsc::channel();
    let timer = Timer::new(Duration::ZERO, move || tx.send(()).unwrap())
        .start()
        .unwrap();
    rx.recv_timeout(LONG).unwrap();
    assert!(!timer.cancel());
    assert!(timer.join().unwrap());
}
