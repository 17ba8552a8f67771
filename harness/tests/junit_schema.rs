//! The JUnit file `chopstick check --junit` writes must satisfy the JUnit XML schema CI
//! systems read (Ant's `junit.xsd` / Jenkins' `junit-10.xsd`): element nesting, required
//! attributes, numeric types, and counts that agree with the test cases.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, Default)]
struct Suite {
    attrs: HashMap<String, String>,
    cases: usize,
    failed_cases: usize,
}

/// Parses `xml`, checks it element by element, and returns its suites.
fn validate(xml: &str) -> Vec<Suite> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut suites: Vec<Suite> = Vec::new();
    let mut case_failed = false;
    loop {
        let event = reader.read_event().expect("well-formed XML");
        let (name, attrs, empty) = match &event {
            Event::Start(e) | Event::Empty(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                let attrs: HashMap<String, String> = e
                    .attributes()
                    .map(|a| {
                        let a = a.expect("valid attribute");
                        (
                            String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                            a.unescape_value()
                                .expect("valid attribute value")
                                .into_owned(),
                        )
                    })
                    .collect();
                (name, attrs, matches!(event, Event::Empty(_)))
            }
            Event::End(_) => {
                if stack.pop().as_deref() == Some("testcase") && case_failed {
                    suites.last_mut().unwrap().failed_cases += 1;
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let parent = stack.last().map(String::as_str);
        let int = |k: &str| {
            if let Some(v) = attrs.get(k) {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}@{k}={v} is not an integer"));
            }
        };
        let decimal = |k: &str| {
            if let Some(v) = attrs.get(k) {
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("{name}@{k}={v} is not a decimal"));
            }
        };
        match (parent, name.as_str()) {
            (None, "testsuites") => {
                int("tests");
                int("failures");
                int("errors");
                decimal("time");
            }
            (Some("testsuites") | None, "testsuite") => {
                for required in ["name", "tests", "failures", "errors"] {
                    assert!(
                        attrs.contains_key(required),
                        "testsuite without @{required}"
                    );
                }
                int("tests");
                int("failures");
                int("errors");
                int("skipped");
                decimal("time");
                suites.push(Suite {
                    attrs: attrs.clone(),
                    ..Suite::default()
                });
            }
            (Some("testsuite"), "testcase") => {
                for required in ["name", "classname"] {
                    assert!(attrs.contains_key(required), "testcase without @{required}");
                }
                decimal("time");
                suites.last_mut().unwrap().cases += 1;
                case_failed = false;
            }
            (Some("testcase"), "failure" | "error") => case_failed = true,
            (Some("testcase"), "skipped" | "system-out" | "system-err") => {}
            (Some("testsuite"), "properties" | "system-out" | "system-err") => {}
            (Some("properties"), "property") => {}
            (p, n) => panic!("<{n}> is not allowed inside {p:?}"),
        }
        if empty {
            if name == "testcase" && case_failed {
                suites.last_mut().unwrap().failed_cases += 1;
            }
        } else {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?}");
    for s in &suites {
        assert_eq!(
            s.attrs["tests"].parse::<usize>().unwrap(),
            s.cases,
            "testsuite@tests"
        );
        assert_eq!(
            s.attrs["failures"].parse::<usize>().unwrap(),
            s.failed_cases,
            "testsuite@failures"
        );
    }
    suites
}

fn junit_of(server: &str, dir: &Path) -> (Option<i32>, String) {
    let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zoo");
    let junit = dir.join("report.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .args(["check", "--spawn"])
        .arg(format!(
            "python3 {} {{port}} {server}",
            zoo.join(if server.is_empty() {
                "correct.py"
            } else {
                "broken.py"
            })
            .display()
        ))
        .args([
            "--seed",
            "11",
            "--connections",
            "3",
            "--messages",
            "6",
            "--max-size",
            "128KiB",
        ])
        .args([
            "--faults",
            "split,coalesce",
            "--shrink-time",
            "5",
            "--artifacts",
        ])
        .arg(dir)
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    (
        out.status.code(),
        std::fs::read_to_string(&junit).expect("a JUnit file"),
    )
}

#[test]
fn junit_of_a_passing_check_satisfies_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let (code, xml) = junit_of("", dir.path());
    assert_eq!(code, Some(0));
    let suites = validate(&xml);
    assert_eq!(suites.len(), 1);
    assert_eq!((suites[0].cases, suites[0].failed_cases), (2, 0));
}

#[test]
fn junit_of_a_failing_check_satisfies_the_schema_and_marks_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (code, xml) = junit_of("single_read_body", dir.path());
    assert_eq!(code, Some(1));
    let suites = validate(&xml);
    assert_eq!(suites[0].cases, 2);
    assert!(suites[0].failed_cases >= 1, "{xml}");
    assert!(
        xml.contains("truncated"),
        "the failure message names the class: {xml}"
    );
}

#[test]
fn the_validator_rejects_what_the_schema_rejects() {
    let bad = [
        r#"<testsuites><testcase name="a" classname="b"/></testsuites>"#,
        r#"<testsuite name="s" tests="1" failures="0" errors="0"><testcase classname="b"/></testsuite>"#,
        r#"<testsuite name="s" tests="2" failures="0" errors="0"><testcase name="a" classname="b"/></testsuite>"#,
        r#"<testsuite name="s" tests="x" failures="0" errors="0"></testsuite>"#,
    ];
    for xml in bad {
        assert!(
            std::panic::catch_unwind(|| validate(xml)).is_err(),
            "accepted: {xml}"
        );
    }
}
