//! `cp`: one file between this host and the guest, mode kept, content checked end to end.
//!
//! The copy service client moves the bytes and verifies the CRC32C; this module decides the
//! paths (a directory destination gets the source's file name, as with `cp`), writes a local
//! destination through a temporary file renamed into place only when the copy succeeded (so a
//! failed copy never leaves a truncated file under the real name), and draws the progress line.

use std::fs::File;
use std::io::{self, IsTerminal, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::{CpEnd, Failure, Global};
use crate::connect;
use vmux::service;

/// The mode given to a file read from stdin.
const STDIN_MODE: u32 = 0o644;
/// A transfer shows progress once it has run this long.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);
/// The progress line is redrawn at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Copies `src` to `dst` (exactly one of them in the guest).
pub fn run(global: &Global, src: &CpEnd, dst: &CpEnd) -> Result<u8, Failure> {
    match (src, dst) {
        (CpEnd::Guest(_), CpEnd::Guest(_))
        | (CpEnd::Local(_) | CpEnd::Stdio, CpEnd::Local(_) | CpEnd::Stdio) => {
            Err(Failure::new("cp needs exactly one guest path (:PATH)"))
        }
        (src, CpEnd::Guest(path)) => put(global, src, path),
        (CpEnd::Guest(path), dst) => get(global, path, dst),
    }
}

/// The guest path for a put: a path ending in `/` names a directory and gets the file's name.
pub fn put_target(guest: &str, local: Option<&Path>) -> String {
    match local.and_then(Path::file_name) {
        Some(name) if guest.ends_with('/') => format!("{guest}{}", name.to_string_lossy()),
        _ => guest.to_string(),
    }
}

/// The local path for a get: an existing directory gets the guest file's name.
pub fn get_target(local: &Path, guest: &str) -> PathBuf {
    if local.is_dir() {
        let name = guest.rsplit('/').find(|s| !s.is_empty()).unwrap_or("file");
        local.join(name)
    } else {
        local.to_path_buf()
    }
}

fn put(global: &Global, src: &CpEnd, guest: &str) -> Result<u8, Failure> {
    let (file, mode, local) = match src {
        CpEnd::Local(path) => {
            let file =
                File::open(path).map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
            let meta = file
                .metadata()
                .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
            if meta.is_dir() {
                return Err(Failure::new(format!(
                    "{}: is a directory (cp copies one file; try tar c DIR | vmux-shim cp - :/tmp/dir.tar)",
                    path.display()
                )));
            }
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_file() {
                (file, mode, Some(path.as_path()))
            } else {
                // A pipe or device: the size must be known up front, so spool it first.
                (spool(file)?, mode, Some(path.as_path()))
            }
        }
        _ => (spool(io::stdin().lock())?, STDIN_MODE, None),
    };
    let size = file
        .metadata()
        .map_err(|e| Failure::new(format!("source: {e}")))?
        .len();
    let target = put_target(guest, local);
    let conn = connect::connect(global)?;
    let mut progress = Progress::new(Some(size));
    let result = service::copy_put(&conn.session, &file, &target, mode, size, &mut |n| {
        progress.update(n)
    });
    progress.finish();
    conn.close(Duration::from_secs(2));
    result.map_err(|e| Failure::new(format!("cp to :{target}: {e}")))?;
    Ok(0)
}

/// Copies a source of unknown length into an unlinked temporary file and rewinds it.
fn spool(mut from: impl io::Read) -> Result<File, Failure> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(".vmux-cp-{}.spool", std::process::id()));
    let fail = |e: io::Error| Failure::new(format!("spooling the input in {}: {e}", dir.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(fail)?;
    // Unlinked at once: the space goes back when the file is closed, however we exit.
    let _ = std::fs::remove_file(&path);
    io::copy(&mut from, &mut file).map_err(fail)?;
    file.seek(io::SeekFrom::Start(0)).map_err(fail)?;
    Ok(file)
}

fn get(global: &Global, guest: &str, dst: &CpEnd) -> Result<u8, Failure> {
    let conn = connect::connect(global)?;
    let mut progress = Progress::new(None);
    let result = match dst {
        CpEnd::Local(path) => {
            let target = get_target(path, guest);
            let result = get_to_file(&conn, guest, &target, &mut progress);
            result.map_err(|e| Failure::new(format!("cp :{guest} to {}: {e}", target.display())))
        }
        _ => {
            let mut out = io::stdout().lock();
            service::copy_get(&conn.session, guest, &mut out, &mut |n| progress.update(n))
                .map_err(|e| Failure::new(format!("cp :{guest}: {e}")))
                .and_then(|_| {
                    out.flush()
                        .map_err(|e| Failure::new(format!("stdout: {e}")))
                })
        }
    };
    progress.finish();
    conn.close(Duration::from_secs(2));
    result.map(|()| 0)
}

/// Receives into a temporary file next to `target`, then gives it the guest mode and renames it.
fn get_to_file(
    conn: &connect::Connection,
    guest: &str,
    target: &Path,
    progress: &mut Progress,
) -> Result<(), String> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .ok_or_else(|| "the destination has no file name".to_string())?;
    let tmp = dir.join(format!(
        ".{}.vmux-{}.part",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = service::copy_get(&conn.session, guest, &mut file, &mut |n| progress.update(n))
        .map_err(|e| e.to_string())
        .and_then(|report| {
            file.sync_all()
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(report.mode & 0o7777))
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, target).map_err(|e| e.to_string())
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The progress line on stderr: shown only on a terminal, and only once a transfer is slow.
pub struct Progress {
    enabled: bool,
    total: Option<u64>,
    start: Instant,
    last_draw: Option<Instant>,
    done: u64,
}

impl Progress {
    /// A progress line for a transfer of `total` bytes (if known).
    pub fn new(total: Option<u64>) -> Progress {
        Progress {
            enabled: io::stderr().is_terminal(),
            total,
            start: Instant::now(),
            last_draw: None,
            done: 0,
        }
    }

    /// Records that `done` bytes have moved so far.
    pub fn update(&mut self, done: u64) {
        self.done = done;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.start) < PROGRESS_AFTER {
            return;
        }
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < PROGRESS_EVERY)
        {
            return;
        }
        self.last_draw = Some(now);
        self.draw(now);
    }

    fn draw(&self, now: Instant) {
        let line = progress_line(self.done, self.total, now.duration_since(self.start));
        let _ = write!(io::stderr().lock(), "\r{line}\x1b[K");
    }

    /// Draws the final state and ends the line, if anything was drawn.
    pub fn finish(&mut self) {
        if self.last_draw.is_some() {
            self.draw(Instant::now());
            let _ = writeln!(io::stderr().lock());
            self.last_draw = None;
        }
    }
}

/// One progress line: `[#####.....]  52%  12.0 MiB / 23.0 MiB  4.1 MiB/s`.
pub fn progress_line(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    match total {
        Some(total) if total > 0 => {
            let frac = (done as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (frac * 20.0).round() as usize;
            format!(
                "[{}{}] {:3}%  {} / {}  {}/s",
                "#".repeat(filled),
                ".".repeat(20 - filled),
                (frac * 100.0).floor() as u32,
                bytes(done),
                bytes(total),
                bytes(rate as u64)
            )
        }
        _ => format!("{}  {}/s", bytes(done), bytes(rate as u64)),
    }
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_into_a_guest_directory_appends_the_file_name() {
        assert_eq!(put_target("/tmp/", Some(Path::new("./a/app"))), "/tmp/app");
        assert_eq!(put_target("/tmp/x", Some(Path::new("./a/app"))), "/tmp/x");
        assert_eq!(put_target("/tmp/", None), "/tmp/");
    }

    #[test]
    fn get_into_a_local_directory_uses_the_guest_name() {
        let dir = std::env::temp_dir();
        assert_eq!(get_target(&dir, "/var/log/messages"), dir.join("messages"));
        assert_eq!(get_target(&dir, "/etc/"), dir.join("etc"));
        let file = dir.join("vmux-no-such-file");
        assert_eq!(get_target(&file, "/etc/hosts"), file);
    }

    #[test]
    fn progress_line_shows_bar_percent_and_rate() {
        let line = progress_line(512 << 10, Some(1 << 20), Duration::from_secs(2));
        assert_eq!(
            line,
            "[##########..........]  50%  512.0 KiB / 1.0 MiB  256.0 KiB/s"
        );
        let open = progress_line(3 << 20, None, Duration::from_secs(1));
        assert_eq!(open, "3.0 MiB  3.0 MiB/s");
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
