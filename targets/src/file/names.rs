//! Validation of the names clients give the file server.
//!
//! A name is the only thing a client controls that becomes a path, so it is checked
//! lexically before the filesystem is touched at all. [`validate`] is a pure function
//! (no I/O), cheap enough to fuzz. Symlinks cannot be judged lexically; the store
//! checks them while resolving (see `store`).
//!
//! Accepted: a relative name of `/`-separated components, each made of
//! `[A-Za-z0-9._-]`, at most [`MAX_COMPONENT`] bytes per component and [`MAX_NAME`]
//! bytes in all. Refused: an empty name or component (`a//b`, `foo/`), a leading `/`,
//! `.` and `..`, NUL, backslash, any other character (`~`, `%`, spaces, non-ASCII), and
//! components starting with `.`. The last rule is a choice: the server's temporary
//! files start with `.`, so clients can neither name, overwrite nor list them, and
//! dot-files in general stay private to the operator.

use std::fmt;

/// Longest name accepted, in bytes.
pub const MAX_NAME: usize = 1024;
/// Longest component accepted, in bytes (the usual filesystem limit).
pub const MAX_COMPONENT: usize = 255;

/// Why a name was refused. The `Display` text is sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes, more than the limit of {MAX_NAME}")]
    TooLong { len: usize },
    #[error("name must be relative (it starts with '/')")]
    Absolute,
    #[error("name contains a NUL byte")]
    Nul,
    #[error("name contains a backslash; components are separated by '/'")]
    Backslash,
    #[error("name has an empty component (leading, trailing or doubled '/')")]
    EmptyComponent,
    #[error("name has a '.' component")]
    Dot,
    #[error("name has a '..' component; names cannot leave the root")]
    DotDot,
    #[error("a component is {len} bytes, more than the limit of {MAX_COMPONENT}")]
    ComponentTooLong { len: usize },
    #[error("a component starts with '.'; hidden names are reserved for the server")]
    Hidden,
    #[error(
        "name contains {0:?}; allowed are A-Z, a-z, 0-9, '.', '_', '-' and '/' between components"
    )]
    BadChar(char),
}

/// A name that passed [`validate`]: safe to join onto the root component by component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValidName(String);

impl ValidName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order; never empty, none is `.`, `..` or hidden.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.0.split('/')
    }

    /// The directory components (all but the last).
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        let n = self.0.split('/').count();
        self.0.split('/').take(n - 1)
    }

    /// The last component: the file's own name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for ValidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks `name` against the rules in the module docs; no I/O, never panics.
pub fn validate(name: &str) -> Result<ValidName, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    // Checked on the whole name first so the reason given is the most telling one.
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    for component in name.split('/') {
        validate_component(component)?;
    }
    Ok(ValidName(name.to_owned()))
}

/// Whether one directory entry name is something a client could have created; the
/// listing shows only these (so temp files and operator dot-files stay hidden).
pub fn is_valid_component(component: &str) -> bool {
    validate_component(component).is_ok()
}

fn validate_component(component: &str) -> Result<(), NameError> {
    match component {
        "" => return Err(NameError::EmptyComponent),
        "." => return Err(NameError::Dot),
        ".." => return Err(NameError::DotDot),
        _ => {}
    }
    if component.len() > MAX_COMPONENT {
        return Err(NameError::ComponentTooLong {
            len: component.len(),
        });
    }
    if component.starts_with('.') {
        return Err(NameError::Hidden);
    }
    match component
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_nested_names_are_accepted() {
        for name in [
            "a",
            "a.txt",
            "A-b_c.9",
            "a/b/c.txt",
            "x..y",
            "-rf",
            "a.",
            &"z".repeat(255),
        ] {
            let valid = validate(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert_eq!(valid.as_str(), name);
        }
        let v = validate("a/b/c.txt").unwrap();
        assert_eq!(v.parents().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(v.file_name(), "c.txt");
        assert_eq!(validate("f").unwrap().parents().count(), 0);
    }

    #[test]
    fn escapes_and_odd_names_are_refused_with_their_reason() {
        let long_name = format!("{}/x", ["d"; 600].join("/"));
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("../x", NameError::DotDot),
            ("../../etc/passwd", NameError::DotDot),
            ("a/../../x", NameError::DotDot),
            ("..", NameError::DotDot),
            (".", NameError::Dot),
            ("a/./b", NameError::Dot),
            ("a//b", NameError::EmptyComponent),
            ("foo/", NameError::EmptyComponent),
            ("a\\..\\x", NameError::Backslash),
            ("a\0b", NameError::Nul),
            ("~/x", NameError::BadChar('~')),
            ("%2e%2e/x", NameError::BadChar('%')),
            ("a b", NameError::BadChar(' ')),
            ("caf\u{e9}", NameError::BadChar('\u{e9}')),
            (".hidden", NameError::Hidden),
            ("a/.chopstick-put-1.tmp", NameError::Hidden),
            (
                &long_name,
                NameError::TooLong {
                    len: long_name.len(),
                },
            ),
        ];
        for (name, want) in cases {
            assert_eq!(validate(name).as_ref(), Err(want), "{name:?}");
        }
        let big = "c".repeat(300);
        assert_eq!(
            validate(&big),
            Err(NameError::ComponentTooLong { len: 300 })
        );
    }
}
