//! A writer for the cpio "newc" format (magic `070701`), the format the Linux kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (the magic, then thirteen 8-digit upper-case hex fields), the
//! NUL-terminated path, padding to a multiple of four bytes, the file data, and padding again. The archive
//! ends with an entry named `TRAILER!!!`. The kernel creates no parent directories, so a caller adds every
//! directory before the entries inside it. The output is deterministic (mtime 0, owner root, inode numbers
//! counted from 1), so the same inputs always give the same bytes and an unchanged initrd can be detected by
//! comparing contents.

/// File type bits for a directory (`S_IFDIR`).
const S_IFDIR: u32 = 0o040000;
/// File type bits for a regular file (`S_IFREG`).
const S_IFREG: u32 = 0o100000;
/// The magic that opens every newc header.
const MAGIC: &[u8; 6] = b"070701";
/// Length of a newc header: the magic plus thirteen 8-digit fields.
pub const HEADER_LEN: usize = 6 + 13 * 8;
/// The name of the entry that closes an archive.
const TRAILER: &str = "TRAILER!!!";

/// One header's fields, in the order they appear on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Inode number (unique per entry, only used to detect hard links).
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Number of links.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Length of the data that follows the name.
    pub filesize: u32,
    /// Major number of the device holding the file.
    pub devmajor: u32,
    /// Minor number of the device holding the file.
    pub devminor: u32,
    /// Major number of a device node entry.
    pub rdevmajor: u32,
    /// Minor number of a device node entry.
    pub rdevminor: u32,
    /// Length of the name including its terminating NUL.
    pub namesize: u32,
    /// Checksum (always 0 for newc; only the `070702` variant uses it).
    pub check: u32,
}

impl Header {
    /// Encodes the header as the 110 ASCII bytes of the newc format.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..6].copy_from_slice(MAGIC);
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            self.check,
        ];
        for (i, field) in fields.iter().enumerate() {
            let start = 6 + i * 8;
            out[start..start + 8].copy_from_slice(format!("{field:08X}").as_bytes());
        }
        out
    }
}

/// Builds a newc archive in memory.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    next_ino: u32,
    finished: bool,
}

impl Archive {
    /// Starts an empty archive.
    pub fn new() -> Self {
        Archive {
            buf: Vec::new(),
            next_ino: 1,
            finished: false,
        }
    }

    /// Adds a directory with the given permission bits (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), String> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, &[])
    }

    /// Adds a regular file with the given permission bits and contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), String> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data)
    }

    /// Writes the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.write_entry(
            Header {
                nlink: 1,
                ..Header::default()
            },
            TRAILER,
            &[],
        );
        self.finished = true;
        self.buf
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) -> Result<(), String> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name == TRAILER {
            return Err(format!("cpio: invalid entry name {path:?}"));
        }
        if name.split('/').any(|part| part.is_empty() || part == "..") {
            return Err(format!(
                "cpio: entry name {path:?} is not a clean relative path"
            ));
        }
        let filesize =
            u32::try_from(data.len()).map_err(|_| format!("cpio: {path} is larger than 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let header = Header {
            ino,
            mode,
            nlink,
            filesize,
            ..Header::default()
        };
        self.write_entry(header, name, data);
        Ok(())
    }

    fn write_entry(&mut self, mut header: Header, name: &str, data: &[u8]) {
        debug_assert!(!self.finished);
        // Names are short paths chosen by this program; the length always fits.
        header.namesize = name.len() as u32 + 1;
        self.buf.extend_from_slice(&header.encode());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    fn pad4(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_encodes_fields_as_upper_hex_in_order() {
        let header = Header {
            ino: 1,
            mode: 0o100755,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0x1234,
            devmajor: 0,
            devminor: 0,
            rdevmajor: 5,
            rdevminor: 1,
            namesize: 5,
            check: 0,
        };
        let expected = concat!(
            "070701", "00000001", "000081ED", "00000000", "00000000", "00000001", "00000000",
            "00001234", "00000000", "00000000", "00000005", "00000001", "00000005", "00000000",
        );
        assert_eq!(&header.encode()[..], expected.as_bytes());
    }

    #[test]
    fn file_entry_pads_name_and_data_to_four_bytes() {
        let mut archive = Archive::new();
        archive.file("/init", 0o755, b"abcde").unwrap();
        let bytes = archive.finish();
        // 110 header + "init\0" = 115, padded to 116; data 5 bytes, padded to 8.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..124], b"abcde\0\0\0");
        assert_eq!(&bytes[14..22], b"000081ED");
        assert_eq!(&bytes[54..62], b"00000005");
        assert_eq!(&bytes[94..102], b"00000005");
        // The trailer follows at once.
        assert_eq!(&bytes[124..130], MAGIC);
        assert_eq!(&bytes[124 + 110..124 + 121], b"TRAILER!!!\0");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn directory_entry_has_dir_mode_two_links_and_no_data() {
        let mut archive = Archive::new();
        archive.dir("dev", 0o755).unwrap();
        let bytes = archive.finish();
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        assert_eq!(&header[14..22], "000041ED");
        assert_eq!(&header[38..46], "00000002");
        assert_eq!(&header[54..62], "00000000");
        // 110 + "dev\0" = 114, padded to 116; the trailer starts there.
        assert_eq!(&bytes[116..122], MAGIC);
    }

    #[test]
    fn inode_numbers_count_up_from_one() {
        let mut archive = Archive::new();
        archive.dir("a", 0o755).unwrap();
        archive.file("a/b", 0o644, b"x").unwrap();
        let bytes = archive.finish();
        assert_eq!(&bytes[6..14], b"00000001");
        // 110 + "a\0" = 112 is already aligned and a directory has no data.
        let second = 112;
        assert_eq!(&bytes[second..second + 6], MAGIC);
        assert_eq!(&bytes[second + 6..second + 14], b"00000002");
    }

    #[test]
    fn same_inputs_give_identical_bytes() {
        let build = || {
            let mut archive = Archive::new();
            archive.dir("lib", 0o755).unwrap();
            archive.file("lib/x.ko", 0o644, &[1, 2, 3]).unwrap();
            archive.finish()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn rejects_unclean_names() {
        let mut archive = Archive::new();
        assert!(archive.file("", 0o644, b"").is_err());
        assert!(archive.file("a/../b", 0o644, b"").is_err());
        assert!(archive.file("a//b", 0o644, b"").is_err());
        assert!(archive.file("TRAILER!!!", 0o644, b"").is_err());
    }
}
