//! Test modes the VM tests select with `vmux.test=...` on the kernel command line, for checks
//! that can only run inside the guest. Results go to the kernel log (the console) as lines
//! `vmux-test NAME WHAT: ok (...)` or `vmux-test NAME WHAT: FAILED (...)`.
//!
//! `vsock-loopback`: AF_VSOCK end to end over `vsock_loopback`. Two child agents listen, one with
//! `--allow-cid 1` and one with the default allow-list (the host, CID 2 only); the initrd's own
//! `vmux-shim` dials each at `vsock://1:PORT`. The first must serve `info`; the second must
//! refuse the guest-local client, which is what keeps a process inside the guest away from a
//! root exec service.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Where the initrd carries the shim.
pub const SHIM: &str = "/usr/bin/vmux-shim";
const ALLOWED_PORT: u32 = 1024;
const DEFAULT_PORT: u32 = 1025;

/// Runs the `vsock-loopback` checks and logs their results; true when both passed.
pub fn vsock_loopback() -> bool {
    let agent = std::env::current_exe().unwrap_or_else(|_| "/init".into());
    let allowed = spawn_agent(
        &agent,
        &[
            "--listen",
            &format!("vsock://any:{ALLOWED_PORT}"),
            "--allow-cid",
            "1",
        ],
    );
    let default = spawn_agent(
        &agent,
        &["--listen", &format!("vsock://any:{DEFAULT_PORT}")],
    );
    let (Some(allowed), Some(default)) = (allowed, default) else {
        log::error!("vmux-test vsock-loopback allowed: FAILED (could not start the child agents)");
        return false;
    };
    let first = shim(&[
        "--timeout",
        "30",
        "-c",
        &format!("vsock://1:{ALLOWED_PORT}"),
        "info",
    ]);
    let first_ok = match &first {
        Some(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let link = text
                .lines()
                .find(|l| l.starts_with("link:"))
                .unwrap_or("")
                .to_string();
            log::info!("vmux-test vsock-loopback allowed: ok ({})", link.trim());
            true
        }
        other => {
            log::error!(
                "vmux-test vsock-loopback allowed: FAILED ({})",
                describe(other)
            );
            false
        }
    };
    // Give the second listener the same chance to come up, then expect a refusal.
    let second = shim(&[
        "--timeout",
        "5",
        "-c",
        &format!("vsock://1:{DEFAULT_PORT}"),
        "info",
    ]);
    let second_ok = match &second {
        Some(out) if !out.status.success() => {
            log::info!(
                "vmux-test vsock-loopback refused: ok ({})",
                describe(&second)
            );
            true
        }
        other => {
            log::error!(
                "vmux-test vsock-loopback refused: FAILED (a guest-local client was served: {})",
                describe(other)
            );
            false
        }
    };
    for mut child in [allowed, default] {
        let _ = child.kill();
        let _ = child.wait();
    }
    first_ok && second_ok
}

fn spawn_agent(agent: &std::path::Path, args: &[&str]) -> Option<Child> {
    let child = Command::new(agent).args(args).stdin(Stdio::null()).spawn();
    match child {
        Ok(child) => {
            // Let it bind before anyone dials (the shim retries anyway).
            std::thread::sleep(Duration::from_millis(200));
            Some(child)
        }
        Err(e) => {
            log::error!("vmux-test: starting {} failed: {e}", agent.display());
            None
        }
    }
}

fn shim(args: &[&str]) -> Option<Output> {
    Command::new(SHIM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| log::error!("vmux-test: running {SHIM}: {e}"))
        .ok()
}

fn describe(out: &Option<Output>) -> String {
    match out {
        None => "the shim did not run".into(),
        Some(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            format!(
                "exit {}: {}",
                out.status.code().map_or("signal".into(), |c| c.to_string()),
                err.trim()
            )
        }
    }
}
