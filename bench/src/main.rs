//! `vmux-bench`: throughput, latency, pty and footprint benchmarks for vmux against a raw copy
//! and yamux, printed as markdown tables with medians, ranges and same-run ratios.
//!
//! Every measured case runs in a fresh child process of this binary (`vmux-bench case ...`), so
//! peak RSS is per case and one case's heap cannot help or hurt the next. Repetitions are
//! interleaved (case A, B, C, A, B, C, ...) so that load from other processes on this shared
//! machine spreads over every case rather than landing on one.
//!
//! ```text
//! vmux-bench [throughput|latency|pty|footprint|noisy|vm|all] [--size BYTES] [--count N] [--reps N]
//! ```

mod cases;
mod footprint;
mod measure;
mod noisy;
mod vm;

use std::collections::BTreeMap;
use std::process::Command;

/// The help text.
const USAGE: &str = "\
usage: vmux-bench [BENCH] [options]

benches (default: all):
  throughput   unix socketpair, 64 KiB writes: raw, vmux 1/64 streams, yamux 1/64 streams,
               unpinned and pinned to CPU 0
  latency      64-byte ping-pong round trips, pinned to CPU 0: raw, vmux, yamux
  pty          raw pty pair vs vmux over a pty (Config::serial and Config::new)
  footprint    agent binary size and idle RSS, idle client memory, per-stream memory
  noisy        a serial link that flips, drops and inserts bytes: retransmission's cost at
               several fault rates, against a raw copy through the same relay (default 32M)
  vm           a TCG guest: host->guest and guest->host over virtio-serial and hybrid vsock,
               vmux exec and cp vs a raw copy through the same device (needs --rawio)
  all          every bench above

options:
  --size BYTES   bytes moved per throughput case (K/M/G suffixes; default 1G, pty 64M;
                 vm: 64M, at most 128M, and only when vm runs alone)
  --count N      round trips per latency case (default 100000)
  --reps N       repetitions of each case (default 5, vm 3)
  --agent PATH   static vmux-agent binary for footprint (default: build it)
  --rawio PATH   static vmux-rawio for vm (`cargo xtask bench vm` builds and passes it)
  --guest-cpu M  QEMU -cpu model for vm (default: QEMU's, qemu64 under TCG: no SSE4.2)
";

/// Parsed command line.
struct Opts {
    bench: String,
    size: Option<u64>,
    count: usize,
    reps: Option<usize>,
    agent: Option<String>,
    rawio: Option<String>,
    guest_cpu: Option<String>,
}

impl Opts {
    /// Repetitions of each case of the host benches.
    fn reps(&self) -> usize {
        self.reps.unwrap_or(5)
    }
}

fn parse_size(s: &str) -> u64 {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .expect("size: a number with an optional K/M/G suffix")
        * mult
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("case") {
        return run_case(&args[1..]);
    }
    let mut opts = Opts {
        bench: "all".into(),
        size: None,
        count: 100_000,
        reps: None,
        agent: None,
        rawio: None,
        guest_cpu: None,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match a.as_str() {
            "--size" => opts.size = Some(parse_size(&val("--size"))),
            "--count" => opts.count = val("--count").parse().expect("--count N"),
            "--reps" => opts.reps = Some(val("--reps").parse().expect("--reps N")),
            "--agent" => opts.agent = Some(val("--agent")),
            "--rawio" => opts.rawio = Some(val("--rawio")),
            "--guest-cpu" => opts.guest_cpu = Some(val("--guest-cpu")),
            "-h" | "--help" | "help" => {
                print!("{USAGE}");
                return;
            }
            b if !b.starts_with('-') => opts.bench = b.to_string(),
            other => panic!("unknown option {other}\n{USAGE}"),
        }
    }
    print_machine();
    let all = opts.bench == "all";
    let mut ran = false;
    if all || opts.bench == "throughput" {
        throughput(&opts);
        ran = true;
    }
    if all || opts.bench == "latency" {
        latency(&opts);
        ran = true;
    }
    if all || opts.bench == "pty" {
        pty(&opts);
        ran = true;
    }
    if all || opts.bench == "noisy" {
        // The fault-rate rows are slow; `all --size` sizes the other benches.
        let size = match opts.bench.as_str() {
            "noisy" => opts.size.unwrap_or(noisy::DEFAULT_SIZE),
            _ => noisy::DEFAULT_SIZE,
        };
        noisy::run(size, opts.reps.unwrap_or(3));
        ran = true;
    }
    if all || opts.bench == "footprint" {
        footprint::run(opts.agent.as_deref(), opts.reps());
        ran = true;
    }
    if all || opts.bench == "vm" {
        // `all --size` sizes the host benches; the guest has 512 MiB, so vm keeps its own.
        let size = match opts.bench.as_str() {
            "vm" => opts.size.unwrap_or(vm::DEFAULT_SIZE),
            _ => vm::DEFAULT_SIZE,
        };
        vm::run(
            opts.rawio.as_deref(),
            size,
            opts.reps.unwrap_or(3),
            opts.guest_cpu.as_deref(),
        );
        ran = true;
    }
    if !ran {
        eprint!("unknown bench {}\n{USAGE}", opts.bench);
        std::process::exit(2);
    }
}

/// Prints the machine facts BENCHMARKS.md records.
fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let sh = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "machine: nproc {}, CPU {cpu}, kernel {}, {}\n",
        sh("nproc", &[]),
        sh("uname", &["-r"]),
        sh("rustc", &["--version"])
    );
}

// ----- child side -----

/// Runs one case in this (child) process and prints `RESULT key=value ...`.
fn run_case(args: &[String]) {
    let name = args[0].as_str();
    let num = |i: usize| args[i].parse::<u64>().expect("case argument");
    let base_rss = measure::rss_kib();
    let cpu0 = measure::cpu_time();
    let mut out: BTreeMap<&str, f64> = BTreeMap::new();
    if name.starts_with("lat-") {
        measure::pin_to_cpu(0);
        let count = num(1) as usize;
        let mut rtts = match name {
            "lat-raw" => cases::raw_latency(count, 64),
            "lat-vmux" => cases::vmux_latency(count, 64),
            "lat-yamux" => cases::ymx::latency(count, 64),
            _ => panic!("unknown case {name}"),
        };
        rtts.sort_unstable();
        out.insert("p50", measure::quantile(&rtts, 0.5).as_secs_f64() * 1e6);
        out.insert("p99", measure::quantile(&rtts, 0.99).as_secs_f64() * 1e6);
    } else {
        let size = num(1);
        if num(2) == 1 {
            measure::pin_to_cpu(0);
        }
        let secs = match name {
            "tput-raw" => {
                let (a, b) = cases::socketpair();
                cases::raw_throughput(a, b, size, cases::CHUNK)
            }
            "tput-raw-64" => cases::raw_parallel_throughput(64, size, 16 << 10),
            "tput-vmux-1" => {
                cases::vmux_throughput(cases::VmuxPair::socketpair(), 1, size, cases::CHUNK)
            }
            "tput-vmux-64" => {
                cases::vmux_throughput(cases::VmuxPair::socketpair(), 64, size, 16 << 10)
            }
            "tput-yamux-1" => cases::ymx::throughput(1, size, cases::CHUNK),
            "tput-yamux-64" => cases::ymx::throughput(64, size, 16 << 10),
            "pty-raw" => {
                let (m, s) = cases::raw_pty();
                cases::raw_throughput(
                    std::fs::File::from(m),
                    std::fs::File::from(s),
                    size,
                    cases::CHUNK,
                )
            }
            "pty-vmux-serial" => {
                let config = vmux::mux::Config::serial(vmux::wire::Role::Client, 0);
                cases::vmux_throughput(cases::VmuxPair::pty(config), 1, size, cases::CHUNK)
            }
            "pty-vmux-new" => {
                let config = vmux::mux::Config::new(vmux::wire::Role::Client, 0);
                cases::vmux_throughput(cases::VmuxPair::pty(config), 1, size, cases::CHUNK)
            }
            _ => panic!("unknown case {name}"),
        };
        out.insert("secs", secs.as_secs_f64());
        out.insert("mibps", size as f64 / (1 << 20) as f64 / secs.as_secs_f64());
        let cpu = (measure::cpu_time() - cpu0).as_secs_f64();
        out.insert("cpu_per_gib", cpu / (size as f64 / (1u64 << 30) as f64));
    }
    out.insert("hwm_kib", measure::peak_rss_kib() as f64);
    out.insert("base_kib", base_rss as f64);
    let line: Vec<String> = out.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", line.join(" "));
}

// ----- parent side -----

/// One case's results over its repetitions.
type Samples = Vec<BTreeMap<String, f64>>;

/// Runs `vmux-bench case ARGS` in a fresh process and parses its RESULT line.
fn child(args: &[String]) -> BTreeMap<String, f64> {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .arg("case")
        .args(args)
        .output()
        .expect("spawn case");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
        panic!(
            "case {args:?} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    line["RESULT ".len()..]
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("number")))
        .collect()
}

/// Runs every case `reps` times, interleaved; returns samples per case, in case order.
fn run_interleaved(cases: &[(String, Vec<String>)], reps: usize) -> Vec<Samples> {
    let mut all: Vec<Samples> = vec![Vec::new(); cases.len()];
    for rep in 0..reps {
        for (i, (label, args)) in cases.iter().enumerate() {
            eprint!("\r  rep {}/{reps}: {label:<40}", rep + 1);
            all[i].push(child(args));
        }
    }
    eprintln!("\r{:<60}", "");
    all
}

fn field(s: &Samples, key: &str) -> Vec<f64> {
    s.iter().map(|m| m[key]).collect()
}

fn fmt_med_range(v: &[f64], digits: usize) -> (String, String) {
    let (med, lo, hi) = measure::summary(v);
    (
        format!("{med:.digits$}"),
        format!("{lo:.digits$}–{hi:.digits$}"),
    )
}

/// Prints a throughput table; the first case is the baseline for ratios.
fn throughput_table(title: &str, labels: &[&str], samples: &[Samples]) {
    println!("### {title}\n");
    println!("| case | MiB/s median | MiB/s min–max | ratio vs raw (median) | CPU s/GiB median | peak RSS MiB median | RSS growth MiB median |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = measure::summary(&field(&samples[0], "mibps")).0;
    for (label, s) in labels.iter().zip(samples) {
        let (med, range) = fmt_med_range(&field(s, "mibps"), 0);
        let m = measure::summary(&field(s, "mibps")).0;
        let (cpu, _) = fmt_med_range(&field(s, "cpu_per_gib"), 2);
        let hwm: Vec<f64> = field(s, "hwm_kib").iter().map(|k| k / 1024.0).collect();
        let growth: Vec<f64> = s
            .iter()
            .map(|m| (m["hwm_kib"] - m["base_kib"]) / 1024.0)
            .collect();
        let (hwm, _) = fmt_med_range(&hwm, 1);
        let (growth, _) = fmt_med_range(&growth, 1);
        println!(
            "| {label} | {med} | {range} | {:.2}× | {cpu} | {hwm} | {growth} |",
            m / base
        );
    }
    println!();
}

fn size_label(size: u64) -> String {
    if size >= 1 << 30 && size % (1 << 30) == 0 {
        format!("{} GiB", size >> 30)
    } else {
        format!("{} MiB", size >> 20)
    }
}

fn throughput(opts: &Opts) {
    let size = opts.size.unwrap_or(1 << 30);
    let names = [
        ("raw copy", "tput-raw"),
        ("raw, 64 socketpairs (reference)", "tput-raw-64"),
        ("vmux, 1 stream", "tput-vmux-1"),
        ("vmux, 64 streams", "tput-vmux-64"),
        ("yamux, 1 stream", "tput-yamux-1"),
        ("yamux, 64 streams", "tput-yamux-64"),
    ];
    println!(
        "## Throughput over a unix socketpair ({} in 64 KiB writes, {} reps)\n",
        size_label(size),
        opts.reps()
    );
    for (pin, title) in [(0, "unpinned"), (1, "pinned to CPU 0")] {
        let cases: Vec<(String, Vec<String>)> = names
            .iter()
            .map(|(label, case)| {
                (
                    format!("{label} ({title})"),
                    vec![case.to_string(), size.to_string(), pin.to_string()],
                )
            })
            .collect();
        let samples = run_interleaved(&cases, opts.reps());
        let labels: Vec<&str> = names.iter().map(|(l, _)| *l).collect();
        throughput_table(title, &labels, &samples);
    }
}

fn latency(opts: &Opts) {
    println!(
        "## Latency: 64-byte ping-pong over a unix socketpair, pinned to CPU 0 ({} round trips, {} reps)\n",
        opts.count, opts.reps()
    );
    let names = [
        ("raw", "lat-raw"),
        ("vmux", "lat-vmux"),
        ("yamux", "lat-yamux"),
    ];
    let cases: Vec<(String, Vec<String>)> = names
        .iter()
        .map(|(l, c)| (l.to_string(), vec![c.to_string(), opts.count.to_string()]))
        .collect();
    let samples = run_interleaved(&cases, opts.reps());
    println!("| case | p50 µs median | p50 min–max | p50 ratio vs raw | p99 µs median | p99 min–max | p99 ratio vs raw |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let b50 = measure::summary(&field(&samples[0], "p50")).0;
    let b99 = measure::summary(&field(&samples[0], "p99")).0;
    for ((label, _), s) in names.iter().zip(&samples) {
        let (m50, r50) = fmt_med_range(&field(s, "p50"), 1);
        let (m99, r99) = fmt_med_range(&field(s, "p99"), 1);
        let x50 = measure::summary(&field(s, "p50")).0 / b50;
        let x99 = measure::summary(&field(s, "p99")).0 / b99;
        println!("| {label} | {m50} | {r50} | {x50:.2}× | {m99} | {r99} | {x99:.2}× |");
    }
    println!();
}

fn pty(opts: &Opts) {
    let size = opts.size.unwrap_or(64 << 20);
    println!(
        "## pty: raw pty pair (cfmakeraw) vs vmux over the same kind of pair ({} in 64 KiB writes, {} reps)\n",
        size_label(size),
        opts.reps()
    );
    let names = [
        ("raw pty", "pty-raw"),
        (
            "vmux, Config::serial (payload CRC, 4 KiB chunks)",
            "pty-vmux-serial",
        ),
        ("vmux, Config::new (no payload CRC)", "pty-vmux-new"),
    ];
    for (pin, title) in [(0, "unpinned"), (1, "pinned to CPU 0")] {
        let cases: Vec<(String, Vec<String>)> = names
            .iter()
            .map(|(l, c)| {
                (
                    format!("{l} ({title})"),
                    vec![c.to_string(), size.to_string(), pin.to_string()],
                )
            })
            .collect();
        let samples = run_interleaved(&cases, opts.reps());
        let labels: Vec<&str> = names.iter().map(|(l, _)| *l).collect();
        throughput_table(title, &labels, &samples);
    }
}
