//! Deterministic stream contents for integration tests: a seeded byte stream any chunking of
//! which yields the same bytes, a writer that sends it in uneven pieces, and a reader that
//! checksums what arrives.

use std::io::{Read, Write};

/// A deterministic pseudo-random byte stream: byte `i` depends only on the seed and `i`, so
/// any chunking of the stream yields the same bytes.
pub struct Prng {
    seed: u64,
    pos: u64,
}

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng { seed, pos: 0 }
    }

    fn block(&self, index: u64) -> [u8; 8] {
        // splitmix64 of (seed, index)
        let mut z = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ index.wrapping_add(0x632B_E59B_D9B4_E019);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut filled = 0;
        while filled < buf.len() {
            let off = (self.pos % 8) as usize;
            let block = self.block(self.pos / 8);
            let take = (8 - off).min(buf.len() - filled);
            buf[filled..filled + take].copy_from_slice(&block[off..off + take]);
            filled += take;
            self.pos += take as u64;
        }
    }
}

pub fn crc_of_stream(seed: u64, len: usize) -> u32 {
    let mut prng = Prng::new(seed);
    let mut buf = vec![0u8; 64 << 10];
    let mut crc = 0u32;
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        prng.fill(&mut buf[..n]);
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        left -= n;
    }
    crc
}

/// Writes `len` bytes from seed `seed` in uneven writes, then half-closes.
pub fn send_pattern(mut out: &vmux::session::Stream, seed: u64, len: usize) {
    let mut prng = Prng::new(seed);
    let mut buf = vec![0u8; 100_003];
    let mut left = len;
    let mut turn = 0usize;
    while left > 0 {
        let n = left.min(1 + (turn * 7919) % buf.len());
        prng.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).expect("write");
        left -= n;
        turn += 1;
    }
    out.shutdown_write().expect("shutdown_write");
}

/// Reads to EOF, returning (bytes, crc).
pub fn receive_all(mut input: &vmux::session::Stream) -> (usize, u32) {
    let mut buf = vec![0u8; 50_021];
    let (mut total, mut crc) = (0usize, 0u32);
    loop {
        let n = input.read(&mut buf).expect("read");
        if n == 0 {
            return (total, crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        total += n;
    }
}
