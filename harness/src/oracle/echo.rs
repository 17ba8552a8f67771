//! `echo` and `upper` (`--oracle echo`, `--oracle upper`): each reply is its request,
//! as is or with ASCII a-z upper-cased. The minimum an oracle is: a name and the
//! expected replies; everything else is the trait's default.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::{no_config, Oracle, OracleError};

/// Each reply equals its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Echo;

/// Each reply is its request with ASCII a-z upper-cased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upper;

impl Echo {
    pub fn build(config: Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError> {
        no_config("echo", config)?;
        Ok(Arc::new(Echo))
    }
}

impl Upper {
    pub fn build(config: Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError> {
        no_config("upper", config)?;
        Ok(Arc::new(Upper))
    }
}

impl Oracle for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn expected(&self, _conn: u64, messages: &[Bytes]) -> Vec<Bytes> {
        messages.to_vec()
    }
}

impl Oracle for Upper {
    fn name(&self) -> &str {
        "upper"
    }

    fn expected(&self, _conn: u64, messages: &[Bytes]) -> Vec<Bytes> {
        messages
            .iter()
            .map(|m| Bytes::from(m.to_ascii_uppercase()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_changes_only_ascii_letters_and_echo_nothing() {
        let m = [Bytes::from_static(b"ab-\xff\x00z")];
        assert_eq!(Echo.expected(0, &m), m);
        assert_eq!(&Upper.expected(0, &m)[0][..], b"AB-\xff\x00Z");
        assert_eq!(
            &Upper.probe(&[]).reply.unwrap()[..],
            b"CHOPSTICK LIVENESS PROBE"
        );
    }
}
