//! Writes the seed inputs of the `decoder` fuzz target into `fuzz/seeds/decoder/`: a control
//! byte (chunk size and payload-CRC setting), then a session's worth of real frames.
//! Run: `cargo run --example fuzz_seeds`.

use vmux::wire::{emit_frame, Features, Flags, Hello, Kind, Open, Role};

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decoder");
    std::fs::create_dir_all(&dir).expect("create the seeds folder");
    let hello = Hello {
        role: Role::Client,
        version: 1,
        features: Features::PAYLOAD_CRC,
        max_frame: 1 << 16,
        max_streams: 8,
        nonce: 1,
        boot_id: [0; 16],
    };
    let mut open = Vec::new();
    Open {
        initial_credit: 4096,
        service: "exec",
        args: b"\x01\x02",
    }
    .emit(&mut open);
    for (name, crc) in [("session-plain", false), ("session-crc", true)] {
        let mut bytes = vec![if crc { 0x21 } else { 0x20 }];
        emit_frame(
            &mut bytes,
            Kind::Hello,
            Flags::empty(),
            0,
            &hello.to_bytes(),
            true,
        );
        emit_frame(&mut bytes, Kind::Open, Flags::empty(), 1, &open, crc);
        emit_frame(
            &mut bytes,
            Kind::OpenOk,
            Flags::empty(),
            1,
            &[0, 16, 0, 0],
            crc,
        );
        emit_frame(&mut bytes, Kind::Data, Flags::empty(), 1, b"hello", crc);
        emit_frame(
            &mut bytes,
            Kind::Credit,
            Flags::empty(),
            1,
            &[0, 32, 0, 0],
            crc,
        );
        emit_frame(&mut bytes, Kind::Close, Flags::empty(), 1, b"", crc);
        emit_frame(
            &mut bytes,
            Kind::Reset,
            Flags::empty(),
            3,
            &[9, 0, 0, 0, b'x'],
            crc,
        );
        emit_frame(
            &mut bytes,
            Kind::Ping,
            Flags::empty(),
            0,
            &7u64.to_le_bytes(),
            crc,
        );
        emit_frame(
            &mut bytes,
            Kind::GoAway,
            Flags::DRAINED,
            0,
            &[0, 0, 0, 0],
            crc,
        );
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write a seed");
        println!("wrote {}", path.display());
    }
}
