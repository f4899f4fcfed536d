//! The lab and training crate's integration tests, in one binary: running-average
//! properties, the fuzz corpora replayed, reliability of the library's inputs and files, and
//! `verify --quick`'s claims.

mod average_props;
mod fuzz_corpus;
mod reliability;
mod verify_quick;
