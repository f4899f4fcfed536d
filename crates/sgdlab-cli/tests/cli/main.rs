//! The `sgdlab` command's tests, in one binary: each command run as a user runs it (verify,
//! audit, replay, train with kill and resume, bench), its errors and exit codes, and the HTML
//! report in a browser.

mod audit_cli;
mod bench_cli;
mod critical_batch_cli;
mod kill_resume;
mod noise_cli;
mod reliability_cli;
mod replay_cli;
mod report_browser;
mod train_cli;
mod verify_cli;
