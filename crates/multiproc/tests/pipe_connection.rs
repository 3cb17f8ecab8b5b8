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
fn a_message_cut_by_a_timeout_is_completed_by_the_next_recv() {
    let (a, b) = Pipe::new::<Vec<u8>>(true).unwrap();
    let whole = {
        let (x, y) = Pipe::new::<Vec<u8>>(true).unwrap();
        x.send_bytes(b"0123456789").unwrap();
        drop(x);
        let mut raw = raw_peer(&y);
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut raw, &mut buf).unwrap();
        buf
    };
    let mut raw = raw_peer(&a);
    raw.write_all(&whole[..20]).unwrap();
    assert_eq!(
        b.recv_bytes_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    raw.write_all(&whole[20..]).unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"0123456789");
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
    p.join(Some(Duration::from_secs(60))).unwrap();
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
