//! `multiproc dashboard` on a real redis-server: its Prometheus metrics (checked by Prometheus'
//! own `promtool`) and its JSON show the broker's real counts, the dead letters can be
//! requeued from it (only by a request its page could make), a token guards it, and a broker
//! that goes away shows as such, with no figures presented as live. And in a real browser
//! (chromium, driven through chromedriver): the page shows the counts, and its button requeues
//! a dead letter; a screenshot is kept in the target directory.

#[path = "../../multiproc/tests/common/redis.rs"]
mod redis_server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, JoinableQueue, Queue};
use redis_server::{RedisServer, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");
const PATIENCE: Duration = Duration::from_secs(30);

/// A child process, killed and reaped when the test ends (also when it fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `multiproc dashboard`, killed when the test ends.
struct Dashboard {
    child: Running,
    port: u16,
}

impl Dashboard {
    fn start(redis: &RedisServer, extra: &[&str]) -> Dashboard {
        Dashboard::start_with(redis, extra, None)
    }

    /// With the broker pools' authkey in MULTIPROC_AUTHKEY, if given (never inherited).
    fn start_with(redis: &RedisServer, extra: &[&str], authkey: Option<&str>) -> Dashboard {
        let port = free_port();
        let mut command = Command::new(BIN);
        command.env_remove("MULTIPROC_AUTHKEY");
        if let Some(key) = authkey {
            command.env("MULTIPROC_AUTHKEY", key);
        }
        let child = command
            .args(["dashboard", "-b", &redis.url(), "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start multiproc dashboard");
        let mut dashboard = Dashboard {
            child: Running(child),
            port,
        };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                dashboard.child.0.try_wait().unwrap().is_none(),
                "the dashboard exited"
            );
            assert!(Instant::now() < deadline, "the dashboard did not listen");
            std::thread::park_timeout(Duration::from_millis(20));
        }
        dashboard
    }

    /// One request: its status, headers (lower-cased names) and body.
    fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        http(self.port, method, path, headers)
    }

    fn get(&self, path: &str) -> Reply {
        self.http("GET", path, &[])
    }

    fn status(&self) -> serde_json::Value {
        let reply = self.get("/api/status");
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap()
    }
}

/// One request to 127.0.0.1:`port`: its status, headers (lower-cased names) and body.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Length: 0\r\n"
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_string(),
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The queue `name` in a status.
fn queue<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {status}"))
}

/// Three items waiting on `jobs`; one dead letter on `failing` (its task failed: "boom").
fn fill(redis: &RedisServer) {
    let jobs: Queue<u32> = Queue::broker(redis.url(), "jobs").build().unwrap();
    for n in 0..3 {
        jobs.put(n).unwrap();
    }
    jobs.flush().unwrap();
    let failing: JoinableQueue<u32> = Queue::broker(redis.url(), "failing")
        .max_deliveries(1)
        .build_joinable()
        .unwrap();
    failing.put(7).unwrap();
    assert_eq!(failing.get().unwrap(), 7);
    failing.task_failed("boom").unwrap();
    // Its second delivery is one too many: it goes to the dead letters instead.
    let err = failing.get_timeout(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
}

/// `promtool check metrics` on `text` (Prometheus' own parser and linter); under CI it must
/// be installed (`.ci/run` installs Debian's `prometheus`).
fn promtool_accepts(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed: {e}"
            );
            eprintln!("skipped the promtool check: {e}");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `series` (name and labels, as written) in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_metrics_and_the_status_show_the_brokers_real_counts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let filled_from = Instant::now();
    fill(&redis);
    // An item done: its duration is counted for its queue.
    let finished: JoinableQueue<u32> = Queue::broker(redis.url(), "finished")
        .build_joinable()
        .unwrap();
    finished.put(1).unwrap();
    assert_eq!(finished.get().unwrap(), 1);
    finished.task_done().unwrap();
    assert_eq!(finished.unfinished().unwrap(), 0);
    // A consumer holding an item, and an item that failed and waits to be tried again.
    let holding: JoinableQueue<u32> = Queue::broker(redis.url(), "holding")
        .build_joinable()
        .unwrap();
    holding.put(9).unwrap();
    assert_eq!(holding.get().unwrap(), 9);
    let retrying: JoinableQueue<u32> = Queue::broker(redis.url(), "retrying")
        .build_joinable()
        .unwrap();
    retrying.put(4).unwrap();
    assert_eq!(retrying.get().unwrap(), 4);
    retrying.task_failed("flaky").unwrap();
    // Taken again: a redelivery (its error stays until it is done).
    assert_eq!(retrying.get_timeout(PATIENCE).unwrap(), 4);
    let dashboard = Dashboard::start(&redis, &[]);
    let metrics = dashboard.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        metrics.headers
    );
    promtool_accepts(&metrics.body);
    let m = &metrics.body;
    assert_eq!(sample(m, "multiproc_broker_up"), Some(1.0), "{m}");
    assert_eq!(
        sample(m, "multiproc_queue_waiting{queue=\"jobs\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "multiproc_queue_added_total{queue=\"jobs\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "multiproc_queue_dead{queue=\"failing\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "multiproc_queue_consumers{queue=\"failing\"}"),
        Some(1.0),
        "{m}"
    );
    for (series, value) in [
        (
            "multiproc_queue_task_duration_seconds_count{queue=\"finished\"}",
            1.0,
        ),
        (
            "multiproc_queue_task_duration_seconds_bucket{queue=\"finished\",le=\"+Inf\"}",
            1.0,
        ),
        (
            "multiproc_queue_task_duration_seconds_count{queue=\"jobs\"}",
            0.0,
        ),
        ("multiproc_queue_delivered_total{queue=\"retrying\"}", 1.0),
        ("multiproc_queue_redelivered_total{queue=\"retrying\"}", 1.0),
        ("multiproc_queue_redelivered_total{queue=\"jobs\"}", 0.0),
    ] {
        assert_eq!(sample(m, series), Some(value), "{series} in {m}");
    }

    let status = dashboard.status();
    let since_filled = filled_from.elapsed().as_millis() as u64;
    assert_eq!(status["broker_up"], true);
    assert_eq!(queue(&status, "jobs")["waiting"], 3);
    // The latency: how long the first of jobs' items has waited (by the broker's clock, on
    // this machine), and nothing for a queue where none waits.
    let latency = queue(&status, "jobs")["latency_ms"].as_u64().unwrap();
    assert!(
        latency <= since_filled + 1,
        "{latency} ms > {since_filled} ms"
    );
    assert!(
        queue(&status, "holding")["latency_ms"].is_null(),
        "{status}"
    );
    let seconds = sample(m, "multiproc_queue_latency_seconds{queue=\"jobs\"}").unwrap();
    assert!(seconds * 1000.0 <= (since_filled + 1) as f64, "{m}");
    assert_eq!(
        sample(m, "multiproc_queue_latency_seconds{queue=\"holding\"}"),
        Some(0.0),
        "{m}"
    );
    let failing = queue(&status, "failing");
    assert_eq!(failing["dead"], 1);
    assert_eq!(failing["dead_letters"][0]["reason"], "boom", "{failing}");
    let worker = &failing["consumers"][0];
    assert_eq!(worker["pid"], std::process::id(), "{worker}");
    // What a worker holds, and since when it was queued.
    let holder = &queue(&status, "holding")["consumers"][0];
    assert_eq!(holder["holds"], 1, "{holder}");
    assert!(
        holder["oldest"].as_str().is_some_and(|id| id.contains('-')),
        "{holder}"
    );
    let queued = holder["oldest_queued_ms"].as_u64().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(queued <= now_ms && now_ms - queued < 600_000, "{holder}");
    // A recent failure, with its error.
    let errors = &queue(&status, "retrying")["errors"];
    assert_eq!(errors[0]["error"], "flaky", "{errors}");

    // The page itself: embedded, fetching nothing from elsewhere.
    let page = dashboard.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>multiproc dashboard</title>"));
    // No address but SVG's namespace (a name, never fetched).
    let addresses = page.body.replace("http://www.w3.org/2000/svg", "");
    assert!(!addresses.contains("http:") && !addresses.contains("https:"));
    assert!(!page.body.contains("<link") && !page.body.contains("<script src"));
    assert_eq!(dashboard.get("/nothing").status, 404);
}

#[test]
fn a_dead_letter_is_requeued_only_by_a_request_its_page_could_make() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    fill(&redis);
    let dashboard = Dashboard::start(&redis, &[]);
    let path = "/api/queues/failing/dead/requeue";
    // A form on another site can post, but not with this header.
    assert_eq!(dashboard.http("POST", path, &[]).status, 403);
    // A script on another site cannot send it without asking first (never answered); were
    // the header there, its origin gives it away.
    let foreign = [
        ("X-Multiproc-Request", "1"),
        ("Origin", "http://evil.example"),
    ];
    assert_eq!(dashboard.http("POST", path, &foreign).status, 403);
    assert_eq!(queue(&dashboard.status(), "failing")["dead"], 1);
    // The page's own request.
    let origin = format!("http://127.0.0.1:{}", dashboard.port);
    let own = [("X-Multiproc-Request", "1"), ("Origin", origin.as_str())];
    let reply = dashboard.http("POST", path, &own);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("\"requeued\":1"), "{}", reply.body);
    let failing = queue(&dashboard.status(), "failing").clone();
    assert_eq!(
        (failing["dead"].clone(), failing["waiting"].clone()),
        (0.into(), 1.into())
    );
    // A GET changes nothing.
    assert_eq!(dashboard.get(path).status, 404);
}

#[test]
fn a_token_guards_it_and_binding_beyond_loopback_needs_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let refused = Command::new(BIN)
        .args(["dashboard", "-b", &redis.url(), "--bind", "0.0.0.0:0"])
        .env_remove("MULTIPROC_DASHBOARD_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--token"), "{stderr}");

    let dashboard = Dashboard::start(&redis, &["--token", "s3cret"]);
    assert_eq!(dashboard.get("/metrics").status, 401);
    assert_eq!(dashboard.get("/").status, 401);
    let wrong = dashboard.http("GET", "/metrics", &[("Authorization", "Bearer s3creT")]);
    assert_eq!(wrong.status, 401);
    let scraped = dashboard.http("GET", "/metrics", &[("Authorization", "Bearer s3cret")]);
    assert_eq!(scraped.status, 200);
    // The browser opens the page once with the token: a cookie for this site, and the
    // token out of the address bar.
    let opened = dashboard.get("/?token=s3cret");
    assert_eq!(opened.status, 303);
    assert_eq!(opened.header("location"), Some("/"));
    let cookie = opened.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = dashboard.http("GET", "/", &[("Cookie", &cookie)]);
    assert_eq!(page.status, 200);
    let status = dashboard.http("GET", "/api/status", &[("Cookie", &cookie)]);
    assert_eq!(status.status, 200);
}

#[test]
fn a_broker_that_goes_away_shows_as_such_and_no_figure_as_live() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    fill(&redis);
    let dashboard = Dashboard::start(&redis, &["jobs"]);
    assert_eq!(queue(&dashboard.status(), "jobs")["waiting"], 3);
    redis.restart(|| {
        // While it is down (looked at again once the last look is a second old).
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            let status = dashboard.status();
            if status["broker_up"] == false || Instant::now() > deadline {
                break status;
            }
            std::thread::park_timeout(Duration::from_millis(100));
        };
        assert_eq!(status["broker_up"], false, "{status}");
        assert!(status["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(status["down_since_ms"].as_u64().is_some());
        assert_eq!(status["queues"].as_array().unwrap().len(), 0);
        let metrics = dashboard.get("/metrics").body;
        assert_eq!(
            sample(&metrics, "multiproc_broker_up"),
            Some(0.0),
            "{metrics}"
        );
        assert!(!metrics.contains("multiproc_queue_"), "{metrics}");
        promtool_accepts(&metrics);
    });
    // Back (the broker keeps its data): live figures again.
    let deadline = Instant::now() + PATIENCE;
    while dashboard.status()["broker_up"] != true {
        assert!(
            Instant::now() < deadline,
            "the dashboard did not see the broker back"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
    assert_eq!(queue(&dashboard.status(), "jobs")["waiting"], 3);
}

/// `chromedriver` on a port of its own, killed when the test ends; `None` (printed) when it or
/// chromium is not installed (under CI that fails the test instead).
struct ChromeDriver {
    _child: Running,
    port: u16,
}

impl ChromeDriver {
    fn start() -> Option<ChromeDriver> {
        let installed = ["chromedriver", "chromium"].iter().all(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "chromium and chromedriver must be installed (.ci/run installs them)"
            );
            eprintln!("skipped: chromium and chromedriver are not installed");
            return None;
        }
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = ChromeDriver {
            _child: Running(child),
            port,
        };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::park_timeout(Duration::from_millis(20));
        }
        Some(driver)
    }
}

#[test]
fn in_a_real_browser_the_page_shows_the_counts_and_requeues_a_dead_letter() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(driver) = ChromeDriver::start() else {
        return;
    };
    fill(&redis);
    let dashboard = Dashboard::start(&redis, &["--token", "s3cret"]);
    let base = format!("http://127.0.0.1:{}", dashboard.port);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let screenshot = runtime.block_on(async {
        use fantoccini::{ClientBuilder, Locator};
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_string(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,760"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let browser = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a browser session");
        // Without the token: refused.
        browser.goto(&format!("{base}/")).await.unwrap();
        let refused = browser.source().await.unwrap();
        assert!(refused.contains("a token is required"), "{refused}");
        // With it once: the page, and its own requests carry the cookie.
        browser
            .goto(&format!("{base}/?token=s3cret"))
            .await
            .unwrap();
        let text_of = async |css: &str| -> String {
            match browser.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        };
        // Waits until the page's queue table says `want`: (queue, column, text) each.
        let page_shows = async |want: &[(&str, usize, &str)]| {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let mut seen = Vec::new();
                for (queue, column, _) in want {
                    let css = format!("#queues tr[data-queue='{queue}'] td:nth-child({column})");
                    seen.push(text_of(&css).await);
                }
                if seen.iter().zip(want).all(|(s, w)| s == w.2) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the page shows {seen:?}, not {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        // What the broker holds: 3 waiting on jobs, 1 dead on failing (column 2 is waiting,
        // 4 dead).
        page_shows(&[("jobs", 2, "3"), ("failing", 4, "1")]).await;
        assert_eq!(text_of("#dead td.reason").await, "boom");
        let image = browser.screenshot().await.unwrap();
        // The page's requeue button, clicked.
        browser
            .find(Locator::Css(
                "button[data-action='requeue'][data-queue='failing']",
            ))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_shows(&[("failing", 2, "1"), ("failing", 4, "0")]).await;
        // An hour of polling (1800 looks) keeps what the page holds bounded: the last minutes
        // of each queue (150 samples), and one row per queue.
        let held = browser
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 (async () => {
                   for (let i = 0; i < 1800; i++) await refresh();
                   done([history.get('jobs').length,
                         document.querySelectorAll('#queues tbody tr').length]);
                 })();",
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(held, serde_json::json!([150, 2]));
        browser.close().await.unwrap();
        image
    });
    // The broker agrees: the dead letter is back in its queue.
    let admin = multiproc::QueueAdmin::connect(&redis.url(), "failing").unwrap();
    let status = admin.status().unwrap();
    assert_eq!((status.dead, status.waiting), (0, 1));
    // Kept for whoever looks at the run (the README's picture is one).
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, &screenshot).unwrap();
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot: {}", artifact.display());
}

/// The status of the answer to `bytes` sent raw to 127.0.0.1:`port` (0: none), written from
/// a thread of its own so a server that stops reading cannot hold the test up.
fn raw_status(port: u16, bytes: Vec<u8>) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut writer = s.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        for piece in bytes.chunks(64 * 1024) {
            if writer.write_all(piece).is_err() {
                break;
            }
        }
    });
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    drop(s);
    writing.join().unwrap();
    let raw = String::from_utf8_lossy(&raw);
    raw.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A request whose one header goes on for 4 MiB.
fn endless_head(port: u16) -> u16 {
    let mut bytes = b"GET /metrics HTTP/1.1\r\nHost: here\r\nX-Long: ".to_vec();
    bytes.resize(bytes.len() + 4 * 1024 * 1024, b'a');
    raw_status(port, bytes)
}

#[test]
fn what_a_stranger_sends_is_bounded_before_the_token_is_checked() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dashboard = Dashboard::start(&redis, &["--token", "s3cret"]);
    let port = dashboard.port;
    // A head longer than 16 KiB, or with more than 64 headers: refused, not read on.
    assert_eq!(endless_head(port), 431);
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for n in 0..100 {
        many.push_str(&format!("X-{n}: {n}\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw_status(port, many.into_bytes()), 431);
    // Not HTTP; a body too long; a body without a length.
    assert_eq!(
        raw_status(port, b"\x00\x01\x02 hello\r\n\r\n".to_vec()),
        400
    );
    let long_body = "POST /api/queues/q/dead/purge HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n";
    assert_eq!(raw_status(port, long_body.into()), 413);
    let chunked = "POST /api/queues/q/dead/purge HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(raw_status(port, chunked.into()), 411);
    // 64 connections that say nothing are served (and wait); one more is turned away at once.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let turned_away = |port| {
        raw_status(
            port,
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n".to_vec(),
        )
    };
    let deadline = Instant::now() + PATIENCE;
    // (The server may not have accepted all 64 yet.)
    while turned_away(port) != 503 {
        assert!(Instant::now() < deadline, "the 65th connection was served");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    // Once they go, the dashboard serves again, and answers what it should.
    drop(idle);
    while turned_away(port) != 200 {
        assert!(
            Instant::now() < deadline,
            "the dashboard did not serve again"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    assert_eq!(dashboard.get("/metrics").status, 401);
}

#[test]
fn a_worker_serves_its_own_figures() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let submitted = Command::new(BIN)
        .args(["submit", "-b", &redis.url(), "3", "4", "5"])
        .output()
        .unwrap();
    assert!(submitted.status.success());
    let port = free_port();
    let worker = Command::new(BIN)
        .args(["worker", "--square", "--idle", "60", "-b", &redis.url()])
        .arg("--metrics-bind")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _worker = Running(worker);
    let deadline = Instant::now() + PATIENCE;
    let metrics = loop {
        let body = TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| http(port, "GET", "/metrics", &[]).body);
        let done = "multiproc_worker_tasks_done_total{queue=\"task\"}";
        if let Some(body) = body
            && sample(&body, done) == Some(3.0)
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's figures did not show 3 tasks done"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    };
    promtool_accepts(&metrics);
    let count = "multiproc_worker_task_duration_seconds_count{queue=\"task\"}";
    assert_eq!(sample(&metrics, count), Some(3.0), "{metrics}");
    let failed = "multiproc_worker_tasks_failed_total{queue=\"task\"}";
    assert_eq!(sample(&metrics, failed), Some(0.0), "{metrics}");
    assert_eq!(http(port, "GET", "/", &[]).status, 404);
    // The same bounded server: a head without end is cut off.
    assert_eq!(endless_head(port), 431);
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn a_pools_task_is_looked_up_by_id_with_the_pools_authkey() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pool = multiproc::Pool::broker(redis.url(), "lookup")
        .authkey(b"pool key".to_vec())
        .tasks(multiproc::TaskRegistry::new().register("square", square))
        .build()
        .unwrap();
    // Kept by the broker for ten minutes: its record says so at once, no worker needed.
    let later = pool
        .task(square, 3)
        .start_after(Duration::from_secs(600))
        .submit()
        .unwrap();
    let id = later.task_id().unwrap().to_string();
    let path = format!("/api/task?queue=lookup&id={id}");
    let without = Dashboard::start(&redis, &[]);
    let refused = without.get(&path);
    assert_eq!(refused.status, 404);
    assert!(refused.body.contains("authkey"), "{}", refused.body);
    let with = Dashboard::start_with(&redis, &[], Some("pool key"));
    let found = with.get(&path);
    assert_eq!(found.status, 200, "{}", found.body);
    let found: serde_json::Value = serde_json::from_str(&found.body).unwrap();
    assert_eq!(found["state"], "scheduled", "{found}");
    assert_eq!(with.get("/api/task?queue=lookup").status, 400);
    // Another key cannot read it: the record does not verify.
    let stranger = Dashboard::start_with(&redis, &[], Some("another key"));
    let refused = stranger.get(&path);
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert!(!refused.body.contains("scheduled"), "{}", refused.body);
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_hour_of_a_page_polling_leaves_the_dashboards_memory_where_it_was() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    fill(&redis);
    let dashboard = Dashboard::start(&redis, &[]);
    let pid = dashboard.child.0.id();
    // A page asks for the status every 2 s: 1800 times an hour (and a scraper for metrics).
    let poll = |times: usize| {
        for _ in 0..times {
            assert_eq!(dashboard.get("/api/status").status, 200);
            assert_eq!(dashboard.get("/metrics").status, 200);
        }
    };
    poll(200);
    let before = rss_kib(pid);
    poll(1800);
    let after = rss_kib(pid);
    assert!(
        after <= before + 1024,
        "the dashboard grew from {before} KiB to {after} KiB"
    );
}
