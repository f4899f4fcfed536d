//! See `sgdlab::fuzzing::state_dict`: a state dict never panics the loader or the step after it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sgdlab::fuzzing::state_dict(data);
});
