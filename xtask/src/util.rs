//! Small helpers shared by the xtask commands: running external programs with readable errors, adding
//! context to errors, writing files atomically, and a few questions about the host (root? in PATH?).
//!
//! Errors in xtask are plain strings that say what was being done and why it failed: xtask is a developer
//! tool whose errors end on a terminal, never in a caller that would branch on them.

use std::ffi::OsStr;
use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The result type of every xtask step.
pub type Result<T, E = String> = std::result::Result<T, E>;

/// Adds a sentence of context to an error.
pub trait Context<T> {
    /// Prefixes the error with `what` (called only on failure).
    fn context<S: Display>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context<S: Display>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// Renders a command line the way a user would type it (program, then arguments).
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio and fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("  $ {line}");
    let started = std::time::Instant::now();
    let status = cmd
        .status()
        .context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        return Err(format!("`{line}` failed ({status})"));
    }
    let took = started.elapsed();
    if took.as_secs() >= 1 {
        println!("  (took {:.1} s)", took.as_secs_f64());
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its standard output; on failure the error carries its standard error.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`{line}` failed ({}): {}",
            out.status,
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Returns whether this process runs with effective user id 0.
pub fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Finds an executable by name in `PATH` (plus the sbin folders, which a non-root PATH may lack).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, data).context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Creates a folder and its parents.
pub fn mkdirs(path: &Path) -> Result<()> {
    fs::create_dir_all(path).context(|| format!("creating folder {}", path.display()))
}

/// Returns the cargo that runs this xtask (from `$CARGO`), or `cargo` from PATH.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsStr::new("cargo").to_owned());
    Command::new(program)
}
