//! Awaiting what pools and executors hand back (feature `async`): a pool's `AsyncResult` and
//! `MapResult`, and the executors' `Future`, under tokio and `futures::executor`, including a
//! worker that dies while a task awaits its result.

use std::time::Duration;

use multiproc::{ErrorKind, Pool, ProcessPoolExecutor, ThreadPoolExecutor};

const PATIENCE: Duration = Duration::from_secs(60);

fn square(x: u64) -> u64 {
    x * x
}

/// Dies (SIGKILL from itself) on 13; squares anything else.
fn square_or_die(x: u64) -> u64 {
    if x == 13 {
        // SAFETY: kill with our own pid and a valid signal.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x * x
}

#[test]
fn pool_results_are_awaited_under_tokio_and_a_lost_worker_is_an_error() {
    let pool = Pool::new(2).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let pending: Vec<_> = (0..20)
            .map(|x| pool.apply_async(square_or_die, x).unwrap())
            .collect();
        for (x, r) in pending.iter().enumerate() {
            let got = tokio::time::timeout(PATIENCE, r.get_async()).await.unwrap();
            match got {
                Ok(v) => assert_eq!(v, (x * x) as u64),
                Err(e) => {
                    assert_eq!(x, 13, "{e}");
                    assert_eq!(e.kind(), ErrorKind::WorkerLost, "{e}");
                }
            }
        }
        assert!(
            pending[13].get_async().await.is_err(),
            "the failure is kept"
        );
        // The pool replaced the worker and goes on.
        let all = pool.map_async(square, 0..100u64, Some(7)).unwrap();
        let got = tokio::time::timeout(PATIENCE, all.get_async())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (0..100u64).map(square).collect::<Vec<_>>());
    });
}

#[test]
fn a_dropped_await_leaves_the_result_for_get() {
    let pool = Pool::new(1).unwrap();
    let r = pool.apply_async(square, 9).unwrap();
    {
        let mut waiting = Box::pin(r.get_async());
        let waker = std::task::Waker::noop();
        let _ = waiting
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
    }
    assert_eq!(r.get().unwrap(), 81);
}

#[test]
fn executor_futures_are_std_futures() {
    let threads = ThreadPoolExecutor::new(4).unwrap();
    let processes = ProcessPoolExecutor::new(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let futs: Vec<_> = (0..50u64)
            .map(|x| threads.submit(move || x + 1).unwrap())
            .collect();
        let mut sum = 0;
        for f in futs {
            sum += tokio::time::timeout(PATIENCE, f).await.unwrap().unwrap();
        }
        assert_eq!(sum, (1..=50).sum::<u64>());
        let futs: Vec<_> = (0..20u64)
            .map(|x| processes.submit(square, x).unwrap())
            .collect();
        let mut got = Vec::new();
        for f in futs {
            got.push(tokio::time::timeout(PATIENCE, f).await.unwrap().unwrap());
        }
        assert_eq!(got, (0..20u64).map(square).collect::<Vec<_>>());
    });
    // And on an executor that is not tokio.
    let f = processes.submit(square, 12).unwrap();
    assert_eq!(smol::block_on(f).unwrap(), 144);
    let died = processes.submit(square_or_die, 13).unwrap();
    let err = futures::executor::block_on(died).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerLost, "{err}");
}

#[test]
fn imap_results_are_a_stream_in_order_and_unordered() {
    use futures::StreamExt;
    let pool = Pool::new(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ordered = pool
            .imap(square_or_die, 0..40u64, Some(3))
            .unwrap()
            .into_stream();
        let mut got = Vec::new();
        while let Some(r) = tokio::time::timeout(PATIENCE, ordered.next())
            .await
            .unwrap()
        {
            got.push(r);
        }
        assert_eq!(got.len(), 40);
        for (x, r) in got.into_iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(v, (x * x) as u64),
                // The worker dies on 13: its whole chunk (12..15) is lost with it.
                Err(e) => {
                    assert!((12..15).contains(&x), "item {x}: {e}");
                    assert_eq!(e.kind(), ErrorKind::WorkerLost);
                }
            }
        }
        let unordered = pool
            .imap_unordered(square, 0..100u64, Some(7))
            .unwrap()
            .into_stream();
        let mut all: Vec<u64> = unordered.map(Result::unwrap).collect().await;
        all.sort_unstable();
        assert_eq!(all, (0..100u64).map(square).collect::<Vec<_>>());
    });
}
