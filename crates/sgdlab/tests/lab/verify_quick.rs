//! The laboratory passes: every claim of `verify --quick` at the default seed, run in-process
//! (the CLI's tests check the same run through the binary). A bug in an optimizer, an average
//! or the statistics that a claim watches fails here with the claim's numbers.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

use std::collections::BTreeSet;

use sgdlab::lab::claims::{Claim, VerifyOptions, verify};
use sgdlab::optim::{NAMES, OptimizerSpec};

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
    // Every claim, in order: a claim that stops running (a section returning no claims
    // passes every check above) fails here. A new claim is added to this list.
    let ids: Vec<&str> = report.claims.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ALL_CLAIMS, "the claims run by `verify --quick`");
    every_optimizer_is_in_a_claim(&report.claims);
}

/// Every registered optimizer is measured by some claim: each claim's `optimizer` specs
/// parse, and their names cover [`NAMES`].
fn every_optimizer_is_in_a_claim(claims: &[Claim]) {
    let mut covered = BTreeSet::new();
    for claim in claims {
        for spec in &claim.optimizer {
            let parsed: OptimizerSpec = spec
                .parse()
                .unwrap_or_else(|e| panic!("claim {}: its optimizer {spec}: {e}", claim.id));
            covered.insert(parsed.rule.name());
        }
    }
    let missing: Vec<&str> = NAMES
        .iter()
        .copied()
        .filter(|n| !covered.contains(n))
        .collect();
    assert!(missing.is_empty(), "optimizers in no claim: {missing:?}");
}

/// The claims of `verify`, in the order it reports them: one line per problem or section.
#[rustfmt::skip]
const ALL_CLAIMS: [&str; 116] = [
    "1a", "1a.z", "1a.t", "1b", "1b.start",
    "2a", "2a.t", "2b", "2b.ratio", "2b.size", "2b.lag", "2b.blocklag", "2.adam", "2.adam.lag",
    "3a", "3b", "3c", "3c.momentum", "3c.buffer", "3c.schedule", "3c.optim", "3.sgd",
        "3.sgd.nesterov",
    "4", "4.adam.const", "4.mean", "4.var", "4.var.N", "4.var.limit", "4.adam", "4.lib.horizon",
        "4.lib.power", "4.lib.adam",
    "5a", "5a.unit", "5b.sgd.temp", "5b.rms.temp", "5b", "5b.sgd", "5b.sgd.same-lr", "5b.lib",
    "6a", "6b", "6b.fp", "6b.two", "6b.median", "6b.mean", "6b.fp2", "6c", "6c.shrink",
    "7a", "7a.fp", "7a.floor", "7b", "7b.fp",
    "10a", "10b", "10b.t", "10b.sgd", "10c", "10c.var", "10c.bias", "10d", "10d.band",
        "10d.uv", "10d.scale", "10e", "10e.amsgrad", "10e.adopt", "10e.sign", "10e.sgd",
        "10e.c-adam", "10e.c-amsgrad", "10e.prodigy", "10e.adan", "10f", "10f.sym", "10f.beta1",
        "10g", "10g.adamax", "10g.radam", "10g.nadam", "10h", "10h.growth", "10i.lion",
        "10i.lion.fp", "10i.madam", "10i.sf-adamw", "10j",
    "11a", "11b", "11c", "11d", "11e", "11e.prior",
    "12a", "12b", "12b.linear", "12b.rmsprop", "12c", "12c.bias", "12d", "12d.momentum",
    "12d.transient", "12d.critical", "12d.precond",
    "13a", "13a.zero", "13b", "13c", "13d", "13e", "13e.1000", "13e.10000",
    "13f", "13f.ratio",
];
