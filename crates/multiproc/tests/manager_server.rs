//! The manager server against hostile or odd clients: it answers or drops them, and keeps
//! serving everyone else.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use multiproc::{
    Address, Client, ErrorKind, JoinableQueue, ManagerClient, ManagerServer, RunningServer,
};

fn start() -> (RunningServer, JoinableQueue<i64>) {
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"k").unwrap();
    let q = server.register_queue("get_task_queue");
    (server.serve_in_background().unwrap(), q)
}

/// Whether the server still serves a normal client.
fn still_serving(running: &RunningServer) {
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let q = m.queue::<i64>("get_task_queue").unwrap();
    q.put(41).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 41);
}

#[test]
fn garbage_and_bombs_after_the_handshake_get_an_error_reply() {
    let (running, _q) = start();
    let hostile: [&[u8]; 4] = [
        b"not a pickle at all",
        b"\x80\x04(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((",
        // A request that is a pickle but not a 4-tuple.
        b"\x80\x04K\x07.",
        // Deep nesting: a list nested 100 000 times.
        &[b']'; 100_000],
    ];
    for bytes in hostile {
        let mut c = Client::connect(running.address(), b"k").unwrap();
        c.send_bytes(bytes).unwrap();
        // The server answers `('#TRACEBACK', text)` (or drops us); it never crashes.
        let _ = c.recv_bytes();
    }
    still_serving(&running);
}

#[test]
fn a_stalled_or_oversized_client_does_not_block_the_others() {
    let (running, _q) = start();
    let Address::Tcp(addr) = running.address().clone() else {
        unreachable!()
    };
    // Connects and never answers the challenge.
    let _stalled = TcpStream::connect(addr).unwrap();
    // Claims a 2 GiB frame during the handshake.
    let mut huge = TcpStream::connect(addr).unwrap();
    let _ = huge.write_all(b"\x7f\xff\xff\xff");
    still_serving(&running);
}

#[test]
fn unknown_typeids_and_methods_are_remote_errors() {
    let (running, _q) = start();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let err = m.queue::<i64>("get_nothing").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote, "{err}");
    assert!(err.to_string().contains("not registered"), "{err}");
    let q = m.queue::<i64>("get_task_queue").unwrap();
    assert_eq!(q.try_get().unwrap_err().kind(), ErrorKind::Empty);
    assert!(q.is_empty());
}

#[test]
fn many_clients_at_once_lose_nothing() {
    let (running, served) = start();
    std::thread::scope(|s| {
        for t in 0..16i64 {
            let address = running.address().clone();
            s.spawn(move || {
                let m = ManagerClient::connect(&address, b"k").unwrap();
                let q = m.queue::<i64>("get_task_queue").unwrap();
                for i in 0..50 {
                    q.put(t * 1000 + i).unwrap();
                }
            });
        }
    });
    assert_eq!(served.len(), 16 * 50);
    let mut all: Vec<i64> = (0..16 * 50)
        .map(|_| served.get_timeout(Duration::from_secs(1)).unwrap())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 16 * 50);
}

#[test]
fn a_hundred_clients_update_one_dict_under_a_manager_lock() {
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"k").unwrap();
    server.register_dict("get_counts");
    server.register_lock("get_lock");
    let running = server.serve_in_background().unwrap();
    std::thread::scope(|s| {
        for _ in 0..100 {
            let address = running.address().clone();
            s.spawn(move || {
                let m = ManagerClient::connect(&address, b"k").unwrap();
                let counts = m.registered_dict::<String, i64>("get_counts").unwrap();
                let lock = m.registered_lock("get_lock").unwrap();
                for _ in 0..5 {
                    assert!(lock.acquire_timeout(Duration::from_secs(30)).unwrap());
                    let n = counts.get(&"n".to_string()).unwrap().unwrap_or(0);
                    counts.set(&"n".to_string(), &(n + 1)).unwrap();
                    lock.release().unwrap();
                }
            });
        }
    });
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let counts = m.registered_dict::<String, i64>("get_counts").unwrap();
    assert_eq!(
        counts.get(&"n".to_string()).unwrap(),
        Some(500),
        "an update was lost"
    );
}

#[test]
fn a_lock_held_by_a_client_that_went_away_is_released() {
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"k").unwrap();
    server.register_lock("get_lock");
    let running = server.serve_in_background().unwrap();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let first = m.registered_lock("get_lock").unwrap();
    first.acquire().unwrap();
    let second = m.registered_lock("get_lock").unwrap();
    assert!(!second.acquire_timeout(Duration::from_millis(50)).unwrap());
    assert!(!second.try_acquire().unwrap());
    let soon = std::time::Instant::now() + Duration::from_millis(20);
    assert!(!second.acquire_deadline(soon).unwrap());
    // As `threading.Lock`: anybody may release it.
    second.release().unwrap();
    assert!(second.acquire_timeout(Duration::from_secs(10)).unwrap());
    drop(second); // its connection closes: the server releases what it held
    assert!(first.acquire_timeout(Duration::from_secs(10)).unwrap());
    first.release().unwrap();
    // The release the dead holder's program still owed is taken once, then refused.
    let third = m.registered_lock("get_lock").unwrap();
    third.release().unwrap();
    let e = third.release().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Remote);
    assert!(e.to_string().contains("release unlocked lock"), "{e}");
}

#[test]
fn dict_and_list_proxies_between_rust_peers() {
    let (running, _q) = start();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let d = m.dict::<String, Vec<i64>>().unwrap();
    d.set(&"a".into(), &vec![1, 2]).unwrap();
    assert_eq!(d.get(&"a".into()).unwrap(), Some(vec![1, 2]));
    assert_eq!(d.get(&"b".into()).unwrap(), None);
    assert_eq!(d.len().unwrap(), 1);
    assert!(d.remove(&"a".into()).unwrap());
    assert!(!d.remove(&"a".into()).unwrap());
    let l = m.list::<String>().unwrap();
    l.append(&"x".into()).unwrap();
    l.append(&"y".into()).unwrap();
    assert_eq!(l.get(-1).unwrap(), "y");
    assert_eq!(l.to_vec().unwrap(), ["x", "y"]);
    assert_eq!(l.get(5).unwrap_err().kind(), ErrorKind::Remote);
    let e = m.event().unwrap();
    assert!(!e.is_set().unwrap());
    assert!(!e.wait_timeout(Duration::from_millis(20)).unwrap());
    e.set().unwrap();
    e.wait().unwrap();
    e.clear().unwrap();
    assert!(!e.is_set().unwrap());
    let v = m.value("d", &1.5f64).unwrap();
    v.set(&2.5).unwrap();
    assert_eq!(v.get().unwrap(), 2.5);
}

#[test]
fn a_dropped_proxy_gives_its_object_back() {
    let (running, _q) = start();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let before = m.number_of_objects().unwrap();
    let d = m.dict::<String, i64>().unwrap();
    assert_eq!(m.number_of_objects().unwrap(), before + 1);
    drop(d);
    assert_eq!(m.number_of_objects().unwrap(), before);
    // A registered queue stays, whatever its proxies do.
    drop(m.queue::<i64>("get_task_queue").unwrap());
    assert_eq!(m.number_of_objects().unwrap(), before);
}

#[test]
fn connections_beyond_the_cap_are_closed_and_room_comes_back() {
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"k").unwrap();
    server.set_max_connections(2);
    let running = server.serve_in_background().unwrap();
    let Address::Tcp(addr) = running.address().clone() else {
        unreachable!()
    };
    // Two peers that connect and say nothing hold both places.
    let idle: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let refused = (0..50).any(|_| ManagerClient::connect(running.address(), b"k").is_err());
    assert!(refused, "a third connection should be closed");
    drop(idle);
    // Their threads see the end of stream and leave: a client gets in again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ManagerClient::connect(running.address(), b"k").is_err() {
        assert!(std::time::Instant::now() < deadline, "no room came back");
        std::thread::yield_now();
    }
}

#[test]
fn a_condition_or_rlock_held_by_a_client_that_went_away_is_released() {
    let (running, _q) = start();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let cond = m.condition().unwrap();
    let rlock = m.rlock().unwrap();
    let (other_cond, other_rlock) = (cond.try_clone().unwrap(), rlock.try_clone().unwrap());
    cond.acquire().unwrap();
    cond.acquire().unwrap();
    rlock.acquire().unwrap();
    rlock.acquire().unwrap();
    assert!(
        !other_cond
            .acquire_timeout(Duration::from_millis(10))
            .unwrap()
    );
    assert!(
        !other_rlock
            .acquire_timeout(Duration::from_millis(10))
            .unwrap()
    );
    // Their connections close with both held twice: the server lets go of both.
    drop((cond, rlock));
    assert!(other_cond.acquire_timeout(Duration::from_secs(10)).unwrap());
    assert!(
        other_rlock
            .acquire_timeout(Duration::from_secs(10))
            .unwrap()
    );
}

#[test]
fn odd_arguments_to_array_barrier_and_condition_are_remote_errors() {
    let (running, _q) = start();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let refused = [
        m.create("Array", &("zz", vec![1])),
        m.create("Array", &("i", "not a list")),
        m.create("Array", &("i", vec![u64::MAX])),
        m.create("Array", &()),
        m.create("Barrier", &("three",)),
        m.create("Barrier", &(-1,)),
        m.create("Barrier", &(2, "an action")),
        m.create("Condition", &(5,)),
        m.create("Condition", &("not a proxy",)),
    ];
    for r in refused {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Remote);
    }
    // Odd calls on good objects are answered too.
    let a = m.create("Array", &("b", vec![1, 2])).unwrap();
    let odd = [
        a.call::<()>("__getitem__", &("x",)),
        a.call::<()>("__setitem__", &("x", 1)),
        a.call::<()>("__setitem__", &(0, 1000)),
        a.call::<()>("__getitem__", &()),
        a.call::<()>("pop", &()),
    ];
    for r in odd {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Remote);
    }
    let b = m.create("Barrier", &(2,)).unwrap();
    assert!(b.call::<()>("__getattribute__", &("_secret",)).is_err());
    assert!(b.call::<()>("wait", &("soon",)).is_err());
    let c = m.create("Condition", &()).unwrap();
    assert!(c.call::<()>("notify", &("all",)).is_err());
    assert!(c.call::<bool>("wait", &(f64::NAN,)).is_err());
    still_serving(&running);
}

fn register_task_queue(server: &mut ManagerServer) {
    server.register_queue::<i64>("get_task_queue");
    server.register_dict("get_dict");
    server.register_list("get_list");
}

#[test]
fn a_started_server_runs_in_its_own_process_until_shut_down_or_dropped() {
    let started = ManagerServer::start(
        &Address::tcp("127.0.0.1:0").unwrap(),
        b"k",
        register_task_queue,
    )
    .unwrap();
    let pid = started.pid();
    assert_ne!(pid, std::process::id() as i32);
    let m = ManagerClient::connect(started.address(), b"k").unwrap();
    let q = m.queue::<i64>("get_task_queue").unwrap();
    q.put(5).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 5);
    let d = m.registered_dict::<String, i64>("get_dict").unwrap();
    d.set(&"x".to_string(), &1).unwrap();
    // A registered list is one list for every client.
    m.registered_list::<i64>("get_list")
        .unwrap()
        .append(&3)
        .unwrap();
    let l = m.registered_list::<i64>("get_list").unwrap();
    assert_eq!(l.to_vec().unwrap(), [3]);
    drop((q, d, l, m));
    started.shutdown().unwrap();
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z ")),
        "the server process is still running"
    );

    // Dropped instead: killed.
    let started =
        ManagerServer::start(&Address::tcp("127.0.0.1:0").unwrap(), b"k", |_| {}).unwrap();
    let pid = started.pid();
    drop(started);
    assert!(std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err());
}

#[test]
fn a_server_that_cannot_bind_says_why() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = Address::tcp(taken.local_addr().unwrap()).unwrap();
    let err = ManagerServer::start(&at, b"k", |_| {}).unwrap_err();
    assert!(err.to_string().contains("cannot serve"), "{err}");
}

/// What happened to one of many clients connecting at once.
enum Outcome {
    Served,
    /// Refused at the server's limit of connections, and told so.
    Refused,
}

#[test]
fn a_thousand_clients_connecting_at_once_are_all_served_or_refused_clearly() {
    const CLIENTS: i64 = 1000;
    const CALLS: i64 = 100;
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"k").unwrap();
    server.register_dict("get_d");
    let running = server.serve_in_background().unwrap();
    let start = std::sync::Barrier::new(CLIENTS as usize);
    let outcomes: Vec<(i64, Outcome)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (address, start) = (running.address().clone(), &start);
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn_scoped(s, move || {
                        start.wait();
                        let served = (|| {
                            let m = ManagerClient::connect(&address, b"k")?;
                            let d = m.registered_dict::<i64, i64>("get_d")?;
                            for j in 0..CALLS {
                                d.set(&i, &j)?;
                            }
                            Ok::<_, multiproc::Error>(())
                        })();
                        match served {
                            Ok(()) => (i, Outcome::Served),
                            Err(e)
                                if e.kind() == ErrorKind::Closed
                                    && e.to_string().contains("limit of connections") =>
                            {
                                (i, Outcome::Refused)
                            }
                            Err(e) => panic!("client {i}: {e}"),
                        }
                    })
                    .unwrap()
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let d = m.registered_dict::<i64, i64>("get_d").unwrap();
    let mut served = 0;
    for (i, outcome) in outcomes {
        if let Outcome::Served = outcome {
            served += 1;
            assert_eq!(d.get(&i).unwrap(), Some(CALLS - 1), "client {i}");
        }
    }
    // The default limit (1024 connections) leaves room for every one of them.
    assert_eq!(served, CLIENTS);
}

#[test]
fn clients_beyond_the_connection_limit_are_refused_clearly() {
    let mut server = ManagerServer::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"k").unwrap();
    server.set_max_connections(4);
    let running = server.serve_in_background().unwrap();
    // Four connections held open: the fifth is closed at once, and the client says why.
    let held: Vec<_> = (0..4)
        .map(|_| Client::connect(running.address(), b"k").unwrap())
        .collect();
    let e = Client::connect(running.address(), b"k").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(e.to_string().contains("limit of connections"), "{e}");
    drop(held);
}

#[test]
fn a_server_that_never_answers_is_a_timeout_not_a_protocol_error() {
    // A listener that accepts (the kernel does) but never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::Tcp(silent.local_addr().unwrap());
    let e = Client::connect(&address, b"k").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
}

/// Puts 0 to 4 on the queue it was given and returns how many it put.
fn put_numbers(q: JoinableQueue<i64>) -> i64 {
    for i in 0..5 {
        q.put(i).unwrap();
    }
    5
}

#[test]
fn the_serving_process_handle_is_a_queue_and_travels_to_a_child_as_a_proxy() {
    let (running, served) = start();
    // The serving process's own handle counts unfinished items itself.
    served.put(100).unwrap();
    assert_eq!(served.unfinished().unwrap(), 1);
    assert_eq!(served.get().unwrap(), 100);
    served.task_done().unwrap();
    assert_eq!(served.unfinished().unwrap(), 0);
    assert_eq!(
        served.task_done().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    // Sent to a child, it arrives as a proxy to the very queue the server serves.
    let child = multiproc::Process::new(put_numbers, served.clone())
        .start()
        .unwrap();
    assert_eq!(child.into_result().unwrap(), 5);
    let mut got: Vec<i64> = (0..5)
        .map(|_| served.get_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    got.sort();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    // A client sees the same counts, and the serving side's join waits for its task_done.
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let remote = m.queue::<i64>("get_task_queue").unwrap();
    assert_eq!(
        served
            .join_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    for _ in 0..5 {
        remote.task_done().unwrap();
    }
    served.join_timeout(Duration::from_secs(5)).unwrap();
    // Through a proxy the count is not exposed (CPython's queues do not have it): said so.
    let err = remote.unfinished().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("unfinished"), "{err}");
}

#[test]
fn threads_sharing_a_manager_queue_handle_do_not_wait_for_each_other() {
    let (running, _served) = start();
    let m = ManagerClient::connect(running.address(), b"k").unwrap();
    let q = m.queue::<i64>("get_task_queue").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let getter = q.clone();
    // This thread blocks in a get on the server for as long as it takes.
    let t = std::thread::spawn(move || tx.send(getter.get()));
    // Meanwhile this thread's calls go on another connection of the same handle: were they
    // queued behind the get, the put would never reach the server and the get never return.
    q.put(7).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap(),
        7
    );
    t.join().unwrap().unwrap();
}
