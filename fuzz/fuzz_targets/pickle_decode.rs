//! `cargo +nightly fuzz run pickle_decode`: the pickle decoder on arbitrary bytes. It must not
//! panic, hang or allocate without bound, and whatever it decodes must survive an encode/decode
//! round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::pickle_decode(data);
});
