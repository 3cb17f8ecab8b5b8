//! The seeds' CPython task master, for the tests of a Rust worker on a CPython manager.
#![allow(dead_code)]

use std::process::Command;

/// A CPython master (the seeds' `task_master.py`): a `BaseManager` serving a task and a result
/// queue with the authkey given, printing its port; it puts five tasks and prints the six
/// results it then expects (the last one a worker's "saw queue.Empty").
pub(crate) const TASK_MASTER: &str = r#"
import queue, sys
from multiprocessing.managers import BaseManager

task_queue = queue.Queue()
result_queue = queue.Queue()

class QueueManager(BaseManager):
    pass

QueueManager.register('get_task_queue', callable=lambda: task_queue)
QueueManager.register('get_result_queue', callable=lambda: result_queue)

if __name__ == '__main__':
    manager = QueueManager(address=('127.0.0.1', 0), authkey=sys.argv[1].encode())
    manager.start()
    print(manager.address[1], flush=True)
    task = manager.get_task_queue()
    result = manager.get_result_queue()
    for n in [3, 14, 15, 92, 65]:
        task.put(n)
    for i in range(5):
        print('Result: %s' % result.get(timeout=30), flush=True)
    # The worker says when it has seen the task queue empty.
    print('Worker: %s' % result.get(timeout=30), flush=True)
    manager.shutdown()
"#;

/// Starts [`TASK_MASTER`] in `python` with the authkey `abc`: the process, the rest of its
/// output, and the address its manager serves on.
pub(crate) fn start_task_master(
    python: &std::path::Path,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
    multiproc::Address,
) {
    use std::io::BufRead;
    let mut master = Command::new(python)
        .args(["-c", TASK_MASTER, "abc"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(master.stdout.take().unwrap());
    let mut port = String::new();
    out.read_line(&mut port).unwrap();
    let address = multiproc::Address::tcp(format!("127.0.0.1:{}", port.trim())).unwrap();
    (master, out, address)
}
