//! The file systems a minimal initrd lacks: PID 1 mounts `/proc`, `/sys`, `/dev` (devtmpfs, which
//! the kernel does not mount into an initramfs), `/dev/pts`, `/tmp` and `/run`, and fixes what a
//! bare devtmpfs leaves out (the standard descriptors, `/dev/fd` and friends).
//!
//! Every step is idempotent: a target that already is a mount point (or a mount that fails with
//! `EBUSY`) counts as done, so the agent can run again as PID 1 of a container or after a
//! `switch_root` that kept the mounts. Nothing here is called by tests for real.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// One file system to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// File system type, also used as the source name (`proc`, `tmpfs`, ...).
    pub fstype: &'static str,
    /// Absolute mount point; created (mode 0755) when missing.
    pub target: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// File-system options (`mode=1777`), empty for none.
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The mounts PID 1 makes, in order (`/dev/pts` after `/dev`).
pub const ESSENTIAL_MOUNTS: &[MountSpec] = &[
    MountSpec {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,ptmxmode=0666",
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
];

/// The symlinks a udev-less `/dev` needs for shells and programs that use `/dev/fd` or `/dev/stdin`.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// What mounting one file system did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOutcome {
    /// This call mounted it.
    Mounted,
    /// Something was already mounted there.
    AlreadyMounted,
}

/// Why a mount failed.
#[derive(Debug)]
pub enum MountError {
    /// The mount point could not be created or inspected.
    MountPoint(io::Error),
    /// `mount(2)` failed.
    Mount(Errno),
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::MountPoint(err) => write!(f, "cannot prepare mount point: {err}"),
            MountError::Mount(errno) => write!(f, "mount failed: {}", errno.desc()),
        }
    }
}

impl std::error::Error for MountError {}

/// The result of one [`MountSpec`].
#[derive(Debug)]
pub struct MountReport {
    /// What was to be mounted.
    pub spec: MountSpec,
    /// What happened.
    pub result: Result<MountOutcome, MountError>,
}

impl fmt::Display for MountReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let MountSpec { fstype, target, .. } = self.spec;
        match &self.result {
            Ok(MountOutcome::Mounted) => write!(f, "mounted {fstype} on {target}"),
            Ok(MountOutcome::AlreadyMounted) => write!(f, "{target} already mounted"),
            Err(err) => write!(f, "{fstype} on {target}: {err}"),
        }
    }
}

/// Mounts every spec in order and reports each; never stops early.
pub fn mount_all(specs: &[MountSpec]) -> Vec<MountReport> {
    specs
        .iter()
        .map(|&spec| MountReport {
            spec,
            result: mount_one(&spec),
        })
        .collect()
}

fn mount_one(spec: &MountSpec) -> Result<MountOutcome, MountError> {
    let target = Path::new(spec.target);
    if let Err(err) = DirBuilder::new().recursive(true).mode(0o755).create(target) {
        return Err(MountError::MountPoint(err));
    }
    if is_mount_point(target).map_err(MountError::MountPoint)? {
        return Ok(MountOutcome::AlreadyMounted);
    }
    let data = (!spec.data.is_empty()).then_some(spec.data);
    match mount(
        Some(spec.fstype),
        target,
        Some(spec.fstype),
        spec.flags,
        data,
    ) {
        Ok(()) => Ok(MountOutcome::Mounted),
        Err(Errno::EBUSY) => Ok(MountOutcome::AlreadyMounted),
        Err(errno) => Err(MountError::Mount(errno)),
    }
}

/// Whether `path` is the root of a mount: its device differs from its parent's (or it is `/`).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let own = fs::symlink_metadata(path)?;
    let parent = fs::metadata(path.join(".."))?;
    Ok(own.dev() != parent.dev() || own.ino() == parent.ino())
}

/// Creates the [`DEV_LINKS`] symlinks that are missing; returns the ones that failed.
pub fn create_dev_links() -> Vec<(&'static str, io::Error)> {
    DEV_LINKS
        .iter()
        .filter_map(|&(link, to)| match symlink(to, link) {
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Some((link, err)),
            _ => None,
        })
        .collect()
}

/// Makes sure descriptors 0, 1 and 2 are open (on the console, else `/dev/null`).
///
/// The kernel opens `/dev/console` for init, but when the initramfs has none, init starts with
/// nothing there and the first files it opens would become its "stderr". Opening fills the lowest
/// free descriptor, so files landing on 0..=2 are kept open and the first one above 2 is closed.
pub fn ensure_std_fds() -> io::Result<()> {
    for _ in 0..3 {
        let file = open_console()?;
        if file.as_raw_fd() > 2 {
            return Ok(());
        }
        // Kept open for the life of the process: it now is a standard descriptor.
        let _ = file.into_raw_fd();
    }
    Ok(())
}

fn open_console() -> io::Result<File> {
    let rw = |path| OpenOptions::new().read(true).write(true).open(path);
    rw("/dev/console").or_else(|_| rw("/dev/null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_told_apart_from_plain_directories() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        assert!(!is_mount_point(Path::new("/proc/self")).unwrap());
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        assert!(!is_mount_point(&here).unwrap());
    }

    #[test]
    fn pts_is_mounted_after_dev_and_every_target_is_absolute() {
        let at = |t: &str| ESSENTIAL_MOUNTS.iter().position(|m| m.target == t);
        assert!(at("/dev").unwrap() < at("/dev/pts").unwrap());
        assert!(ESSENTIAL_MOUNTS.iter().all(|m| m.target.starts_with('/')));
    }

    #[test]
    fn reports_read_well_in_a_log() {
        let spec = ESSENTIAL_MOUNTS[0];
        let ok = MountReport {
            spec,
            result: Ok(MountOutcome::Mounted),
        };
        let failed = MountReport {
            spec,
            result: Err(MountError::Mount(Errno::EPERM)),
        };
        assert_eq!(ok.to_string(), "mounted proc on /proc");
        assert_eq!(
            failed.to_string(),
            "proc on /proc: mount failed: Operation not permitted"
        );
    }
}
