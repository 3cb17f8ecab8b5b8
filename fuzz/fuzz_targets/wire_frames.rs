//! `cargo +nightly fuzz run wire_frames`: untrusted bytes from a peer of CPython's connection
//! protocol. Must not panic, hang or allocate without bound.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::wire_frames(data);
});
