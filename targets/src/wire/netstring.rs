//! Netstrings (D. J. Bernstein, 1997): a decimal length, a colon, the payload, a comma.
//!
//! ```text
//! +--------------------------+-----+--------------------+-----+
//! | length: ASCII decimal    | ':' | payload (length B) | ',' |
//! | no sign, no leading zero |     |                    |     |
//! +--------------------------+-----+--------------------+-----+
//!   "5:hello,"   "0:,"
//! ```
//!
//! As in the spec, leading zeros are refused (`05:` is not `5:`), and so is anything
//! but digits before the colon. The length is checked against `max` digit by digit, so
//! a peer announcing more is refused before the colon arrives and before anything is
//! reserved for the body; the digits are thereby at most as many as `max` has. A
//! frame whose payload is not followed by `,` is [`WireError::MissingTerminator`]; EOF
//! anywhere inside a frame, the comma included, is [`WireError::Truncated`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::WireError;

/// Decimal digits of `n`.
pub fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// What the netstring header at the front of a buffer says so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Digits and colon are whole: `len` payload bytes follow the `header` bytes
    /// (digits plus colon), then the comma.
    Done { header: usize, len: usize },
    /// Only digits so far.
    Partial,
}

/// Reads the netstring header at the front of `src` (which may hold only part of it),
/// checking the length against `max` as each digit arrives. Shared by the codec and
/// the scanner.
pub fn read_header(src: &[u8], max: usize) -> Result<Header, WireError> {
    let mut value: u64 = 0;
    for (i, &b) in src.iter().enumerate() {
        match b {
            b':' if i == 0 => {
                return Err(WireError::MalformedLength("netstring has no length digits"))
            }
            b':' => {
                return Ok(Header::Done {
                    header: i + 1,
                    len: value as usize,
                })
            }
            b'0'..=b'9' => {
                if i == 1 && src[0] == b'0' {
                    return Err(WireError::MalformedLength(
                        "netstring length has a leading zero",
                    ));
                }
                // value <= max < 2^32 before this digit: no overflow.
                value = value * 10 + u64::from(b - b'0');
                if value > max as u64 {
                    return Err(WireError::FrameTooLarge { len: value, max });
                }
            }
            _ => {
                return Err(WireError::MalformedLength(
                    "netstring length is not decimal digits followed by `:`",
                ))
            }
        }
    }
    Ok(Header::Partial)
}

/// Codec for `netstring` framing. Decodes to the payload only.
#[derive(Debug)]
pub struct NetstringCodec {
    max: usize,
    /// Header bytes and payload length of the frame whose header has been consumed.
    pending: Option<(usize, usize)>,
}

impl NetstringCodec {
    pub fn new(max: usize) -> Self {
        NetstringCodec { max, pending: None }
    }
}

impl Decoder for NetstringCodec {
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        let len = match self.pending {
            Some((_, len)) => len,
            None => match read_header(src, self.max)? {
                Header::Partial => return Ok(None),
                Header::Done { header, len } => {
                    src.advance(header);
                    src.reserve((len + 1).saturating_sub(src.len()));
                    self.pending = Some((header, len));
                    len
                }
            },
        };
        // The comma decides the frame: without it the payload is not whole yet.
        if src.len() <= len {
            return Ok(None);
        }
        if src[len] != b',' {
            return Err(WireError::MissingTerminator { found: src[len] });
        }
        self.pending = None;
        let payload = src.split_to(len).freeze();
        src.advance(1);
        Ok(Some(payload))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if self.pending.is_none() && src.is_empty() => Ok(None),
            None => Err(WireError::Truncated {
                received: src.len() + self.pending.map_or(0, |(header, _)| header),
            }),
        }
    }
}

impl Encoder<&[u8]> for NetstringCodec {
    type Error = WireError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), WireError> {
        if payload.len() > self.max {
            return Err(WireError::FrameTooLarge {
                len: payload.len() as u64,
                max: self.max,
            });
        }
        let len = payload.len().to_string();
        dst.reserve(len.len() + payload.len() + 2);
        dst.put_slice(len.as_bytes());
        dst.put_u8(b':');
        dst.put_slice(payload);
        dst.put_u8(b',');
        Ok(())
    }
}

impl Encoder<Bytes> for NetstringCodec {
    type Error = WireError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(payload.as_ref(), dst)
    }
}
