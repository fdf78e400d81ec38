//! Loading the kernel modules named by `vmux.modules=` (virtio transports, vsock) without kmod.
//!
//! Work is split in two: [`plan`] is a pure function that decides, from what the kernel already
//! has ([`KernelState`]) and which module files exist ([`ModuleIndex`]), what to do with each
//! requested name; [`load_modules`] gathers those inputs from `/proc/modules`, `/sys/module`,
//! `modules.builtin` and `/lib/modules/$(uname -r)`, then runs the plan with `finit_module(2)`.
//!
//! Names compare with `-` and `_` as the same character, as the kernel does. Dependencies are
//! not resolved: list modules in load order. Files are found at `/lib/modules/REL/NAME.ko` first,
//! then anywhere below that directory; compressed `.ko.xz`/`.ko.zst`/`.ko.gz` files are passed to
//! the kernel with `MODULE_INIT_COMPRESSED_FILE` (it needs `CONFIG_MODULE_DECOMPRESS`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// Where module trees live.
pub const MODULES_ROOT: &str = "/lib/modules";

/// `MODULE_INIT_COMPRESSED_FILE` from `<linux/module.h>` (not named by nix).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// Deepest directory level searched below the module root.
const MAX_DEPTH: usize = 8;

/// The canonical form of a module name: `-` becomes `_`.
pub fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// A module file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Its path.
    pub path: PathBuf,
    /// Whether it is compressed (`.ko.xz`, `.ko.zst`, `.ko.gz`).
    pub compressed: bool,
}

/// The module name a file name stands for, and whether it is compressed; `None` if not a module.
pub fn module_name_of_file(file_name: &str) -> Option<(String, bool)> {
    if let Some(stem) = file_name.strip_suffix(".ko") {
        return (!stem.is_empty()).then(|| (normalize(stem), false));
    }
    [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
        .filter(|stem| !stem.is_empty())
        .map(|stem| (normalize(stem), true))
}

/// Module files by normalized name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleIndex {
    files: BTreeMap<String, ModuleFile>,
}

impl ModuleIndex {
    /// Indexes `paths` (files below `root`); when a name repeats, the shallowest path wins,
    /// then an uncompressed file, then the first in byte order, so the choice is deterministic.
    pub fn from_paths<I: IntoIterator<Item = PathBuf>>(root: &Path, paths: I) -> Self {
        let mut files: BTreeMap<String, ModuleFile> = BTreeMap::new();
        let rank = |file: &ModuleFile| {
            let depth = file
                .path
                .strip_prefix(root)
                .map_or(usize::MAX, |rel| rel.components().count());
            (depth, file.compressed, file.path.clone())
        };
        for path in paths {
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((name, compressed)) = module_name_of_file(file_name) else {
                continue;
            };
            let candidate = ModuleFile { path, compressed };
            match files.get(&name) {
                Some(current) if rank(current) <= rank(&candidate) => {}
                _ => {
                    files.insert(name, candidate);
                }
            }
        }
        ModuleIndex { files }
    }

    /// Walks `root` (not following symlinks) and indexes every module file found.
    pub fn scan(root: &Path) -> Self {
        let mut paths = Vec::new();
        collect_files(root, 0, &mut paths);
        Self::from_paths(root, paths)
    }

    /// The file for a module name, if any.
    pub fn get(&self, name: &str) -> Option<&ModuleFile> {
        self.files.get(&normalize(name))
    }
}

fn collect_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth < MAX_DEPTH {
            collect_files(&entry.path(), depth + 1, out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

/// What the kernel already has, by normalized name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// Loaded modules (`/proc/modules`).
    pub loaded: HashSet<String>,
    /// Built-in modules (`modules.builtin`, and `/sys/module` entries that are not loaded modules).
    pub builtin: HashSet<String>,
}

impl KernelState {
    /// Combines the three sources; a `/sys/module` entry counts as built in unless it is loaded.
    pub fn new(proc_modules: &str, modules_builtin: &str, sys_module: &[String]) -> Self {
        let loaded = parse_proc_modules(proc_modules);
        let mut builtin = parse_modules_builtin(modules_builtin);
        builtin.extend(
            sys_module
                .iter()
                .map(|name| normalize(name))
                .filter(|name| !loaded.contains(name)),
        );
        KernelState { loaded, builtin }
    }
}

/// The names in `/proc/modules` text (first field of each line).
pub fn parse_proc_modules(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(normalize)
        .collect()
}

/// The names in `modules.builtin` text (one `kernel/.../NAME.ko` path per line).
pub fn parse_modules_builtin(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| line.trim().rsplit('/').next())
        .filter_map(module_name_of_file)
        .map(|(name, _)| name)
        .collect()
}

/// What to do with one requested module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Load this file.
    Load(ModuleFile),
    /// Already loaded: nothing to do.
    AlreadyLoaded,
    /// Built into the kernel: nothing to do.
    BuiltIn,
    /// No file and not in the kernel.
    NotFound,
}

/// Decides, in request order, what to do with each requested module; repeated names appear once.
pub fn plan(requested: &[String], state: &KernelState, index: &ModuleIndex) -> Vec<(String, Step)> {
    let mut seen = HashSet::new();
    requested
        .iter()
        .map(|name| normalize(name))
        .filter(|name| !name.is_empty() && seen.insert(name.clone()))
        .map(|name| {
            let step = if state.loaded.contains(&name) {
                Step::AlreadyLoaded
            } else if state.builtin.contains(&name) {
                Step::BuiltIn
            } else if let Some(file) = index.get(&name) {
                Step::Load(file.clone())
            } else {
                Step::NotFound
            };
            (name, step)
        })
        .collect()
}

/// How a requested module ended up present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleOutcome {
    /// This call loaded it.
    Loaded,
    /// It was loaded before (or the kernel said `EEXIST`).
    AlreadyLoaded,
    /// It is built into the kernel.
    BuiltIn,
}

/// Why a requested module is not present.
#[derive(Debug)]
pub enum ModuleError {
    /// No module file and not in the kernel.
    NotFound,
    /// The file could not be opened.
    Open(PathBuf, io::Error),
    /// `finit_module(2)` refused it.
    Load(PathBuf, Errno),
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleError::NotFound => f.write_str("not found"),
            ModuleError::Open(path, err) => write!(f, "cannot open {}: {err}", path.display()),
            ModuleError::Load(path, errno) => {
                write!(f, "cannot load {}: {}", path.display(), errno.desc())
            }
        }
    }
}

impl std::error::Error for ModuleError {}

/// The result for one requested module.
#[derive(Debug)]
pub struct ModuleReport {
    /// Normalized module name.
    pub name: String,
    /// What happened.
    pub result: Result<ModuleOutcome, ModuleError>,
}

impl fmt::Display for ModuleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.result {
            Ok(ModuleOutcome::Loaded) => write!(f, "module {name}: loaded"),
            Ok(ModuleOutcome::AlreadyLoaded) => write!(f, "module {name}: already loaded"),
            Ok(ModuleOutcome::BuiltIn) => write!(f, "module {name}: built in"),
            Err(err) => write!(f, "module {name}: {err}"),
        }
    }
}

/// Loads `requested` in order from `/lib/modules/$(uname -r)`; reports every module, never stops early.
///
/// Only PID 1 calls this: it changes the running kernel.
pub fn load_modules(requested: &[String]) -> Vec<ModuleReport> {
    if requested.is_empty() {
        return Vec::new();
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = Path::new(MODULES_ROOT).join(release);
    let sys_module: Vec<String> = fs::read_dir("/sys/module")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let state = KernelState::new(
        &fs::read_to_string("/proc/modules").unwrap_or_default(),
        &fs::read_to_string(root.join("modules.builtin")).unwrap_or_default(),
        &sys_module,
    );
    let index = ModuleIndex::scan(&root);
    plan(requested, &state, &index)
        .into_iter()
        .map(|(name, step)| ModuleReport {
            result: execute(step),
            name,
        })
        .collect()
}

fn execute(step: Step) -> Result<ModuleOutcome, ModuleError> {
    let file = match step {
        Step::AlreadyLoaded => return Ok(ModuleOutcome::AlreadyLoaded),
        Step::BuiltIn => return Ok(ModuleOutcome::BuiltIn),
        Step::NotFound => return Err(ModuleError::NotFound),
        Step::Load(file) => file,
    };
    let fd = File::open(&file.path).map_err(|err| ModuleError::Open(file.path.clone(), err))?;
    let flags = if file.compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    // No module parameters: the kernel command line can still set them (`NAME.param=`).
    match finit_module(&fd, c"", flags) {
        Ok(()) => Ok(ModuleOutcome::Loaded),
        Err(Errno::EEXIST) => Ok(ModuleOutcome::AlreadyLoaded),
        Err(errno) => Err(ModuleError::Load(file.path, errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/lib/modules/6.1.0-57-cloud-amd64";

    fn index(rel_paths: &[&str]) -> ModuleIndex {
        let root = Path::new(ROOT);
        ModuleIndex::from_paths(root, rel_paths.iter().map(|p| root.join(p)))
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn file_names_map_to_module_names() {
        let cases = [
            ("virtio_pci.ko", Some(("virtio_pci", false))),
            (
                "vmw-vsock-virtio-transport.ko",
                Some(("vmw_vsock_virtio_transport", false)),
            ),
            ("vsock.ko.xz", Some(("vsock", true))),
            ("vsock.ko.zst", Some(("vsock", true))),
            ("modules.dep", None),
            (".ko", None),
            ("vsock.ko.bak", None),
        ];
        for (file, want) in cases {
            let got = module_name_of_file(file);
            assert_eq!(
                got.as_ref().map(|(n, c)| (n.as_str(), *c)),
                want,
                "file {file}"
            );
        }
    }

    #[test]
    fn index_prefers_top_level_then_uncompressed() {
        let idx = index(&[
            "kernel/drivers/virtio/virtio_pci.ko",
            "virtio_pci.ko",
            "kernel/net/vmw_vsock/vsock.ko.xz",
            "kernel/net/vmw_vsock/vsock.ko",
            "modules.builtin",
        ]);
        assert_eq!(
            idx.get("virtio-pci").unwrap().path,
            Path::new(ROOT).join("virtio_pci.ko")
        );
        assert_eq!(
            idx.get("vsock").unwrap(),
            &ModuleFile {
                path: Path::new(ROOT).join("kernel/net/vmw_vsock/vsock.ko"),
                compressed: false
            }
        );
        assert!(idx.get("modules").is_none());
    }

    #[test]
    fn kernel_state_reads_proc_modules_builtin_and_sysfs() {
        let proc_modules =
            "virtio_ring 45056 2 virtio_pci,virtio_console, Live 0xffffffffc0200000\n\
                            vsock 57344 0 - Live 0xffffffffc0300000\n";
        let builtin = "kernel/drivers/tty/serial/8250/8250.ko\nkernel/fs/ext4/ext4.ko\n";
        let sys = names(&["virtio_ring", "vsock", "printk", "rng-core"]);
        let state = KernelState::new(proc_modules, builtin, &sys);
        assert_eq!(
            state.loaded,
            ["virtio_ring", "vsock"].map(String::from).into()
        );
        assert_eq!(
            state.builtin,
            ["8250", "ext4", "printk", "rng_core"]
                .map(String::from)
                .into()
        );
    }

    #[test]
    fn plan_skips_present_modules_and_keeps_request_order() {
        let state = KernelState::new(
            "virtio_ring 45056 0 - Live 0x0\n",
            "kernel/drivers/virtio/virtio.ko\n",
            &[],
        );
        let idx = index(&[
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/drivers/virtio/virtio_pci.ko",
            "kernel/drivers/char/virtio_console.ko",
        ]);
        let requested = names(&[
            "virtio-ring",
            "virtio",
            "virtio_pci",
            "virtio-console",
            "virtio_pci",
            "",
            "nosuch",
        ]);
        let got = plan(&requested, &state, &idx);
        let file = |rel: &str| {
            Step::Load(ModuleFile {
                path: Path::new(ROOT).join(rel),
                compressed: false,
            })
        };
        assert_eq!(
            got,
            vec![
                ("virtio_ring".to_string(), Step::AlreadyLoaded),
                ("virtio".to_string(), Step::BuiltIn),
                (
                    "virtio_pci".to_string(),
                    file("kernel/drivers/virtio/virtio_pci.ko")
                ),
                (
                    "virtio_console".to_string(),
                    file("kernel/drivers/char/virtio_console.ko")
                ),
                ("nosuch".to_string(), Step::NotFound),
            ]
        );
    }

    #[test]
    fn reports_read_well_in_a_log() {
        let loaded = ModuleReport {
            name: "vsock".into(),
            result: Ok(ModuleOutcome::Loaded),
        };
        let failed = ModuleReport {
            name: "vsock".into(),
            result: Err(ModuleError::Load("/x/vsock.ko".into(), Errno::ENOEXEC)),
        };
        assert_eq!(loaded.to_string(), "module vsock: loaded");
        assert_eq!(
            failed.to_string(),
            "module vsock: cannot load /x/vsock.ko: Exec format error"
        );
    }
}
