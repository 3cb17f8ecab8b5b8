//! A TCP upper-case echo server with one process per connection: accepted sockets reach the
//! children as `Descriptor`s.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::Guarded;
use multiproc::{Descriptor, Process};

const LONG: Duration = Duration::from_secs(30);

/// The child: echoes each line upper-cased until EOF; how many lines it echoed.
fn echo_upper(conn: Descriptor) -> u32 {
    let stream = TcpStream::from(conn.into_inner());
    let mut reply = stream.try_clone().unwrap();
    let mut echoed = 0;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if writeln!(reply, "{}", line.to_uppercase()).is_err() {
            break;
        }
        echoed += 1;
    }
    echoed
}

type Children = Arc<Mutex<Vec<Guarded<u32>>>>;

/// Accepts on a thread, one child per connection. Dropped without [`stop`](Self::stop) (a
/// failing test), it stops accepting and kills its children.
struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    children: Children,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let children: Children = Arc::default();
        let (stopping, started) = (stop.clone(), children.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let fd = Descriptor::from(OwnedFd::from(conn));
                match Process::new(echo_upper, fd).start() {
                    Ok(child) => started.lock().unwrap().push(Guarded::new(child)),
                    Err(e) => eprintln!("echo server: cannot start a child: {e}"),
                }
            }
        });
        EchoServer {
            addr,
            stop,
            accept: Some(accept),
            children,
        }
    }

    fn shut_accept(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(accept) = self.accept.take() {
            // A last connection wakes the blocked `accept`.
            let _ = TcpStream::connect(self.addr);
            let _ = accept.join();
        }
    }

    /// Stops accepting; the children, still guarded.
    fn stop(mut self) -> Vec<Guarded<u32>> {
        self.shut_accept();
        std::mem::take(&mut *self.children.lock().unwrap())
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shut_accept();
        // The guards kill and reap whatever is left.
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Sends `words` one per line, checking each reply, then closes its side.
fn converse(addr: SocketAddr, words: &[&str]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    let mut replies = BufReader::new(stream.try_clone().unwrap()).lines();
    for word in words {
        writeln!(stream, "{word}").unwrap();
        let reply = replies.next().expect("a reply").unwrap();
        assert_eq!(reply, word.to_uppercase());
    }
    stream.shutdown(Shutdown::Write).unwrap();
    assert!(replies.next().is_none(), "the child closes after EOF");
}

#[test]
fn each_connection_gets_its_own_process() {
    let server = EchoServer::start();
    let conversations: [&'static [&str]; 4] = [
        &["hello", "world"],
        &["abc"],
        &["multi", "proc", "über"],
        &[],
    ];
    let clients: Vec<_> = conversations
        .into_iter()
        .map(|words| {
            let addr = server.addr;
            std::thread::spawn(move || converse(addr, words))
        })
        .collect();
    for c in clients {
        c.join().expect("the client's replies were right");
    }

    let children = server.stop();
    assert_eq!(children.len(), conversations.len());
    let pids: std::collections::HashSet<i32> = children.iter().map(|c| c.pid()).collect();
    assert_eq!(pids.len(), children.len(), "one process per connection");
    assert!(!pids.contains(&(std::process::id() as i32)));
    let mut echoed: Vec<u32> = children
        .into_iter()
        .map(|c| {
            let mut p = c.into_inner();
            p.join_timeout(LONG).unwrap();
            p.take_result().unwrap()
        })
        .collect();
    echoed.sort();
    assert_eq!(echoed, [0, 1, 2, 3]);
}
