//! Awaiting a broker's queue (features `async` and `broker`) on a real redis-server: many
//! pending gets served by one reading thread of the handle, and a dropped get whose entry stays
//! for the next get; joins awaited until every task is done, with one joining thread per
//! handle.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use common::redis::RedisServer;
use multiproc::{JoinableQueue, Queue};

const PATIENCE: Duration = Duration::from_secs(60);

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn many_awaited_gets_share_one_reading_thread() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: Arc<Queue<u64>> = Arc::new(Queue::broker(redis.url(), "jobs").build().unwrap());
    let producer: Queue<u64> = Queue::broker(redis.url(), "jobs").build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let before = threads();
    let mut got: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.get_async().await.unwrap() })
            })
            .collect();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let during = threads();
        assert!(
            during <= before + 3,
            "{} threads for 50 gets",
            during - before
        );
        for n in 0..50 {
            producer.put_async(n).await.unwrap();
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap());
        }
        got
    });
    got.sort_unstable();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[test]
fn a_dropped_get_leaves_its_entry_for_the_next_get() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: Queue<u64> = Queue::broker(redis.url(), "jobs").build().unwrap();
    let producer: Queue<u64> = Queue::broker(redis.url(), "jobs").build().unwrap();
    {
        let mut pending = Box::pin(q.get_async());
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        assert!(
            pending
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        producer.put(7).unwrap();
    }
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 7);
    // And under smol, a get awaited as the item comes.
    let got = smol::block_on(async {
        let (got, ()) = futures::join!(q.get_async(), async {
            producer.put(8).unwrap();
        });
        got
    });
    assert_eq!(got.unwrap(), 8);
}

#[test]
fn awaited_joins_end_when_every_task_is_done() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let q: JoinableQueue<u64> = Queue::broker(redis.url(), "work").build_joinable().unwrap();
    let worker: JoinableQueue<u64> = Queue::broker(redis.url(), "work").build_joinable().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    // Nothing put: a join ends at once.
    rt.block_on(async { tokio::time::timeout(PATIENCE, q.join_async()).await })
        .unwrap()
        .unwrap();
    for n in 0..20 {
        q.put(n).unwrap();
    }
    let q = Arc::new(q);
    let before = threads();
    let joins: Vec<_> = (0..100)
        .map(|_| {
            let q = q.clone();
            rt.spawn(async move { q.join_async().await })
        })
        .collect();
    // Each join is pending while work is left: take all but the last and mark them done.
    let mut taken: Vec<u64> = (0..19)
        .map(|_| worker.get_timeout(PATIENCE).unwrap())
        .collect();
    for _ in &taken {
        worker.task_done().unwrap();
    }
    let threads_while_waiting = threads() - before;
    // The joining thread, and the worker handle's lease renewer: not one per join.
    assert!(
        threads_while_waiting <= 3,
        "{threads_while_waiting} threads for 100 pending joins"
    );
    assert!(
        joins.iter().all(|j| !j.is_finished()),
        "a join ended with a task left"
    );
    taken.push(worker.get_timeout(PATIENCE).unwrap());
    worker.task_done().unwrap();
    rt.block_on(async {
        for j in joins {
            tokio::time::timeout(PATIENCE, j)
                .await
                .expect("a join still waits after every task was done")
                .unwrap()
                .unwrap();
        }
    });
    taken.sort_unstable();
    assert_eq!(taken, (0..20).collect::<Vec<_>>());
}
