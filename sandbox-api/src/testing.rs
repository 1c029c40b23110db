//! The test suite's skips: a test that cannot run where it runs (not root,
//! a KVM that runs no standard guest) says why through [`skip`], which
//! also appends the line to the file named by `CRIUS_TEST_SKIPS`;
//! `scripts/test` prints that file at the end of the run, since libtest
//! hides what a passing test prints.

use std::io::Write as _;

/// The environment variable naming the file skips are appended to.
pub const SKIPS_ENV: &str = "CRIUS_TEST_SKIPS";

/// Records that `test` did not run, and why.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIPS_ENV)
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}
