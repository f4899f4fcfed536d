//! See `sgdlab::fuzzing::idx`: the loader never panics on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sgdlab::fuzzing::idx(data);
});
