//! `cargo +nightly fuzz run manager_calls`: an authenticated peer's proxy calls (the manager
//! server's dispatch: pickled `(ident, method, args, kwds)` requests against a dict, a list,
//! a namespace, a value and an array). Must not panic, hang or allocate without bound.
//! Seeds: `python3 fuzz/seeds/manager_calls.py fuzz/corpus/manager_calls`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::manager_calls(data);
});
