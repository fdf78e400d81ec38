//! Just enough ELF reading to tell whether an executable is statically linked.
//!
//! A binary that runs as `/init` of an initrd without a C library must have no program interpreter: an ELF
//! file with a `PT_INTERP` program header asks the kernel to load `ld-linux` first, which the initrd does not
//! carry. A static-pie (what `crt-static` gives on the gnu target) has a `PT_DYNAMIC` header but no
//! `PT_INTERP`, and runs fine. Only 64-bit little-endian files are accepted, the one kind built here.

/// Program header type of the interpreter path.
const PT_INTERP: u32 = 3;

/// Byte ranges of the ELF64 file header fields read here.
mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const CLASS: usize = 4;
    pub const DATA: usize = 5;
    pub const PHOFF: Range<usize> = 32..40;
    pub const PHENTSIZE: Range<usize> = 54..56;
    pub const PHNUM: Range<usize> = 56..58;
    pub const HEADER_LEN: usize = 64;
    /// Offset of `p_type` inside a program header.
    pub const P_TYPE: Range<usize> = 0..4;
}

/// Returns whether the ELF64 little-endian image `bytes` names a program interpreter (is dynamically linked).
pub fn has_interpreter(bytes: &[u8]) -> Result<bool, String> {
    if bytes.len() < field::HEADER_LEN || &bytes[field::MAGIC] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[field::CLASS] != 2 || bytes[field::DATA] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = u64::from_le_bytes(bytes[field::PHOFF].try_into().expect("8 bytes"));
    let phentsize = u16::from_le_bytes(bytes[field::PHENTSIZE].try_into().expect("2 bytes"));
    let phnum = u16::from_le_bytes(bytes[field::PHNUM].try_into().expect("2 bytes"));
    if usize::from(phentsize) < field::P_TYPE.end {
        return Err(format!(
            "program header entry size {phentsize} is too small"
        ));
    }
    for i in 0..u64::from(phnum) {
        let start = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|s| usize::try_from(s).ok())
            .ok_or("program header offset overflows")?;
        let range = start + field::P_TYPE.start..start + field::P_TYPE.end;
        let p_type = bytes
            .get(range)
            .ok_or("program headers run past the end of the file")?;
        if u32::from_le_bytes(p_type.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-byte ELF64 header followed by `types.len()` program headers of 56 bytes.
    fn image(types: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56 * types.len()];
        bytes[0..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            let at = 64 + 56 * i;
            bytes[at..at + 4].copy_from_slice(&t.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn finds_interpreter_header() {
        assert_eq!(has_interpreter(&image(&[6, 3, 1])), Ok(true));
    }

    #[test]
    fn static_pie_with_dynamic_but_no_interp_is_static() {
        assert_eq!(has_interpreter(&image(&[6, 1, 2, 7])), Ok(false));
    }

    #[test]
    fn rejects_non_elf_and_truncated_files() {
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        let mut truncated = image(&[1, 3]);
        truncated.truncate(64 + 56);
        assert!(has_interpreter(&truncated).is_err());
    }

    #[test]
    fn inspects_the_running_test_binary() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&exe).is_ok());
    }
}
