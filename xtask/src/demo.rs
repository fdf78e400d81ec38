//! `cargo xtask demo`: boots one tiny VM whose `/init` is `vmux-agent`, then talks to the agent
//! with the real `vmux-shim` over each link the VM has (hybrid vsock, virtio-serial, ISA serial),
//! and powers the VM off through the agent. It prints what happens in plain words.

use crate::assets;
use crate::util::Result;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use vmux_vmtest::{VmAssets, VmBuilder, AGENT_PORT_NAME, AGENT_VSOCK_PORT};

/// Runs the demo.
pub fn demo(root: &Path) -> Result<()> {
    let started = Instant::now();
    println!("vmux demo: one tiny VM, three links, one protocol\n");
    println!(
        "[1/5] preparing the VM: Debian's cloud kernel, and an initrd whose /init is vmux-agent"
    );
    assets::vm_assets(root, &assets::Options::default())?;
    let assets = VmAssets::load()?.ok_or("the VM assets are missing after vm-assets ran")?;
    println!(
        "      initrd: {} ({} KiB, no shell, no busybox)\n",
        assets.initrd.display(),
        file_kib(&assets.initrd)
    );

    println!("[2/5] booting QEMU (software emulation, no KVM) with a vsock device, a virtio-serial port and a second UART");
    let boot_started = Instant::now();
    let mut vm = VmBuilder::all_links(&assets).boot_agent()?;
    println!(
        "      the agent is up as PID 1, {:.1} s after QEMU started\n",
        boot_started.elapsed().as_secs_f64()
    );

    let vsock = vm.vsock_uds().ok_or("no vsock socket")?.to_path_buf();
    let virtio = vm
        .virtio_serial_socket(AGENT_PORT_NAME)
        .ok_or("no virtio-serial socket")?
        .to_path_buf();
    let isa = vm
        .isa_serial_socket()
        .ok_or("no ISA serial socket")?
        .to_path_buf();
    let links = [
        (
            "hybrid vsock",
            format!("hvsock://{}:{AGENT_VSOCK_PORT}", vsock.display()),
            "the host end of a virtio-vsock device, as Firecracker and Cloud Hypervisor expose it: a unix socket and a CONNECT line",
        ),
        (
            "virtio-serial",
            format!("unix://{}", virtio.display()),
            "a virtio console port; QEMU gives the host a unix socket",
        ),
        ("ISA serial", format!("unix://{}", isa.display()), "a plain 16550 UART (/dev/ttyS1 in the guest): the fallback when nothing else exists"),
    ];
    println!(
        "[3/5] the initrd has no shell and no tools: copy a static busybox in with `vmux-shim cp`"
    );
    let tools = assets.install_guest_tools(&links[0].1)?;
    for line in tools.lines() {
        println!("  $ {line}");
    }
    println!("\n[4/5] the same commands over each link");
    let mut failures = Vec::new();
    for (name, addr, what) in &links {
        println!("\n  == {name}: {what}");
        for args in [&["info"][..], &["exec", "--", "uname", "-a"][..]] {
            if let Err(e) = shim(&assets, addr, args) {
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    println!("\n[5/5] powering the VM off through the agent");
    shim(&assets, &links[0].1, &["shutdown"])?;
    let status = vm
        .wait_exit(Duration::from_secs(30))
        .map_err(|e| format!("the VM did not power off: {e}"))?;
    println!(
        "      QEMU exited ({status}); the whole demo took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        println!("\nall three links work.");
        Ok(())
    } else {
        Err(format!(
            "some commands failed:\n  {}",
            failures.join("\n  ")
        ))
    }
}

/// Runs `vmux-shim -c ADDR ARGS...`, printing the command and its output indented.
fn shim(assets: &VmAssets, addr: &str, args: &[&str]) -> Result<()> {
    println!("  $ vmux-shim -c {addr} {}", args.join(" "));
    let t = Instant::now();
    let out = Command::new(&assets.shim)
        .arg("-c")
        .arg(addr)
        .args(args)
        .output()
        .map_err(|e| format!("could not run {}: {e}", assets.shim.display()))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("    (stderr) {line}");
    }
    println!(
        "    -> exit {} in {:.2} s",
        out.status
            .code()
            .map_or("by signal".into(), |c| c.to_string()),
        t.elapsed().as_secs_f64()
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`vmux-shim -c {addr} {}` failed ({})",
            args.join(" "),
            out.status
        ))
    }
}

fn file_kib(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / 1024)
}
