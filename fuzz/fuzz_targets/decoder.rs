//! The frame decoder and every frame-payload parser on arbitrary bytes in arbitrary chunks.
//! Fuzz builds accept any CRC (`cfg(fuzzing)` in `codec`), so the parsers behind it are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmux::codec::Decoder;
use vmux::wire::{Ack, Credit, ErrorBody, Header, Hello, Kind, Open, OpenOk, PingBody};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(4096);
    decoder.set_payload_crc(control & 1 == 1);
    let chunk = usize::from(control >> 1).max(1);
    for piece in rest.chunks(chunk) {
        let mut input = piece;
        while let Some(result) = decoder.decode(&mut input) {
            let Ok(frame) = result else { return };
            assert!(frame.payload.len() <= 4096);
            let len = frame.payload.len() as u32;
            let Ok(header) = Header::validate(frame.kind, frame.flags, frame.stream, len) else {
                continue;
            };
            let p = &frame.payload[..];
            match header.kind {
                Kind::Hello => drop(Hello::parse(p)),
                Kind::Open => drop(Open::parse(p)),
                Kind::OpenOk => drop(OpenOk::parse(p)),
                Kind::OpenErr | Kind::Reset | Kind::GoAway => {
                    drop(ErrorBody::parse(header.kind, p))
                }
                Kind::Credit => drop(Credit::parse(p)),
                Kind::Ack => drop(Ack::parse(p)),
                Kind::Ping | Kind::Pong => drop(PingBody::parse(header.kind, p)),
                Kind::Data | Kind::Close => {}
            }
        }
        assert!(decoder.buffered() <= 20 + 4096 + 4);
    }
});
