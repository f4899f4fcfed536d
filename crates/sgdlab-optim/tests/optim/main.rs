//! The optimizer crate's integration tests, in one binary (one link instead of six):
//! conformance with the reference trajectories of `tests/data/`, every rule's semantics,
//! parameter groups and schedules, matrix and averaging rules, and bfloat16 parameters and
//! state.

mod bf16_params;
mod bf16_state;
mod cautious;
mod checkpoints;
mod conformance;
mod docs;
mod groups_schedule;
mod matrix_and_averaging_rules;
mod optimizers;
mod prodigy;
mod q8_state;
mod quant;
mod soap;
