//! Flags a command would ignore are refused with a usage error (exit 2) that names them,
//! never silently dropped; `-q`/`-v` and the logging notes are in `--help`.

use std::process::{Command, Output};

fn chopstick(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .args(args)
        .output()
        .expect("run chopstick")
}

#[test]
fn check_udp_refuses_each_tcp_only_flag_by_name() {
    for (flag, value) in [
        ("--framing", Some("line")),
        ("--connections", Some("3")),
        ("--messages", Some("3")),
        ("--mode", Some("ping-pong")),
        ("--no-half-close", None),
        ("--reply-timeout", Some("1")),
        ("--liveness", Some("1")),
        ("--no-shrink", None),
        ("--shrink-time", Some("1")),
        ("--junit", Some("j.xml")),
    ] {
        let mut args = vec!["check", "--udp", "--connect", "127.0.0.1:9", flag];
        args.extend(value);
        let out = chopstick(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains("cannot be used with") && err.contains(flag),
            "{flag}: {err}"
        );
    }
}

#[test]
fn check_refuses_datagrams_without_udp() {
    let out = chopstick(&["check", "--connect", "127.0.0.1:9", "--datagrams", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--udp"), "{err}");
}

#[test]
fn help_documents_quiet_verbose_rust_log_and_no_color() {
    let out = chopstick(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["--quiet", "--verbose", "RUST_LOG", "NO_COLOR"] {
        assert!(help.contains(word), "{word} missing from --help:\n{help}");
    }
}
