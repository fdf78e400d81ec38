//! Smoke test of the VM harness: the default assets boot a guest whose kernel starts and runs `/init`, and
//! the VM then exits by itself (poweroff or init exit with `panic=-1 -no-reboot`) or is killed cleanly.
//!
//! Skips with a message when `cargo xtask vm-assets` has not run, unless `CI=true` or `VMUX_VM_TESTS=1`.

mod common;

use common::vm::{require_vm_assets, VmAssets, VmBuilder, BOOT_TIMEOUT};
use std::time::Duration;

#[test]
fn guest_kernel_boots_runs_init_and_stops() {
    let Some(assets) = require_vm_assets() else {
        return;
    };
    let mut vm = VmBuilder::new(&assets)
        .quiet(false)
        .load_modules()
        .boot()
        .expect("QEMU starts");
    vm.wait_for_console("Linux version", BOOT_TIMEOUT)
        .expect("the kernel starts");
    vm.wait_for_console("Run /init as init process", BOOT_TIMEOUT)
        .expect("the kernel runs /init from the initrd");
    // The agent may power off, exit (a kernel panic, then QEMU exits because of -no-reboot) or keep
    // serving; in the last case the harness must still stop it cleanly.
    let status = match vm.wait_exit(Duration::from_secs(15)) {
        Ok(status) => status,
        Err(_) => vm.kill().expect("QEMU can be killed"),
    };
    let console = vm.console();
    assert!(
        !console.contains("Kernel panic") || console.contains("Attempted to kill init"),
        "the guest panicked for another reason than init exiting:\n{}",
        vm.diagnostics()
    );
    eprintln!(
        "guest stopped ({status}) {:.1} s after QEMU started",
        vm.started().elapsed().as_secs_f64()
    );
}

#[test]
fn manifest_lists_paths_and_modules_in_load_order() {
    let text = "# comment\nkernel=/k\ninitrd=/i\nkernel_version=6.1.0-1-cloud-amd64\n\
                vhost_device_vsock=/v\nmodules=virtio_ring,virtio\nqemu=/q\nagent=/a\nshim=/s\ninit=/a\n\
                busybox=/b\n";
    let assets = VmAssets::parse(text).unwrap();
    assert_eq!(assets.modules, ["virtio_ring", "virtio"]);
    assert_eq!(assets.modules_arg(), "vmux.modules=virtio_ring,virtio");
    assert!(VmAssets::parse("kernel=/k\n")
        .unwrap_err()
        .contains("initrd"));
}
