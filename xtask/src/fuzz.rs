//! `cargo xtask fuzz`: runs every cargo-fuzz target in `fuzz/` for a bounded time and prints how
//! many inputs each one ran.
//!
//! The targets are built with `-s none` (no sanitizer), which works on the stable toolchain; the
//! decoder is built with `cfg(fuzzing)` so CRC checks do not stop the fuzzer at the door. cargo-fuzz
//! itself is installed with `cargo install --locked` into `target/tools/` when it is missing.
//! A crash fails the command and leaves the input under `fuzz/artifacts/TARGET/`.

use crate::util::{self, Context, Result};
use std::path::{Path, PathBuf};

/// Default seconds per target.
pub const DEFAULT_SECONDS: u64 = 60;

/// Parsed `cargo xtask fuzz` options.
pub struct Options {
    /// Seconds per target.
    pub seconds: u64,
    /// Targets to run; all when empty.
    pub targets: Vec<String>,
}

impl Options {
    /// Parses `[--seconds N] [TARGET...]`.
    pub fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            seconds: DEFAULT_SECONDS,
            targets: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--seconds" => {
                    let value = it.next().ok_or("--seconds needs a number")?;
                    options.seconds = value.parse().context(|| format!("--seconds {value}"))?;
                }
                other if other.starts_with('-') => {
                    return Err(format!("unknown fuzz option {other}"))
                }
                target => options.targets.push(target.to_string()),
            }
        }
        Ok(options)
    }
}

/// One target's outcome.
struct Outcome {
    target: String,
    runs: u64,
    seconds: u64,
}

/// Runs the fuzz targets; fails on the first crash.
pub fn fuzz(root: &Path, options: &Options) -> Result<()> {
    let cargo_fuzz = ensure_cargo_fuzz(root)?;
    let fuzz_dir = root.join("fuzz");
    let targets = if options.targets.is_empty() {
        list_targets(&fuzz_dir)?
    } else {
        options.targets.clone()
    };
    let mut outcomes = Vec::new();
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        util::mkdirs(&corpus)?;
        copy_seeds(&fuzz_dir.join("seeds").join(target), &corpus)?;
        let mut cmd = util::cargo();
        cmd.current_dir(&fuzz_dir)
            .env(
                "PATH",
                path_with(cargo_fuzz.parent().unwrap_or(Path::new("."))),
            )
            .args(["fuzz", "run", "-s", "none", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", options.seconds))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1");
        println!("xtask: fuzzing {target} for {} s", options.seconds);
        let out = cmd
            .output()
            .context(|| format!("could not start `{}`", util::describe(&cmd)))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "fuzz target {target} failed ({}):\n{}",
                out.status,
                tail.join("\n")
            ));
        }
        let runs = final_stat(&stderr, "stat::number_of_executed_units:").unwrap_or(0);
        outcomes.push(Outcome {
            target: target.clone(),
            runs,
            seconds: options.seconds,
        });
    }
    println!(
        "\n{:<12} {:>14} {:>10} {:>12}",
        "target", "executions", "seconds", "execs/s"
    );
    for o in &outcomes {
        println!(
            "{:<12} {:>14} {:>10} {:>12}",
            o.target,
            o.runs,
            o.seconds,
            o.runs / o.seconds.max(1)
        );
    }
    println!("no crash in {} targets", outcomes.len());
    Ok(())
}

/// Copies the committed seed inputs of a target into its (uncommitted) working corpus.
fn copy_seeds(seeds: &Path, corpus: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(seeds) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let to = corpus.join(entry.file_name());
        if !to.exists() {
            std::fs::copy(entry.path(), &to)
                .context(|| format!("copying seed {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The targets: one per file in `fuzz/fuzz_targets/`.
fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    targets.sort();
    Ok(targets)
}

/// The number after `key` in libFuzzer's final stats.
fn final_stat(stderr: &str, key: &str) -> Option<u64> {
    stderr
        .lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix(key))
        .find_map(|v| v.trim().parse().ok())
}

/// Finds cargo-fuzz on PATH or in `target/tools/bin`, installing it there if needed.
fn ensure_cargo_fuzz(root: &Path) -> Result<PathBuf> {
    if let Some(found) = util::find_in_path("cargo-fuzz") {
        return Ok(found);
    }
    let tools = root.join("target").join("tools");
    let bin = tools.join("bin").join("cargo-fuzz");
    if !bin.exists() {
        println!("xtask: installing cargo-fuzz into {}", tools.display());
        util::run(
            util::cargo()
                .args(["install", "--locked", "cargo-fuzz", "--root"])
                .arg(&tools),
        )?;
    }
    Ok(bin)
}

/// PATH with `dir` in front, so `cargo fuzz` finds the installed subcommand.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(existing) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Whether the C++ compiler libFuzzer needs is present.
pub fn has_cxx() -> bool {
    util::find_in_path("c++").is_some() || util::find_in_path("g++").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_seconds_and_targets() {
        let o = Options::parse(&["--seconds".into(), "5".into(), "decoder".into()]).unwrap();
        assert_eq!(o.seconds, 5);
        assert_eq!(o.targets, vec!["decoder"]);
        assert!(Options::parse(&["--seconds".into()]).is_err());
        assert!(Options::parse(&["--bogus".into()]).is_err());
    }

    #[test]
    fn reads_libfuzzer_final_stats() {
        let err =
            "#1000 DONE cov: 10\nstat::number_of_executed_units: 123456\nstat::peak_rss_mb: 40\n";
        assert_eq!(
            final_stat(err, "stat::number_of_executed_units:"),
            Some(123_456)
        );
        assert_eq!(
            final_stat("nothing", "stat::number_of_executed_units:"),
            None
        );
    }

    #[test]
    fn command_is_spelled_out() {
        let mut cmd = Command::new("cargo");
        cmd.arg("fuzz");
        assert_eq!(util::describe(&cmd), "cargo fuzz");
    }
}
