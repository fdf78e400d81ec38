//! `vmux-bench vm`: throughput into and out of a real guest, vmux against a raw copy through the
//! same device in the same boot.
//!
//! One TCG guest is booted with the harness of `vmux-vmtest` (`VmBuilder::all_links`, the agent
//! as PID 1) plus a second virtio-serial port, [`RAW_PORT`], that the agent does not own. The
//! guest tool `vmux-rawio` (built static by `cargo xtask bench vm`) is copied in with the copy
//! service and started twice through `exec`: once on [`RAW_VSOCK_PORT`] and once on the raw
//! port, where it moves bytes with plain `read`/`write` of 64 KiB. Then, per device and
//! direction, in interleaved repetitions:
//!
//! - **raw**: the host talks to `vmux-rawio` directly (the QEMU chardev socket of the raw port,
//!   or a hybrid vsock connection to its port): a command, N bytes, a one-byte acknowledgement.
//! - **vmux exec**: the agent runs `vmux-rawio sink` (stdin to EOF) or `vmux-rawio source N`
//!   (N bytes to stdout); the bench writes stdin or reads stdout over its vmux session, timed
//!   from the first byte to the last (the process is started before the clock runs).
//! - **vmux cp**: `copy_put` of N bytes to `/tmp` (a tmpfs) and `copy_get` of that file back,
//!   timed over the whole call, as `vmux-shim cp` does it (with its CRC32C on both ends).
//!
//! The agent's CPU time (from the `info` service, read before and after each transfer) is shown
//! per GiB: under TCG the guest has one emulated CPU, so a figure near the transfer's wall time
//! per GiB means the agent is what limits it. (On the raw rows it is the agent idling.)
//!
//! The host side of every vmux case is this process with the library's client API, over the
//! address `vmux-shim` would use (`unix://` chardev socket, `hvsock://` UDS), with the settings
//! the shim uses by default (`Config::new`; the agent asks for payload CRCs on virtio-serial,
//! so they are on there).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vmux::mux::Config;
use vmux::reactor::{random_nonce, Reactor};
use vmux::service::{self, ExecRequest, RemoteProcess};
use vmux::session::Session;
use vmux::transport::{self, Address};
use vmux::wire::Role;
use vmux_vmtest::{Vm, VmAssets, VmBuilder, AGENT_PORT_NAME, AGENT_VSOCK_PORT};

use crate::measure;

/// The virtio-serial port that only `vmux-rawio` opens.
const RAW_PORT: &str = "org.vmux.bench.raw";
/// The vsock port `vmux-rawio` listens on.
const RAW_VSOCK_PORT: u32 = 5001;
/// Where `vmux-rawio` goes in the guest.
const GUEST_RAWIO: &str = "/usr/bin/vmux-rawio";
/// The file the cp cases write and read (the guest's `/tmp` is in RAM).
const GUEST_FILE: &str = "/tmp/vmux-bench.bin";
/// Bytes per transfer unless `--size` says otherwise.
pub const DEFAULT_SIZE: u64 = 64 << 20;
/// The largest transfer: the cp cases keep the file and its replacement in the guest's RAM.
const MAX_SIZE: u64 = 128 << 20;
/// Bytes per write on the host side.
const BUF: usize = 64 << 10;
/// Budget for one connection or transfer on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The guest devices measured.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Device {
    VirtioSerial,
    Vsock,
}

impl Device {
    fn name(self) -> &'static str {
        match self {
            Device::VirtioSerial => "virtio-serial",
            Device::Vsock => "hybrid vsock",
        }
    }
}

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dir {
    ToGuest,
    FromGuest,
}

/// How the bytes go.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Raw,
    Exec,
    Cp,
}

impl Way {
    fn label(self, dir: Dir) -> &'static str {
        match (self, dir) {
            (Way::Raw, _) => "raw (vmux-rawio on a second port)",
            (Way::Exec, Dir::ToGuest) => "vmux exec, stdin of `vmux-rawio sink`",
            (Way::Exec, Dir::FromGuest) => "vmux exec, stdout of `vmux-rawio source N`",
            (Way::Cp, Dir::ToGuest) => "vmux cp (copy_put to /tmp)",
            (Way::Cp, Dir::FromGuest) => "vmux cp (copy_get from /tmp)",
        }
    }
}

/// One device's two ends: the raw connection and the vmux session.
struct Ends {
    raw: UnixStream,
    session: Session,
    _reactor: Reactor,
}

/// The running guest and everything connected to it.
struct Bench {
    vm: Vm,
    virtio: Ends,
    vsock: Ends,
    servers: Vec<RemoteProcess>,
}

/// Runs the VM bench and prints its table; `rawio` is the static guest tool.
pub fn run(rawio: Option<&str>, size: u64, reps: usize, cpu: Option<&str>) {
    let Some(rawio) = rawio else {
        eprintln!("vm: needs --rawio PATH (a static vmux-rawio); `cargo xtask bench vm` builds it");
        std::process::exit(2);
    };
    if size == 0 || size > MAX_SIZE {
        eprintln!("vm: --size must be between 1 byte and 128M (the guest keeps cp's file in RAM)");
        std::process::exit(2);
    }
    let assets = match VmAssets::load() {
        Ok(Some(a)) => a,
        Ok(None) => {
            eprintln!("vm: no VM assets: run `cargo xtask vm-assets` (or `cargo xtask bench vm`)");
            std::process::exit(2);
        }
        Err(e) => panic!("VM assets are unusable: {e}"),
    };
    let started = Instant::now();
    let mut bench = setup(&assets, Path::new(rawio), cpu);
    let boot = started.elapsed();

    let mut cases = Vec::new();
    for device in [Device::VirtioSerial, Device::Vsock] {
        for dir in [Dir::ToGuest, Dir::FromGuest] {
            for way in [Way::Raw, Way::Exec, Way::Cp] {
                cases.push((device, dir, way));
            }
        }
    }
    // One untimed pass with small transfers: TCG translates guest code on first use.
    for &(device, dir, way) in &cases {
        bench.transfer(device, dir, way, (size / 8).max(1 << 20));
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut agent_cpu: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for rep in 0..reps {
        for (i, &(device, dir, way)) in cases.iter().enumerate() {
            eprint!(
                "\r  rep {}/{reps}: {} {:?} {:?}{:<20}",
                rep + 1,
                device.name(),
                dir,
                way,
                ""
            );
            let cpu0 = bench.agent_cpu(device);
            let secs = bench.transfer(device, dir, way, size).as_secs_f64();
            let cpu = bench.agent_cpu(device) - cpu0;
            samples[i].push(size as f64 / (1 << 20) as f64 / secs);
            agent_cpu[i].push(cpu / (size as f64 / (1u64 << 30) as f64));
        }
    }
    eprintln!("\r{:<70}", "");
    let measured = started.elapsed();
    bench.finish();

    println!(
        "## In the VM: throughput over virtio-serial and hybrid vsock ({} MiB per transfer, {reps} reps, TCG guest, -cpu {})\n",
        size >> 20,
        cpu.unwrap_or("default (qemu64)")
    );
    println!(
        "Boot, copy of vmux-rawio and start of its servers: {:.1} s; whole bench: {:.1} s.\n",
        boot.as_secs_f64(),
        measured.as_secs_f64()
    );
    println!("| device | direction | case | MiB/s median | MiB/s min–max | ratio vs raw (median) | ratio per rep min–max | agent CPU s/GiB median |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (i, &(device, dir, way)) in cases.iter().enumerate() {
        let raw = cases
            .iter()
            .position(|&c| c == (device, dir, Way::Raw))
            .expect("a raw case per device and direction");
        let (med, lo, hi) = measure::summary(&samples[i]);
        let base = measure::summary(&samples[raw]).0;
        let per_rep: Vec<f64> = samples[i]
            .iter()
            .zip(&samples[raw])
            .map(|(v, r)| v / r)
            .collect();
        let (_, rlo, rhi) = measure::summary(&per_rep);
        let direction = match dir {
            Dir::ToGuest => "host → guest",
            Dir::FromGuest => "guest → host",
        };
        let cpu = measure::summary(&agent_cpu[i]).0;
        println!(
            "| {} | {direction} | {} | {med:.0} | {lo:.0}–{hi:.0} | {:.2}× | {rlo:.2}–{rhi:.2}× | {cpu:.1} |",
            device.name(),
            way.label(dir),
            med / base
        );
    }
    println!();
}

/// Boots the guest, connects both sessions, installs `vmux-rawio` and starts its two servers.
fn setup(assets: &VmAssets, rawio: &Path, cpu: Option<&str>) -> Bench {
    eprintln!("  booting the guest (TCG) ...");
    let mut builder = VmBuilder::all_links(assets)
        .virtio_serial(RAW_PORT)
        .memory_mib(512);
    if let Some(cpu) = cpu {
        builder = builder.cpu(cpu);
    }
    let vm = builder.boot_agent().unwrap_or_else(|e| panic!("{e}"));
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        panic!("{what}: {e}\n{}", vm.diagnostics())
    };
    let virtio_addr = format!(
        "unix://{}",
        vm.virtio_serial_socket(AGENT_PORT_NAME)
            .expect("the agent's port")
            .display()
    );
    let vsock_addr = format!(
        "hvsock://{}:{AGENT_VSOCK_PORT}",
        vm.vsock_uds().expect("vsock").display()
    );
    let (virtio_session, virtio_reactor) =
        connect(&virtio_addr).unwrap_or_else(|e| fail(&virtio_addr, &e));
    let (vsock_session, vsock_reactor) =
        connect(&vsock_addr).unwrap_or_else(|e| fail(&vsock_addr, &e));

    let file = File::open(rawio).unwrap_or_else(|e| fail(&rawio.display().to_string(), &e));
    let len = file.metadata().expect("metadata").len();
    service::copy_put(&vsock_session, &file, GUEST_RAWIO, 0o755, len, &mut |_| {})
        .unwrap_or_else(|e| fail("copying vmux-rawio into the guest", &e));
    let servers = vec![
        start_server(&vsock_session, &["vsock", &RAW_VSOCK_PORT.to_string()])
            .unwrap_or_else(|e| fail("starting vmux-rawio vsock", &e)),
        start_server(&vsock_session, &["virtio", RAW_PORT])
            .unwrap_or_else(|e| fail("starting vmux-rawio virtio", &e)),
    ];
    let raw_virtio = vm
        .connect_virtio_serial(RAW_PORT, TIMEOUT)
        .unwrap_or_else(|e| fail("connecting to the raw port", &e));
    let raw_vsock = vm
        .vsock_connect(RAW_VSOCK_PORT, TIMEOUT)
        .unwrap_or_else(|e| fail("connecting to the raw vsock port", &e));
    Bench {
        vm,
        virtio: Ends {
            raw: raw_virtio,
            session: virtio_session,
            _reactor: virtio_reactor,
        },
        vsock: Ends {
            raw: raw_vsock,
            session: vsock_session,
            _reactor: vsock_reactor,
        },
        servers,
    }
}

/// Dials `addr` and waits for the agent's HELLO, as `vmux-shim -c ADDR` does.
fn connect(addr: &str) -> Result<(Session, Reactor), String> {
    let addr: Address = addr.parse().map_err(|e| format!("{e}"))?;
    let link = transport::dial(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    let reactor = Reactor::spawn().map_err(|e| e.to_string())?;
    let session = reactor
        .add_link(link, Config::new(Role::Client, random_nonce()))
        .map_err(|e| e.to_string())?;
    session
        .wait_established(TIMEOUT)
        .map_err(|e| e.to_string())?;
    Ok((session, reactor))
}

/// Starts `vmux-rawio ARGS` in the guest and waits for its `ready` line.
fn start_server(session: &Session, args: &[&str]) -> Result<RemoteProcess, String> {
    let mut req = ExecRequest::new(std::iter::once(GUEST_RAWIO).chain(args.iter().copied()));
    req.env.push("VMUX_RAWIO_IN_GUEST=1".into());
    let mut process = service::exec(session, &req).map_err(|e| e.to_string())?;
    let stdout = process.take_stdout().ok_or("no stdout")?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match (&stdout).read(&mut byte) {
            Ok(0) => {
                let mut err = String::new();
                if let Some(stderr) = process.take_stderr() {
                    let _ = (&stderr).read_to_string(&mut err);
                }
                return Err(format!("exited before it was ready: {err}"));
            }
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    if line != b"ready\n" {
        return Err(format!("said {:?}", String::from_utf8_lossy(&line)));
    }
    Ok(process)
}

impl Bench {
    /// Moves `size` bytes one way and returns how long it took.
    fn transfer(&mut self, device: Device, dir: Dir, way: Way, size: u64) -> Duration {
        let ends = match device {
            Device::VirtioSerial => &mut self.virtio,
            Device::Vsock => &mut self.vsock,
        };
        let result = match (way, dir) {
            (Way::Raw, Dir::ToGuest) => raw_to_guest(&mut ends.raw, size),
            (Way::Raw, Dir::FromGuest) => raw_from_guest(&mut ends.raw, size),
            (Way::Exec, Dir::ToGuest) => exec_to_guest(&ends.session, size),
            (Way::Exec, Dir::FromGuest) => exec_from_guest(&ends.session, size),
            (Way::Cp, Dir::ToGuest) => cp_to_guest(&ends.session, size),
            (Way::Cp, Dir::FromGuest) => cp_from_guest(&ends.session, size),
        };
        result.unwrap_or_else(|e| {
            panic!(
                "{} {dir:?} {way:?}: {e}\n{}",
                device.name(),
                self.vm.diagnostics()
            )
        })
    }

    /// The agent's CPU time so far in seconds (user + system, from the `info` service).
    fn agent_cpu(&self, device: Device) -> f64 {
        let session = match device {
            Device::VirtioSerial => &self.virtio.session,
            Device::Vsock => &self.vsock.session,
        };
        let info = service::info(session).unwrap_or_else(|e| panic!("info: {e}"));
        info.cpu_time_us.unwrap_or(0) as f64 / 1e6
    }

    /// Stops the raw servers and powers the guest off (dropping the VM kills QEMU otherwise).
    fn finish(mut self) {
        for server in self.servers.drain(..) {
            let _ = server.abort();
        }
        if service::shutdown(&self.vsock.session, false).is_ok() {
            let _ = self.vm.wait_exit(Duration::from_secs(30));
        }
    }
}

/// Writes `size` zero bytes to `w` in 64 KiB writes.
fn write_zeros(mut w: impl Write, size: u64) -> io::Result<()> {
    let buf = vec![0u8; BUF];
    let mut left = size;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads `r` to EOF (or `limit` bytes, if given) and returns the count.
fn drain(mut r: impl Read, limit: Option<u64>) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let want = match limit {
            Some(l) if total >= l => return Ok(total),
            Some(l) => (l - total).min(BUF as u64) as usize,
            None => BUF,
        };
        match r.read(&mut buf[..want]) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn command(op: u8, size: u64) -> [u8; 9] {
    let mut cmd = [op; 9];
    cmd[1..].copy_from_slice(&size.to_le_bytes());
    cmd
}

fn raw_to_guest(raw: &mut UnixStream, size: u64) -> Result<Duration, String> {
    let t = Instant::now();
    raw.write_all(&command(b'R', size))
        .and_then(|()| write_zeros(&mut *raw, size))
        .map_err(|e| format!("writing: {e}"))?;
    let mut ack = [0u8; 1];
    raw.read_exact(&mut ack)
        .map_err(|e| format!("waiting for the acknowledgement: {e}"))?;
    let elapsed = t.elapsed();
    if ack != *b"K" {
        return Err(format!("acknowledged with {ack:?}"));
    }
    Ok(elapsed)
}

fn raw_from_guest(raw: &mut UnixStream, size: u64) -> Result<Duration, String> {
    let t = Instant::now();
    raw.write_all(&command(b'S', size))
        .map_err(|e| format!("sending the command: {e}"))?;
    let got = drain(&mut *raw, Some(size)).map_err(|e| format!("reading: {e}"))?;
    let elapsed = t.elapsed();
    if got != size {
        return Err(format!("closed after {got} of {size} bytes"));
    }
    raw.write_all(b"K")
        .map_err(|e| format!("acknowledging: {e}"))?;
    Ok(elapsed)
}

fn exec_to_guest(session: &Session, size: u64) -> Result<Duration, String> {
    let mut req = ExecRequest::new([GUEST_RAWIO, "sink"]);
    req.stdin = true;
    let mut process = service::exec(session, &req).map_err(|e| e.to_string())?;
    let stdin = process.take_stdin().ok_or("no stdin")?;
    let stdout = process.take_stdout().ok_or("no stdout")?;
    let t = Instant::now();
    write_zeros(&stdin, size).map_err(|e| format!("writing stdin: {e}"))?;
    stdin.shutdown_write().map_err(|e| e.to_string())?;
    let mut count = String::new();
    (&stdout)
        .read_to_string(&mut count)
        .map_err(|e| format!("reading stdout: {e}"))?;
    let elapsed = t.elapsed();
    let status = process.wait().map_err(|e| e.to_string())?;
    if !status.success() || count.trim() != size.to_string() {
        return Err(format!("sink said {count:?} and ended with {status:?}"));
    }
    Ok(elapsed)
}

fn exec_from_guest(session: &Session, size: u64) -> Result<Duration, String> {
    let mut req = ExecRequest::new([GUEST_RAWIO, "source", &size.to_string()]);
    req.stdin = true;
    let mut process = service::exec(session, &req).map_err(|e| e.to_string())?;
    let stdin = process.take_stdin().ok_or("no stdin")?;
    let stdout = process.take_stdout().ok_or("no stdout")?;
    let t = Instant::now();
    (&stdin)
        .write_all(b"g")
        .map_err(|e| format!("writing stdin: {e}"))?;
    stdin.shutdown_write().map_err(|e| e.to_string())?;
    let got = drain(&stdout, None).map_err(|e| format!("reading stdout: {e}"))?;
    let elapsed = t.elapsed();
    let status = process.wait().map_err(|e| e.to_string())?;
    if !status.success() || got != size {
        return Err(format!("got {got} of {size} bytes; ended with {status:?}"));
    }
    Ok(elapsed)
}

fn cp_to_guest(session: &Session, size: u64) -> Result<Duration, String> {
    let t = Instant::now();
    let source = io::repeat(0).take(size);
    service::copy_put(session, source, GUEST_FILE, 0o644, size, &mut |_| {})
        .map_err(|e| e.to_string())?;
    Ok(t.elapsed())
}

fn cp_from_guest(session: &Session, size: u64) -> Result<Duration, String> {
    let t = Instant::now();
    let report = service::copy_get(session, GUEST_FILE, io::sink(), &mut |_| {})
        .map_err(|e| e.to_string())?;
    let elapsed = t.elapsed();
    if report.bytes != size {
        return Err(format!("{} of {size} bytes", report.bytes));
    }
    Ok(elapsed)
}
