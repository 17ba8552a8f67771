//! `auth` (reproducer files: `{"auth": {"key": "..."}}`; not an `--oracle` name, since
//! keys never go on the command line): the auth server with inner echo. Each connection
//! opens with the handshake capability, in the variant [`AuthVariant::for_conn`] picks;
//! accepted connections are then judged by echo on the inner stream.
//!
//! ```text
//! client                         server
//!   |  <-------- nonce (32 B) ------  |
//!   |  --- HMAC-SHA256(key, nonce) -> |   right key, whole or 1 byte per write
//!   |  <-------- verdict (1 B) -----  |   1 = accepted, then the inner protocol
//! ```
//!
//! The plain handshake is `chopstick_targets::auth::client_handshake`; this file keeps
//! its own steps only for what that client cannot do: a digest split into 1-byte
//! writes, and a digest replayed from an earlier connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chopstick_targets::auth::{self as server, ACCEPTED, NONCE_LEN, REJECTED};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Handshake, Opened, Oracle, OracleError, Probe};
use crate::campaign::drive::{Fin, Timing};
use crate::campaign::judge::{Failure, FailureClass};
use crate::campaign::payload::preview;
use crate::campaign::{Conn, Target};

/// Pause between the 1-byte writes of a split digest, so the server really reads it
/// in pieces.
const SPLIT_PAUSE: Duration = Duration::from_millis(1);

/// What a rejected connection is shown as expecting in reports.
const REJECTED_SHOWN: &[u8] = b"verdict 0, then close";

/// The auth oracle: a key shared with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    pub key: AuthKey,
}

impl Auth {
    pub fn new(key: AuthKey) -> Auth {
        Auth { key }
    }

    pub fn build(config: Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError> {
        let config = config.ok_or(OracleError::NeedsConfig {
            name: "auth".into(),
            why: "a key (keys never go on the command line)",
        })?;
        let auth: Auth =
            serde_json::from_value(config.clone()).map_err(|source| OracleError::BadConfig {
                name: "auth".into(),
                source,
            })?;
        Ok(Arc::new(auth))
    }
}

impl Oracle for Auth {
    fn name(&self) -> &str {
        "auth"
    }

    fn config(&self) -> Option<Value> {
        Some(serde_json::to_value(self).expect("a key serialises"))
    }

    // The inner protocol is echo.
    fn expected(&self, _conn: u64, messages: &[Bytes]) -> Vec<Bytes> {
        messages.to_vec()
    }

    fn probe(&self, _session: &[Bytes]) -> Probe {
        let message = Bytes::from_static(super::PROBE_MESSAGE);
        Probe {
            reply: Some(message.clone()),
            message,
            fin: Fin::AfterReplies,
        }
    }

    fn handshake(&self) -> Option<&dyn Handshake> {
        Some(self)
    }
}

impl Handshake for Auth {
    fn open<'a>(
        &'a self,
        target: &'a Target,
        conn: u64,
        requests: &'a [u8],
        timing: &'a Timing,
    ) -> BoxFuture<'a, Result<Opened, Failure>> {
        async move {
            let variant = AuthVariant::for_conn(conn);
            match variant {
                AuthVariant::RightKey => {
                    Ok(Opened::Stream(accepted(target, self.key, timing).await?))
                }
                AuthVariant::SplitDigest => {
                    Ok(Opened::Stream(split(target, self.key, timing).await?))
                }
                AuthVariant::WrongKey | AuthVariant::Replayed => {
                    let (failure, seen) =
                        match rejected(target, self.key, variant, requests, timing).await {
                            Ok(()) => (None, Bytes::from_static(REJECTED_SHOWN)),
                            Err(f) => {
                                let seen = Bytes::from(f.detail.clone());
                                (Some(f), seen)
                            }
                        };
                    Ok(Opened::Settled {
                        expected: vec![Bytes::from_static(REJECTED_SHOWN)],
                        seen: vec![seen],
                        failure,
                    })
                }
            }
        }
        .boxed()
    }

    fn open_fresh<'a>(
        &'a self,
        target: &'a Target,
        timing: &'a Timing,
    ) -> BoxFuture<'a, Result<Conn, Failure>> {
        accepted(target, self.key, timing).boxed()
    }
}

/// A shared auth key: 32 random ASCII letters and digits, so a key file holding it
/// survives `load_key`'s newline stripping and reads back the same.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthKey(pub [u8; 32]);

impl AuthKey {
    /// A fresh key from the operating system's generator.
    pub fn random() -> AuthKey {
        use rand::Rng;
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        AuthKey(std::array::from_fn(|_| {
            ALPHABET[rng.random_range(0..ALPHABET.len())]
        }))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// A different key of the same length, for the wrong-key variant.
    pub fn wrong(&self) -> AuthKey {
        let mut k = self.0;
        k[0] = if k[0] == b'x' { b'y' } else { b'x' };
        AuthKey(k)
    }
}

// Reports and logs print configs; the key itself only goes into reproducer files.
impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl Serialize for AuthKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(&self.0))
    }
}

impl<'de> Deserialize<'de> for AuthKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AuthKey, D::Error> {
        let s = String::deserialize(d)?;
        let bytes: [u8; 32] = s
            .as_bytes()
            .try_into()
            .map_err(|_| serde::de::Error::custom("an auth key is 32 bytes"))?;
        Ok(AuthKey(bytes))
    }
}

/// What one auth connection tries, chosen by connection index so every variant is
/// exercised in every fault profile and a reproducer (which keeps `conn`) repeats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthVariant {
    /// The right digest in one write; must be accepted, then the inner echo is judged.
    RightKey,
    /// The right digest written one byte at a time; must be accepted likewise.
    SplitDigest,
    /// A digest made with another key; must get verdict 0 and a close.
    WrongKey,
    /// The digest accepted on an earlier connection, sent again on a fresh one (whose
    /// nonce differs); must get verdict 0 and a close.
    Replayed,
}

impl AuthVariant {
    pub fn for_conn(conn: u64) -> AuthVariant {
        match conn % 4 {
            0 => AuthVariant::RightKey,
            1 => AuthVariant::SplitDigest,
            2 => AuthVariant::WrongKey,
            _ => AuthVariant::Replayed,
        }
    }

    /// Whether the server must accept, so the inner traffic is driven.
    pub fn accepted(self) -> bool {
        matches!(self, AuthVariant::RightKey | AuthVariant::SplitDigest)
    }
}

/// Connects through the target.
async fn connect(target: &Target, timing: &Timing) -> Result<Conn, Failure> {
    target
        .connect(timing.connect)
        .await
        .map_err(|e| Failure::new(FailureClass::Refused, None, format!("cannot connect: {e}")))
}

/// The right digest in one write, by the servers crate's own client.
async fn accepted(target: &Target, key: AuthKey, timing: &Timing) -> Result<Conn, Failure> {
    let mut sock = connect(target, timing).await?;
    let handshake = server::client_handshake(&mut sock, key.bytes());
    // Three steps (nonce, digest, verdict), each allowed the reply timeout.
    match tokio::time::timeout(timing.reply_timeout * 3, handshake).await {
        Ok(Ok(true)) => Ok(sock),
        Ok(Ok(false)) => Err(Failure::new(
            FailureClass::AuthRejected,
            None,
            "the right digest was rejected",
        )),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(Failure::new(
            FailureClass::MalformedReply,
            None,
            e.to_string(),
        )),
        Ok(Err(e)) => Err(Failure::new(
            FailureClass::Lost,
            None,
            format!("the connection ended during the handshake: {e}"),
        )),
        Err(_) => Err(Failure::new(
            FailureClass::Hang,
            None,
            format!("no handshake within {:?}", timing.reply_timeout * 3),
        )),
    }
}

/// The right digest written one byte at a time.
async fn split(target: &Target, key: AuthKey, timing: &Timing) -> Result<Conn, Failure> {
    let (mut sock, nonce) = nonce(target, timing).await?;
    send_digest(
        &mut sock,
        &server::digest(key.bytes(), &nonce),
        true,
        timing,
    )
    .await?;
    match read_verdict(&mut sock, timing).await? {
        ACCEPTED => Ok(sock),
        REJECTED => Err(Failure::new(
            FailureClass::AuthRejected,
            None,
            "the right digest, written one byte at a time, was rejected",
        )),
        other => Err(Failure::new(
            FailureClass::MalformedReply,
            None,
            format!("auth verdict byte {other}, expected 0 or 1"),
        )),
    }
}

/// Reads exactly `buf.len()` bytes within the reply timeout; `what` names them in failures.
async fn read_within(
    sock: &mut Conn,
    buf: &mut [u8],
    timing: &Timing,
    what: &str,
) -> Result<(), Failure> {
    match tokio::time::timeout(timing.reply_timeout, sock.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Failure::new(
            FailureClass::Lost,
            None,
            format!("the connection ended before the {what}: {e}"),
        )),
        Err(_) => Err(Failure::new(
            FailureClass::Hang,
            None,
            format!("no {what} within {:?}", timing.reply_timeout),
        )),
    }
}

/// Sends a digest: in one write, or one byte per write with a pause between.
async fn send_digest(
    sock: &mut Conn,
    digest: &[u8],
    split: bool,
    timing: &Timing,
) -> Result<(), Failure> {
    let send = async {
        if split {
            for b in digest {
                sock.write_all(std::slice::from_ref(b)).await?;
                tokio::time::sleep(SPLIT_PAUSE).await;
            }
            Ok(())
        } else {
            sock.write_all(digest).await
        }
    };
    match tokio::time::timeout(timing.reply_timeout, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::new(
            FailureClass::Lost,
            None,
            format!("the server closed while the digest was sent: {e}"),
        )),
        Err(_) => Err(Failure::new(
            FailureClass::Hang,
            None,
            "the server stopped reading the digest",
        )),
    }
}

/// Connects and reads the server's nonce.
async fn nonce(target: &Target, timing: &Timing) -> Result<(Conn, [u8; NONCE_LEN]), Failure> {
    let mut sock = connect(target, timing).await?;
    let mut nonce = [0u8; NONCE_LEN];
    read_within(&mut sock, &mut nonce, timing, "auth nonce").await?;
    Ok((sock, nonce))
}

async fn read_verdict(sock: &mut Conn, timing: &Timing) -> Result<u8, Failure> {
    let mut verdict = [0u8; 1];
    read_within(sock, &mut verdict, timing, "auth verdict").await?;
    Ok(verdict[0])
}

/// A connection that must be rejected (wrong key, or a digest replayed from an earlier
/// connection): verdict 0, then a close, and nothing of the inner protocol even if the
/// client sends `inner` anyway.
async fn rejected(
    target: &Target,
    key: AuthKey,
    variant: AuthVariant,
    inner: &[u8],
    timing: &Timing,
) -> Result<(), Failure> {
    let (mut sock, nonce) = nonce(target, timing).await?;
    let (digest, what) = if variant == AuthVariant::Replayed {
        // The earlier connection: authenticate properly, remember the digest.
        let first = server::digest(key.bytes(), &nonce);
        send_digest(&mut sock, &first, false, timing).await?;
        match read_verdict(&mut sock, timing).await? {
            ACCEPTED => {}
            v => {
                return Err(Failure::new(
                    FailureClass::AuthRejected,
                    None,
                    format!("the right digest got verdict {v} (before the replay)"),
                ))
            }
        }
        drop(sock);
        let (again, fresh) = self::nonce(target, timing).await?;
        if fresh == nonce {
            return Err(Failure::new(
                FailureClass::AuthBypass,
                None,
                "a fresh connection got the same nonce as the previous one",
            ));
        }
        sock = again;
        (first, "a digest replayed from an earlier connection")
    } else {
        (
            server::digest(key.wrong().bytes(), &nonce),
            "a digest made with the wrong key",
        )
    };
    send_digest(&mut sock, &digest, false, timing).await?;
    match read_verdict(&mut sock, timing).await? {
        REJECTED => {}
        ACCEPTED => {
            return Err(Failure::new(
                FailureClass::AuthBypass,
                None,
                format!("{what} was accepted"),
            ))
        }
        other => {
            return Err(Failure::new(
                FailureClass::MalformedReply,
                None,
                format!("auth verdict byte {other}, expected 0"),
            ))
        }
    }
    // Rejected: it must close, and must not serve what we send regardless. Errors
    // writing are expected (the server may be gone already).
    let _ = tokio::time::timeout(timing.reply_timeout, sock.write_all(inner)).await;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(timing.reply_timeout, sock.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(Failure::new(
            FailureClass::AuthBypass,
            None,
            format!(
                "after rejecting {what} the server still sent {}",
                preview(&buf[..n])
            ),
        )),
        Err(_) => Err(Failure::new(
            FailureClass::Hang,
            None,
            format!(
                "after rejecting {what} the server kept the connection open for {:?}",
                timing.reply_timeout
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_keys_serialise_and_variants_cycle() {
        let k = AuthKey::random();
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<AuthKey>(&json).unwrap(), k);
        assert_ne!(k.wrong(), k);
        assert!(!format!("{k:?}").contains(&String::from_utf8_lossy(&k.0).to_string()));
        let v: Vec<_> = (0..4).map(AuthVariant::for_conn).collect();
        assert_eq!(v.iter().filter(|v| v.accepted()).count(), 2);
    }
}
