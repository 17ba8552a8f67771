//! Codec tests named after the stream each one feeds the decoder.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::*;

const SPECS: &[&str] = &[
    "u8",
    "u16be",
    "u16le",
    "u32be",
    "u32le",
    "u64be",
    "u64le",
    "i32le",
    "i32be",
    "u16be,offset=3,adjust=-2",
    "u32le,adjust=-4",
    "line",
    "hjson",
    "varint",
    "netstring",
];

fn payloads() -> Vec<Vec<u8>> {
    [0usize, 1, 2, 3, 4, 5, 8, 9, 200, 255]
        .iter()
        .map(|&n| (0..n).map(|i| b'a' + (i % 26) as u8).collect())
        .collect()
}

/// Decodes `stream` fed in `chunk`-byte pieces, then signals EOF.
fn decode_chunked(framing: &Framing, stream: &[u8], chunk: usize) -> Result<Vec<Bytes>, WireError> {
    let mut codec = framing.codec();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(frame) = codec.decode(&mut buf)? {
            out.push(frame);
        }
    }
    while let Some(frame) = codec.decode_eof(&mut buf)? {
        out.push(frame);
    }
    Ok(out)
}

#[test]
fn round_trip_every_framing_whatever_the_chunking() {
    for spec in SPECS {
        let framing: Framing = spec.parse().unwrap();
        let msgs = payloads();
        let (stream, layouts) = framing.encode_all(&msgs).unwrap();
        assert_eq!(layouts.len(), msgs.len());
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let got = decode_chunked(&framing, &stream, chunk).unwrap();
            assert_eq!(got, msgs, "{spec}, chunk {chunk}");
        }
    }
}

#[test]
fn layouts_locate_length_field_and_body() {
    for spec in SPECS {
        let framing: Framing = spec.parse().unwrap();
        let msgs = payloads();
        let (stream, layouts) = framing.encode_all(&msgs).unwrap();
        let mut expected_start = 0;
        for (msg, l) in msgs.iter().zip(&layouts) {
            assert_eq!(l.start, expected_start, "{spec}: frames are contiguous");
            assert_eq!(&stream[l.body.clone()], &msg[..], "{spec}");
            assert!(
                l.start <= l.length_field.start
                    && l.length_field.end <= l.body.start
                    && l.body.end <= l.end
            );
            let width = match framing {
                Framing::Length(ls) => ls.width,
                Framing::Line { .. } | Framing::Raw { .. } => 0,
                Framing::Hjson { .. } => 4,
                Framing::Varint { .. } => varint_len(msg.len() as u64),
                Framing::Netstring { .. } => msg.len().to_string().len(),
            };
            assert_eq!(l.length_field.len(), width, "{spec}");
            expected_start = l.end;
        }
        assert_eq!(expected_start, stream.len());
    }
}

#[test]
fn eof_at_every_offset_inside_a_frame_is_truncated() {
    for spec in SPECS {
        let framing: Framing = spec.parse().unwrap();
        for msg in payloads() {
            let (stream, _) = framing.encode_all(&[&msg]).unwrap();
            for cut in 1..stream.len() {
                // Both a one-shot buffer and byte-by-byte delivery must fail the same way.
                for chunk in [1, cut] {
                    match decode_chunked(&framing, &stream[..cut], chunk) {
                        Err(WireError::Truncated { .. }) => {}
                        other => panic!("{spec}, {}-byte frame cut at {cut}: {other:?}", msg.len()),
                    }
                }
            }
            assert_eq!(
                decode_chunked(&framing, &[], 1).unwrap(),
                Vec::<Bytes>::new()
            );
        }
    }
}

#[test]
fn eof_right_after_complete_header_is_not_a_clean_end() {
    // The inner LengthDelimitedCodec consumes the header and would report a clean EOF.
    let framing: Framing = "u32be".parse().unwrap();
    let mut codec = framing.codec();
    let mut buf = BytesMut::from(&[0, 0, 0, 5][..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.is_empty(), "header consumed");
    assert!(matches!(
        codec.decode_eof(&mut buf),
        Err(WireError::Truncated { received: 4 })
    ));
}

#[test]
fn read_partial_then_not_ready() {
    let framing: Framing = "u32be".parse().unwrap();
    let mut codec = framing.codec();
    let mut buf = BytesMut::from(&[0, 0, 0, 3, b'a'][..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(b"bc\x00\x00");
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"abc"[..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
}

#[test]
fn huge_length_is_rejected_before_any_allocation() {
    for (spec, header) in [
        ("u32be", vec![0xff, 0xff, 0xff, 0xff]),
        ("u32le", vec![0xff, 0xff, 0xff, 0xff]),
        ("u64be", vec![0x80, 0, 0, 0, 0, 0, 0, 0]), // 2^63
        ("u64le", vec![0xff; 8]),
    ] {
        let mut codec = spec.parse::<Framing>().unwrap().codec();
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&header);
        assert!(
            matches!(codec.decode(&mut buf), Err(WireError::FrameTooLarge { .. })),
            "{spec}"
        );
        assert!(buf.capacity() < 1024, "{spec}: reserved {}", buf.capacity());
    }
}

#[test]
fn negative_signed_length_is_its_own_error() {
    for (spec, header) in [
        ("i32le", (-1i32).to_le_bytes()),
        ("i32be", (-1i32).to_be_bytes()),
        ("i32le", i32::MIN.to_le_bytes()),
        ("i32le", 0xFFFF_FFFFu32.to_le_bytes()),
    ] {
        let mut codec = spec.parse::<Framing>().unwrap().codec();
        let mut buf = BytesMut::from(&header[..]);
        assert!(
            matches!(codec.decode(&mut buf), Err(WireError::NegativeLength(n)) if n < 0),
            "{spec}"
        );
    }
}

#[test]
fn i32le_matches_python_struct_pack_i() {
    // struct.pack('i', 5) on x86-64 == b'\x05\x00\x00\x00'
    let mut dst = BytesMut::new();
    "i32le"
        .parse::<Framing>()
        .unwrap()
        .codec()
        .encode(&b"hello"[..], &mut dst)
        .unwrap();
    assert_eq!(&dst[..], b"\x05\x00\x00\x00hello");
}

#[test]
fn exactly_max_passes_and_max_plus_one_fails_both_ways() {
    for spec in [
        "u32be,max=100",
        "u16le,offset=2,adjust=-2,max=100",
        "line,max=100",
        "hjson,max=100",
        "varint,max=100",
        "netstring,max=100",
    ] {
        let framing: Framing = spec.parse().unwrap();
        let ok = vec![b'x'; 100];
        let (stream, _) = framing.encode_all(&[&ok]).unwrap();
        assert_eq!(
            decode_chunked(&framing, &stream, 7).unwrap(),
            vec![Bytes::from(ok)]
        );
        let big = vec![b'x'; 101];
        assert!(
            framing.encode_all(&[&big]).is_err(),
            "{spec}: encoder refuses"
        );
        // A permissive encoder, then the bounded decoder.
        let loose: Framing = spec.replace("max=100", "max=1000").parse().unwrap();
        let (stream, _) = loose.encode_all(&[&big]).unwrap();
        assert!(
            matches!(
                decode_chunked(&framing, &stream, 7),
                Err(WireError::FrameTooLarge { .. } | WireError::LineTooLong { .. })
            ),
            "{spec}: decoder refuses"
        );
    }
}

#[test]
fn adjust_counts_the_length_field_itself() {
    // A protocol whose length field includes its own 4 bytes.
    let framing: Framing = "u32be,adjust=-4".parse().unwrap();
    let (stream, _) = framing.encode_all(&[b"ab"]).unwrap();
    assert_eq!(&stream[..], b"\x00\x00\x00\x06ab");
    let mut codec = framing.codec();
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x02"[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::LengthUnderflow { .. })
    ));
    // A positive adjust means payloads shorter than it cannot be described.
    let short: Framing = "u32be,adjust=4".parse().unwrap();
    assert!(matches!(
        short.encode_all(&[b"abc"]),
        Err(WireError::TooShortForAdjust { len: 3, adjust: 4 })
    ));
    assert_eq!(
        &short.encode_all(&[b"abcde"]).unwrap().0[..],
        b"\x00\x00\x00\x01abcde"
    );
    // So negative that no payload fits the field: refused, not encoded with a
    // truncated field (found by the frame_roundtrip fuzz target).
    assert!("u8,adjust=-256".parse::<Framing>().is_err());
    assert!("i32le,adjust=-2147483648".parse::<Framing>().is_err());
    let tight: Framing = "u8,adjust=-255".parse().unwrap();
    assert_eq!(tight.max(), 0);
    assert_eq!(&tight.encode_all(&[b""]).unwrap().0[..], b"\xff");
}

/// A memcached binary-protocol `get` request for key `k`: magic, opcode, key length,
/// extras length, data type, vbucket (the 8 bytes before the length field), total body
/// length, opaque, CAS, then the key.
fn memcached_get(key: &[u8], opaque: u32) -> Vec<u8> {
    let mut frame = vec![0x80, 0x00];
    frame.extend_from_slice(&(key.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&(key.len() as u32).to_be_bytes());
    frame.extend_from_slice(&opaque.to_be_bytes());
    frame.extend_from_slice(&[0; 8]);
    frame.extend_from_slice(key);
    frame
}

const MEMCACHED: &str = "u32be,offset=8,adjust=12,keep";

#[test]
fn keep_decodes_a_memcached_request_to_the_whole_frame_whatever_the_chunking() {
    let framing: Framing = MEMCACHED.parse().unwrap();
    let frames = [
        memcached_get(b"k0", 7),
        memcached_get(b"", 8),
        memcached_get(&[b'x'; 300], 9),
    ];
    let (stream, _) = framing.encode_all(&frames).unwrap();
    assert_eq!(
        &stream[..],
        &frames.concat()[..],
        "a consistent frame is sent as it is"
    );
    for chunk in [1, 2, 3, 7, 11, 12, 13, 24, 64, stream.len()] {
        assert_eq!(
            decode_chunked(&framing, &stream, chunk).unwrap(),
            frames,
            "chunk {chunk}"
        );
    }
    // Without `keep`, the same stream decodes to the bodies: the 8 header bytes are lost.
    let plain: Framing = "u32be,offset=8,adjust=12".parse().unwrap();
    assert_eq!(
        decode_chunked(&plain, &stream, 5).unwrap()[0],
        frames[0][12..]
    );
}

#[test]
fn keep_rewrites_the_length_field_from_the_payload_and_keeps_the_offset_bytes() {
    let framing: Framing = MEMCACHED.parse().unwrap();
    let mut stale = memcached_get(b"key", 1);
    stale[8..12].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let (stream, layouts) = framing.encode_all(&[&stale]).unwrap();
    assert_eq!(
        &stream[..8],
        &stale[..8],
        "opcode, key length... go out as recorded"
    );
    assert_eq!(
        &stream[8..12],
        &[0, 0, 0, 3],
        "the length field says the key's 3 bytes"
    );
    assert_eq!(&stream[12..], &stale[12..]);
    let l = &layouts[0];
    assert_eq!(
        (l.start, l.length_field.clone(), l.body.clone(), l.end),
        (0, 8..12, 12..27, 27)
    );
    // What decodes is what the next encode sends: the round trip is a fixed point.
    let decoded = decode_chunked(&framing, &stream, 4).unwrap();
    assert_eq!(framing.encode_all(&decoded).unwrap().0, stream);
}

#[test]
fn keep_layouts_find_the_header_inside_the_payload_for_frame_aware_cuts() {
    for spec in [
        "u16be,keep",
        "u32le,adjust=-4,keep",
        "u8,offset=3,keep",
        MEMCACHED,
    ] {
        let framing: Framing = spec.parse().unwrap();
        let header = framing.kept_header_len();
        let body_min = match framing {
            Framing::Length(l) => l.adjust.max(0) as usize,
            _ => unreachable!(),
        };
        let msgs: Vec<Vec<u8>> = [0usize, 1, 5, 200]
            .iter()
            .map(|n| (0..header + body_min + n).map(|i| i as u8).collect())
            .collect();
        let (stream, layouts) = framing.encode_all(&msgs).unwrap();
        let mut scanner = FrameScanner::new(framing);
        let mut found = Vec::new();
        scanner.feed(&stream, &mut found).unwrap();
        for ((msg, l), f) in msgs.iter().zip(&layouts).zip(&found) {
            assert_eq!(l.header().len(), header, "{spec}");
            assert_eq!(l.len(), msg.len(), "{spec}: the frame is the payload");
            assert_eq!(&stream[l.body.clone()], &msg[header..], "{spec}");
            assert_eq!(f.clip(0..stream.len() as u64).as_ref(), Some(l), "{spec}");
        }
    }
}

#[test]
fn keep_refuses_a_payload_shorter_than_its_header() {
    let framing: Framing = MEMCACHED.parse().unwrap();
    assert!(matches!(
        framing.encode_all(&[&[0x80u8; 11][..]]),
        Err(WireError::ShorterThanHeader {
            len: 11,
            header: 12
        })
    ));
    // `adjust` and `max` still bound the part after the header.
    assert!(matches!(
        framing.encode_all(&[&[0u8; 12 + 11][..]]),
        Err(WireError::TooShortForAdjust {
            len: 11,
            adjust: 12
        })
    ));
    let small: Framing = "u8,keep,max=4".parse().unwrap();
    assert!(small.encode_all(&[b"\0abcd"]).is_ok());
    assert!(matches!(
        small.encode_all(&[b"\0abcde"]),
        Err(WireError::FrameTooLarge { len: 5, max: 4 })
    ));
}

#[test]
fn keep_eof_inside_a_frame_is_truncated_with_every_byte_counted() {
    let framing: Framing = MEMCACHED.parse().unwrap();
    let (stream, _) = framing.encode_all(&[memcached_get(b"abc", 1)]).unwrap();
    for cut in 1..stream.len() {
        for chunk in [1, cut] {
            match decode_chunked(&framing, &stream[..cut], chunk) {
                Err(WireError::Truncated { received }) => assert_eq!(received, cut),
                other => panic!("cut at {cut}, chunk {chunk}: {other:?}"),
            }
        }
    }
}

#[test]
fn negative_adjust_decodes_up_to_max() {
    // tokio-util clamps its raw-field check to field max + adjust (found by frame_roundtrip).
    for spec in ["u8,adjust=-1", "u8,adjust=-253", "u16le,adjust=-2"] {
        let framing: Framing = spec.parse().unwrap();
        let msgs = [vec![7u8; framing.max()], vec![]];
        let (stream, _) = framing.encode_all(&msgs).unwrap();
        for chunk in [1, stream.len()] {
            let got = decode_chunked(&framing, &stream, chunk).unwrap();
            assert_eq!(got, msgs, "{spec}, chunk {chunk}");
        }
    }
}

#[test]
fn overlong_line_fails_without_waiting_for_newline() {
    let mut codec = "line,max=8".parse::<Framing>().unwrap().codec();
    let mut buf = BytesMut::from(&[b'x'; 64][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::LineTooLong { max: 8 })
    ));
    let mut enc = BytesMut::new();
    assert!(matches!(
        codec.encode(&b"a\nb"[..], &mut enc),
        Err(WireError::NewlineInPayload)
    ));
}

fn hjson_raw(header: &[u8], body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(header.len() as u32);
    buf.put_slice(header);
    buf.put_slice(body);
    buf
}

#[test]
fn hjson_bad_headers_are_typed() {
    for header in [
        &b"{not json"[..],
        b"[1,2]",
        b"\"size\"",
        b"{}",
        b"{\"size\":-1}",
        b"{\"size\":1.5}",
        b"{\"size\":\"3\"}",
        b"\xff\xfe",
    ] {
        let mut codec = HjsonCodec::new(1024);
        let mut buf = hjson_raw(header, b"abc");
        assert!(
            matches!(codec.decode(&mut buf), Err(WireError::BadHeader(_))),
            "{}",
            String::from_utf8_lossy(header)
        );
    }
    let mut codec = HjsonCodec::new(1024);
    let mut buf = hjson_raw(b"{\"size\":1025}", b"");
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::FrameTooLarge { len: 1025, .. })
    ));
    // A 1 MiB header is refused from its length prefix alone.
    let mut buf = BytesMut::from(&(1u32 << 20).to_be_bytes()[..]);
    assert!(matches!(
        HjsonCodec::new(1024).decode(&mut buf),
        Err(WireError::HeaderTooLarge { .. })
    ));
}

#[test]
fn hjson_keeps_header_fields_and_sets_size() {
    let mut codec = HjsonCodec::new(1024);
    let mut buf = BytesMut::new();
    let frame = HjsonFrame::new(serde_json::json!({"op": "put", "name": "a"}), &b"xyz"[..]);
    codec.encode(frame.clone(), &mut buf).unwrap();
    let got = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(got.body, frame.body);
    assert_eq!(got.header["op"], "put");
    assert_eq!(got.header["size"], 3);
}

#[test]
fn varint_prefix_is_leb128_low_group_first() {
    let framing: Framing = "varint".parse().unwrap();
    for (len, prefix) in [
        (0usize, &[0u8][..]),
        (1, &[1]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (300, &[0xac, 0x02]),
        (16_384, &[0x80, 0x80, 0x01]),
    ] {
        let (stream, layouts) = framing.encode_all(&[vec![b'x'; len]]).unwrap();
        assert_eq!(&stream[..prefix.len()], prefix, "{len}");
        assert_eq!(layouts[0].length_field, 0..prefix.len());
        assert_eq!(layouts[0].body, prefix.len()..prefix.len() + len);
    }
}

#[test]
fn varint_refuses_an_announced_length_over_max_from_the_first_byte_that_says_so() {
    let mut codec = "varint,max=1000".parse::<Framing>().unwrap().codec();
    // 0xff = 127 so far and more to come: could still be <= 1000, so wait.
    let mut buf = BytesMut::from(&[0xff][..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    // 127 + 127 * 128 > 1000: refused before the prefix is even complete.
    buf.extend_from_slice(&[0x7f]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::FrameTooLarge { max: 1000, .. })
    ));
    // A 10-byte varint for 2^63 is refused without any reservation.
    let mut codec = "varint".parse::<Framing>().unwrap().codec();
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    assert!(codec.decode(&mut buf).is_err());
    assert!(buf.capacity() < 1024);
}

#[test]
fn varint_zero_padding_and_endless_continuation_are_malformed() {
    for bytes in [&[0x85, 0x00][..], &[0x80; 12][..]] {
        let mut codec = "varint".parse::<Framing>().unwrap().codec();
        let mut buf = BytesMut::from(bytes);
        assert!(
            matches!(codec.decode(&mut buf), Err(WireError::MalformedLength(_))),
            "{bytes:x?}"
        );
    }
}

#[test]
fn netstring_is_djbs_format() {
    let framing: Framing = "netstring".parse().unwrap();
    let (stream, layouts) = framing.encode_all(&[&b"hello"[..], b""]).unwrap();
    assert_eq!(&stream[..], b"5:hello,0:,");
    assert_eq!(
        layouts[0],
        FrameLayout {
            start: 0,
            length_field: 0..1,
            body: 2..7,
            end: 8
        }
    );
    assert_eq!(
        decode_chunked(&framing, b"12:hello world!,", 1).unwrap(),
        vec![Bytes::from_static(b"hello world!")]
    );
}

#[test]
fn netstring_bad_headers_and_trailers_are_typed() {
    for (bytes, kind) in [
        (&b"05:hello,"[..], "malformed_length"),
        (b":x,", "malformed_length"),
        (b"-1:x,", "malformed_length"),
        (b" 1:x,", "malformed_length"),
        (b"1:xy", "bad_trailer"),
        (b"99999999999", "too_large"),
    ] {
        let mut codec = "netstring".parse::<Framing>().unwrap().codec();
        let mut buf = BytesMut::from(bytes);
        let e = codec.decode(&mut buf).unwrap_err();
        assert_eq!(e.kind(), kind, "{}: {e}", String::from_utf8_lossy(bytes));
    }
    // Over max is refused at the digit that passes it, before the colon.
    let mut codec = "netstring,max=99".parse::<Framing>().unwrap().codec();
    let mut buf = BytesMut::from(&b"10"[..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(b"0");
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::FrameTooLarge { len: 100, max: 99 })
    ));
}

#[test]
fn raw_takes_what_is_there_as_one_message_and_ends_cleanly() {
    let framing: Framing = "raw,max=4".parse().unwrap();
    let mut codec = framing.codec();
    let mut buf = BytesMut::from(&b"ls -l"[..]);
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"ls -"[..]);
    assert_eq!(codec.decode_eof(&mut buf).unwrap().unwrap(), &b"l"[..]);
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    let (stream, layouts) = framing.encode_all(&[b"ab"]).unwrap();
    assert_eq!(&stream[..], b"ab");
    assert_eq!(layouts[0].body, 0..2);
    assert!(layouts[0].length_field.is_empty());
}

mod round_trips {
    //! proptest: any payloads, any chunking, through the new variable-length framings.
    use proptest::prelude::*;

    use super::*;

    fn framings() -> impl Strategy<Value = Framing> {
        prop_oneof![
            Just("varint".parse::<Framing>().unwrap()),
            Just("varint,max=200".parse().unwrap()),
            Just("netstring".parse().unwrap()),
            Just("netstring,max=200".parse().unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_the_payloads_back_whatever_the_chunking(
            framing in framings(),
            msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 0..6),
            chunk in 1usize..40,
        ) {
            let msgs: Vec<Vec<u8>> = msgs.into_iter().filter(|m| m.len() <= framing.max()).collect();
            let (stream, layouts) = framing.encode_all(&msgs).unwrap();
            prop_assert_eq!(decode_chunked(&framing, &stream, chunk).unwrap(), msgs.clone());
            // The scanner finds the encoder's layouts.
            let mut scanner = FrameScanner::new(framing);
            let mut found = Vec::new();
            for piece in stream.chunks(chunk) {
                scanner.feed(piece, &mut found).unwrap();
            }
            prop_assert_eq!(found.len(), layouts.len());
            for (f, l) in found.iter().zip(&layouts) {
                prop_assert_eq!(f.clip(0..stream.len() as u64).unwrap(), l.clone());
            }
            // Cut inside any frame: the frames before it, then Truncated.
            if !stream.is_empty() {
                let cut = (chunk * 7919) % stream.len();
                let at_boundary = cut == 0 || layouts.iter().any(|l| l.end == cut);
                let got = decode_chunked(&framing, &stream[..cut], chunk);
                match got {
                    Ok(frames) => prop_assert!(at_boundary, "cut at {} ended cleanly with {} frames", cut, frames.len()),
                    Err(WireError::Truncated { .. }) => prop_assert!(!at_boundary),
                    Err(e) => prop_assert!(false, "cut at {}: {}", cut, e),
                }
            }
        }

        #[test]
        fn keep_round_trips_whole_frames_whatever_the_chunking(
            spec in prop_oneof![
                Just("u32be,offset=8,adjust=12,keep"),
                Just("u16le,keep"),
                Just("u8,offset=2,adjust=-1,keep,max=200"),
                Just("i32be,offset=1,keep"),
            ],
            msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
            chunk in 1usize..40,
        ) {
            let framing: Framing = spec.parse().unwrap();
            let min = framing.kept_header_len() + match framing {
                Framing::Length(l) => l.adjust.max(0) as usize,
                _ => 0,
            };
            let limit = framing.kept_header_len() + framing.max();
            let msgs: Vec<Vec<u8>> = msgs.into_iter().filter(|m| (min..=limit).contains(&m.len())).collect();
            let (stream, layouts) = framing.encode_all(&msgs).unwrap();
            prop_assert_eq!(stream.len(), msgs.iter().map(Vec::len).sum::<usize>());
            let decoded = decode_chunked(&framing, &stream, chunk).unwrap();
            prop_assert_eq!(decoded.len(), msgs.len());
            for ((got, sent), l) in decoded.iter().zip(&msgs).zip(&layouts) {
                // Everything but the length field is the payload's own; the field is rewritten.
                let field = l.length_field.start - l.start..l.length_field.end - l.start;
                prop_assert_eq!(&got[..field.start], &sent[..field.start]);
                prop_assert_eq!(&got[field.end..], &sent[field.end..]);
            }
            // Decoded frames re-encode to the very stream.
            prop_assert_eq!(framing.encode_all(&decoded).unwrap().0, stream);
        }

        #[test]
        fn arbitrary_bytes_never_decode_to_more_than_max(
            framing in framings(),
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let max = framing.max().min(200);
            let framing = framing.with_max(max);
            if let Ok(frames) = decode_chunked(&framing, &bytes, 3) {
                prop_assert!(frames.iter().all(|f| f.len() <= max));
                // A stream that decodes cleanly re-encodes to itself.
                let (again, _) = framing.encode_all(&frames).unwrap();
                prop_assert_eq!(&again[..], &bytes[..]);
            }
        }
    }
}
