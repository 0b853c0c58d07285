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
    for args in [&["--help"][..], &["help"], &[]] {
        let (code, out, _) = rlay(args);
        assert_eq!(code, Some(0), "rlay {args:?} should exit 0");
        for word in ["Usage:", "serve", "sim", "migrate", "audit-collections"] {
            assert!(out.contains(word), "rlay {args:?} help lacks {word}: {out}");
        }
    }
    let (code, out, _) = rlay(&["sim", "--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("--accounts-per-host"),
        "sim options missing: {out}"
    );
    // `serve --help` is the whole configuration reference: every option, with its variable and
    // its default.
    for args in [&["serve", "--help"][..], &["serve", "-h"]] {
        let (code, out, _) = rlay(args);
        assert_eq!(code, Some(0), "rlay {args:?} should exit 0");
        for v in rlay::config::variables() {
            let flag = format!(
                "--{}",
                v.name
                    .trim_start_matches("RELAY_")
                    .to_ascii_lowercase()
                    .replace('_', "-")
            );
            assert!(out.contains(&flag), "rlay {args:?} lacks {flag}");
            assert!(out.contains(&v.name), "rlay {args:?} lacks {}", v.name);
            assert!(
                out.contains(&v.default),
                "rlay {args:?} lacks the default of {}",
                v.name
            );
        }
    }
}

#[test]
fn unknown_options_and_bad_values_are_refused_by_name() {
    let (code, _, err) = rlay(&["sim", "--hostz", "3"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--hostz"), "stderr: {err}");

    let (code, _, err) = rlay(&["serve", "--api-listn=127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--api-listn"), "stderr: {err}");

    let (code, _, err) = rlay(&["audit-collections", "--against=http://x", "extra"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("extra"), "stderr: {err}");

    // A bad value names the option and the form it expects.
    let (code, _, err) = rlay(&["serve", "--replay-window=soon"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--replay-window") && err.contains("72h"),
        "stderr: {err}"
    );
    let (code, _, err) = rlay(&["sim", "--fault=nonsense:0.5"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--fault") && err.contains("known:"),
        "stderr: {err}"
    );

    let (code, out, _) = rlay(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("rlay "), "stdout: {out}");
}
