use multiproc::*;
use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn spawn_square() {
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        let t = std::time::Instant::now();
        let mut p = Process::new(square, 7).start_method(m).start().unwrap();
        p.join(Some(Duration::from_secs(10))).unwrap();
        eprintln!("{m:?} {:?}", t.elapsed());
        assert_eq!(p.exitcode(), Some(0));
        assert_eq!(p.into_result().unwrap(), 49);
    }
}

#[test]
fn panics() {
    let mut p = Process::new(
        |x: u32| -> u32 {
            if x > 0 {
                panic!("boom {x}")
            }
            x
        },
        3,
    )
    .start()
    .unwrap();
    let e = p.join(None).unwrap_err();
    eprintln!("{e}");
    assert!(e.to_string().contains("boom 3"));
    assert_eq!(p.exitcode(), Some(1));
}
