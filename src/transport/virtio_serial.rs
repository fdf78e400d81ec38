//! virtio-serial ports, guest side: resolving a port name to its `/dev/vportNpM` device and opening it.
//!
//! `N` in `vportNpM` depends on device order, and minimal guests have no udev (so no
//! `/dev/virtio-ports/NAME` links): the name is looked up in `SYSFS/class/virtio-ports/*/name`.
//! Both roots are parameters ([`PortPaths`]) so tests can fake the tree.
//!
//! A virtio-serial port is not a tty: it is opened with `O_RDWR | O_NONBLOCK | O_CLOEXEC` and no
//! termios call is ever made on it (they fail with `ENOTTY`). The fd survives host reconnects.
//! While no host is connected, `poll` reports `POLLIN | POLLHUP` at once and forever (level
//! triggered) and `read` returns 0: the reactor must not treat that as end of file, and must stop
//! polling the fd for input until it comes back (see `docs/links.md`). A second open fails `EBUSY`.

use std::fs;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use super::address::VirtioPort;
use super::error::TransportError;
use super::{Link, LinkKind};

/// Where to look for virtio-serial ports and their device nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPaths {
    /// The sysfs mount point (`/sys`).
    pub sysfs: PathBuf,
    /// The device directory (`/dev`).
    pub dev: PathBuf,
}

impl Default for PortPaths {
    /// `/sys` and `/dev`.
    fn default() -> PortPaths {
        PortPaths {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl PortPaths {
    /// The directory holding one entry per virtio-serial port.
    pub fn ports_dir(&self) -> PathBuf {
        self.sysfs.join("class/virtio-ports")
    }
}

/// Finds the device of the virtio-serial port called `name` (`/dev/vport1p1` for `org.vmux.0`).
///
/// Ports are searched in sorted order so the answer is deterministic; QEMU refuses duplicate names.
pub fn resolve(name: &str, paths: &PortPaths) -> Result<PathBuf, TransportError> {
    let dir = paths.ports_dir();
    let not_found = || TransportError::PortNotFound {
        name: name.to_string(),
        dir: dir.clone(),
    };
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(TransportError::io(dir.display(), "read_dir", e)),
    };
    let mut ports: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    ports.sort();
    for port in ports {
        // A port without a name file (or an unreadable one) simply is not the one asked for.
        let Ok(found) = fs::read_to_string(dir.join(&port).join("name")) else {
            continue;
        };
        if found.trim_end_matches('\n') == name {
            return Ok(paths.dev.join(port));
        }
    }
    Err(not_found())
}

/// Opens the port named by `port` as a [`LinkKind::VirtioSerial`] link.
pub(crate) fn open_port(
    port: &VirtioPort,
    addr: &str,
    paths: &PortPaths,
) -> Result<Link, TransportError> {
    let device = match port {
        VirtioPort::Name(name) => resolve(name, paths)?,
        VirtioPort::Device(path) => path.clone(),
    };
    open_device(&device, addr)
}

fn open_device(device: &Path, addr: &str) -> Result<Link, TransportError> {
    let flags = OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = open(device, flags, Mode::empty()).map_err(|e| {
        let op = if e == nix::errno::Errno::EBUSY {
            "open (already open elsewhere: a virtio-serial port has one opener)"
        } else {
            "open"
        };
        TransportError::io(format!("{addr} ({})", device.display()), op, e.into())
    })?;
    Link::from_fd(fd, LinkKind::VirtioSerial, addr)
        .map_err(|e| TransportError::io(addr, "configure", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs + dev tree in a fresh temporary directory, removed on drop.
    struct FakeRoot {
        root: PathBuf,
        paths: PortPaths,
    }

    impl FakeRoot {
        fn new(tag: &str) -> FakeRoot {
            let root = std::env::temp_dir().join(format!(
                "vmux-vport-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&root);
            let paths = PortPaths {
                sysfs: root.join("sys"),
                dev: root.join("dev"),
            };
            fs::create_dir_all(&paths.dev).unwrap();
            FakeRoot { root, paths }
        }

        fn port(&self, dev: &str, name: Option<&str>) {
            let dir = self.paths.ports_dir().join(dev);
            fs::create_dir_all(&dir).unwrap();
            if let Some(name) = name {
                fs::write(dir.join("name"), format!("{name}\n")).unwrap();
            }
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn name_resolves_to_its_vport_device() {
        let fake = FakeRoot::new("resolve");
        fake.port("vport0p1", Some("org.qemu.guest_agent.0"));
        fake.port("vport1p1", Some("org.vmux.0"));
        fake.port("vport1p2", None);
        assert_eq!(
            resolve("org.vmux.0", &fake.paths).unwrap(),
            fake.paths.dev.join("vport1p1")
        );
    }

    #[test]
    fn name_must_match_exactly() {
        let fake = FakeRoot::new("exact");
        fake.port("vport1p1", Some("org.vmux.0"));
        for wrong in ["org.vmux", "org.vmux.0\n", "org.vmux.00", ""] {
            let err = resolve(wrong, &fake.paths).unwrap_err();
            assert!(
                matches!(err, TransportError::PortNotFound { .. }),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn missing_sysfs_class_is_port_not_found() {
        let fake = FakeRoot::new("nosys");
        let err = resolve("org.vmux.0", &fake.paths).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("is virtio_console loaded"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_names_resolve_to_the_first_port_in_order() {
        let fake = FakeRoot::new("dup");
        fake.port("vport2p1", Some("same"));
        fake.port("vport1p3", Some("same"));
        assert_eq!(
            resolve("same", &fake.paths).unwrap(),
            fake.paths.dev.join("vport1p3")
        );
    }

    #[test]
    fn open_by_name_gives_a_nonblocking_virtio_serial_link() {
        use std::io::{Read, Write};
        let fake = FakeRoot::new("open");
        fake.port("vport1p1", Some("org.vmux.0"));
        // A FIFO opened read-write stands in for the character device: it loops bytes back.
        nix::unistd::mkfifo(
            &fake.paths.dev.join("vport1p1"),
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap();
        let port = VirtioPort::Name("org.vmux.0".into());
        let mut link = open_port(&port, "virtio-serial://org.vmux.0", &fake.paths).unwrap();
        assert_eq!(link.kind(), LinkKind::VirtioSerial);
        assert_eq!(link.peer(), "virtio-serial://org.vmux.0");
        let mut buf = [0u8; 4];
        assert_eq!(
            link.read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        link.write_all(b"ping").unwrap();
        assert_eq!(link.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn open_missing_device_names_address_and_device() {
        let fake = FakeRoot::new("nodev");
        let device = fake.paths.dev.join("vport9p9");
        let port = VirtioPort::Device(device.clone());
        let err = open_port(&port, "virtio-serial:///dev/vport9p9", &fake.paths).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let text = err.to_string();
        assert!(
            text.starts_with("virtio-serial:///dev/vport9p9 ("),
            "{text}"
        );
        assert!(text.contains(": open: "), "{text}");
    }
}
