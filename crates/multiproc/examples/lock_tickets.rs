//! The seeds' ticket-buying race, fixed with a lock around a JSON file.
//!
//! Mirrors "多进程数据错乱问题" (seed 002): ten buyers, one ticket in `data.json`.
//!
//! ```python
//! def pay_num(name):  # read the file, wait, write ticket_num - 1 if there is one left
//!     ...
//! def run(name, lock):
//!     check_num(name)
//!     with lock:
//!         pay_num(name)
//! lock = RLock()
//! for i in range(10):
//!     Process(target=run, args=(str(i), lock)).start()
//! ```
//!
//! It runs the buyers first without the lock, to show the race (several are told they got the
//! one ticket), then with it: exactly one wins. The seed waits `random.randint(1, 3)` seconds
//! inside the lock, which would make ten buyers take 10 to 30 s; here the wait is 100 ms.
//!
//! Run with `cargo run --example lock_tickets -p multiproc`.

#![allow(clippy::disallowed_methods)] // its sleeps stand for the seed's `time.sleep`

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use multiproc::{Process, RLock};
use serde_json::json;

fn load(path: &Path) -> Result<serde_json::Value, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a temporary file and renames it over `path`, so that a buyer reading outside the
/// lock never sees half a file.
fn store(path: &Path, data: &serde_json::Value) -> Result<(), String> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    fs::write(&tmp, data.to_string()).map_err(|e| e.to_string())?;
    fs::rename(&tmp, path).map_err(|e| e.to_string())
}

fn tickets_left(data: &serde_json::Value) -> u64 {
    data["ticket_num"].as_u64().unwrap_or(0)
}

/// `def check_num(name)`: prints the tickets left.
fn check_num(name: &str, path: &Path) -> Result<(), String> {
    println!("  {name}: tickets left {}", tickets_left(&load(path)?));
    Ok(())
}

/// `def pay_num(name)`: reads, waits, and takes the ticket if one was left when it read.
fn pay_num(name: &str, path: &Path) -> Result<bool, String> {
    let mut data = load(path)?;
    sleep(Duration::from_millis(100));
    let left = tickets_left(&data);
    if left == 0 {
        println!("  {name}: sold out");
        return Ok(false);
    }
    data["ticket_num"] = json!(left - 1);
    if let Some(sold) = data["sold_to"].as_array_mut() {
        sold.push(json!(name));
    }
    store(path, &data)?;
    println!("  {name}: congratulations, you got the ticket");
    Ok(true)
}

/// `def run(name, lock)`; without a lock (`None`) it is the racy version.
fn run((name, path, lock): (String, PathBuf, Option<RLock>)) -> Result<bool, String> {
    check_num(&name, &path)?;
    match &lock {
        // `with lock:` (the seed's RLock; a plain Lock would do, it is taken once)
        Some(lock) => {
            let _held = lock.acquire().map_err(|e| e.to_string())?;
            pay_num(&name, &path)
        }
        None => pay_num(&name, &path),
    }
}

/// Puts one ticket in the file, runs ten buyers, and returns the names of those told they won.
fn sell_one_ticket(path: &Path, lock: Option<RLock>) -> Result<Vec<String>, Box<dyn Error>> {
    store(path, &json!({ "ticket_num": 1, "sold_to": [] }))?;
    let buyers = (0..10)
        .map(|i| {
            let args = (format!("buyer {i}"), path.to_path_buf(), lock.clone());
            Process::new(run, args).start()
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    let mut winners = Vec::new();
    for (i, buyer) in buyers.into_iter().enumerate() {
        if buyer.into_result()?? {
            winners.push(format!("buyer {i}"));
        }
    }
    Ok(winners)
}

/// Removes the scratch directory however `main` ends.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    multiproc::init();
    let dir =
        ScratchDir(std::env::temp_dir().join(format!("multiproc-tickets-{}", std::process::id())));
    fs::create_dir_all(&dir.0)?;
    let path = dir.0.join("data.json");

    println!("== 1. without a lock ==");
    let winners = sell_one_ticket(&path, None)?;
    let data = load(&path)?;
    println!(
        "  {} buyers were told they got the one ticket; the file says {data}",
        winners.len()
    );
    assert!(!winners.is_empty(), "someone buys the ticket");

    println!("\n== 2. with the lock around pay_num ==");
    let winners = sell_one_ticket(&path, Some(RLock::new()?))?;
    let data = load(&path)?;
    println!("  winner: {}; the file says {data}", winners.join(", "));
    assert_eq!(winners.len(), 1, "exactly one buyer wins");
    assert_eq!(tickets_left(&data), 0);
    assert_eq!(
        data["sold_to"],
        json!(winners),
        "the file records the one sale"
    );
    Ok(())
}
