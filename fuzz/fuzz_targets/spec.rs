//! Optimizer specs: parsing never panics, and a parsed spec prints to a string that parses
//! back to the same spec.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sgdlab::fuzzing::spec(data);
});
