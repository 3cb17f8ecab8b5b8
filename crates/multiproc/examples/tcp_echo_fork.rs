//! A TCP server that upper-cases what it gets, with one process per connection.
//!
//! Mirrors the concurrent TCP server of seed 001 (`基于TCP协议的高并发程序`, "a highly concurrent
//! TCP program"; seed 002 has the same exercise):
//!
//! ```python
//! server = socket(AF_INET, SOCK_STREAM); server.bind(('127.0.0.1', 8080)); server.listen(5)
//! def talk(conn, client_addr):
//!     while True:
//!         msg = conn.recv(1024)
//!         if not msg: break
//!         if msg.decode('utf8') == 'q': conn.send(b'q'); break   # the client says goodbye
//!         conn.send(msg.upper())
//! while True:
//!     conn, client_addr = server.accept()
//!     p = Process(target=talk, args=(conn, client_addr)); p.start()
//! ```
//!
//! Python pickles the socket into the child by duplicating its descriptor; here the accepted
//! [`TcpStream`] travels as a [`Descriptor`]. Messages are lines (TCP has no message
//! boundaries; `recv(1024)` only seems to keep them). The server listens on a free port, and
//! the example is its own client: a few threads talk to it, check the replies, then the server
//! stops and its children are joined.
//!
//! Run with `cargo run --example tcp_echo_fork -p multiproc`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use multiproc::{Descriptor, Process};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `def talk(conn, client_addr)`, in the child: echoes each line upper-cased until the client
/// closes its side or says `q`. Returns how many lines it echoed.
fn talk((conn, client_addr): (Descriptor, String)) -> u32 {
    let stream = TcpStream::from(conn.into_inner());
    let me = std::process::id();
    let mut reply = stream.try_clone().expect("a second handle on the socket");
    let mut echoed = 0;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if line == "q" {
            println!("  [{me}] {client_addr} disconnected");
            let _ = reply.write_all(b"q\n");
            break;
        }
        println!("  [{me}] message from {client_addr}: {line:?}");
        if reply
            .write_all(format!("{}\n", line.to_uppercase()).as_bytes())
            .is_err()
        {
            break;
        }
        echoed += 1;
    }
    echoed
}

/// The accept loop on its own thread, so that `main` can be the clients.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: JoinHandle<Result<Vec<Process<u32>>, BoxError>>,
}

impl Server {
    fn start() -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut children = Vec::new();
            for conn in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                let conn = conn?;
                let client_addr = conn.peer_addr()?;
                // The child gets its own descriptor for the socket; ours closes when `conn`'s
                // descriptor drops with the arguments after the start.
                let fd = Descriptor::from(OwnedFd::from(conn));
                let child = Process::new(talk, (fd, client_addr.to_string()))
                    .name(format!("talk-{client_addr}"))
                    .start()?;
                children.push(child);
            }
            Ok(children)
        });
        Ok(Server { addr, stop, accept })
    }

    /// Stops accepting (a last connection wakes the blocked `accept`); the children.
    fn stop(self) -> Result<Vec<Process<u32>>, BoxError> {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
        self.accept
            .join()
            .expect("the accept thread does not panic")
    }
}

/// A client: sends `words` one per line, checks each reply, says `q`.
fn client(addr: SocketAddr, words: Vec<String>) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut replies = BufReader::new(stream.try_clone()?).lines();
    for word in &words {
        writeln!(stream, "{word}")?;
        let reply = replies.next().transpose()?.unwrap_or_default();
        assert_eq!(reply, word.to_uppercase());
    }
    writeln!(stream, "q")?;
    assert_eq!(replies.next().transpose()?.as_deref(), Some("q"));
    Ok(())
}

fn main() -> Result<(), BoxError> {
    multiproc::init();

    let server = Server::start()?;
    println!("server on {} (pid {})", server.addr, std::process::id());
    let conversations = [
        vec!["hello", "world"],
        vec!["multiprocessing", "in", "rust"],
        vec!["abc"],
    ];
    let clients: Vec<_> = conversations
        .iter()
        .map(|words| {
            let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
            let addr = server.addr;
            std::thread::spawn(move || client(addr, words))
        })
        .collect();
    for c in clients {
        c.join().expect("a client's checks hold")?;
    }
    println!("all clients got their replies upper-cased");

    let children = server.stop()?;
    assert_eq!(children.len(), conversations.len(), "one process each");
    let mut echoed: Vec<u32> = children
        .into_iter()
        .map(|p| p.into_result())
        .collect::<multiproc::Result<_>>()?;
    echoed.sort();
    println!("the {} children echoed {echoed:?} lines", echoed.len());
    assert_eq!(echoed, [1, 2, 3]);
    Ok(())
}
