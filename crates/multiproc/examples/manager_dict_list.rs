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
//! `Manager()` starts a server process: [`ManagerServer::start`] does the same. Python then
//! pickles the proxies into each child; a [`DictProxy`](multiproc::DictProxy) or
//! [`ListProxy`](multiproc::ListProxy) cannot travel to a child here, so the server registers
//! one dict and one list under names, and each child connects with the address and authkey
//! and asks for them by name (as the `BaseManager.register('get_task_queue')` workers of
//! seed 000 do). The server can register a dict but not a list: the list is a small
//! [`Managed`] type, called through an [`ObjectProxy`](multiproc::ObjectProxy).
//!
//! Section 2 uses `manager.dict()` and `manager.list()` themselves, shared by threads (a
//! proxy's `try_clone` gives each thread a connection of its own).
//!
//! Run with `cargo run --example manager_dict_list -p multiproc`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::{Arc, Mutex, PoisonError};

use multiproc::{
    Address, Managed, ManagerClient, ManagerServer, MethodCall, Process, Thread, current_thread,
};

const AUTHKEY: &[u8] = b"seed-003";

/// A list of pids served by the manager: `append` and `copy`, as Python's list has them.
#[derive(Default)]
struct SharedList(Mutex<Vec<u32>>);

impl Managed for SharedList {
    fn methods(&self) -> &'static [&'static str] {
        &["append", "copy"]
    }

    fn call(&self, method: &str, call: &mut MethodCall<'_>) -> multiproc::Result<()> {
        let mut items = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match method {
            "append" => {
                items.push(call.arg(0, "object")?);
                Ok(())
            }
            _ => call.ret(&*items),
        }
    }
}

/// Runs in the manager's process before it serves: `Dict = manager.dict(); List =
/// manager.list()`, under names every client can ask for.
fn setup(server: &mut ManagerServer) {
    server.register_dict("get_dict");
    let list = Arc::new(SharedList::default());
    server.register("get_list", move || list.clone()); // the same list for every client
}

/// `def ChildProcess(Dict, List)`, given the manager's address and authkey; returns its pid.
/// (A target's error type must be serde: the error travels as its message.)
fn child_process((address, authkey): (String, Vec<u8>)) -> Result<u32, String> {
    let run = || -> multiproc::Result<u32> {
        let manager = ManagerClient::connect(&Address::tcp(address.as_str())?, &authkey)?;
        let dict = manager.registered_dict::<String, String>("get_dict")?;
        let list = manager.create("get_list", &())?;
        dict.set(&"k1".into(), &"v1".into())?;
        dict.set(&"k2".into(), &"v2".into())?;
        let pid = std::process::id();
        list.call::<()>("append", &(pid,))?;
        println!("  {:?}", list.call::<Vec<u32>>("copy", &())?);
        Ok(pid)
    };
    run().map_err(|e| e.to_string())
}

fn main() -> Result<(), Box<dyn Error>> {
    multiproc::init();

    println!("== 1. ten processes share the manager's dict and list ==");
    let server = ManagerServer::start(&Address::tcp("127.0.0.1:0")?, AUTHKEY, setup)?;
    println!(
        "  manager: process {} serving at {}",
        server.pid(),
        server.address()
    );
    let manager = ManagerClient::connect(server.address(), AUTHKEY)?;
    let dict = manager.registered_dict::<String, String>("get_dict")?;
    let list = manager.create("get_list", &())?;

    let process_list = (0..10)
        .map(|_| {
            let args = (server.address().to_string(), AUTHKEY.to_vec());
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
    let mut l: Vec<u32> = list.call("copy", &())?;
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
