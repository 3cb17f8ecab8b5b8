//! A process written as a type, like Python's subclass of `Process` overriding `run`.
//!
//! Run with `cargo run --example run_trait -p multiproc`.

use multiproc::{Process, Run, current_process};
use serde::{Deserialize, Serialize};

/// ```python
/// class MyProcess(Process):
///     def __init__(self, i): super().__init__(); self.i = i
///     def run(self): print(f"{self.i}子进程{os.getpid()} 正在执行!")
/// ```
/// The fields travel to the child, which calls `run` there.
#[derive(Serialize, Deserialize)]
struct MyProcess {
    i: u32,
}

impl Run for MyProcess {
    /// What `run` hands back to the parent (a Python `run` returns nothing).
    type Output = u32;

    fn run(self) -> u32 {
        let me = current_process();
        println!("  {}: {} (pid {}) is running", self.i, me.name(), me.pid());
        std::process::id()
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();

    // p_lst = [MyProcess(i=i) for i in range(1, 5)]; [p.start() for p in p_lst]
    let processes = (1..=4)
        .map(|i| Process::from_run(MyProcess { i }).start())
        .collect::<multiproc::Result<Vec<_>>>()?;
    for p in &processes {
        println!("  started {} (pid {})", p.name(), p.pid());
    }
    // [p.join() for p in p_lst]
    for p in processes {
        let (name, pid) = (p.name().to_string(), p.pid());
        let reported = p.into_result()?;
        assert_eq!(reported as i32, pid);
        println!("  joined {name}: run() returned its pid {reported}");
    }
    Ok(())
}
