//! The simulations' report: every scenario's and the model's figures, one
//! line each, printed and appended to `target/tmp/simulations-report.md`,
//! which the test command prints at its end.

/// Print a line of figures and add it to the run's report.
pub fn report(line: String) {
    println!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("simulations-report.md");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write;
        let _ = writeln!(f, "- {line}");
    }
}
