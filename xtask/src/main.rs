//! Project automation for vmux, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! Each command is one arm of the `match` in [`main`] and one line in [`USAGE`]; to add a command, add both
//! (and a module if it is more than a few lines). xtask uses the standard library only: it shells out to
//! apt-get, dpkg and cargo, and writes the initrd itself.

mod assets;
mod cpio;
mod demo;
mod elf;
mod fuzz;
mod util;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use util::Result;

/// The help text.
const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  vm-assets [--init PATH]  prepare what VM tests need, cached in target/vm-assets/:
                           host packages (qemu-system-x86, kmod, socat), the Debian cloud
                           kernel and its virtio/vsock modules, vhost-device-vsock 0.3.0,
                           static vmux-agent and vmux-shim, initrd.cpio and a manifest.
                           --init PATH puts the static executable PATH at /init instead
                           of vmux-agent (run again without it to go back).
  test [ARGS...]           vm-assets, then `cargo test --workspace ARGS...` with
                           VMUX_VM_TESTS=1 (VM tests fail instead of skipping), then a
                           short fuzz pass (VMUX_FUZZ_SECONDS per target, default 15)
  demo                     boot a VM with vmux-agent as PID 1 and run vmux-shim info and
                           exec over hybrid vsock, virtio-serial and ISA serial, then
                           power it off
  fuzz [--seconds N] [TARGET...]
                           run the cargo-fuzz targets in fuzz/ for N s each (default 60),
                           installing cargo-fuzz into target/tools/ if needed
  bench [NAME] [OPTIONS]   `cargo run --release -p vmux-bench -- NAME OPTIONS`: throughput,
                           latency, pty, footprint, vm or all (see BENCHMARKS.md); vm and
                           all first run vm-assets and build the guest tool vmux-rawio
  help, --help, -h         show this text
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    let result = match command.as_deref() {
        None | Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some("vm-assets") => vm_assets(&rest).map(|_| ExitCode::SUCCESS),
        Some("test") => test(&rest),
        Some("demo") => demo::demo(&workspace_root()).map(|_| ExitCode::SUCCESS),
        Some("fuzz") => fuzz::Options::parse(&rest)
            .and_then(|o| fuzz::fuzz(&workspace_root(), &o))
            .map(|_| ExitCode::SUCCESS),
        Some("bench") => bench(&rest),
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's folder).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

/// `cargo xtask vm-assets [--init PATH]`.
fn vm_assets(args: &[String]) -> Result<()> {
    let mut opts = assets::Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--init" => {
                let path = args.next().ok_or("--init needs a path")?;
                opts.init = Some(PathBuf::from(path));
            }
            _ if arg.starts_with("--init=") => {
                opts.init = Some(PathBuf::from(&arg["--init=".len()..]));
            }
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("vm-assets: unknown option `{other}`")),
        }
    }
    assets::vm_assets(&workspace_root(), &opts).map(drop)
}

/// `cargo xtask bench [NAME] [OPTIONS]`: the benchmarks of the `vmux-bench` crate. For `vm`
/// (and `all`) it first prepares the VM assets and the static guest tool `vmux-rawio`.
fn bench(args: &[String]) -> Result<ExitCode> {
    let mut args = args.to_vec();
    if matches!(bench_name(&args), "vm" | "all") && !args.iter().any(|a| a == "--rawio") {
        let root = workspace_root();
        assets::vm_assets(&root, &assets::Options::default())?;
        let rawio = assets::static_tool(&root, "vmux-vmtest", "vmux-rawio")?;
        args.push("--rawio".into());
        args.push(rawio.display().to_string());
    }
    let mut cmd = util::cargo();
    cmd.current_dir(workspace_root())
        .args(["run", "--release", "-p", "vmux-bench", "--"])
        .args(&args);
    let status = cmd
        .status()
        .map_err(|e| format!("could not start cargo run: {e}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The bench a `bench` command line names (its first word that is neither an option nor an
/// option's value); `all` when it names none.
fn bench_name(args: &[String]) -> &str {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--size" | "--count" | "--reps" | "--agent" | "--rawio" | "--guest-cpu" => {
                it.next();
            }
            a if a.starts_with('-') => {}
            name => return name,
        }
    }
    "all"
}

/// `cargo xtask test [ARGS...]`: assets, then the whole workspace's tests with VM tests required.
fn test(args: &[String]) -> Result<ExitCode> {
    if args.iter().any(|a| a == "--help" || a == "-h") && !args.iter().any(|a| a == "--") {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    assets::vm_assets(&workspace_root(), &assets::Options::default())?;
    let mut cmd = util::cargo();
    cmd.current_dir(workspace_root())
        .env("VMUX_VM_TESTS", "1")
        .args(["test", "--workspace"])
        .args(args);
    println!("xtask: running {} (VMUX_VM_TESTS=1)", util::describe(&cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("could not start cargo test: {e}"))?;
    if !status.success() {
        return Ok(ExitCode::FAILURE);
    }
    let seconds = match std::env::var("VMUX_FUZZ_SECONDS") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("VMUX_FUZZ_SECONDS={v} is not a number"))?,
        Err(_) => 15,
    };
    if seconds > 0 {
        if !fuzz::has_cxx() {
            return Err(
                "the fuzz pass needs a C++ compiler for libFuzzer: apt-get install g++".into(),
            );
        }
        fuzz::fuzz(
            &workspace_root(),
            &fuzz::Options {
                seconds,
                targets: Vec::new(),
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::bench_name;

    fn name(args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        bench_name(&args).to_string()
    }

    #[test]
    fn bench_name_skips_options_and_their_values() {
        assert_eq!(name(&[]), "all");
        assert_eq!(name(&["vm"]), "vm");
        assert_eq!(name(&["--reps", "3", "vm"]), "vm");
        assert_eq!(name(&["--size", "64M", "--guest-cpu", "max"]), "all");
        assert_eq!(name(&["latency", "--count", "10"]), "latency");
    }
}
