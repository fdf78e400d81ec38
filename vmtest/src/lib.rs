//! A QEMU harness for the integration tests and `cargo xtask demo`: boots a throwaway guest from the assets that
//! `cargo xtask vm-assets` prepared, with any of a virtio-serial port, an ISA serial port (ttyS1) and a
//! hybrid vsock device, and gives the test the host ends of those links as unix socket paths.
//!
//! The host side never touches AF_VSOCK (this machine's `/dev/vsock` belongs to its own hypervisor): vsock
//! goes through a `vhost-device-vsock` process that the harness starts, which speaks to the host over unix
//! sockets only. Each VM gets its own temporary folder for sockets and logs; dropping the [`Vm`] kills QEMU
//! and vhost-device-vsock by PID and removes the folder (set `VMUX_VM_KEEP=1` to keep it for a post-mortem).
//! The guest console (ttyS0) is written to `console.log` in that folder; errors quote its tail.
//! Both processes also get SIGKILL when the thread that booted the VM ends (`PR_SET_PDEATHSIG`), so a
//! test run killed with Ctrl-C leaves no guest spinning under TCG: boot a [`Vm`] on the thread that owns it.
//!
//! Guests run under TCG (no KVM here): a boot takes about 3 s on an idle machine, so every wait takes a
//! timeout and [`BOOT_TIMEOUT`] is generous for a loaded CI machine.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long to wait for a guest to reach a point of its boot on a loaded machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The vsock port the agent listens on (also `auto`'s default).
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The virtio-serial port name the agent looks for.
pub const AGENT_PORT_NAME: &str = "org.vmux.agent.0";
/// The guest CID that the harness gives vhost-device-vsock.
pub const GUEST_CID: u32 = 3;
/// How often waits look at the console file and the QEMU process.
const POLL: Duration = Duration::from_millis(20);

/// The files that `cargo xtask vm-assets` prepared, as listed in its manifest.
#[derive(Debug, Clone)]
pub struct VmAssets {
    /// The kernel image (`vmlinuz-<ver>`).
    pub kernel: PathBuf,
    /// The cpio initrd whose `/init` is vmux-agent (or the `--init` override).
    pub initrd: PathBuf,
    /// The kernel release, e.g. `6.1.0-57-cloud-amd64` (modules are in `/lib/modules/<ver>/`).
    pub kernel_version: String,
    /// The vhost-user vsock backend binary.
    pub vhost_device_vsock: PathBuf,
    /// Kernel modules in load order, by name (`/lib/modules/<ver>/<name>.ko` in the guest).
    pub modules: Vec<String>,
    /// The qemu-system-x86_64 binary.
    pub qemu: PathBuf,
    /// The static vmux-agent on the host (also in the initrd as `/init` unless overridden).
    pub agent: PathBuf,
    /// The static vmux-shim on the host (also in the initrd as `/usr/bin/vmux-shim`).
    pub shim: PathBuf,
    /// What the initrd carries as `/init`.
    pub init: PathBuf,
    /// A static busybox on the host, for [`VmAssets::install_guest_tools`].
    pub busybox: PathBuf,
}

impl VmAssets {
    /// The manifest's location: `target/vm-assets/manifest` under the workspace root.
    pub fn manifest_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm-assets/manifest")
    }

    /// Reads the manifest: `Ok(None)` if there is none, an error if it is unreadable or names missing files.
    pub fn load() -> Result<Option<VmAssets>, String> {
        let path = Self::manifest_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let assets = Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for file in [
            &assets.kernel,
            &assets.initrd,
            &assets.vhost_device_vsock,
            &assets.qemu,
        ] {
            if !file.is_file() {
                return Err(format!(
                    "{} names {}, which is missing: run `cargo xtask vm-assets`",
                    path.display(),
                    file.display()
                ));
            }
        }
        Ok(Some(assets))
    }

    /// Parses manifest text (`key=value` lines, `#` comments).
    pub fn parse(text: &str) -> Result<VmAssets, String> {
        let mut map = std::collections::HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line without `=`: {line:?}"))?;
            map.insert(key.trim(), value.trim());
        }
        let get = |key: &str| -> Result<String, String> {
            map.get(key)
                .map(|v| v.to_string())
                .ok_or_else(|| format!("no `{key}=` line"))
        };
        let path = |key: &str| get(key).map(PathBuf::from);
        Ok(VmAssets {
            kernel: path("kernel")?,
            initrd: path("initrd")?,
            kernel_version: get("kernel_version")?,
            vhost_device_vsock: path("vhost_device_vsock")?,
            modules: get("modules")?
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
            qemu: path("qemu")?,
            agent: path("agent")?,
            shim: path("shim")?,
            init: path("init")?,
            busybox: path("busybox")?,
        })
    }

    /// Gives the guest a shell and the usual tools: the initrd carries none, so this copies the
    /// host's static busybox to `/usr/bin/busybox` with `vmux-shim cp` and installs its applet
    /// links there (`/usr/bin` is on the agent's `PATH`). Returns what was run, for logs.
    pub fn install_guest_tools(&self, addr: &str) -> Result<String, String> {
        let run = |args: &[&str]| -> Result<String, String> {
            let out = Command::new(&self.shim)
                .arg("-c")
                .arg(addr)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running {}: {e}", self.shim.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "`vmux-shim -c {addr} {}` failed ({}): {}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(format!("vmux-shim -c {addr} {}", args.join(" ")))
        };
        let busybox = self
            .busybox
            .to_str()
            .ok_or("the busybox path is not UTF-8")?;
        let copy = run(&["cp", busybox, ":/usr/bin/busybox"])?;
        let install = run(&[
            "exec",
            "--",
            "/usr/bin/busybox",
            "--install",
            "-s",
            "/usr/bin",
        ])?;
        Ok(format!("{copy}\n{install}"))
    }

    /// The kernel argument `vmux.modules=a,b,...` listing every module in load order.
    pub fn modules_arg(&self) -> String {
        format!("vmux.modules={}", self.modules.join(","))
    }
}

/// Whether VM tests must run (env `CI=true` or `VMUX_VM_TESTS=1`) rather than skip when assets are missing.
pub fn vm_tests_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("VMUX_VM_TESTS").is_ok_and(|v| v == "1")
}

/// Returns the VM assets, or `None` after printing a skip message when there are none; panics instead of
/// skipping when VM tests are required (see [`vm_tests_required`]) and on a broken manifest.
pub fn require_vm_assets() -> Option<VmAssets> {
    match VmAssets::load() {
        Ok(Some(assets)) => Some(assets),
        Ok(None) if !vm_tests_required() => {
            eprintln!(
                "skipping VM test: no {} (run `cargo xtask vm-assets`, or `cargo xtask test`)",
                VmAssets::manifest_path().display()
            );
            None
        }
        Ok(None) => panic!(
            "VM tests are required (CI=true or VMUX_VM_TESTS=1) but {} is missing: run `cargo xtask vm-assets`",
            VmAssets::manifest_path().display()
        ),
        Err(e) => panic!("VM assets are unusable: {e}"),
    }
}

/// Describes one guest to boot; [`VmBuilder::boot`] starts it.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    assets: VmAssets,
    initrd: Option<PathBuf>,
    virtio_ports: Vec<String>,
    isa_serial: bool,
    vsock: bool,
    kernel_args: Vec<String>,
    quiet: bool,
    memory_mib: u32,
    cpu: Option<String>,
}

impl VmBuilder {
    /// A guest with no links, 256 MiB, booting the assets' kernel and initrd. The kernel is not
    /// `quiet` by default: the agent logs through `/dev/kmsg` at info level, and its lines (the
    /// ready line the tests wait for among them) reach the console only at the default log level.
    pub fn new(assets: &VmAssets) -> Self {
        VmBuilder {
            assets: assets.clone(),
            initrd: None,
            virtio_ports: Vec::new(),
            isa_serial: false,
            vsock: false,
            kernel_args: Vec::new(),
            quiet: false,
            memory_mib: 256,
            cpu: None,
        }
    }

    /// Adds a virtio-serial port named `name` (the guest finds it in `/sys/class/virtio-ports/*/name`).
    pub fn virtio_serial(mut self, name: &str) -> Self {
        self.virtio_ports.push(name.to_string());
        self
    }

    /// Adds the ISA serial port ttyS1, backed on the host by a unix socket.
    pub fn isa_serial(mut self) -> Self {
        self.isa_serial = true;
        self
    }

    /// Adds a vhost-user-vsock device (guest CID 3) backed by a vhost-device-vsock process.
    pub fn vsock(mut self) -> Self {
        self.vsock = true;
        self
    }

    /// Appends one kernel command-line argument (e.g. `vmux.listen=vsock:1024`).
    pub fn kernel_arg(mut self, arg: impl Into<String>) -> Self {
        self.kernel_args.push(arg.into());
        self
    }

    /// Appends `vmux.modules=<every module in load order>`.
    pub fn load_modules(self) -> Self {
        let arg = self.assets.modules_arg();
        self.kernel_arg(arg)
    }

    /// Boots with or without the kernel's `quiet` argument (without it the console shows the kernel log).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Boots another initrd than the assets' one.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Sets the guest memory in MiB (also the size of the shared memfd backend).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets QEMU's `-cpu` model (default: QEMU's own, `qemu64` under TCG, which lacks SSE4.2
    /// and so the CRC32C instruction; `max` emulates every feature TCG can).
    pub fn cpu(mut self, model: impl Into<String>) -> Self {
        self.cpu = Some(model.into());
        self
    }

    /// The kernel command line this builder boots with.
    pub fn cmdline(&self) -> String {
        let mut args = vec!["console=ttyS0".to_string(), "panic=-1".to_string()];
        if self.quiet {
            args.push("quiet".to_string());
        }
        args.extend(self.kernel_args.iter().cloned());
        args.join(" ")
    }

    /// A guest with every link (vsock, the virtio-serial port `org.vmux.agent.0`, ttyS1) and an
    /// agent listening on each of them: what the demo and the link tests boot.
    pub fn all_links(assets: &VmAssets) -> Self {
        VmBuilder::new(assets)
            .vsock()
            .virtio_serial(AGENT_PORT_NAME)
            .isa_serial()
            .load_modules()
            .kernel_arg(format!("vmux.listen=vsock://any:{AGENT_VSOCK_PORT}"))
            .kernel_arg(format!("vmux.listen=virtio-serial://{AGENT_PORT_NAME}"))
            .kernel_arg("vmux.listen=tty:///dev/ttyS1")
    }

    /// Boots, then waits for the agent's ready line.
    pub fn boot_agent(self) -> Result<Vm, String> {
        let mut vm = self.boot()?;
        vm.wait_for_console("vmux-agent ready", BOOT_TIMEOUT)
            .map_err(|e| format!("the agent did not come up: {e}"))?;
        Ok(vm)
    }

    /// Starts vhost-device-vsock (if asked) and QEMU, and returns as soon as QEMU runs.
    pub fn boot(self) -> Result<Vm, String> {
        let dir = make_temp_dir()?;
        let mut vm = Vm {
            console: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            dir,
            qemu: None,
            vhost: None,
            virtio_ports: Vec::new(),
            isa_serial: None,
            vsock_uds: None,
            started: Instant::now(),
            exit: None,
        };
        // On any error below, dropping `vm` stops what was started and removes the folder.
        let mut qemu = Command::new(&self.assets.qemu);
        qemu.args([
            "-accel",
            "tcg",
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(["-nic", "none", "-m", &self.memory_mib.to_string()])
        .arg("-kernel")
        .arg(&self.assets.kernel)
        .arg("-initrd")
        .arg(self.initrd.as_ref().unwrap_or(&self.assets.initrd))
        .arg("-append")
        .arg(self.cmdline())
        .arg("-serial")
        .arg(format!("file:{}", vm.console.display()));
        if let Some(cpu) = &self.cpu {
            qemu.args(["-cpu", cpu]);
        }
        if self.isa_serial {
            let sock = vm.dir.join("ttyS1.sock");
            qemu.arg("-serial")
                .arg(format!("unix:{},server=on,wait=off", sock.display()));
            vm.isa_serial = Some(sock);
        }
        if !self.virtio_ports.is_empty() {
            qemu.args(["-device", "virtio-serial-pci"]);
            for (i, name) in self.virtio_ports.iter().enumerate() {
                let sock = vm.dir.join(format!("vport{i}.sock"));
                qemu.arg("-chardev")
                    .arg(format!(
                        "socket,id=vser{i},path={},server=on,wait=off",
                        sock.display()
                    ))
                    .arg("-device")
                    .arg(format!(
                        "virtserialport,chardev=vser{i},name={name},id=vport{i}"
                    ));
                vm.virtio_ports.push((name.clone(), sock));
            }
        }
        if self.vsock {
            let vhost_sock = vm.dir.join("vhost.sock");
            let uds = vm.dir.join("vsock.sock");
            vm.vhost = Some(start_vhost(&self.assets, &vm.dir, &vhost_sock, &uds)?);
            qemu.arg("-object")
                .arg(format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.memory_mib
                ))
                .args(["-numa", "node,memdev=mem"])
                .arg("-chardev")
                .arg(format!("socket,id=vus,path={}", vhost_sock.display()))
                .args(["-device", "vhost-user-vsock-pci,chardev=vus"]);
            vm.vsock_uds = Some(uds);
        }
        let log = fs::File::create(&vm.qemu_log)
            .map_err(|e| format!("creating {}: {e}", vm.qemu_log.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("duplicating a file handle: {e}"))?;
        vm.started = Instant::now();
        die_with_parent(&mut qemu);
        let child = qemu
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.assets.qemu.display()))?;
        vm.qemu = Some(child);
        Ok(vm)
    }
}

/// Starts vhost-device-vsock and waits until its vhost-user socket exists.
fn start_vhost(
    assets: &VmAssets,
    dir: &Path,
    vhost_sock: &Path,
    uds: &Path,
) -> Result<Child, String> {
    let log_path = dir.join("vhost-device-vsock.log");
    let log =
        fs::File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("duplicating a file handle: {e}"))?;
    let mut cmd = Command::new(&assets.vhost_device_vsock);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .arg("--vm")
        .arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            vhost_sock.display(),
            uds.display()
        ))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", assets.vhost_device_vsock.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vhost_sock.exists() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(format!(
                "vhost-device-vsock did not create {} ({status}); its log:\n{}",
                vhost_sock.display(),
                fs::read_to_string(&log_path).unwrap_or_default()
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(child)
}

/// A running guest; dropping it kills QEMU and vhost-device-vsock and removes its folder.
#[derive(Debug)]
pub struct Vm {
    dir: PathBuf,
    console: PathBuf,
    qemu_log: PathBuf,
    qemu: Option<Child>,
    vhost: Option<Child>,
    virtio_ports: Vec<(String, PathBuf)>,
    isa_serial: Option<PathBuf>,
    vsock_uds: Option<PathBuf>,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl Vm {
    /// The VM's private folder (sockets and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that receives the guest console (ttyS0).
    pub fn console_log(&self) -> &Path {
        &self.console
    }

    /// Everything the guest has written to its console so far.
    pub fn console(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// QEMU's process id.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(Child::id)
    }

    /// The host socket of the virtio-serial port `name` (QEMU listens; connect to it).
    pub fn virtio_serial_socket(&self, name: &str) -> Option<&Path> {
        self.virtio_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }

    /// The host socket of ttyS1 (QEMU listens; connect to it).
    pub fn isa_serial_socket(&self) -> Option<&Path> {
        self.isa_serial.as_deref()
    }

    /// The hybrid vsock socket: connect and send `CONNECT <port>\n` to reach a guest listener.
    pub fn vsock_uds(&self) -> Option<&Path> {
        self.vsock_uds.as_deref()
    }

    /// Where a host listener must bind to accept guest connections to CID 2 port `port` (`<uds>_<port>`).
    pub fn vsock_listen_path(&self, port: u32) -> Option<PathBuf> {
        self.vsock_uds.as_ref().map(|uds| {
            let mut path = uds.as_os_str().to_owned();
            path.push(format!("_{port}"));
            PathBuf::from(path)
        })
    }

    /// Binds the host listener for guest connections to CID 2 port `port`.
    pub fn vsock_listen(&self, port: u32) -> Result<UnixListener, String> {
        let path = self
            .vsock_listen_path(port)
            .ok_or("this VM was built without .vsock()")?;
        UnixListener::bind(&path).map_err(|e| format!("binding {}: {e}", path.display()))
    }

    /// Connects to the virtio-serial port `name`, retrying until QEMU listens.
    pub fn connect_virtio_serial(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<UnixStream, String> {
        let path = self
            .virtio_serial_socket(name)
            .ok_or_else(|| format!("this VM has no virtio-serial port {name:?}"))?;
        connect_unix(path, timeout)
    }

    /// Connects to ttyS1, retrying until QEMU listens.
    pub fn connect_isa_serial(&self, timeout: Duration) -> Result<UnixStream, String> {
        let path = self
            .isa_serial_socket()
            .ok_or("this VM was built without .isa_serial()")?;
        connect_unix(path, timeout)
    }

    /// Opens a hybrid vsock connection to guest port `port`: connects, sends `CONNECT`, waits for `OK`.
    /// Retries (until `timeout`) while the guest driver or listener is not up yet.
    pub fn vsock_connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, String> {
        let uds = self
            .vsock_uds()
            .ok_or("this VM was built without .vsock()")?;
        let deadline = Instant::now() + timeout;
        loop {
            let last = match hybrid_connect(uds, port, deadline) {
                Ok(stream) => return Ok(stream),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("vsock port {port}: {last}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the console contains `pattern`; returns the whole console text then.
    /// Fails early, quoting the console, if QEMU exits first.
    pub fn wait_for_console(&mut self, pattern: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if text.contains(pattern) {
                return Ok(text);
            }
            if let Some(status) = self.try_exit() {
                // Read once more: the last line may have landed just before the exit.
                let text = self.console();
                if text.contains(pattern) {
                    return Ok(text);
                }
                return Err(format!(
                    "QEMU exited ({status}) before the console showed {pattern:?}\n{}",
                    self.diagnostics()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the console did not show {pattern:?} within {timeout:?}\n{}",
                    self.diagnostics()
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for QEMU to exit by itself (guest poweroff, or a panic with `panic=-1` and `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "QEMU still runs after {timeout:?}\n{}",
                    self.diagnostics()
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Kills QEMU (SIGKILL, by PID) if it still runs and reaps it; returns its exit status.
    pub fn kill(&mut self) -> Result<ExitStatus, String> {
        if let Some(status) = self.try_exit() {
            return Ok(status);
        }
        let child = self.qemu.as_mut().ok_or("QEMU was never started")?;
        child
            .kill()
            .map_err(|e| format!("killing QEMU (pid {}): {e}", child.id()))?;
        let status = child
            .wait()
            .map_err(|e| format!("reaping QEMU (pid {}): {e}", child.id()))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// The console tail and QEMU's own messages, for error reports.
    pub fn diagnostics(&self) -> String {
        let tail = |text: String, lines: usize| {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        let qemu = fs::read_to_string(&self.qemu_log).unwrap_or_default();
        format!(
            "--- console tail ({}) ---\n{}\n--- qemu output ---\n{}\n---",
            self.console.display(),
            tail(self.console(), 40),
            tail(qemu, 20)
        )
    }

    /// Returns QEMU's exit status if it has exited (remembering it).
    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.qemu.as_mut() {
                self.exit = child.try_wait().ok().flatten();
            }
        }
        self.exit
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.qemu.is_some() {
            let _ = self.kill();
        }
        if let Some(mut vhost) = self.vhost.take() {
            let _ = vhost.kill();
            let _ = vhost.wait();
        }
        if std::env::var_os("VMUX_VM_KEEP").is_some() {
            eprintln!("VMUX_VM_KEEP: keeping {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Connects to a unix socket, retrying while it does not exist or nobody listens yet.
pub fn connect_unix(path: &Path, timeout: Duration) -> Result<UnixStream, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                thread::sleep(POLL)
            }
            Err(e) => return Err(format!("connecting to {}: {e}", path.display())),
        }
    }
}

/// One attempt of the hybrid vsock handshake (`CONNECT <port>\n`, answer `OK <n>\n`).
fn hybrid_connect(uds: &Path, port: u32, deadline: Instant) -> Result<UnixStream, String> {
    let mut stream =
        UnixStream::connect(uds).map_err(|e| format!("connecting to {}: {e}", uds.display()))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| format!("setting a read timeout: {e}"))?;
    // Read byte by byte: anything after the newline already belongs to the guest's stream.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(0) => return Err("closed before OK (no guest listener?)".into()),
            Ok(_) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => return Err("handshake reply longer than 64 bytes".into()),
            Err(e) => return Err(format!("waiting for OK: {e}")),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| format!("clearing the read timeout: {e}"))?;
    Ok(stream)
}

/// Makes the child get SIGKILL when the spawning thread ends (the harness normally kills it first).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and makes only the async-signal-safe prctl call.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Creates a fresh private folder for one VM (short path: unix socket paths are limited to 107 bytes).
fn make_temp_dir() -> Result<PathBuf, String> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    let base = if base.as_os_str().len() > 40 {
        PathBuf::from("/tmp")
    } else {
        base
    };
    for _ in 0..1000 {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("vmux-vm-{}-{n}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    }
    Err(format!(
        "could not create a fresh folder in {}",
        base.display()
    ))
}
