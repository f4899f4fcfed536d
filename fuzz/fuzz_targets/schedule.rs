//! See `sgdlab::fuzzing::schedule`: schedule text never panics the parser, overflows the stack or a step count.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sgdlab::fuzzing::schedule(data);
});
