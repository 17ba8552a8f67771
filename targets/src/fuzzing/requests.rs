//! `exec_request` and `file_request`: the request validators, checked against the
//! rules in their module docs written out again independently (a differential oracle).
//!
//! - exec: a request is accepted exactly when `argv` is a non-empty array of at most
//!   `MAX_ARGS` strings, each at most `MAX_ARG_LEN` bytes without NUL, and `argv[0]` is an
//!   allow-listed bare name (no `/`); an accepted request runs exactly that argv (nothing
//!   cut or rewritten) with the program from `FIXED_PATH` and the body as stdin. A refusal
//!   has a reason and fits in a reply header.
//! - file: a name is accepted exactly when it is relative, at most `MAX_NAME` bytes, of
//!   `/`-separated components of `[A-Za-z0-9._-]` (at most `MAX_COMPONENT` bytes, not
//!   empty, `.`, `..` or hidden); no accepted name resolves outside the root, lexically or
//!   on disk (a fixture root holds symlinks that point outside it).

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::Rest;
use crate::exec::{self, FIXED_PATH, MAX_ARGS, MAX_ARG_LEN};
use crate::file::names::{self, MAX_COMPONENT, MAX_NAME};
use crate::file::store;
use crate::wire::{HjsonCodec, HjsonFrame, MAX_HEADER};

#[derive(Arbitrary, Debug, Clone)]
pub struct ExecRequestInput {
    /// Bit 0: the tail is argv (0xFF-separated, lossy UTF-8) instead of a JSON header;
    /// bit 1: argv\[0\] becomes an allow-listed program; bit 2: the request has a body.
    pub flags: u8,
    /// In argv mode, copies of the last argument appended (modulo 512: around `MAX_ARGS`).
    pub repeat: u16,
    pub data: Rest,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FileRequestInput {
    /// Bit 0: the tail is the name (lossy UTF-8) instead of 0xFF-separated components,
    /// where a one-byte component 0..=5 stands for `..`, `.`, ``, `escape`, `leak`, `sub`.
    pub flags: u8,
    pub data: Rest,
}

/// What an accepted exec request will run.
#[derive(Debug)]
pub struct Accepted {
    pub argv: Vec<String>,
    pub program: PathBuf,
    pub stdin: Bytes,
}

/// A stand-in for the exec request parser and validator (see [`exec_request_with`]).
pub type ParseExec = fn(&HjsonFrame, &exec::Config) -> Result<Accepted, String>;

/// The exec request parser and validator on a header built from the input.
pub fn exec_request(input: ExecRequestInput) {
    exec_request_impl(input, None);
}

/// [`exec_request`]'s checks on another parser (`fuzz/`'s planted copies).
pub fn exec_request_with(input: ExecRequestInput, parse: ParseExec) {
    exec_request_impl(input, Some(parse));
}

fn exec_request_impl(input: ExecRequestInput, other: Option<ParseExec>) {
    let config = exec::Config::default();
    let header = match exec_header(&input, &config) {
        Some(h) => h,
        None => return,
    };
    let body = if input.flags & 4 != 0 {
        Bytes::from_static(b"some stdin")
    } else {
        Bytes::new()
    };
    let request = HjsonFrame {
        header: header.clone(),
        body: body.clone(),
    };
    let output_cap = 1024;

    let result = match other {
        Some(parse) => parse(&request, &config),
        None => real_exec_request(&request, &config, output_cap),
    };

    let expected = exec_rules(&header, &config);
    match (result, expected) {
        (Ok(accepted), Ok(argv)) => {
            assert_eq!(
                accepted.argv, argv,
                "the argv run is not the argv asked for"
            );
            let program = &accepted.program;
            assert!(program.is_absolute(), "{program:?}");
            assert_eq!(
                program.file_name().and_then(|n| n.to_str()),
                Some(argv[0].as_str())
            );
            let dir = program.parent().and_then(Path::to_str).unwrap_or_default();
            assert!(
                FIXED_PATH.split(':').any(|d| d == dir),
                "{program:?} is not on {FIXED_PATH}"
            );
            assert_eq!(accepted.stdin, body);
        }
        (Err(reason), Err(_)) => check_refusal(&reason),
        // An allow-listed program this machine lacks: refused, rightly.
        (Err(reason), Ok(_)) if reason.contains("not found") => check_refusal(&reason),
        (Err(reason), Ok(argv)) => panic!("refused {argv:?}, which the rules allow: {reason}"),
        (Ok(accepted), Err(rule)) => panic!(
            "accepted {:?} although the rules refuse it: {rule}",
            accepted.argv
        ),
    }
}

fn real_exec_request(
    request: &HjsonFrame,
    config: &exec::Config,
    output_cap: usize,
) -> Result<Accepted, String> {
    let spec = exec::parse_request(request, config, output_cap).map_err(|r| r.0)?;
    assert_eq!(spec.output_cap, output_cap);
    assert_eq!(spec.timeout, config.timeout);
    Ok(Accepted {
        argv: spec.argv,
        program: spec.program,
        stdin: spec.stdin,
    })
}

fn check_refusal(reason: &str) {
    assert!(!reason.is_empty(), "a refusal without a reason");
    let reply = HjsonFrame::new(json!({ "error": reason }), Bytes::new());
    let header = HjsonCodec::header_bytes(&reply.header, 0);
    assert!(
        header.len() <= MAX_HEADER.min(4096),
        "refusal header is {} bytes",
        header.len()
    );
}

fn exec_header(input: &ExecRequestInput, config: &exec::Config) -> Option<Map<String, Value>> {
    let data = &input.data.0;
    if input.flags & 1 == 0 {
        return match serde_json::from_slice::<Value>(data) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        };
    }
    let mut argv: Vec<String> = data
        .split(|&b| b == 0xff)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if input.flags & 2 != 0 {
        argv[0] = config.allow[usize::from(input.repeat) % config.allow.len()].clone();
    }
    let last = argv.last().cloned().unwrap_or_default();
    argv.extend(std::iter::repeat_n(last, usize::from(input.repeat) % 512));
    Some(
        json!({ "argv": argv })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
}

/// The exec module's documented rules, written out again: `Ok(argv)` if acceptable.
fn exec_rules(header: &Map<String, Value>, config: &exec::Config) -> Result<Vec<String>, String> {
    let items = match header.get("argv") {
        Some(Value::Array(items)) => items,
        other => return Err(format!("argv is {other:?}")),
    };
    if items.is_empty() || items.len() > MAX_ARGS {
        return Err(format!("{} arguments", items.len()));
    }
    let mut argv = Vec::new();
    for item in items {
        match item {
            Value::String(s) if s.len() <= MAX_ARG_LEN && !s.contains('\0') => argv.push(s.clone()),
            other => return Err(format!("bad argument {other}")),
        }
    }
    if argv[0].contains('/') || !config.allow.contains(&argv[0]) {
        return Err(format!("program {:?} not allowed", argv[0]));
    }
    Ok(argv)
}

/// A stand-in for the file name validator (see [`file_request_with`]).
pub type ValidateName = fn(&str) -> Result<(), String>;

/// The file name validator, and what an accepted name resolves to on disk.
pub fn file_request(input: FileRequestInput) {
    file_request_impl(input, None);
}

/// [`file_request`]'s checks on another validator (`fuzz/`'s planted copies).
pub fn file_request_with(input: FileRequestInput, validate: ValidateName) {
    file_request_impl(input, Some(validate));
}

fn file_request_impl(input: FileRequestInput, other: Option<ValidateName>) {
    let name = file_name(&input);

    if let Some(validate) = other {
        let result = validate(&name);
        check_name(&name, result.is_ok(), result.err());
        return;
    }
    let result = names::validate(&name);
    check_name(
        &name,
        result.is_ok(),
        result.as_ref().err().map(|e| e.to_string()),
    );
    if let Ok(valid) = result {
        assert_eq!(valid.as_str(), name);
        assert_eq!(
            valid.components().collect::<Vec<_>>(),
            name.split('/').collect::<Vec<_>>()
        );
        let root = fixture_root();
        if let Ok((_, body)) = store::get(root, &valid, 1 << 16) {
            assert_ne!(body, SECRET, "{name:?} read a file outside the root");
            let real = root
                .join(&name)
                .canonicalize()
                .expect("a file just read exists");
            assert!(
                real.starts_with(root.canonicalize().expect("fixture root")),
                "{name:?} resolved to {real:?}, outside the root"
            );
        }
    }
}

/// Compares a validator's verdict with the documented rules and checks that an
/// accepted name stays inside the root lexically.
fn check_name(name: &str, accepted: bool, refusal: Option<String>) {
    let rules = name_rules(name);
    match (accepted, &rules) {
        (true, Ok(())) => {}
        (false, Err(_)) => {
            assert!(
                refusal.is_some_and(|r| !r.is_empty()),
                "refused without a reason"
            )
        }
        (true, Err(rule)) => panic!("accepted {name:?} although the rules refuse it: {rule}"),
        (false, Ok(())) => panic!("refused {name:?}, which the rules allow: {refusal:?}"),
    }
    if accepted {
        let root = Path::new("/srv/root");
        let mut depth = 0i64;
        for c in root
            .join(name)
            .strip_prefix(root)
            .unwrap_or(Path::new("/"))
            .components()
        {
            depth += match c {
                Component::Normal(_) => 1,
                Component::CurDir => 0,
                Component::ParentDir => -1,
                Component::RootDir | Component::Prefix(_) => i64::MIN / 2,
            };
            assert!(
                depth >= 0,
                "accepted name {name:?} resolves outside the root"
            );
        }
        assert!(
            root.join(name).starts_with(root),
            "accepted name {name:?} is not under the root"
        );
    }
}

/// The names module's documented rules, written out again.
fn name_rules(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME || name.starts_with('/') {
        return Err("empty, too long or absolute".into());
    }
    for c in name.split('/') {
        let ok_chars = c
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
        if c.is_empty() || c.starts_with('.') || c.len() > MAX_COMPONENT || !ok_chars {
            return Err(format!("component {c:?}"));
        }
    }
    Ok(())
}

fn file_name(input: &FileRequestInput) -> String {
    let data = &input.data.0;
    if input.flags & 1 != 0 {
        return String::from_utf8_lossy(data).into_owned();
    }
    let parts: Vec<String> = data
        .split(|&b| b == 0xff)
        .map(|c| match c {
            [0] => "..".into(),
            [1] => ".".into(),
            [2] => String::new(),
            [3] => "escape".into(),
            [4] => "leak".into(),
            [5] => "sub".into(),
            other => String::from_utf8_lossy(other).into_owned(),
        })
        .collect();
    parts.join("/")
}

const SECRET: &[u8] = b"outside the root";

/// A root with a file, a directory and two symlinks that point outside it, made once per
/// process in the temporary directory.
fn fixture_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base =
            std::env::temp_dir().join(format!("chopstick-fuzz-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("sub")).expect("fixture root");
        std::fs::create_dir_all(&outside).expect("fixture outside");
        std::fs::write(outside.join("secret"), SECRET).expect("fixture secret");
        std::fs::write(root.join("inside.txt"), b"inside").expect("fixture file");
        std::fs::write(root.join("sub/f"), b"nested").expect("fixture file");
        std::os::unix::fs::symlink("../outside", root.join("escape")).expect("fixture link");
        std::os::unix::fs::symlink("../outside/secret", root.join("leak")).expect("fixture link");
        root
    })
}

pub(crate) fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let exec_json = |json: &str| [&[0u8, 0, 0][..], json.as_bytes()].concat();
    let file_text = |name: &str| [&[1u8][..], name.as_bytes()].concat();
    vec![
        (
            "exec_request",
            "echo",
            exec_json(r#"{"argv":["echo","hi"],"size":0}"#),
        ),
        (
            "exec_request",
            "shell",
            exec_json(r#"{"argv":["sh","-c","id"]}"#),
        ),
        (
            "exec_request",
            "path",
            exec_json(r#"{"argv":["/bin/echo","x"]}"#),
        ),
        ("exec_request", "empty", exec_json(r#"{"argv":[]}"#)),
        (
            "exec_request",
            "nul",
            exec_json(r#"{"argv":["echo","a\u0000b"]}"#),
        ),
        (
            "exec_request",
            "not-strings",
            exec_json(r#"{"argv":["seq",1,2]}"#),
        ),
        // argv mode, argv[0] allow-listed, 255 copies of the last argument (256 in all).
        (
            "exec_request",
            "many-args",
            [&[3u8, 0xff, 0][..], b"x\xffarg"].concat(),
        ),
        ("file_request", "nested", file_text("a/b/c.txt")),
        ("file_request", "dotdot", file_text("a/../../etc/passwd")),
        ("file_request", "absolute", file_text("/etc/passwd")),
        (
            "file_request",
            "through-symlink",
            file_text("escape/secret"),
        ),
        ("file_request", "symlink-file", file_text("leak")),
        ("file_request", "inside", file_text("sub/f")),
        ("file_request", "components", vec![0, 5, 0xff, 0, 0xff, 3]),
    ]
}
