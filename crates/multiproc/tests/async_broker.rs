//! Awaiting a broker's queue (features `async` and `broker`) on a real redis-server: many
//! pending gets served by one reading thread of the handle, and a dropped get whose entry stays
//! for the next get.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use common::redis::RedisServer;
use multiproc::Queue;

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
