//! Pipes and connections: typed and raw messages, timeouts, end of file, bad input, descriptor
//! passing to children and through connections.

mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Guarded;
use multiproc::{Connection, ErrorKind, Pipe, Process, StartMethod};

fn raw_peer<T>(conn: &Connection<T>) -> UnixStream {
    UnixStream::from(conn.as_fd().try_clone_to_owned().unwrap())
}

#[test]
fn duplex_round_trip_in_one_process() {
    let (a, b) = Pipe::new::<(u32, String)>(true).unwrap();
    a.send(&(1, "one".into())).unwrap();
    b.send(&(2, "two".into())).unwrap();
    assert_eq!(b.recv().unwrap(), (1, "one".into()));
    assert_eq!(a.recv().unwrap(), (2, "two".into()));
}

#[test]
fn simplex_ends_only_go_one_way() {
    let (r, w) = Pipe::new::<u8>(false).unwrap();
    assert!(r.readable() && !r.writable() && w.writable() && !w.readable());
    w.send(&9).unwrap();
    assert_eq!(r.recv().unwrap(), 9);
    assert_eq!(r.send(&1).unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(w.recv().unwrap_err().kind(), ErrorKind::InvalidState);
}

#[test]
fn end_of_file_after_the_peer_closes() {
    let (a, b) = Pipe::new::<u8>(true).unwrap();
    a.send(&1).unwrap();
    a.close();
    assert_eq!(
        b.recv().unwrap(),
        1,
        "what was sent before close is still read"
    );
    assert_eq!(b.recv().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(b.send(&2).unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn recv_timeout_and_poll() {
    let (a, b) = Pipe::new::<u8>(true).unwrap();
    assert!(!b.poll(Some(Duration::from_millis(10))).unwrap());
    let t = Instant::now();
    assert_eq!(
        b.recv_timeout(Duration::from_millis(50))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    assert!(t.elapsed() >= Duration::from_millis(50));
    a.send(&5).unwrap();
    assert!(b.poll(Some(Duration::ZERO)).unwrap());
    assert_eq!(b.recv_timeout(Duration::from_secs(1)).unwrap(), 5);
}

#[test]
fn poll_sees_a_message_already_read_ahead() {
    let (a, b) = Pipe::new::<u8>(true).unwrap();
    a.send(&1).unwrap();
    a.send(&2).unwrap();
    assert!(b.poll(Some(Duration::from_secs(1))).unwrap());
    assert_eq!(b.recv().unwrap(), 1);
    // Both small frames were read by one system call: the second is buffered, not in the socket.
    assert!(b.poll(Some(Duration::ZERO)).unwrap());
    assert_eq!(b.recv().unwrap(), 2);
    assert!(!b.poll(Some(Duration::ZERO)).unwrap());
}

#[test]
fn a_timed_out_recv_loses_nothing_of_any_size() {
    let (a, b) = Pipe::new::<Vec<u8>>(true).unwrap();
    assert_eq!(
        b.recv_bytes_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    // Small (through the ring), large (beside it, on the socket), empty, and small again:
    // they arrive whole and in the order sent.
    let sizes = [5usize, 100 << 10, 0, 16 << 10, (16 << 10) + 1, 7];
    for (i, &n) in sizes.iter().enumerate() {
        a.send_bytes(&vec![i as u8; n]).unwrap();
    }
    for (i, &n) in sizes.iter().enumerate() {
        assert_eq!(b.recv_bytes().unwrap(), vec![i as u8; n], "message {i}");
    }
}

#[test]
fn handles_inside_messages_keep_their_place_in_line() {
    let (a, b) = Pipe::new::<(u32, Option<Connection<u32>>)>(true).unwrap();
    let (x, y) = Pipe::new::<u32>(true).unwrap();
    a.send(&(1, None)).unwrap();
    a.send(&(2, Some(x))).unwrap(); // carries descriptors: goes on the socket
    a.send(&(3, None)).unwrap();
    assert_eq!(b.recv().unwrap().0, 1);
    let (n, passed) = b.recv().unwrap();
    assert_eq!(n, 2);
    passed.unwrap().send(&42).unwrap();
    assert_eq!(y.recv().unwrap(), 42, "the passed end is the same pipe");
    assert_eq!(b.recv().unwrap().0, 3);
}

#[test]
fn a_full_ring_holds_the_sender_until_the_receiver_reads() {
    // Far more than one ring holds (64 KiB): the sender waits for room, nothing is lost.
    let (a, b) = Pipe::new::<u64>(true).unwrap();
    let sender = std::thread::spawn(move || {
        for i in 0..50_000u64 {
            a.send(&i).unwrap();
        }
    });
    for i in 0..50_000u64 {
        assert_eq!(b.recv_timeout(Duration::from_secs(30)).unwrap(), i);
    }
    sender.join().unwrap();
}

#[test]
fn many_senders_and_receivers_lose_no_message_and_no_wake_up() {
    // Threads of one process on both ends, with sleeps between bursts so that receivers go to
    // sleep and must be woken; a lost wake-up shows as a receive that times out.
    const SENDERS: u64 = 3;
    const EACH: u64 = 3_000;
    let (a, b) = Pipe::new::<u64>(true).unwrap();
    let a = std::sync::Arc::new(a);
    let b = std::sync::Arc::new(b);
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    if i % 500 == 0 {
                        // Long enough for the receivers to give up spinning and sleep.
                        #[allow(clippy::disallowed_methods)]
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    if i % 97 == 0 {
                        a.send_bytes(&vec![s as u8; 20 << 10]).unwrap(); // on the socket
                    } else {
                        a.send(&(s * EACH + i)).unwrap();
                    }
                }
            })
        })
        .collect();
    let receivers: Vec<_> = (0..3)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut big = 0;
                loop {
                    match b.recv_bytes_timeout(Duration::from_secs(20)) {
                        Ok(m) if m.len() == 20 << 10 => big += 1,
                        Ok(m) => got.push(u64::from_le_bytes(pad8(&m))),
                        Err(e) if e.kind() == ErrorKind::Closed => return (got, big),
                        Err(e) => panic!("receive failed: {e}"),
                    }
                }
            })
        })
        .collect();
    senders.into_iter().for_each(|t| t.join().unwrap());
    drop(a);
    let mut all = Vec::new();
    let mut big = 0;
    for r in receivers {
        let (got, n) = r.join().unwrap();
        all.extend(got);
        big += n;
    }
    all.sort_unstable();
    let want: Vec<u64> = (0..SENDERS * EACH)
        .filter(|i| !(i % EACH).is_multiple_of(97))
        .collect();
    assert_eq!(all, want);
    assert_eq!(big, SENDERS * EACH.div_ceil(97));
}

/// A `u64` value's serialized bytes (postcard's varint) as the number, for the test above.
fn pad8(bytes: &[u8]) -> [u8; 8] {
    let v: u64 = postcard::from_bytes(bytes).unwrap();
    v.to_le_bytes()
}

fn wait_for_ever(conn: Connection<u8>) {
    conn.send(&1).unwrap();
    let _ = conn.recv();
    unreachable!("nobody sends a second message");
}

#[test]
fn a_killed_peer_ends_the_pipe_for_receiver_and_sender() {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let (ours, theirs) = Pipe::new::<u8>(true).unwrap();
        let p = Guarded::new(
            Process::new(wait_for_ever, theirs)
                .start_method(method)
                .start()
                .unwrap(),
        );
        assert_eq!(ours.recv().unwrap(), 1);
        // The child sleeps in its receive, counted asleep; kill it there.
        p.kill().unwrap();
        assert_eq!(ours.recv().unwrap_err().kind(), ErrorKind::Closed);
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match ours.send(&2) {
                Ok(()) if Instant::now() < deadline => continue,
                Ok(()) => panic!("sends to a dead peer kept succeeding"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    }
}

#[test]
fn garbage_is_a_protocol_error_not_a_panic() {
    let (a, b) = Pipe::new::<String>(true).unwrap();
    raw_peer(&a)
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(b.recv().unwrap_err().kind(), ErrorKind::Protocol);
}

#[test]
fn a_truncated_frame_is_a_protocol_error() {
    let (a, b) = Pipe::new::<Vec<u8>>(true).unwrap();
    let mut header = Vec::from(*b"MP\x01\x01");
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&100u64.to_le_bytes());
    let mut raw = raw_peer(&a);
    raw.write_all(&header).unwrap();
    raw.write_all(&[7; 10]).unwrap();
    drop(raw);
    drop(a);
    let err = b.recv_bytes().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}

#[test]
fn an_oversized_frame_is_refused_before_it_is_read() {
    let (a, b) = Pipe::new::<Vec<u8>>(true).unwrap();
    b.set_max_message_size(1000);
    a.send_bytes(&[0; 2000]).unwrap();
    let err = b.recv_bytes().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
}

#[test]
fn a_huge_length_claim_allocates_nothing_up_front() {
    let (a, b) = Pipe::new::<Vec<u8>>(true).unwrap();
    let mut header = Vec::from(*b"MP\x01\x01");
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(3u64 << 30).to_le_bytes()); // 3 GiB, under the default limit
    let mut raw = raw_peer(&a);
    raw.write_all(&header).unwrap();
    raw.write_all(b"short").unwrap();
    drop(raw);
    drop(a);
    assert_eq!(b.recv_bytes().unwrap_err().kind(), ErrorKind::Protocol);
}

#[test]
fn bytes_and_values_are_told_apart() {
    let (a, b) = Pipe::new::<u32>(true).unwrap();
    a.send_bytes(b"raw").unwrap();
    assert_eq!(b.recv().unwrap_err().kind(), ErrorKind::Protocol);
    a.send(&7).unwrap();
    assert!(
        !b.recv_bytes().unwrap().is_empty(),
        "recv_bytes gives a value's serialized bytes"
    );
}

fn echo_until_closed(conn: Connection<String>) -> usize {
    let mut n = 0;
    while let Ok(s) = conn.recv() {
        conn.send(&s.to_uppercase()).unwrap();
        n += 1;
    }
    n
}

#[test]
fn a_connection_passed_to_a_child_is_the_same_pipe() {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let (ours, theirs) = Pipe::new::<String>(true).unwrap();
        let p = Guarded::new(
            Process::new(echo_until_closed, theirs)
                .start_method(method)
                .start()
                .unwrap(),
        );
        for word in ["alpha", "beta", "gamma"] {
            ours.send(&word.to_string()).unwrap();
            assert_eq!(ours.recv().unwrap(), word.to_uppercase());
        }
        drop(ours); // the child's recv ends: the parent kept no copy of the child's end
        assert_eq!(p.into_inner().into_result().unwrap(), 3);
    }
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_mul(31).wrapping_add(b as u64 ^ i as u64)
    })
}

fn receive_big(conn: Connection<Vec<u8>>) -> (usize, u64) {
    let data = conn.recv_bytes().unwrap();
    conn.send_bytes(&data).unwrap();
    (data.len(), checksum(&data))
}

#[test]
fn a_100_mib_message_goes_through_both_ways() {
    let data: Vec<u8> = (0..100 << 20)
        .map(|i: usize| (i * 7 + i / 4096) as u8)
        .collect();
    let (ours, theirs) = Pipe::new::<Vec<u8>>(true).unwrap();
    let p = Guarded::new(Process::new(receive_big, theirs).start().unwrap());
    ours.send_bytes(&data).unwrap();
    let back = ours.recv_bytes().unwrap();
    assert!(back == data, "echoed bytes differ");
    assert_eq!(
        p.into_inner().into_result().unwrap(),
        (data.len(), checksum(&data))
    );
}

#[test]
fn a_large_typed_result_does_not_deadlock_join() {
    // 8 MiB is far more than a socket buffer: join must read while the child writes.
    let mut p = Process::new(|n: usize| vec![7u32; n], 2 << 20)
        .start()
        .unwrap();
    p.join_timeout(Duration::from_secs(60)).unwrap();
    let v = p.into_result().unwrap();
    assert_eq!(v.len(), 2 << 20);
    assert!(v.iter().all(|&x| x == 7));
}

fn forward_connection(via: Connection<Connection<String>>) {
    let conn = via.recv().unwrap();
    conn.send(&"through a passed connection".to_string())
        .unwrap();
}

#[test]
fn connections_travel_through_connections() {
    let (via_ours, via_theirs) = Pipe::new::<Connection<String>>(true).unwrap();
    let p = Guarded::new(
        Process::new(forward_connection, via_theirs)
            .start()
            .unwrap(),
    );
    let (a, b) = Pipe::new::<String>(true).unwrap();
    via_ours.send(&b).unwrap();
    drop(b);
    assert_eq!(a.recv().unwrap(), "through a passed connection");
    p.into_inner().into_result().unwrap();
}

#[test]
fn a_connection_cannot_leave_through_another_serializer() {
    let (a, _b) = Pipe::new::<u8>(true).unwrap();
    assert!(serde_json::to_string(&a).is_err());
}

#[test]
fn many_messages_keep_their_order() {
    fn count_up(conn: Connection<u32>) {
        for i in 0..10_000 {
            conn.send(&i).unwrap();
        }
    }
    let (ours, theirs) = Pipe::new::<u32>(true).unwrap();
    let p = Guarded::new(Process::new(count_up, theirs).start().unwrap());
    for i in 0..10_000 {
        assert_eq!(ours.recv().unwrap(), i);
    }
    assert_eq!(ours.recv().unwrap_err().kind(), ErrorKind::Closed);
    p.into_inner().into_result().unwrap();
}
