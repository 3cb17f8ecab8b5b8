//! Pipes between a parent and a child.
//!
//! Run with `cargo run --example pipe -p multiproc`.

use std::time::Duration;

use multiproc::{Connection, Pipe, Process};

/// `def ChildProcess(conn): conn.send(['Hello', None, 'World']); conn.close()`
/// (A target's error type must be serde, so `multiproc::Error` travels as its message.)
fn child_process(conn: Connection<Vec<Option<String>>>) -> Result<(), String> {
    let message = vec![Some("Hello".into()), None, Some("World".into())];
    conn.send(&message).map_err(|e| e.to_string())?;
    conn.close();
    Ok(())
}

/// Answers each request on a duplex pipe until the parent closes its end; returns the count.
fn shouter(conn: Connection<String>) -> Result<u32, String> {
    let mut handled = 0;
    loop {
        match conn.recv() {
            Ok(word) => conn.send(&word.to_uppercase()).map_err(|e| e.to_string())?,
            Err(e) if e.kind() == multiproc::ErrorKind::Closed => return Ok(handled),
            Err(e) => return Err(e.to_string()),
        }
        handled += 1;
    }
}

/// Writes raw bytes into a one-way pipe.
fn writer(w: Connection<()>) -> Result<(), String> {
    w.send_bytes(b"raw bytes from the child")
        .map_err(|e| e.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    multiproc::init();

    // parent_conn, child_conn = Pipe()
    // p = Process(target=ChildProcess, args=(child_conn,)); p.start()
    // print(parent_conn.recv()); p.join()
    println!("== the seed's Pipe example ==");
    let (parent_conn, child_conn) = Pipe::new(true)?;
    let mut p = Process::new(child_process, child_conn).start()?;
    let message = parent_conn.recv()?;
    let shown: Vec<String> = message
        .iter()
        .map(|item| item.as_ref().map_or("None".into(), |s| format!("'{s}'")))
        .collect();
    println!("  parent received [{}]", shown.join(", "));
    p.join()?;

    println!("\n== a duplex round trip ==");
    let (ours, theirs) = Pipe::new::<String>(true)?;
    let p = Process::new(shouter, theirs).start()?;
    for word in ["hello", "pipe"] {
        ours.send(&word.to_string())?;
        let reply = ours.recv_timeout(Duration::from_secs(5))?;
        println!("  sent {word:?}, child replied {reply:?}");
    }
    ours.close(); // the child's recv now ends with `Closed`
    // into_result: Err if the child failed; then the target's own Result<u32, String>.
    println!("  child handled {} messages", p.into_result()??);

    // r, w = Pipe(duplex=False): r only receives, w only sends.
    println!("\n== a one-way pipe with raw bytes ==");
    let (r, w) = Pipe::new::<()>(false)?;
    let mut p = Process::new(writer, w).start()?;
    if r.poll(Some(Duration::from_secs(5)))? {
        let bytes = r.recv_bytes()?;
        println!("  received {:?}", String::from_utf8_lossy(&bytes));
    }
    p.join()?;
    Ok(())
}
