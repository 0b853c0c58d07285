//! The binary's command line: help never starts anything, and a mistyped option is refused
//! before anything starts instead of being ignored.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `rlay ARGS`, killing it if it is still running after 20 s (a command that started
/// serving instead of answering).
fn rlay(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlay"))
        .args(args)
        .env("RELAY_LOG_LEVEL", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rlay");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("output");
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn help_prints_usage_and_starts_nothing() {
    for args in [
        &["--help"][..],
        &["help"],
        &["sim", "--help"],
        &["serve", "-h"],
    ] {
        let (code, out, _) = rlay(args);
        assert_eq!(code, Some(0), "rlay {args:?} should exit 0");
        assert!(out.contains("usage:"), "rlay {args:?} printed no usage");
        assert!(
            out.contains("--accounts-per-host"),
            "rlay {args:?}: sim options missing"
        );
    }
}

#[test]
fn unknown_options_and_arguments_are_refused() {
    let (code, _, err) = rlay(&["sim", "--hostz", "3"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("rlay sim: unknown option --hostz"),
        "stderr: {err}"
    );

    let (code, _, err) = rlay(&["serve", "--api-listn=127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("rlay serve: unknown option --api-listn"),
        "stderr: {err}"
    );

    let (code, _, err) = rlay(&["audit-collections", "extra"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unexpected argument \"extra\""),
        "stderr: {err}"
    );

    let (code, out, _) = rlay(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("rlay "), "stdout: {out}");
}
