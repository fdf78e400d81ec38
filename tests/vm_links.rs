//! Real guests: `vmux-agent` as PID 1 of a minimal initrd under QEMU, driven from the host with the
//! real `vmux-shim` binary over every link a VM has: virtio-serial, hybrid vsock (through
//! vhost-device-vsock), ISA serial, and AF_VSOCK inside the guest over vsock_loopback.
//!
//! They run when `cargo xtask vm-assets` has prepared the assets, and are skipped with a message
//! otherwise; under `CI=true` or `VMUX_VM_TESTS=1` a missing asset fails them. One boot serves
//! several checks to keep CI short; VM tests in this file run one at a time (TCG guests on a
//! 2-core machine are slow enough without competing).

mod common;

use common::vm::{require_vm_assets, Vm, VmAssets, VmBuilder, BOOT_TIMEOUT};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A child process killed (by PID) and reaped when the test lets go of it, even on a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serialises the VM tests of this file.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

const PORT_NAME: &str = common::vm::AGENT_PORT_NAME;
const VSOCK_PORT: u32 = common::vm::AGENT_VSOCK_PORT;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the static shim with a deadline; kills it (by PID) if it overruns.
fn shim(assets: &VmAssets, args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Output {
    let mut child = Command::new(&assets.shim)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmux-shim");
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = wait_output(child, limit, &args.join(" "));
    if let Some(f) = feeder {
        let _ = f.join();
    }
    out
}

fn wait_output(mut child: Child, limit: Duration, what: &str) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for vmux-shim") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
            let err = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
            panic!(
                "`vmux-shim {what}` ran past {limit:?}\nstdout so far: {out}\nstderr so far: {err}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent's own CPU time from `vmux-shim info`, in seconds.
fn agent_cpu_seconds(info: &str) -> f64 {
    let line = info
        .lines()
        .find(|l| l.starts_with("agent cpu time:"))
        .expect("info shows the agent's CPU time");
    line.trim_start_matches("agent cpu time:")
        .trim()
        .trim_end_matches(" s")
        .parse()
        .expect("a number of seconds")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn scratch(vm: &Vm, name: &str) -> PathBuf {
    vm.dir().join(name)
}

/// Every check a fast link must pass: info, exec (stdout, stderr, codes, signals), cp 16 MiB both
/// ways, 16 concurrent execs through `serve`.
fn full_link_checks(assets: &VmAssets, vm: &Vm, addr: &str, expect_link: &str) {
    let t = Instant::now();
    let info = ok(
        &shim(assets, &["-c", addr, "info"], None, Duration::from_secs(60)),
        "info",
    );
    assert!(info.contains("pid 1:            yes"), "{info}");
    assert!(
        info.contains(&format!("link:             {expect_link}")),
        "{info}"
    );

    let out = shim(
        assets,
        &[
            "-c",
            addr,
            "exec",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let out = shim(
        assets,
        &["-c", addr, "exec", "--", "sh", "-c", "kill -TERM $$"],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(143), "{out:?}");

    // cp 16 MiB up and back down, checksummed by comparing the bytes.
    let data = pattern(16 << 20, 1);
    let up = scratch(vm, "up.bin");
    let down = scratch(vm, "down.bin");
    std::fs::write(&up, &data).unwrap();
    let up_s = up.to_str().unwrap();
    ok(
        &shim(
            assets,
            &["-c", addr, "cp", up_s, ":/tmp/big.bin"],
            None,
            Duration::from_secs(180),
        ),
        "cp up",
    );
    ok(
        &shim(
            assets,
            &["-c", addr, "cp", ":/tmp/big.bin", down.to_str().unwrap()],
            None,
            Duration::from_secs(180),
        ),
        "cp down",
    );
    assert!(
        std::fs::read(&down).unwrap() == data,
        "16 MiB came back different over {addr}"
    );
    let sum = ok(
        &shim(
            assets,
            &[
                "-c",
                addr,
                "exec",
                "--",
                "sh",
                "-c",
                "wc -c < /tmp/big.bin; rm /tmp/big.bin",
            ],
            None,
            Duration::from_secs(60),
        ),
        "wc",
    );
    assert_eq!(sum.trim(), (16 << 20).to_string());

    // 16 concurrent execs through one `serve`.
    let sock = scratch(vm, "serve.sock");
    let serve_addr = format!("unix://{}", sock.display());
    let serve_log = scratch(vm, "serve.log");
    let serve = Command::new(&assets.shim)
        .args(["-c", addr, "serve", "--listen", &serve_addr])
        .env("VMUX_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&serve_log).expect("serve log"))
        .spawn()
        .expect("start serve");
    let mut serve = KillOnDrop(serve);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(serve.0.try_wait().unwrap().is_none(), "serve exited early");
        assert!(
            Instant::now() < deadline,
            "serve never created {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let serve_addr = serve_addr.clone();
                s.spawn(move || {
                    let script =
                        format!("i={i}; while [ $i -gt 0 ]; do echo client-{i}; i=$((i-1)); done");
                    shim(
                        assets,
                        &["-c", &serve_addr, "exec", "--", "sh", "-c", &script],
                        None,
                        Duration::from_secs(120),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let serve_text = std::fs::read_to_string(&serve_log).unwrap_or_default();
    for (i, out) in outputs.iter().enumerate() {
        let want: String = (0..i).map(|_| format!("client-{i}\n")).collect();
        assert_eq!(
            ok(out, "exec through serve"),
            want,
            "client {i}; serve log:\n{serve_text}"
        );
    }
    drop(serve);
    eprintln!(
        "{addr}: info, exec, cp 16 MiB both ways, 16 execs through serve: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// The host disconnects in the middle of a command and comes back: the agent keeps serving and
/// burns no CPU while nobody is connected.
fn reconnect_checks(assets: &VmAssets, addr: &str) {
    let busy = Command::new(&assets.shim)
        .args(["-c", addr, "exec", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(KillOnDrop(busy)); // the host side vanishes mid-session
    let before = agent_cpu_seconds(&ok(
        &shim(assets, &["-c", addr, "info"], None, Duration::from_secs(60)),
        "info",
    ));
    let idle = Duration::from_secs(5);
    std::thread::sleep(idle);
    let after = agent_cpu_seconds(&ok(
        &shim(assets, &["-c", addr, "info"], None, Duration::from_secs(60)),
        "info after reconnect",
    ));
    let used = after - before;
    eprintln!("{addr}: agent CPU while the host was away for {idle:?}: {used:.3} s");
    assert!(
        used < 0.1,
        "the agent used {used:.3} s of CPU in {idle:?} without a host: it spins"
    );
}

fn boot_all_links(assets: &VmAssets) -> Vm {
    VmBuilder::all_links(assets)
        .boot_agent()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Powers the guest off through the agent and waits for QEMU to exit.
fn shut_down(assets: &VmAssets, vm: &mut Vm, addr: &str) -> std::process::ExitStatus {
    ok(
        &shim(
            assets,
            &["-c", addr, "shutdown"],
            None,
            Duration::from_secs(60),
        ),
        "shutdown",
    );
    vm.wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.diagnostics()))
}

#[test]
fn every_link_serves_the_real_shim_and_shutdown_powers_off() {
    let Some(assets) = require_vm_assets() else {
        return;
    };
    let _one = lock();
    let mut vm = boot_all_links(&assets);
    let virtio = format!(
        "unix://{}",
        vm.virtio_serial_socket(PORT_NAME).unwrap().display()
    );
    let hvsock = format!(
        "hvsock://{}:{VSOCK_PORT}",
        vm.vsock_uds().unwrap().display()
    );
    let isa = format!("unix://{}", vm.isa_serial_socket().unwrap().display());
    assets
        .install_guest_tools(&hvsock)
        .expect("copy busybox into the guest");

    full_link_checks(&assets, &vm, &virtio, "virtio-serial");
    // The agent offers retransmission on virtio-serial: a host that asks for a serial line
    // (`--serial`) runs with payload CRCs, sequence numbers and ACKs over the same port.
    let data = pattern(4 << 20, 3);
    let out = shim(
        &assets,
        &["--serial", "-c", &virtio, "exec", "--", "cat"],
        Some(&data),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "cat over virtio-serial with --serial: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == data,
        "4 MiB through cat with --serial came back different ({} bytes)",
        out.stdout.len()
    );
    reconnect_checks(&assets, &virtio);
    full_link_checks(&assets, &vm, &hvsock, "vsock");
    reconnect_checks(&assets, &hvsock);

    // ISA serial: slow (about 0.1 MiB/s under TCG), so 1 MiB through `cat`.
    let info = ok(
        &shim(
            &assets,
            &["-c", &isa, "info"],
            None,
            Duration::from_secs(60),
        ),
        "info over ISA serial",
    );
    assert!(info.contains("link:             tty"), "{info}");
    let uname = ok(
        &shim(
            &assets,
            &["-c", &isa, "exec", "--", "uname", "-a"],
            None,
            Duration::from_secs(60),
        ),
        "uname",
    );
    assert!(uname.starts_with("Linux"), "{uname}");
    let data = pattern(1 << 20, 2);
    let t = Instant::now();
    let out = shim(
        &assets,
        &["-c", &isa, "exec", "--", "cat"],
        Some(&data),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "cat over ISA serial: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first_diff = data.iter().zip(&out.stdout).position(|(a, b)| a != b);
    assert!(
        out.stdout == data,
        "1 MiB through cat over ISA serial came back different: {} bytes, first difference at {first_diff:?}",
        out.stdout.len()
    );
    eprintln!(
        "ISA serial: 1 MiB through cat in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Shutdown through the shim powers the VM off cleanly.
    let status = shut_down(&assets, &mut vm, &hvsock);
    assert!(status.success(), "QEMU exit status {status}");
    assert!(
        vm.console().contains("reboot: Power down"),
        "{}",
        vm.diagnostics()
    );
}

#[test]
fn auto_mode_picks_vsock_and_a_dial_before_the_agent_listens_retries() {
    let Some(assets) = require_vm_assets() else {
        return;
    };
    let _one = lock();
    let mut vm = VmBuilder::new(&assets)
        .vsock()
        .virtio_serial(PORT_NAME)
        .load_modules()
        .boot()
        .expect("boot");
    // Dial at once: the guest is still booting, so the hybrid-vsock handshake fails and retries.
    let hvsock = format!(
        "hvsock://{}:{VSOCK_PORT}",
        vm.vsock_uds().unwrap().display()
    );
    let t = Instant::now();
    let info = ok(
        &shim(
            &assets,
            &["--timeout", "90", "-c", &hvsock, "info"],
            None,
            Duration::from_secs(120),
        ),
        "early info",
    );
    eprintln!(
        "a dial made at boot succeeded after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        info.contains("link:             vsock"),
        "auto mode should pick vsock:\n{info}"
    );
    assert!(
        vm.console().contains("auto"),
        "the agent logs its choice:\n{}",
        vm.diagnostics()
    );
    shut_down(&assets, &mut vm, &hvsock);
}

#[test]
fn auto_mode_falls_back_to_virtio_serial_without_vsock() {
    let Some(assets) = require_vm_assets() else {
        return;
    };
    let _one = lock();
    let mut vm = VmBuilder::new(&assets)
        .virtio_serial(PORT_NAME)
        .load_modules()
        .boot_agent()
        .unwrap_or_else(|e| panic!("{e}"));
    let virtio = format!(
        "unix://{}",
        vm.virtio_serial_socket(PORT_NAME).unwrap().display()
    );
    let info = ok(
        &shim(
            &assets,
            &["-c", &virtio, "info"],
            None,
            Duration::from_secs(60),
        ),
        "info",
    );
    assert!(info.contains("link:             virtio-serial"), "{info}");
    shut_down(&assets, &mut vm, &virtio);
}

#[test]
fn af_vsock_inside_the_guest_allows_only_the_configured_cids() {
    let Some(assets) = require_vm_assets() else {
        return;
    };
    let _one = lock();
    // The agent's test mode runs the shim inside the guest against vsock://1:PORT over
    // vsock_loopback, once with --allow-cid 1 (must work) and once without (must be refused),
    // and reports on the console.
    let mut vm = VmBuilder::new(&assets)
        .vsock()
        .load_modules()
        .kernel_arg("vmux.test=vsock-loopback")
        .boot()
        .expect("boot");
    let allowed = vm
        .wait_for_console("vmux-test vsock-loopback allowed:", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.diagnostics()));
    assert!(
        allowed.contains("vmux-test vsock-loopback allowed: ok"),
        "{}",
        vm.diagnostics()
    );
    let refused = vm
        .wait_for_console("vmux-test vsock-loopback refused:", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.diagnostics()));
    assert!(
        refused.contains("vmux-test vsock-loopback refused: ok"),
        "{}",
        vm.diagnostics()
    );
    vm.wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.diagnostics()));
}

/// What `seq 1 5000000 | head -c LEN` prints: the numbers from 1, one per line, cut at `len`.
fn seq_output(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = 1u64;
    while out.len() < len {
        out.extend_from_slice(format!("{n}\n").as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}

/// A detachable exec printing 32 MiB over virtio-serial: its shim is killed with SIGKILL midway,
/// `ps` from a new shim lists it detached, and `attach` with the byte offsets of what the first
/// shim's files hold delivers the rest: old + new output is the whole output exactly once, and
/// the exit code comes through.
#[test]
fn detached_exec_survives_a_killed_shim_and_attach_resumes_32_mib_over_virtio_serial() {
    let Some(assets) = require_vm_assets() else {
        return;
    };
    let _one = lock();
    let mut vm = VmBuilder::new(&assets)
        .virtio_serial(PORT_NAME)
        .load_modules()
        .boot_agent()
        .unwrap_or_else(|e| panic!("{e}"));
    let virtio = format!(
        "unix://{}",
        vm.virtio_serial_socket(PORT_NAME).unwrap().display()
    );
    assets
        .install_guest_tools(&virtio)
        .expect("copy busybox into the guest");

    const LEN: usize = 32 << 20;
    let script = format!("echo start >&2; seq 1 5000000 | head -c {LEN}; echo end >&2; exit 7");
    let (out1, err1, id_file) = (
        scratch(&vm, "detach-out1"),
        scratch(&vm, "detach-err1"),
        scratch(&vm, "detach-id"),
    );
    let t = Instant::now();
    let first = Command::new(&assets.shim)
        .args(["-c", &virtio, "exec", "--detachable", "--id-file"])
        .arg(&id_file)
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out1).unwrap())
        .stderr(std::fs::File::create(&err1).unwrap())
        .spawn()
        .expect("start vmux-shim exec");
    let mut first = KillOnDrop(first);
    let len_of = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(id_file.exists() && len_of(&out1) >= 4 << 20) {
        if let Some(status) = first.0.try_wait().unwrap() {
            panic!(
                "the first shim exited ({status}) early: {}",
                std::fs::read_to_string(&err1).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "4 MiB never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.0.kill().unwrap(); // SIGKILL, by PID
    first.0.wait().unwrap();
    let id = std::fs::read_to_string(&id_file)
        .unwrap()
        .trim()
        .to_string();
    let (had_out, had_err) = (len_of(&out1), len_of(&err1));
    eprintln!(
        "virtio-serial: killed the first shim after {had_out} bytes ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    let ps = ok(
        &shim(
            &assets,
            &["-c", &virtio, "ps"],
            None,
            Duration::from_secs(60),
        ),
        "ps",
    );
    let line = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("ps does not list exec {id}:\n{ps}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[2..5], ["running", "no", "yes"], "{ps}");

    let t = Instant::now();
    let out = shim(
        &assets,
        &[
            "-c",
            &virtio,
            "attach",
            "--stdout-offset",
            &had_out.to_string(),
            "--stderr-offset",
            &had_err.to_string(),
            &id,
        ],
        None,
        Duration::from_secs(600),
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "attach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stdout = std::fs::read(&out1).unwrap();
    stdout.extend_from_slice(&out.stdout);
    let mut stderr = std::fs::read(&err1).unwrap();
    stderr.extend_from_slice(&out.stderr);
    let want = seq_output(LEN);
    assert_eq!(stdout.len(), want.len(), "length of old + new output");
    let first_diff = stdout.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        stdout == want,
        "old + new output differs, first at {first_diff:?}"
    );
    assert_eq!(String::from_utf8_lossy(&stderr), "start\nend\n");
    eprintln!(
        "virtio-serial: verified {} bytes; attach replayed and streamed {} in {:.1} s",
        stdout.len(),
        out.stdout.len(),
        t.elapsed().as_secs_f64()
    );

    // Delivered: the agent forgot it.
    let again = shim(
        &assets,
        &["-c", &virtio, "attach", &id],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(again.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("no exec {id}")),
        "{again:?}"
    );
    shut_down(&assets, &mut vm, &virtio);
}
