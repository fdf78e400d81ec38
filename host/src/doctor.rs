//! `doctor`: checks what vmux links need on this host and says how to fix each failure.
//!
//! The checks are pure functions over [`Facts`], which [`Facts::gather`] reads from a root
//! directory (`/` in real use, a fake tree in tests): `proc/sys/kernel/osrelease`, `proc/modules`,
//! `lib/modules/RELEASE/modules.builtin`, `sys/module/vhost_vsock`, `dev/vhost-vsock`. They only
//! read files and stat paths. An address given on the command line is checked too
//! ([`check_address`]): a `unix://` or `hvsock://` socket must exist, be a socket and accept a
//! connection (which is closed at once; no `CONNECT` line is sent); a `tty://` device must exist
//! and be a character device. Only a `vsock://` address opens an AF_VSOCK socket, and only then.

use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmux::transport::Address;

/// The oldest kernel with vhost-vsock (4.8).
pub const MIN_KERNEL: (u32, u32) = (4, 8);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Not fine, but not needed for what was asked.
    Warn,
    /// Broken: the exit status will be 1.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One check's result: a line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// How it came out.
    pub status: Status,
    /// What was found.
    pub what: String,
    /// What to do about it (for warn and FAIL).
    pub remedy: Option<String>,
}

impl Check {
    fn ok(what: impl Into<String>) -> Check {
        Check {
            status: Status::Ok,
            what: what.into(),
            remedy: None,
        }
    }

    fn bad(status: Status, what: impl Into<String>, remedy: impl Into<String>) -> Check {
        Check {
            status,
            what: what.into(),
            remedy: Some(remedy.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5}{}", self.status.to_string(), self.what)?;
        if let Some(remedy) = &self.remedy {
            write!(f, ": {remedy}")?;
        }
        Ok(())
    }
}

/// What a path turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Nothing there.
    Missing,
    /// A character device.
    CharDevice,
    /// A socket.
    Socket,
    /// Something else (file, directory, ...).
    Other,
}

/// Stats `path` without following a final symlink's target being absent silently.
pub fn path_kind(path: &Path) -> PathKind {
    match std::fs::metadata(path) {
        Err(_) => PathKind::Missing,
        Ok(m) if m.file_type().is_char_device() => PathKind::CharDevice,
        Ok(m) if m.file_type().is_socket() => PathKind::Socket,
        Ok(_) => PathKind::Other,
    }
}

/// The host facts the checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `proc/sys/kernel/osrelease` (the uname release).
    pub release: Option<String>,
    /// `proc/modules`.
    pub proc_modules: Option<String>,
    /// `lib/modules/RELEASE/modules.builtin`.
    pub modules_builtin: Option<String>,
    /// Whether `sys/module/vhost_vsock` exists (loaded or built in).
    pub sys_module_vhost_vsock: bool,
    /// What `dev/vhost-vsock` is.
    pub dev_vhost_vsock: PathKind,
}

impl Facts {
    /// Reads the facts under `root` (`/` for this machine).
    pub fn gather(root: &Path) -> Facts {
        let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
        let release = read("proc/sys/kernel/osrelease").map(|s| s.trim().to_string());
        let modules_builtin = release
            .as_ref()
            .and_then(|r| read(&format!("lib/modules/{r}/modules.builtin")));
        Facts {
            proc_modules: read("proc/modules"),
            modules_builtin,
            sys_module_vhost_vsock: root.join("sys/module/vhost_vsock").exists(),
            dev_vhost_vsock: path_kind(&root.join("dev/vhost-vsock")),
            release,
        }
    }
}

/// Parses `MAJOR.MINOR` from a kernel release like `6.1.0-57-cloud-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether `/proc/modules` text lists `module` as loaded.
pub fn module_loaded(proc_modules: &str, module: &str) -> bool {
    proc_modules
        .lines()
        .any(|line| line.split_whitespace().next() == Some(module))
}

/// Whether `modules.builtin` text lists `module` (`kernel/.../vhost_vsock.ko`).
pub fn module_builtin(modules_builtin: &str, module: &str) -> bool {
    let file = format!("{module}.ko");
    modules_builtin
        .lines()
        .any(|line| line.trim().rsplit('/').next() == Some(file.as_str()))
}

/// The host checks. `vsock_needed` (no address, or a `vsock://` one) makes vhost-vsock problems
/// failures; otherwise they are warnings, since unix, hybrid vsock and tty links do not use it.
pub fn host_checks(facts: &Facts, vsock_needed: bool) -> Vec<Check> {
    let severity = if vsock_needed {
        Status::Fail
    } else {
        Status::Warn
    };
    let modules = facts.proc_modules.as_deref().unwrap_or("");
    let mut checks = Vec::new();

    checks.push(match facts.release.as_deref() {
        None => Check::bad(
            Status::Warn,
            "kernel version unknown (no /proc/sys/kernel/osrelease)",
            "is /proc mounted?",
        ),
        Some(r) => match kernel_version(r) {
            Some(v) if v >= MIN_KERNEL => Check::ok(format!("kernel {r} (vhost-vsock needs 4.8 or later)")),
            Some(_) => Check::bad(
                severity,
                format!("kernel {r} is older than 4.8"),
                "vhost-vsock needs Linux 4.8 or later: upgrade the host kernel, or use hvsock:// (Firecracker, Cloud Hypervisor) or a serial link",
            ),
            None => Check::bad(Status::Warn, format!("kernel release {r:?} not understood"), "check that it is 4.8 or later"),
        },
    });

    let loaded = module_loaded(modules, "vhost_vsock");
    let builtin = facts
        .modules_builtin
        .as_deref()
        .is_some_and(|b| module_builtin(b, "vhost_vsock"));
    checks.push(if loaded {
        Check::ok("vhost_vsock module loaded")
    } else if builtin {
        Check::ok("vhost_vsock built into the kernel")
    } else if facts.sys_module_vhost_vsock {
        Check::ok("vhost_vsock present (/sys/module/vhost_vsock)")
    } else {
        Check::bad(
            severity,
            "vhost_vsock is not loaded",
            "run 'modprobe vhost_vsock' (and add it to /etc/modules-load.d/ to keep it)",
        )
    });

    checks.push(match facts.dev_vhost_vsock {
        PathKind::CharDevice => Check::ok("/dev/vhost-vsock present"),
        PathKind::Missing => Check::bad(
            severity,
            "/dev/vhost-vsock is missing",
            "load vhost_vsock ('modprobe vhost_vsock'); if it is loaded, create the node with 'mknod /dev/vhost-vsock c 10 241'",
        ),
        _ => Check::bad(
            severity,
            "/dev/vhost-vsock is not a character device",
            "remove it and reload vhost_vsock ('modprobe -r vhost_vsock; modprobe vhost_vsock')",
        ),
    });

    checks.push(if module_loaded(modules, "vmw_vsock_vmci_transport") {
        Check::bad(
            severity,
            "the VMware vsock transport (vmw_vsock_vmci_transport) is loaded and takes the host side of vsock from vhost_vsock",
            "stop vmware-tools (systemctl stop vmtoolsd), then 'modprobe -r vmw_vsock_vmci_transport vmw_vsock_virtio_transport_common vsock' and 'modprobe vhost_vsock'",
        )
    } else {
        Check::ok("no VMware vsock transport loaded")
    });
    checks
}

/// Checks the address the user named. Connects only to sockets (closing at once), and opens an
/// AF_VSOCK socket only for a `vsock://` address.
pub fn check_address(addr: &Address, timeout: Duration) -> Vec<Check> {
    match addr {
        Address::Unix { path } => socket_checks(addr, path, "the VM (or 'vmux-shim serve')"),
        Address::Hvsock { path, .. } => socket_checks(
            addr,
            path,
            "the VMM (Firecracker, Cloud Hypervisor, vhost-device-vsock)",
        ),
        Address::Tty { path, .. } => match path_kind(path) {
            PathKind::CharDevice => vec![Check::ok(format!("{addr}: a character device"))],
            PathKind::Missing => vec![Check::bad(
                Status::Fail,
                format!("{addr}: {} does not exist", path.display()),
                "check the path (for a QEMU pty, the 'char device redirected to /dev/pts/N' line)",
            )],
            _ => vec![Check::bad(
                Status::Fail,
                format!("{addr}: {} is not a character device", path.display()),
                "name a serial device or pty",
            )],
        },
        Address::Vsock { .. } => match vmux::transport::dial(addr, timeout) {
            Ok(_) => vec![Check::ok(format!("{addr}: connected"))],
            Err(e) => vec![Check::bad(
                Status::Fail,
                e.to_string(),
                "is the VM running, and is vmux-agent listening on that port?",
            )],
        },
        Address::VirtioSerial { .. } => vec![Check::bad(
            Status::Warn,
            format!("{addr}: a guest-side address"),
            "on the host, name the chardev socket instead (unix://PATH --serial)",
        )],
    }
}

fn socket_checks(addr: &Address, path: &PathBuf, who: &str) -> Vec<Check> {
    match path_kind(path) {
        PathKind::Missing => {
            return vec![Check::bad(
                Status::Fail,
                format!("{addr}: {} does not exist", path.display()),
                format!("is the VM running? the socket is created by {who}"),
            )]
        }
        PathKind::Socket => {}
        _ => {
            return vec![Check::bad(
                Status::Fail,
                format!("{addr}: {} is not a socket", path.display()),
                "check the path",
            )]
        }
    }
    let mut checks = vec![Check::ok(format!("{addr}: {} is a socket", path.display()))];
    checks.push(match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => {
            drop(stream);
            Check::ok(format!("{addr}: accepts connections"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Check::bad(
            Status::Fail,
            format!("{addr}: nobody accepts connections (connection refused)"),
            format!("the socket file is stale: restart {who}"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::bad(
            Status::Fail,
            format!("{addr}: permission denied"),
            "run as the socket's owner (it is usually mode 0600) or with sudo",
        ),
        Err(e) => Check::bad(
            Status::Fail,
            format!("{addr}: connect: {e}"),
            "check the path and permissions",
        ),
    });
    checks
}

/// Runs every check for `addr` (if any) against `root`; prints the lines; true when none FAILed.
pub fn run(root: &Path, addr: Option<&Address>, timeout: Duration) -> bool {
    let vsock_needed = matches!(addr, None | Some(Address::Vsock { .. }));
    let mut checks = host_checks(&Facts::gather(root), vsock_needed);
    if let Some(addr) = addr {
        checks.extend(check_address(addr, timeout));
    }
    for check in &checks {
        println!("{check}");
    }
    checks.iter().all(|c| c.status != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULES_PLAIN: &str = "\
vhost_vsock 24576 0 - Live 0x0000000000000000
vmw_vsock_virtio_transport_common 45056 1 vhost_vsock, Live 0x0000000000000000
vsock 53248 2 vhost_vsock,vmw_vsock_virtio_transport_common, Live 0x0000000000000000
";
    const MODULES_VMWARE: &str = "\
vmw_vsock_vmci_transport 32768 2 - Live 0x0000000000000000
vsock 53248 3 vmw_vsock_vmci_transport, Live 0x0000000000000000
";

    /// A fake root directory removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> FakeRoot {
            let dir =
                std::env::temp_dir().join(format!("vmux-doctor-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeRoot(dir)
        }

        fn file(&self, rel: &str, text: &str) -> &Self {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }

        fn dir(&self, rel: &str) -> &Self {
            std::fs::create_dir_all(self.0.join(rel)).unwrap();
            self
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn statuses(checks: &[Check]) -> Vec<Status> {
        checks.iter().map(|c| c.status).collect()
    }

    fn facts(release: &str, modules: &str, builtin: Option<&str>, dev: PathKind) -> Facts {
        Facts {
            release: Some(release.into()),
            proc_modules: Some(modules.into()),
            modules_builtin: builtin.map(str::to_string),
            sys_module_vhost_vsock: false,
            dev_vhost_vsock: dev,
        }
    }

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(kernel_version("6.1.0-57-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("4.8.0"), Some((4, 8)));
        assert_eq!(kernel_version("4.19"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn a_good_host_passes_every_check() {
        let f = facts("6.1.0", MODULES_PLAIN, None, PathKind::CharDevice);
        let checks = host_checks(&f, true);
        assert_eq!(statuses(&checks), [Status::Ok; 4], "{checks:?}");
    }

    #[test]
    fn old_kernel_fails_with_a_remedy() {
        let f = facts(
            "4.4.0-21-generic",
            MODULES_PLAIN,
            None,
            PathKind::CharDevice,
        );
        let c = &host_checks(&f, true)[0];
        assert_eq!(c.status, Status::Fail);
        assert!(c
            .to_string()
            .starts_with("FAIL kernel 4.4.0-21-generic is older than 4.8: "));
    }

    #[test]
    fn builtin_vhost_vsock_counts_as_present() {
        let builtin = "kernel/drivers/vhost/vhost.ko\nkernel/drivers/vhost/vhost_vsock.ko\n";
        let f = facts("6.1.0", "", Some(builtin), PathKind::CharDevice);
        let c = &host_checks(&f, true)[1];
        assert_eq!(c.to_string(), "ok   vhost_vsock built into the kernel");
    }

    #[test]
    fn missing_module_and_device_fail_with_modprobe_remedy() {
        let f = facts("6.1.0", "", None, PathKind::Missing);
        let checks = host_checks(&f, true);
        assert_eq!(checks[1].status, Status::Fail);
        assert!(checks[1].to_string().contains("modprobe vhost_vsock"));
        assert_eq!(checks[2].status, Status::Fail);
        assert!(checks[2].what.contains("/dev/vhost-vsock is missing"));
    }

    #[test]
    fn vhost_problems_only_warn_when_the_address_does_not_use_vsock() {
        let f = facts("6.1.0", "", None, PathKind::Missing);
        let checks = host_checks(&f, false);
        assert_eq!(
            statuses(&checks),
            [Status::Ok, Status::Warn, Status::Warn, Status::Ok]
        );
    }

    #[test]
    fn vmware_transport_conflict_names_the_remedy() {
        let f = facts("6.1.0", MODULES_VMWARE, None, PathKind::CharDevice);
        let c = &host_checks(&f, true)[3];
        assert_eq!(c.status, Status::Fail);
        let line = c.to_string();
        assert!(line.contains("stop vmware-tools"), "{line}");
        assert!(line.contains(
            "modprobe -r vmw_vsock_vmci_transport vmw_vsock_virtio_transport_common vsock"
        ));
        assert!(line.contains("modprobe vhost_vsock"));
    }

    #[test]
    fn gathers_facts_from_a_fake_root() {
        let root = FakeRoot::new("gather");
        root.file("proc/sys/kernel/osrelease", "5.10.0-test\n")
            .file("proc/modules", MODULES_PLAIN)
            .file(
                "lib/modules/5.10.0-test/modules.builtin",
                "kernel/drivers/vhost/vhost_vsock.ko\n",
            )
            .dir("sys/module/vhost_vsock");
        let f = Facts::gather(&root.0);
        assert_eq!(f.release.as_deref(), Some("5.10.0-test"));
        assert!(f.sys_module_vhost_vsock);
        assert!(f.modules_builtin.unwrap().contains("vhost_vsock.ko"));
        assert_eq!(f.dev_vhost_vsock, PathKind::Missing);
        assert!(module_loaded(
            f.proc_modules.as_deref().unwrap(),
            "vhost_vsock"
        ));
    }

    #[test]
    fn an_empty_root_warns_about_the_unknown_kernel() {
        let root = FakeRoot::new("empty");
        let checks = host_checks(&Facts::gather(&root.0), false);
        assert_eq!(checks[0].status, Status::Warn);
        assert!(checks[0].what.contains("kernel version unknown"));
    }

    #[test]
    fn unix_address_checks_existence_type_and_connect() {
        let root = FakeRoot::new("addr");
        let missing: Address = format!("unix://{}/none.sock", root.0.display())
            .parse()
            .unwrap();
        let c = check_address(&missing, Duration::from_secs(1));
        assert_eq!(statuses(&c), [Status::Fail]);
        assert!(c[0].what.ends_with("does not exist"));

        root.file("plain", "x");
        let plain: Address = format!("unix://{}/plain", root.0.display())
            .parse()
            .unwrap();
        let c = check_address(&plain, Duration::from_secs(1));
        assert!(c[0].what.ends_with("is not a socket"));

        let sock = root.0.join("live.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let live: Address = format!("unix://{}", sock.display()).parse().unwrap();
        let c = check_address(&live, Duration::from_secs(1));
        assert_eq!(statuses(&c), [Status::Ok, Status::Ok], "{c:?}");
        drop(listener);
        // The file stays, but nobody listens any more: a stale socket.
        let c = check_address(&live, Duration::from_secs(1));
        assert_eq!(statuses(&c), [Status::Ok, Status::Fail]);
        assert!(c[1].to_string().contains("stale"));
    }

    #[test]
    fn tty_address_must_be_a_character_device() {
        let ok: Address = "tty:///dev/null".parse().unwrap();
        assert_eq!(statuses(&check_address(&ok, Duration::ZERO)), [Status::Ok]);
        let missing: Address = "tty:///dev/nonexistent-vmux".parse().unwrap();
        assert_eq!(
            statuses(&check_address(&missing, Duration::ZERO)),
            [Status::Fail]
        );
    }
}
