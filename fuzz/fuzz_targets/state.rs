//! See `sgdlab::fuzzing::state`: the Python package's optimizer-state bytes never panic the loader or the step after it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sgdlab::fuzzing::state(data);
});
