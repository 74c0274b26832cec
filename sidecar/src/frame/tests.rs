use super::*;

fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello {
            zone: "eu-west-1a".into(),
            identity: "spiffe://td/mesh/n/client/a".into(),
            listen: "127.0.0.2:7000".into(),
        },
        Frame::Ping { nonce: 7 },
        Frame::Pong { nonce: u64::MAX },
        Frame::RouteUpdate {
            adverts: vec![RouteAdvert {
                dest: "node-3".into(),
                seqno: 42,
                metric: 300,
                hops: 3,
                proof: vec![1; 70],
                cert: vec![2; 500],
            }],
        },
        Frame::RouteUpdate { adverts: vec![] },
        Frame::SeqnoRequest { dest: "node-3".into(), seqno: 43, hops_left: 15 },
        Frame::PeerExchange {
            peers: vec![PeerAddr {
                zone: "eu-west-1b".into(),
                node: "b".into(),
                addr: "127.0.0.3:7000".into(),
            }],
        },
        Frame::CrlAnnounce { number: 9 },
        Frame::CrlRequest { number: 10 },
        Frame::CrlData { der: vec![0x30; 100_000] },
        Frame::Control { origin: "op".into(), envelope: vec![9; 1000] },
        Frame::Data(Data {
            src: "a".into(),
            dst: "b.ns".into(),
            ttl: 16,
            kind: DataKind::StreamData,
            flow: 99,
            payload: vec![5; MAX_DATA_PAYLOAD].into(),
        }),
        Frame::Broadcast(Broadcast {
            src: "a".into(),
            id: 1,
            ttl: 8,
            topic: "orders".into(),
            payload: b"hi".to_vec(),
            cert: vec![0x30; 600],
            sig: vec![7; 72],
        }),
        Frame::Close { reason: "draining".into() },
        Frame::Certificate { der: vec![0x30; 700] },
        Frame::ControlAck(ControlAck {
            origin: "a".into(),
            id: "0123456789abcdef0123456789abcdef".into(),
            node: "b".into(),
            applied: true,
            detail: "operator-manages-the-network".into(),
            ttl: 16,
        }),
    ]
}

#[test]
fn every_frame_type_round_trips_through_any_chunking() {
    let frames = samples();
    let stream: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
    for chunk in [1, 5, 6, 7, 1000, stream.len()] {
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            dec.push(piece);
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames, "chunk size {chunk}");
        assert_eq!(dec.buffered(), 0);
    }
    let types: std::collections::HashSet<_> = frames.iter().map(|f| f.frame_type() as u8).collect();
    assert_eq!(types.len(), FrameType::ALL.len(), "samples cover every frame type");
    for f in &frames {
        assert_eq!(
            f.encoded_len(),
            f.encode().len(),
            "{}: the counted length",
            f.frame_type().as_str()
        );
    }
}

#[test]
fn oversized_frame_is_refused_from_its_header_before_the_body_arrives() {
    let mut dec = FrameDecoder::new();
    let mut header = ((MAX_BODY + 3) as u32).to_be_bytes().to_vec();
    header.extend_from_slice(&[PROTOCOL_VERSION, FrameType::Data as u8]);
    dec.push(&header);
    assert_eq!(
        dec.next_frame(),
        Err(FrameError::TooLarge { kind: "data", len: MAX_BODY + 1, max: MAX_BODY })
    );
    // CRL data may be larger than other frames, but not unbounded.
    let mut dec = FrameDecoder::new();
    let mut header = (u32::MAX).to_be_bytes().to_vec();
    header.extend_from_slice(&[PROTOCOL_VERSION, FrameType::CrlData as u8]);
    dec.push(&header);
    assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { kind: "crl_data", .. })));
}

#[test]
fn wrong_version_unknown_type_and_short_length_are_refused() {
    let good = Frame::Ping { nonce: 1 }.encode();
    // Version 1 (before broadcasts were source-signed) and a future version alike.
    for version in [1, PROTOCOL_VERSION + 1] {
        let mut v = good.clone();
        v[4] = version;
        assert_eq!(decode_one(&v), Err(FrameError::Version(version)));
    }
    let mut t = good.clone();
    t[5] = 200;
    assert_eq!(decode_one(&t), Err(FrameError::UnknownType(200)));
    let mut short = good.clone();
    short[..4].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(decode_one(&short), Err(FrameError::TooShort(1)));
}

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
    let mut dec = FrameDecoder::new();
    dec.push(bytes);
    dec.next_frame()
}

#[test]
fn malformed_bodies_are_refused_with_the_frame_kind_and_reason() {
    // Trailing bytes inside the declared body.
    let mut ping = Frame::Ping { nonce: 1 }.encode();
    ping.push(0);
    let len = (ping.len() - 4) as u32;
    ping[..4].copy_from_slice(&len.to_be_bytes());
    assert!(
        matches!(decode_one(&ping), Err(FrameError::Malformed { kind: "ping", reason }) if reason.contains("trailing"))
    );
    // A truncated field.
    let mut body = vec![PROTOCOL_VERSION, FrameType::Hello as u8, 0, 50, b'x'];
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.append(&mut body);
    assert!(
        matches!(decode_one(&framed), Err(FrameError::Malformed { kind: "hello", reason }) if reason.contains("truncated"))
    );
    // An invalid node name in a data frame.
    let mut d = small_data();
    let pos = HEADER_LEN + 2; // first byte of src
    d[pos] = b'A';
    assert!(
        matches!(decode_one(&d), Err(FrameError::Malformed { kind: "data", reason }) if reason.contains("invalid node name"))
    );
    // An unknown data kind.
    let mut d = small_data();
    d[HEADER_LEN + 3 + 3 + 1] = 77;
    assert!(
        matches!(decode_one(&d), Err(FrameError::Malformed { reason, .. }) if reason.contains("unknown data kind 77"))
    );
    // Too many adverts.
    let mut body = vec![PROTOCOL_VERSION, FrameType::RouteUpdate as u8, (MAX_ADVERTS + 1) as u8];
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.append(&mut body);
    assert!(
        matches!(decode_one(&framed), Err(FrameError::Malformed { reason, .. }) if reason.contains("adverts"))
    );
}

#[test]
fn garbage_never_panics_the_decoder() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds: Vec<Vec<u8>> = samples().iter().map(Frame::encode).collect();
    for i in 0..20_000 {
        let mut bytes = seeds[i % seeds.len()].clone();
        bytes.truncate(bytes.len().min(4096));
        for _ in 0..(next() % 4 + 1) {
            let n = bytes.len().max(1);
            let pos = (next() as usize) % n;
            if let Some(b) = bytes.get_mut(pos) {
                *b = next() as u8;
            }
        }
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        while let Ok(Some(f)) = dec.next_frame() {
            let _ = f.encode();
        }
    }
}

/// A minimal encoded data frame (src "a", dst "b"), for byte-level tampering.
fn small_data() -> Vec<u8> {
    Frame::Data(Data {
        src: "a".into(),
        dst: "b".into(),
        ttl: 1,
        kind: DataKind::StreamClose,
        flow: 0,
        payload: bytes::Bytes::new(),
    })
    .encode()
}

#[test]
fn a_data_frame_in_parts_is_the_same_bytes_and_its_payload_is_never_copied_on_decode() {
    let d = Data {
        src: "a".into(),
        dst: "b.x".into(),
        ttl: 9,
        kind: DataKind::StreamData,
        flow: 77,
        payload: vec![3; 20_000].into(),
    };
    let parts = d.encode_parts();
    assert_eq!([&parts.head[..], &parts.payload[..]].concat(), Frame::Data(d.clone()).encode());
    assert_eq!(parts.payload.as_ptr(), d.payload.as_ptr(), "encoding shares the payload");

    // Two frames read straight into the decoder's buffer, as a link reader does.
    let wire = [Frame::Data(d.clone()).encode(), Frame::Ping { nonce: 5 }.encode()].concat();
    let mut dec = FrameDecoder::new();
    let buf = dec.read_buf(wire.len());
    buf.extend_from_slice(&wire);
    let range = buf.as_ptr_range();
    let Some(Frame::Data(got)) = dec.next_frame().unwrap() else { panic!("a data frame") };
    assert_eq!(got, d);
    assert!(range.contains(&got.payload.as_ptr()), "the payload is a slice of the read buffer");
    assert_eq!(dec.next_frame().unwrap(), Some(Frame::Ping { nonce: 5 }));
    assert_eq!(dec.buffered(), 0);

    // A relay lowers the hop limit and sends the same payload on.
    let relayed = Data { ttl: 8, ..got.clone() }.encode_parts();
    assert_eq!(relayed.payload.as_ptr(), got.payload.as_ptr());
    let mut back = FrameDecoder::new();
    back.push(&relayed.head);
    back.push(&relayed.payload);
    assert_eq!(back.next_frame().unwrap(), Some(Frame::Data(Data { ttl: 8, ..d })));
}

#[test]
fn an_idle_decoder_holds_the_room_it_is_asked_for_not_its_largest_burst() {
    // A busy link asked for a large room; the read came up short and the link went idle: the
    // decoder then holds only the room it is asked for next, not the large buffer.
    let mut dec = FrameDecoder::new();
    dec.read_buf(128 * 1024).extend_from_slice(&Frame::Ping { nonce: 6 }.encode());
    assert_eq!(dec.next_frame().unwrap(), Some(Frame::Ping { nonce: 6 }));
    assert!(dec.read_buf(4096).capacity() < 2 * 4096, "an idle link keeps its burst buffer");
    // A partly read frame is kept, whatever the room.
    let wire = Frame::Ping { nonce: 7 }.encode();
    dec.read_buf(4096).extend_from_slice(&wire[..5]);
    dec.read_buf(16).extend_from_slice(&wire[5..]);
    assert_eq!(dec.next_frame().unwrap(), Some(Frame::Ping { nonce: 7 }));
}
