//! `cargo xtask vm-assets`: everything needed to boot a test guest, cached under `target/vm-assets/`.
//!
//! Steps, each skipped when its output is already there for the same inputs:
//! 1. host packages: `qemu-system-x86`, `kmod`, `socat` (apt-get, as root);
//! 2. the Debian cloud kernel: resolved through `linux-image-cloud-amd64`, downloaded with
//!    `apt-get download`, unpacked with `dpkg -x` into `kernel/<version>/`, and the virtio and vsock
//!    modules copied (decompressed if needed) to `modules/<version>/<name>.ko`;
//! 3. `vhost-device-vsock` 0.3.0, installed with cargo into `cargo/bin/`;
//! 4. static `vmux-agent` and `vmux-shim`, built with `crt-static` into their own target folder `build/`;
//! 5. `initrd.cpio`, a cpio newc archive written here (see [`crate::cpio`]), rewritten only when its bytes
//!    would change;
//! 6. `manifest`, `key=value` lines that `tests/common/vm.rs` reads.
//!
//! The cache is keyed by the kernel package name (which carries the version) and by content: the initrd and
//! manifest are compared byte for byte before being written, so their mtimes move only on real change.

use crate::cpio::Archive;
use crate::elf;
use crate::util::{self, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Debian packages the host needs, with a file each one installs (for the message only).
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "socat", "busybox-static"];
/// The static busybox that `busybox-static` installs: the initrd has no tools of its own, so
/// the demo and the VM tests copy it into the guest with `vmux-shim cp` when they need a shell.
const BUSYBOX: &str = "/bin/busybox";
/// The meta package whose dependency names the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// Kernel modules the guest needs, in load order.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "vsock_loopback",
];
/// The pinned hybrid-vsock backend.
const VHOST_CRATE: &str = "vhost-device-vsock";
/// Its pinned version.
const VHOST_VERSION: &str = "0.3.0";
/// The only target the static binaries are built for.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Options of `cargo xtask vm-assets`.
#[derive(Debug, Default)]
pub struct Options {
    /// A static executable to use as `/init` instead of vmux-agent.
    pub init: Option<PathBuf>,
}

/// Where the assets live and what they are (the manifest's content).
#[derive(Debug)]
pub struct Assets {
    kernel: PathBuf,
    initrd: PathBuf,
    kernel_version: String,
    vhost_device_vsock: PathBuf,
    qemu: PathBuf,
    agent: PathBuf,
    shim: PathBuf,
    init: PathBuf,
    busybox: PathBuf,
}

/// A located and unpacked kernel.
struct Kernel {
    version: String,
    vmlinuz: PathBuf,
    /// Plain `.ko` files in [`MODULES`] order.
    modules: Vec<PathBuf>,
}

/// Runs every step and returns the finished assets.
pub fn vm_assets(root: &Path, opts: &Options) -> Result<Assets> {
    let started = Instant::now();
    let dir = root.join("target/vm-assets");
    util::mkdirs(&dir)?;
    println!("vm-assets: preparing guest assets in {}", dir.display());

    let mut apt = Apt::default();
    let qemu = host_packages(&mut apt)?;
    let kernel = kernel(&mut apt, &dir)?;
    let vhost_device_vsock = vhost_device_vsock(&dir)?;
    let (agent, shim) = static_binaries(root, &dir)?;
    let init = match &opts.init {
        Some(path) => {
            let path = fs::canonicalize(path).context(|| format!("--init {}", path.display()))?;
            check_static(&path)?;
            println!(
                "vm-assets: using {} as /init instead of vmux-agent",
                path.display()
            );
            path
        }
        None => agent.clone(),
    };
    let busybox = PathBuf::from(BUSYBOX);
    check_static(&busybox).context(|| format!("{BUSYBOX} (from busybox-static)"))?;
    let initrd = dir.join("initrd.cpio");
    write_initrd(&initrd, &init, &shim, &kernel)?;

    let assets = Assets {
        kernel: kernel.vmlinuz,
        initrd,
        kernel_version: kernel.version,
        vhost_device_vsock,
        qemu,
        agent,
        shim,
        init,
        busybox,
    };
    write_manifest(&dir.join("manifest"), &assets)?;
    println!(
        "vm-assets: ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(assets)
}

/// apt-get and apt-cache, remembering whether the package lists were refreshed in this run.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    /// Runs `apt-get update` once per run (as root), or explains what to run.
    fn update(&mut self) -> Result<()> {
        if self.updated {
            return Ok(());
        }
        if !util::is_root() {
            return Err(
                "the apt package lists need refreshing and this is not root: run \
                 `sudo apt-get update`, then this command again"
                    .into(),
            );
        }
        println!("vm-assets: refreshing the apt package lists");
        util::run(Command::new("apt-get").args(["update", "-q"]))?;
        self.updated = true;
        Ok(())
    }

    /// Returns whether `package` is installed, according to dpkg.
    fn installed(package: &str) -> bool {
        util::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
            .is_ok_and(|status| status.trim_end().ends_with(" installed"))
    }
}

/// Installs the missing host packages and returns the path of qemu-system-x86_64.
fn host_packages(apt: &mut Apt) -> Result<PathBuf> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|p| !Apt::installed(p))
        .collect();
    if missing.is_empty() {
        println!(
            "vm-assets: host packages {} are installed",
            HOST_PACKAGES.join(", ")
        );
    } else {
        let install = format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        if !util::is_root() {
            return Err(format!(
                "host packages {} are missing and this is not root; run:\n  \
                 sudo apt-get update && sudo {install}\nthen this command again",
                missing.join(", ")
            ));
        }
        println!("vm-assets: installing host packages {}", missing.join(", "));
        apt.update()?;
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    util::find_in_path("qemu-system-x86_64").ok_or_else(|| {
        "qemu-system-x86_64 is not in PATH although qemu-system-x86 is installed".into()
    })
}

/// Resolves, downloads, unpacks and picks the modules of the current cloud kernel.
fn kernel(apt: &mut Apt, dir: &Path) -> Result<Kernel> {
    let package = match resolve_kernel_package() {
        Ok(p) => p,
        Err(first) => {
            println!("vm-assets: {first}; refreshing the package lists and retrying");
            apt.update()?;
            resolve_kernel_package()?
        }
    };
    let version = package
        .strip_prefix("linux-image-")
        .ok_or_else(|| format!("unexpected kernel package name {package}"))?
        .to_string();
    let tree = dir.join("kernel").join(&version);
    if tree.is_dir() {
        println!("vm-assets: kernel {version} is unpacked already");
    } else {
        let deb = match download(&package, &dir.join("debs")) {
            Ok(deb) => deb,
            Err(first) if !apt.updated => {
                println!("vm-assets: {first}; refreshing the package lists and retrying");
                apt.update()?;
                download(&package, &dir.join("debs"))?
            }
            Err(e) => return Err(e),
        };
        let partial = dir.join("kernel").join(format!("{version}.partial"));
        if partial.exists() {
            fs::remove_dir_all(&partial).context(|| format!("removing {}", partial.display()))?;
        }
        util::mkdirs(&partial)?;
        println!("vm-assets: unpacking {}", deb.display());
        util::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, &tree).context(|| format!("renaming {}", partial.display()))?;
    }

    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        return Err(format!("{} is missing from {package}", vmlinuz.display()));
    }
    let modules = modules(&tree, &version, &dir.join("modules").join(&version))?;
    Ok(Kernel {
        version,
        vmlinuz,
        modules,
    })
}

/// Reads `apt-cache depends linux-image-cloud-amd64` and returns the versioned image package it names.
fn resolve_kernel_package() -> Result<String> {
    let out = util::output(Command::new("apt-cache").args(["depends", KERNEL_META]))
        .context(|| format!("resolving {KERNEL_META}"))?;
    parse_kernel_depends(&out).ok_or_else(|| {
        format!("`apt-cache depends {KERNEL_META}` names no linux-image-*-cloud-amd64 package")
    })
}

/// Picks the first `Depends: linux-image-<ver>-cloud-amd64` line of `apt-cache depends` output.
fn parse_kernel_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64") && *p != KERNEL_META)
        .map(str::to_string)
}

/// Downloads `package` into `debs` (unless a .deb of it is there) and returns the file.
fn download(package: &str, debs: &Path) -> Result<PathBuf> {
    let find = || -> Result<Option<PathBuf>> {
        if !debs.is_dir() {
            return Ok(None);
        }
        let prefix = format!("{package}_");
        for entry in fs::read_dir(debs).context(|| format!("listing {}", debs.display()))? {
            let path = entry
                .context(|| format!("listing {}", debs.display()))?
                .path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with(&prefix) && name.ends_with(".deb") {
                return Ok(Some(path));
            }
        }
        Ok(None)
    };
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    util::mkdirs(debs)?;
    println!("vm-assets: downloading {package}");
    util::run(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(debs),
    )?;
    find()?.ok_or_else(|| {
        format!(
            "apt-get download left no {package}_*.deb in {}",
            debs.display()
        )
    })
}

/// Finds each of [`MODULES`] in the unpacked tree and copies it, as a plain `.ko`, into `out`.
fn modules(tree: &Path, version: &str, out: &Path) -> Result<Vec<PathBuf>> {
    let mut found: HashMap<String, PathBuf> = HashMap::new();
    let mut any_root = false;
    for base in ["lib/modules", "usr/lib/modules"] {
        let root = tree.join(base).join(version);
        if root.is_dir() {
            any_root = true;
            index_modules(&root, &mut found)?;
        }
    }
    if !any_root {
        return Err(format!("no lib/modules/{version} in {}", tree.display()));
    }
    util::mkdirs(out)?;
    let mut copied = 0;
    let mut result = Vec::new();
    for name in MODULES {
        let src = found
            .get(*name)
            .ok_or_else(|| format!("module {name} is not in the {version} package"))?;
        let dst = out.join(format!("{name}.ko"));
        if !dst.is_file() {
            let data = decompress(src)?;
            util::write_atomic(&dst, &data)?;
            copied += 1;
        }
        result.push(dst);
    }
    if copied == 0 {
        println!("vm-assets: {} kernel modules are in place", MODULES.len());
    } else {
        println!(
            "vm-assets: copied {copied} kernel modules to {}",
            out.display()
        );
    }
    Ok(result)
}

/// Maps module names (file name without `.ko[.xz|.zst]`) to their paths, recursively under `dir`.
fn index_modules(dir: &Path, found: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
        let entry = entry.context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .context(|| format!("inspecting {}", path.display()))?;
        if kind.is_dir() {
            index_modules(&path, found)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .find_map(|ext| name.strip_suffix(ext));
            if let Some(stem) = stem {
                found.insert(stem.to_string(), path);
            }
        }
    }
    Ok(())
}

/// Returns the plain contents of a module, decompressing `.xz`, `.zst` and `.gz` with the system tools.
fn decompress(src: &Path) -> Result<Vec<u8>> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some(("xz", "xz-utils"))
    } else if name.ends_with(".ko.zst") {
        Some(("zstd", "zstd"))
    } else if name.ends_with(".ko.gz") {
        Some(("gzip", "gzip"))
    } else {
        None
    };
    let Some((tool, package)) = tool else {
        return fs::read(src).context(|| format!("reading {}", src.display()));
    };
    if util::find_in_path(tool).is_none() {
        return Err(format!(
            "{} is compressed and `{tool}` is missing: install the {package} package",
            src.display()
        ));
    }
    let out = Command::new(tool)
        .args(["-d", "-c"])
        .arg(src)
        .output()
        .context(|| format!("running {tool} on {}", src.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{tool} -d -c {}` failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Installs the pinned vhost-device-vsock under `cargo/` unless that version is there.
fn vhost_device_vsock(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("cargo");
    let bin = root.join("bin").join(VHOST_CRATE);
    let record = fs::read_to_string(root.join(".crates.toml")).unwrap_or_default();
    let pinned = format!("\"{VHOST_CRATE} {VHOST_VERSION} ");
    if bin.is_file() && record.contains(&pinned) {
        println!("vm-assets: {VHOST_CRATE} {VHOST_VERSION} is installed");
        return Ok(bin);
    }
    println!("vm-assets: building {VHOST_CRATE} {VHOST_VERSION} (about a minute on two cores)");
    util::run(
        util::cargo()
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args(["install", "--locked", "--quiet", "--root"])
            .arg(&root)
            .arg(format!("{VHOST_CRATE}@{VHOST_VERSION}")),
    )?;
    if !bin.is_file() {
        return Err(format!(
            "cargo install finished but {} is missing",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Builds static vmux-agent and vmux-shim into `build/` and returns their paths.
fn static_binaries(root: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let target_dir = dir.join("build");
    println!(
        "vm-assets: building static vmux-agent and vmux-shim (cargo skips this if nothing changed)"
    );
    util::run(
        util::cargo()
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args(["build", "--release", "--quiet", "--target", TARGET])
            .args(["-p", "vmux-agent", "-p", "vmux-shim"]),
    )?;
    let out = target_dir.join(TARGET).join("release");
    let agent = out.join("vmux-agent");
    let shim = out.join("vmux-shim");
    check_static(&agent)?;
    check_static(&shim)?;
    Ok((agent, shim))
}

/// Builds the static binary `bin` of workspace package `package` the way the agent is built
/// (same target folder `build/`, so the two share their compiled dependencies) and returns its
/// path: a guest tool that a test or bench copies into a running guest.
pub fn static_tool(root: &Path, package: &str, bin: &str) -> Result<PathBuf> {
    let target_dir = root.join("target/vm-assets/build");
    println!("vm-assets: building static {bin} (cargo skips this if nothing changed)");
    util::run(
        util::cargo()
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args(["build", "--release", "--quiet", "--target", TARGET])
            .args(["-p", package, "--bin", bin]),
    )?;
    let path = target_dir.join(TARGET).join("release").join(bin);
    check_static(&path)?;
    Ok(path)
}

/// Fails unless `path` is an ELF executable without a program interpreter.
fn check_static(path: &Path) -> Result<()> {
    let bytes = fs::read(path).context(|| format!("reading {}", path.display()))?;
    match elf::has_interpreter(&bytes).context(|| path.display().to_string())? {
        false => Ok(()),
        true => Err(format!(
            "{} is dynamically linked (it has PT_INTERP); the initrd has no C library: \
             build it with RUSTFLAGS='-C target-feature=+crt-static' and --target {TARGET}",
            path.display()
        )),
    }
}

/// Lays out the initrd and writes it if its bytes differ from the file on disk.
fn write_initrd(path: &Path, init: &Path, shim: &Path, kernel: &Kernel) -> Result<()> {
    let read = |p: &Path| fs::read(p).context(|| format!("reading {}", p.display()));
    let mut archive = Archive::new();
    for d in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "usr",
        "usr/bin",
        "lib",
        "lib/modules",
    ] {
        archive.dir(d, 0o755)?;
    }
    let moddir = format!("lib/modules/{}", kernel.version);
    archive.dir(&moddir, 0o755)?;
    archive.file("init", 0o755, &read(init)?)?;
    archive.file("usr/bin/vmux-shim", 0o755, &read(shim)?)?;
    for (name, ko) in MODULES.iter().zip(&kernel.modules) {
        archive.file(&format!("{moddir}/{name}.ko"), 0o644, &read(ko)?)?;
    }
    let bytes = archive.finish();
    if fs::read(path).ok().as_deref() == Some(&bytes[..]) {
        println!(
            "vm-assets: initrd is up to date ({} KiB)",
            bytes.len() / 1024
        );
        return Ok(());
    }
    util::write_atomic(path, &bytes)?;
    println!(
        "vm-assets: wrote {} ({} KiB: /init, vmux-shim, {} modules)",
        path.display(),
        bytes.len() / 1024,
        MODULES.len()
    );
    Ok(())
}

/// Renders the manifest read by `tests/common/vm.rs`.
fn manifest_text(a: &Assets) -> String {
    let line = |key: &str, value: &Path| format!("{key}={}\n", value.display());
    let mut text =
        String::from("# Written by `cargo xtask vm-assets`; read by tests/common/vm.rs.\n");
    text += &line("kernel", &a.kernel);
    text += &line("initrd", &a.initrd);
    text += &format!("kernel_version={}\n", a.kernel_version);
    text += &line("vhost_device_vsock", &a.vhost_device_vsock);
    text += &format!("modules={}\n", MODULES.join(","));
    text += &line("qemu", &a.qemu);
    text += &line("agent", &a.agent);
    text += &line("shim", &a.shim);
    text += &line("init", &a.init);
    text += &line("busybox", &a.busybox);
    text
}

/// Writes the manifest if its content changed.
fn write_manifest(path: &Path, assets: &Assets) -> Result<()> {
    let text = manifest_text(assets);
    if fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
        util::write_atomic(path, text.as_bytes())?;
        println!("vm-assets: wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_is_read_from_apt_cache_depends() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            parse_kernel_depends(out).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
    }

    #[test]
    fn kernel_package_skips_unrelated_and_alternative_lines() {
        let out = "linux-image-cloud-amd64\n  Depends: initramfs-tools\n \
                   |Depends: linux-image-6.1.0-9-cloud-amd64\n  Depends: linux-image-6.1.0-10-cloud-amd64\n";
        assert_eq!(
            parse_kernel_depends(out).as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
        assert_eq!(parse_kernel_depends("linux-image-cloud-amd64\n"), None);
    }

    #[test]
    fn manifest_has_one_key_per_line() {
        let p = PathBuf::from;
        let assets = Assets {
            kernel: p("/k"),
            initrd: p("/i"),
            kernel_version: "6.1.0-1-cloud-amd64".into(),
            vhost_device_vsock: p("/v"),
            qemu: p("/q"),
            agent: p("/a"),
            shim: p("/s"),
            init: p("/a"),
            busybox: p("/b"),
        };
        let text = manifest_text(&assets);
        assert!(text.contains("\nkernel=/k\n"));
        assert!(text.contains("\nkernel_version=6.1.0-1-cloud-amd64\n"));
        assert!(text.contains("\nmodules=virtio_ring,virtio,virtio_pci_modern_dev,"));
        assert!(text.contains("\ninit=/a\n"));
        assert!(text.ends_with("busybox=/b\n"));
    }
}
