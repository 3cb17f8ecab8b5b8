//! Awaiting a `Connection` (feature `async`) with real processes at the other end: a
//! ping-pong with a blocking peer, large messages and handles, the end of the stream, sends
//! that wait for room, a cancelled receive that loses nothing, and an awaiting receiver beside
//! a blocking one in another process on the same end.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use common::Guarded;
use multiproc::{Connection, ErrorKind, Event, Pipe, Process};

const PATIENCE: Duration = Duration::from_secs(60);

/// Sends back each value it gets, plus one, until 0.
fn echo(conn: Connection<u64>) {
    while let Ok(x) = conn.recv() {
        if x == 0 {
            return;
        }
        conn.send(&(x + 1)).unwrap();
    }
}

#[test]
fn a_ping_pong_with_a_blocking_peer_under_tokio() {
    let (ours, theirs) = Pipe::new::<u64>(true).unwrap();
    let child = Guarded::new(Process::new(echo, theirs).start().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for x in 1..=2000u64 {
            ours.send_async(&x).await.unwrap();
            let back = tokio::time::timeout(PATIENCE, ours.recv_async())
                .await
                .unwrap();
            assert_eq!(back.unwrap(), x + 1);
        }
        ours.send_async(&0).await.unwrap();
    });
    child.into_inner().join().unwrap();
    // The child is gone: the end of the stream.
    let err = futures::executor::block_on(ours.recv_async()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

/// A large vector, or a handle.
type BigOrHandle = (Vec<u8>, Option<Event>);

/// Sends a large vector and an event, then waits for it to be set.
fn send_big((conn, ev): (Connection<BigOrHandle>, Event)) {
    conn.send(&(vec![9u8; 1 << 20], None)).unwrap();
    conn.send(&(Vec::new(), Some(ev.clone()))).unwrap();
    ev.wait();
}

#[test]
fn large_messages_and_handles_are_received() {
    let (ours, theirs) = Pipe::new(true).unwrap();
    let ev = Event::new().unwrap();
    let child = Guarded::new(
        Process::new(send_big, (theirs, ev.clone()))
            .start()
            .unwrap(),
    );
    let (big, handle) = smol::block_on(async {
        let (big, _) = ours.recv_async().await.unwrap();
        let (_, handle) = ours.recv_async().await.unwrap();
        (big, handle)
    });
    assert!(big.len() == 1 << 20 && big.iter().all(|&b| b == 9));
    handle.expect("an event").set();
    child.into_inner().join().unwrap();
}

/// Waits for `go`, then takes `n` values.
fn slow_reader((conn, go, n): (Connection<Vec<u8>>, Event, usize)) -> usize {
    go.wait();
    (0..n).map(|_| conn.recv().unwrap().len()).sum()
}

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn sends_wait_for_room_and_a_cancelled_receive_loses_nothing() {
    let (ours, theirs) = Pipe::new::<Vec<u8>>(true).unwrap();
    let go = Event::new().unwrap();
    let child = Guarded::new(
        Process::new(slow_reader, (theirs, go.clone(), 200))
            .start()
            .unwrap(),
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let sender = {
            let (ours, sent) = (ours.try_clone().unwrap(), sent.clone());
            tokio::spawn(async move {
                for _ in 0..200 {
                    // 1 KiB each: 200 of them do not fit in the 64 KiB ring.
                    ours.send_async(&vec![1u8; 1024]).await.unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        while sent.load(Ordering::Relaxed) < 10 {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert!(
            sent.load(Ordering::Relaxed) < 200,
            "the ring took everything"
        );
        go.set();
        tokio::time::timeout(PATIENCE, sender)
            .await
            .unwrap()
            .unwrap();
    });
    assert_eq!(child.into_inner().into_result().unwrap(), 200 * 1024);

    // A receive polled, then dropped: the value sent afterwards is still there.
    let (a, b) = Pipe::new::<u64>(true).unwrap();
    let w = Arc::new(Count(AtomicUsize::new(0)));
    {
        let mut pending = Box::pin(a.recv_async());
        let waker = Waker::from(w.clone());
        assert!(
            pending
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        b.send(&7).unwrap();
    }
    assert_eq!(a.recv_timeout(PATIENCE).unwrap(), 7);
}

/// Takes values with blocking receives until `u64::MAX`; how many.
fn take_until_end(conn: Connection<u64>) -> u64 {
    let mut n = 0;
    loop {
        match conn.recv() {
            Ok(u64::MAX) | Err(_) => return n,
            Ok(_) => n += 1,
        }
    }
}

#[test]
fn an_awaiting_and_a_blocking_receiver_share_one_end() {
    let (receiving, sending) = Pipe::new::<u64>(true).unwrap();
    let blocking = Guarded::new(
        Process::new(take_until_end, receiving.try_clone().unwrap())
            .start()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    const N: u64 = 5000;
    let mine = rt.block_on(async {
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                sending.send(&i).unwrap();
            }
            // One end marker for each receiver.
            sending.send(&u64::MAX).unwrap();
            sending.send(&u64::MAX).unwrap();
            sending
        });
        let mut mine = 0u64;
        loop {
            let v = tokio::time::timeout(PATIENCE, receiving.recv_async())
                .await
                .unwrap()
                .unwrap();
            if v == u64::MAX {
                break;
            }
            mine += 1;
        }
        drop(producer.join().unwrap());
        mine
    });
    let theirs = blocking.into_inner().into_result().unwrap();
    assert_eq!(mine + theirs, N, "ours {mine}, theirs {theirs}");
}
