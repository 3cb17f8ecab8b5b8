//! Named shared memory left behind by a crashed process is unlinked by the tracker.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::eventually;
use multiproc::SharedMemory;

const HELPER: &str = "MULTIPROC_TEST_TRACKER_HELPER";

/// Run by `a_crashed_creator_leaks_no_name` in a fresh copy of this test binary: creates a
/// named block, prints its name, and dies by SIGKILL without unlinking it.
#[test]
#[ignore = "a helper, run by another test"]
fn helper_creates_a_block_and_dies() {
    if std::env::var_os(HELPER).is_none() {
        return;
    }
    let block = SharedMemory::create(None, 4096).unwrap();
    println!("NAME {}", block.name());
    // SAFETY: raise has no preconditions; SIGKILL ends the process at once.
    unsafe { libc::raise(libc::SIGKILL) };
}

#[test]
fn a_crashed_creator_leaks_no_name() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_creates_a_block_and_dies",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = stdout
        .lines()
        .find_map(|l| l.split("NAME ").nth(1))
        .unwrap_or_else(|| panic!("the helper printed no name: {stdout}"))
        .to_string();
    assert!(!out.status.success(), "the helper was meant to die");
    // The tracker notices the last connection close and unlinks; the kernel has no event we
    // could wait on for a file's removal here, so look until it is gone.
    let path = format!("/dev/shm/{name}");
    assert!(
        eventually(Duration::from_secs(10), || !std::path::Path::new(&path)
            .exists()),
        "{path} was left behind"
    );
}

#[test]
fn a_block_unlinked_by_its_creator_is_not_reported() {
    let block = SharedMemory::create(None, 4096).unwrap();
    block.unlink().unwrap();
    assert!(SharedMemory::open(block.name()).is_err());
}
