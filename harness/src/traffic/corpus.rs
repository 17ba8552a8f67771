//! The plain request corpus (`check --requests FILE`), for servers without a client to
//! record: one line, one template.
//!
//! ```text
//! # a comment; blank lines are skipped too
//! 0a0568656c6c6f                       hex: the payload's bytes (even count, any case)
//! {"hex": "00ff"}                      JSON: the same, or
//! {"text": "GET /a\r\n"}               the payload as text (JSON escapes allowed)
//! [{"text": "AUTH k"}, {"hex": "01"}]  JSON array: one session of several requests
//! ```
//!
//! Each line is one payload, without framing: the campaign frames it with `--framing`.
//! Every line becomes one session template; a line of one payload is a one-request
//! template, so a campaign that chains templates (seeded) builds longer sessions from
//! a pool of single requests, and a JSON array line keeps requests that only make
//! sense together (a login, then a query) in one template. Leading and trailing
//! whitespace is ignored; a payload that starts or ends with spaces needs `text`.
//!
//! Bounded: a corpus file of at most [`MAX_CORPUS_BYTES`]; errors name the line.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Payload, Template};

/// Largest corpus file read (64 MiB).
pub const MAX_CORPUS_BYTES: u64 = 64 << 20;

/// Why a corpus could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorpusError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes; a request corpus is at most {MAX_CORPUS_BYTES}")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} holds no request (only blank lines and comments)")]
    Empty { path: PathBuf },
}

impl CorpusError {
    /// A short, stable label for reports and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            CorpusError::Read { .. } => "read",
            CorpusError::TooLarge { .. } => "too_large",
            CorpusError::Line { .. } => "bad_line",
            CorpusError::Empty { .. } => "empty",
        }
    }
}

/// The templates of the corpus at `path` (see the module docs).
pub fn load_requests(path: &Path) -> Result<Vec<Template>, CorpusError> {
    let read = |source| CorpusError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_CORPUS_BYTES {
        return Err(CorpusError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    let text = std::fs::read(path).map_err(read)?;
    parse_requests(&text).map_err(|e| match e {
        CorpusError::Line { line, reason, .. } => CorpusError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        },
        CorpusError::Empty { .. } => CorpusError::Empty {
            path: path.to_path_buf(),
        },
        other => other,
    })
}

/// [`load_requests`] on a corpus already in memory (errors name the path `-`).
pub fn parse_requests(text: &[u8]) -> Result<Vec<Template>, CorpusError> {
    let mut out = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let bad = |reason: String| CorpusError::Line {
            path: PathBuf::from("-"),
            line,
            reason,
        };
        let s = std::str::from_utf8(raw)
            .map_err(|_| bad("not UTF-8 (write binary payloads as hex)".into()))?
            .trim();
        if s.is_empty() || s.starts_with('#') {
            continue;
        }
        let template = if s.starts_with('{') {
            let p: Payload = serde_json::from_str(s).map_err(|e| bad(format!("bad JSON: {e}")))?;
            vec![p.bytes().map_err(|r| bad(r.into()))?]
        } else if s.starts_with('[') {
            let ps: Vec<Payload> =
                serde_json::from_str(s).map_err(|e| bad(format!("bad JSON: {e}")))?;
            if ps.is_empty() {
                return Err(bad("an empty session".into()));
            }
            ps.iter()
                .map(|p| p.bytes().map_err(|r| bad(r.into())))
                .collect::<Result<_, _>>()?
        } else {
            let bytes = hex::decode(s).map_err(|_| {
                bad("neither hex nor a JSON object or array (text goes in {\"text\": ...})".into())
            })?;
            vec![Bytes::from(bytes)]
        };
        out.push(template);
    }
    if out.is_empty() {
        return Err(CorpusError::Empty {
            path: PathBuf::from("-"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_json_objects_and_arrays_become_templates_and_comments_do_not() {
        let corpus =
            b"# greeting\n\n68656C6C6F\n  {\"hex\": \"00ff\"}  \r\n{\"text\": \"GET /\\r\\n\"}\n\
                       [{\"text\": \"AUTH k\"}, {\"hex\": \"\"}]\n";
        let t = parse_requests(corpus).unwrap();
        assert_eq!(
            t,
            vec![
                vec![Bytes::from_static(b"hello")],
                vec![Bytes::from_static(&[0, 0xff])],
                vec![Bytes::from_static(b"GET /\r\n")],
                vec![Bytes::from_static(b"AUTH k"), Bytes::new()],
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_by_number_and_an_empty_corpus_is_an_error() {
        for (text, line) in [
            (&b"00\nxyz\n"[..], 2),
            (b"abc\n", 1),
            (b"\n{\"text\": \"a\", \"hex\": \"00\"}\n", 2),
            (b"{\"hex\": 5}\n", 1),
            (b"[]\n", 1),
            (b"\xff\xfe\n", 1),
        ] {
            match parse_requests(text) {
                Err(CorpusError::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert_eq!(parse_requests(b"# only\n\n").unwrap_err().kind(), "empty");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt");
        std::fs::write(&path, "00\n{oops\n").unwrap();
        let e = load_requests(&path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:2: bad JSON", path.display())),
            "{e}"
        );
    }
}
