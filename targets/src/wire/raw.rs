//! `raw`: no framing at all. One write is one message.
//!
//! ```text
//! +-----------------------------------------+
//! | payload: the bytes of one write, as is  |
//! +-----------------------------------------+
//! ```
//!
//! This is what a server that does `recv(4096)` and takes whatever came as one command
//! speaks (the tutorial remote-exec server reads a raw command and answers with an
//! `i32le`-framed output). Such a protocol has no boundaries in the bytes, so nothing
//! decoded from it can be trusted to be one message unless it arrived in one piece:
//! a `raw` side must be written in one write and never cut, and it is only meaningful
//! as one side of a request/reply pair whose other side is framed (`--framing raw
//! --reply-framing i32le`). [`super::Framing::is_raw`] tells the chaos engine so.
//!
//! Decoding takes every byte that is there (up to `max`) as one message; what one
//! `decode` call returns thus depends on how the bytes arrived, unlike every other
//! framing. EOF is always a clean end.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::WireError;

/// Codec for `raw`: whatever is buffered is one message.
#[derive(Debug)]
pub struct RawCodec {
    max: usize,
}

impl RawCodec {
    pub fn new(max: usize) -> Self {
        RawCodec { max }
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        if src.is_empty() {
            return Ok(None);
        }
        if self.max == 0 {
            return Err(WireError::FrameTooLarge {
                len: src.len() as u64,
                max: 0,
            });
        }
        // More than `max` at once is taken `max` bytes at a time: raw has no length to
        // refuse, and what is buffered may be several writes anyway.
        let n = src.len().min(self.max);
        Ok(Some(src.split_to(n).freeze()))
    }
}

impl Encoder<&[u8]> for RawCodec {
    type Error = WireError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), WireError> {
        if payload.len() > self.max {
            return Err(WireError::FrameTooLarge {
                len: payload.len() as u64,
                max: self.max,
            });
        }
        dst.put_slice(payload);
        Ok(())
    }
}

impl Encoder<Bytes> for RawCodec {
    type Error = WireError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(payload.as_ref(), dst)
    }
}
