//! The published JSON Schemas of chopstick's JSON reports (`harness/schemas/`) are the
//! ones generated from the report types: `check`/`run --json` ([`Report`]),
//! `check --udp --json` ([`UdpCheckReport`]) and `soak --json` ([`SoakReport`]).
//! `CHOPSTICK_WRITE_SCHEMAS=1 cargo test -p chopstick --test schema` rewrites them.

use std::path::{Path, PathBuf};

use chopstick::report::{Report, REPORT_FORMAT};
use chopstick::soak::SoakReport;
use chopstick::udp::UdpCheckReport;
use schemars::{schema_for, Schema};

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(format!("{name}.schema.json"))
}

/// The generated schema as committed: pretty JSON with a trailing newline.
fn text(schema: &Schema) -> String {
    serde_json::to_string_pretty(schema).expect("schemas serialise") + "\n"
}

fn assert_committed(name: &str, schema: Schema) {
    let path = path(name);
    let generated = text(&schema);
    if std::env::var_os("CHOPSTICK_WRITE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with CHOPSTICK_WRITE_SCHEMAS=1)",
            path.display()
        )
    });
    assert!(
        committed == generated,
        "{} is stale: the report types changed (run with CHOPSTICK_WRITE_SCHEMAS=1, and raise \
         the format version if a field changed meaning or went away)",
        path.display()
    );
    let value: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(
        value["properties"]["format"]["type"], "integer",
        "{name}: every report has a `format` version"
    );
}

#[test]
fn the_report_schema_is_the_one_generated_from_the_types() {
    assert_committed("report", schema_for!(Report));
}

#[test]
fn the_udp_report_schema_is_the_one_generated_from_the_types() {
    assert_committed("udp-report", schema_for!(UdpCheckReport));
}

#[test]
fn the_soak_report_schema_is_the_one_generated_from_the_types() {
    assert_committed("soak-report", schema_for!(SoakReport));
}

#[test]
fn a_report_carries_its_format_and_one_from_before_the_field_still_reads() {
    let json = serde_json::to_value(Report::new(7)).unwrap();
    assert_eq!(json["format"], REPORT_FORMAT);
    let old = r#"{"chopstick":"0.1.0","seed":7,"rows":[],"failures":[],"unusable":[]}"#;
    let report: Report = serde_json::from_str(old).unwrap();
    assert_eq!((report.format, report.seed), (0, 7));
}
