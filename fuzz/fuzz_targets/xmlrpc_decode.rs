//! `cargo +nightly fuzz run xmlrpc_decode`: the manager's XML-RPC reader (CPython's
//! `serializer='xmlrpclib'`) on arbitrary bytes. It must not panic or hang, and whatever it
//! reads must encode and read back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::xmlrpc_decode(data);
});
