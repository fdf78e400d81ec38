//! Property tests of the frame codec: round trips, chunking independence, resync over garbage,
//! and corruption never delivered.

use proptest::prelude::*;
use vmux::codec::{Decoder, RawFrame};
use vmux::wire::{emit_frame, Flags, Kind};

/// A frame as the property tests build it.
#[derive(Debug, Clone)]
struct Spec {
    kind: Kind,
    flags: Flags,
    stream: u32,
    payload: Vec<u8>,
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Hello),
        Just(Kind::Open),
        Just(Kind::OpenOk),
        Just(Kind::OpenErr),
        Just(Kind::Data),
        Just(Kind::Credit),
        Just(Kind::Close),
        Just(Kind::Reset),
        Just(Kind::Ping),
        Just(Kind::Pong),
        Just(Kind::GoAway),
    ]
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        kind_strategy(),
        any::<bool>(),
        1u32..,
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(kind, flag, stream, payload)| {
            let flags = if flag {
                kind.allowed_flags()
            } else {
                Flags::empty()
            };
            let stream = if kind.is_session_level() { 0 } else { stream };
            Spec {
                kind,
                flags,
                stream,
                payload,
            }
        })
}

fn encode(spec: &Spec, crc: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let trailer = crc || spec.kind == Kind::Hello;
    emit_frame(
        &mut out,
        spec.kind,
        spec.flags,
        spec.stream,
        &spec.payload,
        trailer,
    );
    out
}

fn expected(spec: &Spec) -> RawFrame {
    RawFrame {
        kind: spec.kind as u8,
        flags: spec.flags.bits(),
        stream: spec.stream,
        seq: 0,
        payload: spec.payload.clone(),
    }
}

fn decode_chunks(decoder: &mut Decoder, bytes: &[u8], cuts: &[usize]) -> Vec<RawFrame> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.push(bytes.len());
    for end in points {
        if end < start {
            continue;
        }
        let mut input = &bytes[start..end];
        while let Some(r) = decoder.decode(&mut input) {
            frames.push(r.expect("no fatal error on well-formed input"));
        }
        assert!(input.is_empty());
        start = end;
    }
    frames
}

fn decoder(crc: bool) -> Decoder {
    let mut d = Decoder::new(64 << 10);
    d.set_payload_crc(crc);
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn emit_then_decode_round_trips(spec in spec_strategy(), crc in any::<bool>()) {
        let bytes = encode(&spec, crc);
        let frames = decode_chunks(&mut decoder(crc), &bytes, &[]);
        prop_assert_eq!(frames, vec![expected(&spec)]);
    }

    #[test]
    fn output_does_not_depend_on_chunking(
        specs in proptest::collection::vec(spec_strategy(), 1..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        crc in any::<bool>(),
    ) {
        let bytes: Vec<u8> = specs.iter().flat_map(|s| encode(s, crc)).collect();
        let whole = decode_chunks(&mut decoder(crc), &bytes, &[]);
        let chunked = decode_chunks(&mut decoder(crc), &bytes, &cuts);
        let want: Vec<RawFrame> = specs.iter().map(expected).collect();
        prop_assert_eq!(&whole, &want);
        prop_assert_eq!(&chunked, &want);
    }

    #[test]
    fn garbage_between_frames_is_skipped_and_every_frame_arrives(
        specs in proptest::collection::vec(spec_strategy(), 1..10),
        garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 10),
        magic_bias in proptest::collection::vec(any::<bool>(), 10),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
        crc in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let mut g = garbage[i % garbage.len()].clone();
            if magic_bias[i % magic_bias.len()] && g.len() > 3 {
                // Garbage that looks like a frame start is the hard case.
                g[1] = 0xF7;
                g[2] = 0x4D;
            }
            bytes.extend(g);
            bytes.extend(encode(spec, crc));
        }
        let mut d = decoder(crc);
        let frames = decode_chunks(&mut d, &bytes, &cuts);
        let want: Vec<RawFrame> = specs.iter().map(expected).collect();
        prop_assert_eq!(frames, want);
    }

    #[test]
    fn a_flipped_bit_is_never_delivered(
        specs in proptest::collection::vec(spec_strategy(), 2..8),
        victim in any::<prop::sample::Index>(),
        bit in any::<prop::sample::Index>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        // With payload CRCs on (serial links), corrupting any bit of one frame loses exactly
        // that frame; every other frame still arrives intact.
        let encoded: Vec<Vec<u8>> = specs.iter().map(|s| encode(s, true)).collect();
        let v = victim.index(encoded.len());
        let mut bytes = Vec::new();
        for (i, frame) in encoded.iter().enumerate() {
            let mut frame = frame.clone();
            if i == v {
                let b = bit.index(frame.len() * 8);
                frame[b / 8] ^= 1 << (b % 8);
            }
            bytes.extend(frame);
        }
        let mut d = decoder(true);
        let frames = decode_chunks(&mut d, &bytes, &cuts);
        let want: Vec<RawFrame> =
            specs.iter().enumerate().filter(|(i, _)| *i != v).map(|(_, s)| expected(s)).collect();
        prop_assert_eq!(frames, want);
        // A flip in the magic is a lost frame start; anywhere else a CRC catches it.
        prop_assert!(d.stats().resyncs >= 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_hold_at_most_one_frame(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut d = Decoder::new(1024);
        let mut start = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.push(bytes.len());
        for end in points {
            if end < start { continue; }
            let mut input = &bytes[start..end];
            while let Some(r) = d.decode(&mut input) {
                if r.is_err() { break; }
            }
            prop_assert!(d.buffered() <= 20 + 1024 + 4);
            start = end;
        }
    }
}
