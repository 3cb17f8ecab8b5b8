//! A manager's dict and list, changed by ten processes and read back by the main one.
//!
//! Mirrors seed 003's `数据共享(Managers)` (data sharing with managers):
//!
//! ```python
//! def ChildProcess(Dict, List):
//!     Dict['k1'] = 'v1'
//!     Dict['k2'] = 'v2'
//!     List.append(os.getpid())
//!     print(List)
//! manager = Manager(); Dict = manager.dict(); List = manager.list()
//! for i in range(10):
//!     p = Process(target=ChildProcess, args=(Dict, List)); p.start(); ProcessList.append(p)
//! for res in ProcessList: res.join()
//! print(Dict); print(List)
//! ```
//!
//! `Manager()` starts a server process: [`ManagerServer::start`] does the same (its `setup`
//! runs there; the defaults serve `dict`, `list` and the rest). The proxies then travel to
//! each child in its arguments, as Python pickles them: the child attaches to the same dict
//! and list (one proxy per child: [`try_clone`](multiproc::DictProxy::try_clone)).
//!
//! Section 2 shares them between threads instead.
//!
//! Run with `cargo run --example manager_dict_list -p multiproc`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::error::Error;

use multiproc::{
    Address, DictProxy, ListProxy, ManagerClient, ManagerServer, Process, Thread, current_thread,
};

const AUTHKEY: &[u8] = b"seed-003";

/// `def ChildProcess(Dict, List)`; returns its pid. (A target's error type must be serde:
/// the error travels as its message.)
fn child_process((dict, list): (DictProxy<String, String>, ListProxy<u32>)) -> Result<u32, String> {
    let run = || -> multiproc::Result<u32> {
        dict.set(&"k1".into(), &"v1".into())?;
        dict.set(&"k2".into(), &"v2".into())?;
        let pid = std::process::id();
        list.append(&pid)?;
        println!("  {:?}", list.to_vec()?);
        Ok(pid)
    };
    run().map_err(|e| e.to_string())
}

fn main() -> Result<(), Box<dyn Error>> {
    multiproc::init();

    println!("== 1. ten processes share the manager's dict and list ==");
    let server = ManagerServer::start(&Address::tcp("127.0.0.1:0")?, AUTHKEY, |_| {})?;
    println!(
        "  manager: process {} serving at {}",
        server.pid(),
        server.address()
    );
    let manager = ManagerClient::connect(server.address(), AUTHKEY)?;
    let dict = manager.dict::<String, String>()?;
    let list = manager.list::<u32>()?;

    let process_list = (0..10)
        .map(|_| {
            let args = (dict.try_clone()?, list.try_clone()?);
            Process::new(child_process, args).start()
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    let mut pids = Vec::new();
    for p in process_list {
        let pid = p.pid();
        let reported = p.into_result()??;
        assert_eq!(i64::from(reported), i64::from(pid));
        pids.push(reported);
    }

    let d: BTreeMap<String, String> = dict.items()?.into_iter().collect();
    let mut l = list.to_vec()?;
    println!("\n  {d:?}");
    println!("  {l:?}");
    let expected = [("k1", "v1"), ("k2", "v2")].map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(d, BTreeMap::from(expected));
    l.sort_unstable();
    pids.sort_unstable();
    assert_eq!(l, pids, "every child appended its pid once");

    println!("\n== 2. manager.dict() and manager.list(), shared by ten threads ==");
    let d = manager.dict::<String, String>()?;
    let l = manager.list::<u64>()?;
    let threads = (0..10)
        .map(|_| {
            let (d, l) = (d.try_clone()?, l.try_clone()?);
            Thread::spawn(move || -> multiproc::Result<u64> {
                d.set(&"k1".into(), &"v1".into())?;
                d.set(&"k2".into(), &"v2".into())?;
                // One process: every pid is the same, so each thread appends its ident.
                let ident = current_thread().ident();
                l.append(&ident)?;
                Ok(ident)
            })
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    let mut idents = Vec::new();
    for t in threads {
        idents.push(t.join()??);
    }
    let items: BTreeMap<String, String> = d.items()?.into_iter().collect();
    let mut appended = l.to_vec()?;
    println!("  {items:?}");
    println!("  {appended:?}");
    assert_eq!(items.len(), 2);
    appended.sort_unstable();
    idents.sort_unstable();
    assert_eq!(appended, idents);

    drop((dict, list, d, l));
    server.shutdown()?;
    Ok(())
}
