//! The laboratory passes: every claim of `verify --quick` at the default seed, run in-process
//! (the CLI's tests check the same run through the binary). A bug in an optimizer, an average
//! or the statistics that a claim watches fails here with the claim's numbers.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use sgdlab::lab::claims::{VerifyOptions, verify};

#[test]
fn every_claim_passes_at_the_default_seed() {
    let options = VerifyOptions {
        quick: true,
        ..VerifyOptions::default()
    };
    let report = verify(&[], &options).unwrap();
    let failed: Vec<String> = report
        .claims
        .iter()
        .filter(|c| !c.passed)
        .map(|c| {
            format!(
                "{} expected {} measured {} z {:?} rejects {:?}",
                c.id, c.expected, c.measured, c.z, c.rejects
            )
        })
        .collect();
    assert!(failed.is_empty(), "failed claims:\n{}", failed.join("\n"));
    assert_eq!((report.passed, report.failed), (report.claims.len(), 0));
    assert!(report.claims.len() >= 66, "{} claims", report.claims.len());
}
