//! CPython's `multiprocessing.connection` framing and handshake: between Rust peers, against
//! every CPython found on the machine (both directions), and against hostile peers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::pythons;
use multiproc::{Address, Client, ErrorKind, Listener};

fn echo_pair(listener: Listener) -> std::thread::JoinHandle<multiproc::Result<()>> {
    std::thread::spawn(move || {
        let mut conn = listener.accept()?;
        loop {
            match conn.recv_bytes() {
                Ok(m) => conn.send_bytes(&m.to_ascii_uppercase())?,
                Err(e) if e.kind() == ErrorKind::Closed => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
}

#[test]
fn rust_peers_talk_over_tcp_and_unix_sockets() {
    let dir = std::env::temp_dir().join(format!("mp-wire-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for address in [
        Address::tcp("127.0.0.1:0").unwrap(),
        Address::unix(dir.join("sock")),
    ] {
        let listener = Listener::bind(&address, b"key").unwrap();
        let address = listener.address().clone();
        let server = echo_pair(listener);
        let mut c = Client::connect(&address, b"key").unwrap();
        for size in [0usize, 5, 16 << 10, (64 << 10) + 1, 3 << 20] {
            let m: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            c.send_bytes(&m).unwrap();
            assert_eq!(
                c.recv_bytes().unwrap(),
                m.to_ascii_uppercase(),
                "size {size}"
            );
        }
        drop(c);
        server.join().unwrap().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_authkey_fails_on_both_sides() {
    let listener = Listener::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"right").unwrap();
    let address = listener.address().clone();
    let server = std::thread::spawn(move || listener.accept().map(drop));
    let err = Client::connect(&address, b"wrong").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{err}");
    let err = server.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{err}");
}

#[test]
fn garbage_stalls_and_huge_frames_are_refused_and_the_listener_goes_on() {
    let mut listener = Listener::bind(&Address::tcp("127.0.0.1:0").unwrap(), b"k").unwrap();
    listener.set_handshake_timeout(Duration::from_millis(300));
    let Address::Tcp(addr) = listener.address().clone() else {
        unreachable!()
    };
    let address = listener.address().clone();
    let hostile = std::thread::spawn(move || {
        // 1: garbage instead of a digest.
        let mut s = TcpStream::connect(addr).unwrap();
        let mut challenge = [0u8; 4 + 59];
        s.read_exact(&mut challenge).unwrap();
        s.write_all(b"\x00\x00\x00\x05hello").unwrap();
        // 2: a huge length prefix.
        let mut s2 = TcpStream::connect(addr).unwrap();
        s2.read_exact(&mut challenge).unwrap();
        s2.write_all(b"\x7f\xff\xff\xff").unwrap();
        // 3: a negative length.
        let mut s3 = TcpStream::connect(addr).unwrap();
        s3.read_exact(&mut challenge).unwrap();
        s3.write_all(b"\xff\xff\xff\xfe").unwrap();
        // 4: connects and says nothing.
        let s4 = TcpStream::connect(addr).unwrap();
        (s, s2, s3, s4)
    });
    for _ in 0..4 {
        let err = listener.accept().unwrap_err();
        assert!(
            matches!(
                err.kind(),
                ErrorKind::AuthenticationFailed | ErrorKind::Protocol
            ),
            "{err}"
        );
    }
    drop(hostile.join().unwrap());
    // Still serving.
    let server = std::thread::spawn(move || {
        let mut c = listener.accept().unwrap();
        c.send_bytes(b"still here").unwrap();
    });
    let mut c = Client::connect(&address, b"k").unwrap();
    assert_eq!(c.recv_bytes().unwrap(), b"still here");
    server.join().unwrap();
}

const PY_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
with Listener(('127.0.0.1', 0), authkey=sys.argv[1].encode()) as l:
    print(l.address[1], flush=True)
    try:
        with l.accept() as c:
            while True:
                try:
                    m = c.recv_bytes()
                except EOFError:
                    break
                c.send_bytes(m.upper())
    except Exception as e:
        print(type(e).__name__, flush=True)
"#;

const PY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
try:
    with Client(('127.0.0.1', int(sys.argv[1])), authkey=sys.argv[2].encode()) as c:
        c.send_bytes(b'hello from cpython')
        print(c.recv_bytes().decode(), flush=True)
except Exception as e:
    print(type(e).__name__, flush=True)
"#;

#[test]
fn cpython_listeners_accept_our_client_and_refuse_a_wrong_key() {
    for python in pythons() {
        for (key, ours, expect_ok) in [("abc", "abc", true), ("abc", "xyz", false)] {
            let mut child = Command::new(&python)
                .args(["-c", PY_LISTENER, key])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut port = String::new();
            out.read_line(&mut port).unwrap();
            let address = Address::tcp(format!("127.0.0.1:{}", port.trim())).unwrap();
            match Client::connect(&address, ours.as_bytes()) {
                Ok(mut c) => {
                    assert!(expect_ok, "{python:?} accepted a wrong key");
                    c.send_bytes(&vec![b'x'; 70_000]).unwrap();
                    assert_eq!(c.recv_bytes().unwrap(), vec![b'X'; 70_000]);
                    c.send_bytes(b"rust").unwrap();
                    assert_eq!(c.recv_bytes().unwrap(), b"RUST");
                }
                Err(e) => {
                    assert!(!expect_ok, "{python:?}: {e}");
                    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
                    let mut said = String::new();
                    out.read_line(&mut said).unwrap();
                    assert_eq!(said.trim(), "AuthenticationError", "{python:?}");
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn cpython_clients_reach_our_listener_and_fail_with_a_wrong_key() {
    for python in pythons() {
        for (key, theirs, expect_ok) in [("abc", "abc", true), ("abc", "xyz", false)] {
            let listener =
                Listener::bind(&Address::tcp("127.0.0.1:0").unwrap(), key.as_bytes()).unwrap();
            let Address::Tcp(addr) = listener.address().clone() else {
                unreachable!()
            };
            let child = Command::new(&python)
                .args(["-c", PY_CLIENT, &addr.port().to_string(), theirs])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            match listener.accept() {
                Ok(mut c) => {
                    assert!(expect_ok, "{python:?} got in with a wrong key");
                    let m = c.recv_bytes().unwrap();
                    c.send_bytes(&m.to_ascii_uppercase()).unwrap();
                }
                Err(e) => {
                    assert!(!expect_ok, "{python:?}: {e}");
                    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
                }
            }
            let out = child.wait_with_output().unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            let want = if expect_ok {
                "HELLO FROM CPYTHON"
            } else {
                "AuthenticationError"
            };
            assert_eq!(said.trim(), want, "{python:?}");
        }
    }
}
