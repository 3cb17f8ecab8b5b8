//! A private Redis server for a test: its own directory, unix socket and TCP port, stopped
//! (and its files removed) when the test ends, also when it fails.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
    /// With [`start_tls`](Self::start_tls): the TLS port (certificate for `localhost`).
    pub tls_port: Option<u16>,
}

impl RedisServer {
    /// Starts one with `appendonly yes` (so a restart loses nothing), or `None` with a printed
    /// reason when `redis-server` is not installed. Under CI a missing server fails the test.
    pub fn start() -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        let dir = private_dir("redis");
        let port = free_port();
        let mut server = RedisServer {
            child: None,
            dir,
            port,
            tls_port: None,
        };
        server.launch();
        Some(server)
    }

    /// Like [`start`](Self::start), also serving TLS on another port with a certificate for
    /// `localhost` signed by a CA of its own ([`ca_file`](Self::ca_file)); `None` with a
    /// printed reason without `openssl`.
    pub fn start_tls() -> Option<RedisServer> {
        let mut server = RedisServer::start()?;
        let dir = server.dir.clone();
        let sh = format!(
            "cd {} && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem \
             -days 2 -subj /CN=multiproc-test-ca && \
             openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
             -subj /CN=localhost && \
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' \
             > ext.cnf && \
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out server.pem -days 2 -extfile ext.cnf",
            dir.display()
        );
        let made = Command::new("sh").args(["-c", &sh]).output();
        if !made.is_ok_and(|o| o.status.success()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "openssl could not make certificates"
            );
            eprintln!("skipped: openssl could not make certificates");
            return None;
        }
        if let Some(mut c) = server.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        server.tls_port = Some(free_port());
        server.launch();
        Some(server)
    }

    /// The CA that signed the TLS certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `rediss://localhost:TLS_PORT/0`.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://localhost:{p}/0"))
    }

    fn launch(&mut self) {
        let child = server_command(self.port, &self.socket(), &self.dir)
            .args(self.tls_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ping() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    fn tls_args(&self) -> Vec<String> {
        let Some(port) = self.tls_port else {
            return Vec::new();
        };
        let file = |name: &str| self.dir.join(name).display().to_string();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }

    /// Answers PING with PONG (and has finished loading its data).
    fn ping(&self) -> bool {
        answers_ping(&self.socket())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis+unix:///…/redis.sock`.
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Runs `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run redis-cli")
    }

    /// `redis-cli`'s output, trimmed.
    pub fn cli_text(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cli(args).stdout)
            .trim()
            .to_string()
    }

    /// Stops the server (as a crash would: SIGKILL), then starts it again on the same port
    /// and data once `down` returns.
    pub fn restart(&mut self, down: impl FnOnce()) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        down();
        self.launch();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `redis-server` is installed; if not, says so (under CI a missing server fails the
/// test instead).
pub fn installed() -> bool {
    programs_installed(&["redis-server"])
}

/// Whether every one of `programs` runs; if not, says so (under CI that fails the test
/// instead).
pub fn programs_installed(programs: &[&str]) -> bool {
    let runs = |program: &&str| Command::new(program).arg("--version").output().is_ok();
    if programs.iter().all(runs) {
        return true;
    }
    let names = programs.join(" and ");
    assert!(
        std::env::var_os("CI").is_none(),
        "{names} must be installed (.ci/run installs them)"
    );
    eprintln!("skipped: {names} must be installed");
    false
}

/// A new directory of this test's own under the temporary directory, named after `kind`.
pub fn private_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "multiproc-{kind}-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir).expect("create a test's directory");
    dir
}

/// `redis-server` on 127.0.0.1:`port` and the unix socket `socket`, its files in `dir`, with
/// the settings the guarantees need: every write fsynced (`appendonly yes`, `appendfsync
/// always`), nothing evicted.
pub fn server_command(port: u16, socket: &Path, dir: &Path) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--unixsocket")
        .arg(socket)
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--save", ""])
        .args(["--maxmemory-policy", "noeviction"])
        .arg("--dir")
        .arg(dir);
    command
}

/// Whether the server on the unix socket `socket` answers PING with PONG (and has finished
/// loading its data).
pub fn answers_ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
