//! The fuzz targets' checked-in corpora (`fuzz/corpus/NAME/`), replayed as tests: every input
//! that the coverage-guided fuzzer kept (and every crash it ever found, once fixed) must run
//! through its parser or loader without a panic. The fuzzer itself runs with
//! `cargo fuzz run NAME -s none` (see the README).

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::path::PathBuf;

#[test]
fn every_corpus_input_runs_without_a_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for target in sgdlab::fuzzing::TARGETS {
        let dir = root.join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let ran = std::panic::catch_unwind(|| sgdlab::fuzzing::run(target, &bytes));
            assert!(
                matches!(ran, Ok(true)),
                "{target}: {} panicked",
                path.display()
            );
            inputs += 1;
        }
        assert!(inputs >= 3, "{target}: only {inputs} corpus inputs");
    }
    assert!(!sgdlab::fuzzing::run("no-such-target", b""));
}
