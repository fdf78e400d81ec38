//! Footprint: the static agent's size and idle memory; the real `vmux-shim` connected to that
//! agent and idle (`forward`, no connection yet); `vmux-shim serve` with no client and with 1000
//! idle streams through it (its `serve_idle_memory` example); a minimal vmux process's idle memory
//! with 0 and 1000 open streams (so bytes per idle stream) beside the same binary without vmux
//! (the floor of any such process); and peak RSS while 64 streams each move 16 MiB (the
//! 64-stream throughput case, measured in its own process, beside 64 raw socketpairs driven by
//! the same 128 threads).
//!
//! Memory is read from `/proc/PID/status` (`VmRSS`) and `/proc/PID/smaps_rollup`
//! (`Private_Dirty`, `Pss`) of a process that has connected and gone idle.

use crate::measure::{proc_field_kib, summary};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root, where `cargo` is run.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is one below the root")
        .to_path_buf()
}

/// Memory of a process: (VmRSS, Private_Dirty, Pss) in KiB.
type Mem = (f64, f64, f64);

/// Reads [`Mem`] of `pid`.
fn mem_of(pid: u32) -> Mem {
    let pid = pid.to_string();
    let f = |file: &str, field: &str| proc_field_kib(&pid, file, field).unwrap_or(0) as f64;
    (
        f("status", "VmRSS"),
        f("smaps_rollup", "Private_Dirty"),
        f("smaps_rollup", "Pss"),
    )
}

/// A static agent binary: the given path, the one `cargo xtask vm-assets` built, or a fresh build.
fn agent_binary(given: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(PathBuf::from(p));
    }
    let root = root();
    let target = "x86_64-unknown-linux-gnu";
    let assets = root.join(format!(
        "target/vm-assets/build/{target}/release/vmux-agent"
    ));
    if assets.exists() {
        return Some(assets);
    }
    let dir = root.join("target/bench-static");
    eprintln!("  building the static agent into {}", dir.display());
    let ok = Command::new("cargo")
        .current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "vmux-agent",
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    let bin = dir.join(format!("{target}/release/vmux-agent"));
    (ok && bin.exists()).then_some(bin)
}

/// The `vmux-idle` binary next to this one, built if missing.
fn idle_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.with_file_name("vmux-idle");
    if !bin.exists() {
        let release = exe.parent().is_some_and(|d| d.ends_with("release"));
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root()).args([
            "build",
            "--quiet",
            "-p",
            "vmux-bench",
            "--bin",
            "vmux-idle",
        ]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo").success(), "building vmux-idle");
    }
    bin
}

/// Starts `cmd` with piped stdin/stdout and waits for its "ready" line.
fn start_ready(mut cmd: Command) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "ready", "{cmd:?} did not get ready");
    (child, out)
}

fn stop(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_for_path(path: &Path, child: &mut Child, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if path.exists() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `vmux-shim` and its `serve_idle_memory` example, release builds, built if needed.
fn shim_binaries() -> Option<(PathBuf, PathBuf)> {
    let ok = Command::new("cargo")
        .current_dir(root())
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "vmux-shim",
            "--bins",
            "--examples",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let release = root().join("target/release");
    let shim = release.join("vmux-shim");
    let example = release.join("examples/serve_idle_memory");
    (ok && shim.exists() && example.exists()).then_some((shim, example))
}

/// The real shim, connected to the agent listening on `agent_sock` and idle: `vmux-shim forward`
/// holds its session with no stream open until a local connection arrives.
fn idle_shim(shim: Option<&Path>, agent_sock: &Path, dir: &Path) {
    let Some(shim) = shim else {
        println!("| vmux-shim idle | not measured: the release build of vmux-shim failed |");
        return;
    };
    let _ = Command::new("sync").status();
    let listen = dir.join("forward.sock");
    let mut child = Command::new(shim)
        .arg("-c")
        .arg(format!("unix://{}", agent_sock.display()))
        .arg("forward")
        .arg(format!("unix://{}", listen.display()))
        .arg("tcp://127.0.0.1:9")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmux-shim forward");
    // The shim binds its local socket after its session is up.
    if wait_for_path(&listen, &mut child, Duration::from_secs(10)) {
        std::thread::sleep(Duration::from_millis(500));
        let (rss, dirty, pss) = mem_of(child.id());
        println!("| vmux-shim (release, dynamic) connected and idle (`forward`, no connection): VmRSS | {rss:.0} KiB |");
        println!("| vmux-shim connected and idle: Private_Dirty | {dirty:.0} KiB |");
        println!("| vmux-shim connected and idle: Pss | {pss:.0} KiB |");
    } else {
        println!(
            "| vmux-shim idle | not measured: `vmux-shim forward` did not start within 10 s |"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `vmux-shim serve` with no client and with 1000 idle streams through it, from the shim's
/// `serve_idle_memory` example (a stand-in guest in the example's process).
fn serve_idle(example: Option<&Path>) {
    let Some(example) = example else {
        println!("| vmux-shim serve | not measured: the release build of vmux-shim failed |");
        return;
    };
    let _ = Command::new("sync").status();
    let Ok(out) = Command::new(example).arg("1000").output() else {
        println!(
            "| vmux-shim serve | not measured: {} did not run |",
            example.display()
        );
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // Lines: "  no client:  Rss N kB   Private_Dirty N kB", "  1000 idle streams: ...",
    // "  per idle stream:  Rss N B   Private_Dirty N B".
    let field = |line: &str, name: &str| -> Option<String> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        Some(format!("{} {}", words.next()?, words.next()?))
    };
    for (prefix, label) in [
        ("no client", "`vmux-shim serve`, guest link up, no client"),
        (
            "1000 idle streams",
            "`vmux-shim serve`, 1000 idle client streams through it",
        ),
        (
            "per idle stream",
            "`vmux-shim serve`, per idle stream (1000 minus none)",
        ),
    ] {
        match text.lines().find(|l| l.trim_start().starts_with(prefix)) {
            Some(line) => println!(
                "| {label}: Rss / Private_Dirty (smaps_rollup) | {} / {} |",
                field(line, "Rss").unwrap_or_default(),
                field(line, "Private_Dirty").unwrap_or_default()
            ),
            None => println!(
                "| {label} | not measured: no such line from {} |",
                example.display()
            ),
        }
    }
}

/// Prints the footprint tables.
pub fn run(agent: Option<&str>, reps: usize) {
    let dir = std::env::temp_dir().join(format!("vmux-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!("## Footprint\n");

    // The static agent: size, and idle memory with one client session connected.
    let agent = agent_binary(agent);
    // The release shim and its serve example, built once for the shim rows below.
    let shim = shim_binaries();
    let (shim_bin, serve_example) = match &shim {
        Some((bin, example)) => (Some(bin.as_path()), Some(example.as_path())),
        None => (None, None),
    };
    // A binary written moments ago (by the builds above) sits in the page cache as dirty pages,
    // which smaps counts as Private_Dirty of every process mapping it: flush them first.
    let _ = Command::new("sync").status();
    println!("| what | value |\n|---|---:|");
    match &agent {
        Some(bin) => {
            let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
            println!(
                "| static vmux-agent binary ({}) | {} bytes ({:.0} KiB) |",
                bin.strip_prefix(root()).unwrap_or(bin).display(),
                size,
                size as f64 / 1024.0
            );
            let sock = dir.join("agent.sock");
            let mut child = Command::new(bin)
                .arg("--listen")
                .arg(format!("unix://{}", sock.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn agent");
            if wait_for_path(&sock, &mut child, Duration::from_secs(3)) {
                let (client, _out) = {
                    let mut cmd = Command::new(idle_binary());
                    cmd.arg("client").arg(&sock).arg("0");
                    start_ready(cmd)
                };
                std::thread::sleep(Duration::from_millis(500));
                let (rss, dirty, pss) = mem_of(child.id());
                println!("| vmux-agent idle, one client session: VmRSS | {rss:.0} KiB |");
                println!("| vmux-agent idle, one client session: Private_Dirty | {dirty:.0} KiB |");
                println!("| vmux-agent idle, one client session: Pss | {pss:.0} KiB |");
                stop(client);
                idle_shim(shim_bin, &sock, &dir);
            } else {
                println!("| vmux-agent idle RSS | not measured: `vmux-agent --listen unix://PATH` did not listen within 3 s (its `serve` is not wired yet) |");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None => println!("| static vmux-agent binary | not measured: the static build failed |"),
    }
    serve_idle(serve_example);
    println!();

    // A minimal vmux server and client (vmux-idle), idle, with 0 and 1000 streams.
    let idle = idle_binary();
    let mut rows: Vec<(String, Vec<Mem>)> = vec![
        (
            "vmux-idle serve (minimal vmux server, one idle session)".into(),
            vec![],
        ),
        ("vmux-idle client, 0 streams".into(), vec![]),
        ("vmux-idle client, 1000 idle streams".into(), vec![]),
        (
            "baseline: the same binary, no vmux (`vmux-idle bare`: a connected unix socket, one thread parked in read)".into(),
            vec![],
        ),
    ];
    for rep in 0..reps {
        let sock = dir.join(format!("idle-{rep}.sock"));
        let (server, _sout) = {
            let mut cmd = Command::new(&idle);
            cmd.arg("serve").arg(&sock);
            start_ready(cmd)
        };
        for (row, n) in [(1usize, 0usize), (2, 1000)] {
            let (client, _cout) = {
                let mut cmd = Command::new(&idle);
                cmd.arg("client").arg(&sock).arg(n.to_string());
                start_ready(cmd)
            };
            std::thread::sleep(Duration::from_millis(300));
            rows[row].1.push(mem_of(client.id()));
            if n == 0 {
                rows[0].1.push(mem_of(server.id()));
            }
            stop(client);
        }
        let (bare, _bout) = {
            let mut cmd = Command::new(&idle);
            cmd.arg("bare").arg(&sock);
            start_ready(cmd)
        };
        std::thread::sleep(Duration::from_millis(300));
        rows[3].1.push(mem_of(bare.id()));
        stop(bare);
        stop(server);
        let _ = std::fs::remove_file(&sock);
    }
    println!(
        "### Idle memory of a minimal vmux process (`vmux-idle`, dynamic release build, {reps} reps)\n"
    );
    println!("| process | VmRSS KiB median (min–max) | Private_Dirty KiB median (min–max) | Pss KiB median |");
    println!("|---|---:|---:|---:|");
    let med = |v: &[Mem], f: fn(&Mem) -> f64| summary(&v.iter().map(f).collect::<Vec<_>>());
    for (label, v) in &rows {
        let (r, rl, rh) = med(v, |m| m.0);
        let (d, dl, dh) = med(v, |m| m.1);
        let (p, _, _) = med(v, |m| m.2);
        println!("| {label} | {r:.0} ({rl:.0}–{rh:.0}) | {d:.0} ({dl:.0}–{dh:.0}) | {p:.0} |");
    }
    let per: Vec<f64> = rows[2]
        .1
        .iter()
        .zip(&rows[1].1)
        .map(|(a, b)| (a.1 - b.1) * 1024.0 / 1000.0)
        .collect();
    let per_rss: Vec<f64> = rows[2]
        .1
        .iter()
        .zip(&rows[1].1)
        .map(|(a, b)| (a.0 - b.0) * 1024.0 / 1000.0)
        .collect();
    let added: Vec<f64> = rows[1]
        .1
        .iter()
        .zip(&rows[3].1)
        .map(|(v, b)| v.1 - b.1)
        .collect();
    let (a, al, ah) = summary(&added);
    println!(
        "\nWhat vmux adds to an idle client (0 streams minus the baseline, same rep): Private_Dirty {a:.0} KiB median ({al:.0}–{ah:.0})."
    );
    let (p, pl, ph) = summary(&per);
    let (q, _, _) = summary(&per_rss);
    println!(
        "\nBytes per idle stream (client, 1000 streams minus 0, same rep): Private_Dirty {p:.0} B median ({pl:.0}–{ph:.0}), VmRSS {q:.0} B median.\n"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Peak RSS with 64 streams each moving 16 MiB: the 64-stream throughput case.
    println!("### Peak RSS while 64 streams each move 16 MiB (1 GiB total, both sides in one process, {reps} reps)\n");
    let cases: Vec<(String, Vec<String>)> = [
        (
            "raw, 64 socketpairs, same 128 threads (reference)",
            "tput-raw-64",
        ),
        ("vmux", "tput-vmux-64"),
        ("yamux", "tput-yamux-64"),
    ]
    .iter()
    .map(|(l, c)| {
        (
            l.to_string(),
            vec![c.to_string(), (1u64 << 30).to_string(), "0".into()],
        )
    })
    .collect();
    let samples = crate::run_interleaved(&cases, reps);
    println!(
        "| case | peak RSS (VmHWM) MiB median (min–max) | growth over process start MiB median |"
    );
    println!("|---|---:|---:|");
    for ((label, _), s) in cases.iter().zip(&samples) {
        let hwm: Vec<f64> = s.iter().map(|m| m["hwm_kib"] / 1024.0).collect();
        let growth: Vec<f64> = s
            .iter()
            .map(|m| (m["hwm_kib"] - m["base_kib"]) / 1024.0)
            .collect();
        let (h, hl, hh) = summary(&hwm);
        let (g, _, _) = summary(&growth);
        println!("| {label} | {h:.1} ({hl:.1}–{hh:.1}) | {g:.1} |");
    }
    println!();
}
