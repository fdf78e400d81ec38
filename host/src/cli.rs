//! The command line: what the user typed, parsed with `lexopt` into a [`Cli`], and the help texts.
//!
//! Global options (`-c/--connect`, `--timeout`, `--serial`) may come before or after the
//! subcommand's name, but for `exec` never after the command to run: everything from `CMD` on
//! belongs to the remote program. Parsing is pure (the `VMUX_ADDR` value is passed in), so the
//! tests drive it with tables. A bad command line is a [`UsageError`] (exit status 2); every
//! other failure of the shim is a [`Failure`]: one line, and an exit status.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::Arg::{Long, Short, Value};
use vmux::transport::Address;

/// The environment variable that supplies the default for `--connect`.
pub const ADDR_ENV: &str = "VMUX_ADDR";
/// How long connecting (dial plus HELLO) may take unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `serve --max-client-streams`: a quarter of the guest's 1024 streams.
pub const DEFAULT_MAX_CLIENT_STREAMS: u32 = 256;
/// How many pings `ping` sends unless `-n` says otherwise.
pub const DEFAULT_PING_COUNT: u32 = 10;

/// The exit status of a usage error.
pub const EXIT_USAGE: u8 = 2;
/// The exit status when the shim itself fails (as ssh does, so remote statuses stay distinct).
pub const EXIT_SHIM_FAILED: u8 = 255;

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Cli {
    /// Options that apply to every command that connects.
    pub global: Global,
    /// What to do.
    pub command: Command,
}

/// Options shared by every command that talks to the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// The guest's address (`-c`, else `$VMUX_ADDR`).
    pub connect: Option<Address>,
    /// Budget for dialing and the HELLO exchange.
    pub timeout: Duration,
    /// Use the serial-link session settings (payload CRCs, small chunks) on a socket address.
    pub serial: bool,
}

/// One subcommand with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Print this help text and exit 0.
    Help(&'static str),
    /// Print the version and exit 0.
    Version,
    /// Show the guest agent's facts.
    Info,
    /// Measure round trips.
    Ping { count: u32 },
    /// Run a program in the guest.
    Exec(ExecArgs),
    /// Take over a detachable exec: replay its unacknowledged output, then go on live.
    Attach(AttachArgs),
    /// List the execs the agent holds.
    Ps,
    /// Copy a file to or from the guest.
    Cp { src: CpEnd, dst: CpEnd },
    /// Forward local connections to an address reachable from the guest.
    Forward { listen: LocalListen, target: String },
    /// Share one guest link with many local clients.
    Serve {
        listen: Address,
        /// Most concurrent streams one client may hold, so no client can take every guest slot.
        max_client_streams: u32,
    },
    /// Power the guest off (or reboot it).
    Shutdown { reboot: bool },
    /// Check the host's setup; optionally one address.
    Doctor { addr: Option<Address> },
}

/// `exec`'s options and the command to run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecArgs {
    /// `-t`: allocate a pty in the guest and put the local terminal in raw mode.
    pub tty: bool,
    /// `-i`: forward stdin even when it is a terminal.
    pub interactive: bool,
    /// `-e K=V`: environment for the remote program, in order.
    pub env: Vec<(String, String)>,
    /// `-w DIR`: working directory in the guest.
    pub cwd: Option<String>,
    /// `-u UID`: run as this user id.
    pub uid: Option<u32>,
    /// `-g GID`: run as this group id.
    pub gid: Option<u32>,
    /// `--detachable`: the agent keeps the program when this shim or its link goes away.
    pub detachable: bool,
    /// `--ring BYTES`: the agent's output buffer per fd for a detachable exec (0 = default).
    pub ring: u32,
    /// `--print-id`: write `vmux exec id: N` to stderr once the program started.
    pub print_id: bool,
    /// `--id-file FILE`: write the exec id and a newline to FILE once the program started.
    pub id_file: Option<PathBuf>,
    /// The program and its arguments.
    pub argv: Vec<String>,
}

/// `attach`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttachArgs {
    /// The exec id `exec --detachable` reported.
    pub id: u64,
    /// `--stdout-offset N`: the consumer already has the first N bytes of stdout.
    pub stdout_offset: Option<u64>,
    /// `--stderr-offset N`: the consumer already has the first N bytes of stderr.
    pub stderr_offset: Option<u64>,
}

/// One side of `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpEnd {
    /// `:PATH`: a path in the guest.
    Guest(String),
    /// `-`: stdin (as the source) or stdout (as the destination).
    Stdio,
    /// Any other word: a local path.
    Local(PathBuf),
}

/// Where `forward` listens locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalListen {
    /// `tcp://IP:PORT`.
    Tcp(SocketAddr),
    /// `unix://PATH`.
    Unix(PathBuf),
}

impl fmt::Display for LocalListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalListen::Tcp(a) => write!(f, "tcp://{a}"),
            LocalListen::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// A command line that does not parse; printed as one line plus a hint to `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    /// What is wrong.
    pub message: String,
    /// The subcommand whose help applies, if known.
    pub command: Option<&'static str>,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.command {
            Some(cmd) => write!(f, "{} (see 'vmux-shim {cmd} --help')", self.message),
            None => write!(f, "{} (see 'vmux-shim --help')", self.message),
        }
    }
}

impl std::error::Error for UsageError {}

/// A failure of the shim itself: one actionable line and the exit status to leave with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The line to print (without the `vmux-shim: ` prefix).
    pub message: String,
    /// The exit status.
    pub status: u8,
}

impl Failure {
    /// A failure with exit status 1.
    pub fn new(message: impl fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            status: 1,
        }
    }

    /// The same failure with another exit status.
    pub fn with_status(mut self, status: u8) -> Failure {
        self.status = status;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One command-line token, owned so the parser can be asked for an option's value.
enum Tok {
    /// `-x` or `--name`, as typed (without any `=value`).
    Flag(String),
    /// An operand.
    Value(OsString),
}

fn next(p: &mut lexopt::Parser, cmd: Option<&'static str>) -> Result<Option<Tok>, UsageError> {
    Ok(match p.next().map_err(|e| lex(e, cmd))? {
        None => None,
        Some(Short(c)) => Some(Tok::Flag(format!("-{c}"))),
        Some(Long(l)) => Some(Tok::Flag(format!("--{l}"))),
        Some(Value(v)) => Some(Tok::Value(v)),
    })
}

fn unexpected(flag: &str, cmd: Option<&'static str>) -> UsageError {
    usage(format!("invalid option '{flag}'"), cmd)
}

fn value(p: &mut lexopt::Parser, cmd: Option<&'static str>) -> Result<String, UsageError> {
    string(p.value().map_err(|e| lex(e, cmd))?, cmd)
}

fn usage(message: impl Into<String>, command: Option<&'static str>) -> UsageError {
    UsageError {
        message: message.into(),
        command,
    }
}

fn lex(e: lexopt::Error, command: Option<&'static str>) -> UsageError {
    usage(e.to_string(), command)
}

/// Parses `args` (without the program name); `env_addr` is the value of `$VMUX_ADDR`, if set.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_addr: Option<&str>,
) -> Result<Cli, UsageError> {
    let mut p = lexopt::Parser::from_args(args);
    let mut global = GlobalBuilder::default();
    let name = loop {
        let Some(tok) = next(&mut p, None)? else {
            return Err(usage("missing command", None));
        };
        match tok {
            Tok::Value(v) => break string(v, None)?,
            Tok::Flag(f) => match f.as_str() {
                "-h" | "--help" => return Ok(plain(Command::Help(HELP))),
                "-V" | "--version" => return Ok(plain(Command::Version)),
                _ => {
                    if !global.take(&f, &mut p, None)? {
                        return Err(unexpected(&f, None));
                    }
                }
            },
        }
    };
    let command = match name.as_str() {
        "help" => parse_help(&mut p)?,
        "info" => parse_info(&mut p, &mut global)?,
        "ping" => parse_ping(&mut p, &mut global)?,
        "exec" => parse_exec(&mut p, &mut global)?,
        "attach" => parse_attach(&mut p, &mut global)?,
        "ps" => parse_ps(&mut p, &mut global)?,
        "cp" => parse_cp(&mut p, &mut global)?,
        "forward" => parse_forward(&mut p, &mut global)?,
        "serve" => parse_serve(&mut p, &mut global)?,
        "shutdown" => parse_shutdown(&mut p, &mut global)?,
        "doctor" => parse_doctor(&mut p)?,
        other => return Err(usage(format!("unknown command '{other}'"), None)),
    };
    Ok(Cli {
        global: global.build(env_addr)?,
        command,
    })
}

fn plain(command: Command) -> Cli {
    Cli {
        global: Global {
            connect: None,
            timeout: DEFAULT_TIMEOUT,
            serial: false,
        },
        command,
    }
}

/// Global options as they are seen; resolved against `$VMUX_ADDR` at the end.
#[derive(Default)]
struct GlobalBuilder {
    connect: Option<String>,
    timeout: Option<Duration>,
    serial: bool,
}

impl GlobalBuilder {
    /// Consumes `arg` if it is a global option; `Ok(false)` if it is not one.
    fn take(
        &mut self,
        flag: &str,
        p: &mut lexopt::Parser,
        cmd: Option<&'static str>,
    ) -> Result<bool, UsageError> {
        match flag {
            "-c" | "--connect" => self.connect = Some(value(p, cmd)?),
            "--timeout" => {
                let v = value(p, cmd)?;
                self.timeout = Some(parse_secs(&v).ok_or_else(|| {
                    usage(
                        format!("--timeout takes seconds (like 10 or 2.5), not '{v}'"),
                        cmd,
                    )
                })?);
            }
            "--serial" => self.serial = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn build(self, env_addr: Option<&str>) -> Result<Global, UsageError> {
        let connect = match self.connect.as_deref().or(env_addr) {
            None => None,
            Some("") => None,
            Some(s) => Some(
                s.parse::<Address>()
                    .map_err(|e| usage(e.to_string(), None))?,
            ),
        };
        Ok(Global {
            connect,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            serial: self.serial,
        })
    }
}

/// Parses a non-negative number of seconds, with an optional fraction.
pub fn parse_secs(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().parse().ok()?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

fn string(v: OsString, cmd: Option<&'static str>) -> Result<String, UsageError> {
    v.into_string()
        .map_err(|v| usage(format!("argument is not valid UTF-8: {v:?}"), cmd))
}

/// Loops over the options of a subcommand that takes only flags and up to `max` operands.
fn simple(
    p: &mut lexopt::Parser,
    g: &mut GlobalBuilder,
    cmd: &'static str,
    help: &'static str,
    mut flag: impl FnMut(&str, &mut lexopt::Parser) -> Result<bool, UsageError>,
    max: usize,
) -> Result<Result<Vec<String>, &'static str>, UsageError> {
    let mut operands = Vec::new();
    while let Some(tok) = next(p, Some(cmd))? {
        match tok {
            Tok::Flag(f) if f == "-h" || f == "--help" => return Ok(Err(help)),
            Tok::Value(v) => {
                if operands.len() == max {
                    return Err(usage(
                        format!("unexpected argument '{}'", v.to_string_lossy()),
                        Some(cmd),
                    ));
                }
                operands.push(string(v, Some(cmd))?);
            }
            Tok::Flag(f) => {
                if !g.take(&f, p, Some(cmd))? && !flag(&f, p)? {
                    return Err(unexpected(&f, Some(cmd)));
                }
            }
        }
    }
    Ok(Ok(operands))
}

fn parse_help(p: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut topic = None;
    while let Some(tok) = next(p, None)? {
        match tok {
            Tok::Value(v) if topic.is_none() => topic = Some(string(v, None)?),
            Tok::Value(v) => {
                return Err(usage(
                    format!("unexpected argument '{}'", v.to_string_lossy()),
                    None,
                ))
            }
            Tok::Flag(f) => return Err(unexpected(&f, None)),
        }
    }
    Ok(Command::Help(match topic.as_deref() {
        None => HELP,
        Some(t) => help_for(t).ok_or_else(|| usage(format!("no help for '{t}'"), None))?,
    }))
}

/// The help text of a subcommand, by name.
pub fn help_for(name: &str) -> Option<&'static str> {
    Some(match name {
        "info" => HELP_INFO,
        "ping" => HELP_PING,
        "exec" => HELP_EXEC,
        "attach" => HELP_ATTACH,
        "ps" => HELP_PS,
        "cp" => HELP_CP,
        "forward" => HELP_FORWARD,
        "serve" => HELP_SERVE,
        "shutdown" => HELP_SHUTDOWN,
        "doctor" => HELP_DOCTOR,
        "help" => HELP,
        _ => return None,
    })
}

fn parse_info(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    Ok(
        match simple(p, g, "info", HELP_INFO, |_, _| Ok(false), 0)? {
            Err(help) => Command::Help(help),
            Ok(_) => Command::Info,
        },
    )
}

fn parse_ping(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    let mut count = DEFAULT_PING_COUNT;
    let r = simple(
        p,
        g,
        "ping",
        HELP_PING,
        |flag, p| match flag {
            "-n" | "--count" => {
                let v = value(p, Some("ping"))?;
                count = match v.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(usage(
                            format!("-n takes a positive count, not '{v}'"),
                            Some("ping"),
                        ))
                    }
                };
                Ok(true)
            }
            _ => Ok(false),
        },
        0,
    )?;
    Ok(match r {
        Err(help) => Command::Help(help),
        Ok(_) => Command::Ping { count },
    })
}

fn parse_exec(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    const CMD: Option<&str> = Some("exec");
    let mut a = ExecArgs::default();
    loop {
        let Some(tok) = next(p, CMD)? else {
            return Err(usage("missing the command to run", CMD));
        };
        let flag = match tok {
            Tok::Value(v) => {
                a.argv.push(string(v, CMD)?);
                for rest in p.raw_args().map_err(|e| lex(e, CMD))? {
                    a.argv.push(string(rest, CMD)?);
                }
                if a.ring != 0 && !a.detachable {
                    return Err(usage("--ring only applies with --detachable", CMD));
                }
                return Ok(Command::Exec(a));
            }
            Tok::Flag(f) => f,
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help(HELP_EXEC)),
            "-t" | "--tty" => a.tty = true,
            "-i" | "--interactive" => a.interactive = true,
            "-e" | "--env" => {
                let kv = value(p, CMD)?;
                match kv.split_once('=') {
                    Some((k, v)) if !k.is_empty() => a.env.push((k.to_string(), v.to_string())),
                    _ => return Err(usage(format!("-e takes NAME=VALUE, not '{kv}'"), CMD)),
                }
            }
            "-w" | "--workdir" => a.cwd = Some(value(p, CMD)?),
            "-u" | "--uid" => a.uid = Some(id_value(p, "-u")?),
            "-g" | "--gid" => a.gid = Some(id_value(p, "-g")?),
            "--detachable" => a.detachable = true,
            "--ring" => {
                let v = value(p, CMD)?;
                a.ring = v
                    .parse()
                    .map_err(|_| usage(format!("--ring takes a byte count, not '{v}'"), CMD))?;
            }
            "--print-id" => a.print_id = true,
            "--id-file" => a.id_file = Some(PathBuf::from(value(p, CMD)?)),
            f => {
                if !g.take(f, p, CMD)? {
                    return Err(unexpected(f, CMD));
                }
            }
        }
    }
}

fn parse_attach(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    const CMD: Option<&str> = Some("attach");
    let mut a = AttachArgs::default();
    let offset = |p: &mut lexopt::Parser, flag: &str| -> Result<u64, UsageError> {
        let v = value(p, CMD)?;
        v.parse()
            .map_err(|_| usage(format!("{flag} takes a byte offset, not '{v}'"), CMD))
    };
    let r = simple(
        p,
        g,
        "attach",
        HELP_ATTACH,
        |flag, p| {
            match flag {
                "--stdout-offset" => a.stdout_offset = Some(offset(p, flag)?),
                "--stderr-offset" => a.stderr_offset = Some(offset(p, flag)?),
                _ => return Ok(false),
            }
            Ok(true)
        },
        1,
    )?;
    let operands = match r {
        Err(help) => return Ok(Command::Help(help)),
        Ok(o) => o,
    };
    let Some(id) = operands.first() else {
        return Err(usage("missing the exec id", CMD));
    };
    a.id = id
        .parse()
        .map_err(|_| usage(format!("the exec id is a number, not '{id}'"), CMD))?;
    Ok(Command::Attach(a))
}

fn parse_ps(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    Ok(match simple(p, g, "ps", HELP_PS, |_, _| Ok(false), 0)? {
        Err(help) => Command::Help(help),
        Ok(_) => Command::Ps,
    })
}

fn id_value(p: &mut lexopt::Parser, flag: &str) -> Result<u32, UsageError> {
    const CMD: Option<&str> = Some("exec");
    let v = value(p, CMD)?;
    v.parse()
        .map_err(|_| usage(format!("{flag} takes a numeric id, not '{v}'"), CMD))
}

/// Classifies one `cp` operand: `:PATH` is in the guest, `-` is stdio, anything else is local.
pub fn cp_end(word: &str) -> CpEnd {
    if let Some(path) = word.strip_prefix(':') {
        CpEnd::Guest(path.to_string())
    } else if word == "-" {
        CpEnd::Stdio
    } else {
        CpEnd::Local(PathBuf::from(word))
    }
}

fn parse_cp(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    const CMD: Option<&str> = Some("cp");
    let ops = match simple(p, g, "cp", HELP_CP, |_, _| Ok(false), 2)? {
        Err(help) => return Ok(Command::Help(help)),
        Ok(ops) => ops,
    };
    let [src, dst] = <[String; 2]>::try_from(ops)
        .map_err(|_| usage("cp takes a source and a destination", CMD))?;
    let (src, dst) = (cp_end(&src), cp_end(&dst));
    let guest_path_empty = |e: &CpEnd| matches!(e, CpEnd::Guest(p) if p.is_empty());
    if guest_path_empty(&src) || guest_path_empty(&dst) {
        return Err(usage(
            "a guest path needs a path after ':' (like :/tmp/f)",
            CMD,
        ));
    }
    match (&src, &dst) {
        (CpEnd::Guest(_), CpEnd::Guest(_)) => Err(usage(
            "both sides are in the guest: copy inside the guest with 'exec cp'",
            CMD,
        )),
        (CpEnd::Guest(_), _) | (_, CpEnd::Guest(_)) => Ok(Command::Cp { src, dst }),
        _ => Err(usage(
            "neither side is in the guest: write a guest path as :PATH",
            CMD,
        )),
    }
}

/// Parses a local listening address for `forward`: `tcp://IP:PORT` or `unix://PATH`.
pub fn parse_local_listen(s: &str) -> Result<LocalListen, String> {
    if let Some(rest) = s.strip_prefix("tcp://") {
        rest.parse::<SocketAddr>()
            .map(LocalListen::Tcp)
            .map_err(|_| {
                format!(
                    "'{s}': expected tcp://IP:PORT with a numeric IP (like tcp://127.0.0.1:8080)"
                )
            })
    } else if let Some(rest) = s.strip_prefix("unix://") {
        if rest.is_empty() {
            Err(format!("'{s}': expected unix://PATH"))
        } else {
            Ok(LocalListen::Unix(PathBuf::from(rest)))
        }
    } else {
        Err(format!(
            "'{s}': expected tcp://IP:PORT or unix://PATH to listen on"
        ))
    }
}

fn parse_forward(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    const CMD: Option<&str> = Some("forward");
    let ops = match simple(p, g, "forward", HELP_FORWARD, |_, _| Ok(false), 2)? {
        Err(help) => return Ok(Command::Help(help)),
        Ok(ops) => ops,
    };
    let [listen, target] = <[String; 2]>::try_from(ops)
        .map_err(|_| usage("forward takes LISTEN_ADDR and GUEST_ADDR", CMD))?;
    let listen = parse_local_listen(&listen).map_err(|e| usage(e, CMD))?;
    if target.is_empty() {
        return Err(usage("GUEST_ADDR is empty", CMD));
    }
    Ok(Command::Forward { listen, target })
}

fn parse_serve(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    const CMD: Option<&str> = Some("serve");
    let mut listen = None;
    let mut max_client_streams = DEFAULT_MAX_CLIENT_STREAMS;
    let r = simple(
        p,
        g,
        "serve",
        HELP_SERVE,
        |flag, p| match flag {
            "-l" | "--listen" => {
                listen = Some(value(p, CMD)?);
                Ok(true)
            }
            "--max-client-streams" => {
                let v = value(p, CMD)?;
                max_client_streams = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| {
                        usage(
                            format!("--max-client-streams: '{v}' is not a number from 1 to 1024"),
                            CMD,
                        )
                    })?;
                Ok(true)
            }
            _ => Ok(false),
        },
        0,
    )?;
    if let Err(help) = r {
        return Ok(Command::Help(help));
    }
    let listen = listen.ok_or_else(|| usage("serve needs --listen unix://PATH", CMD))?;
    match listen.parse::<Address>() {
        Ok(addr @ Address::Unix { .. }) => Ok(Command::Serve {
            listen: addr,
            max_client_streams,
        }),
        Ok(other) => Err(usage(
            format!("serve listens on unix://PATH only, not {other}"),
            CMD,
        )),
        Err(e) => Err(usage(e.to_string(), CMD)),
    }
}

fn parse_shutdown(p: &mut lexopt::Parser, g: &mut GlobalBuilder) -> Result<Command, UsageError> {
    let mut reboot = false;
    let r = simple(
        p,
        g,
        "shutdown",
        HELP_SHUTDOWN,
        |flag, _| match flag {
            "--reboot" | "-r" => {
                reboot = true;
                Ok(true)
            }
            _ => Ok(false),
        },
        0,
    )?;
    Ok(match r {
        Err(help) => Command::Help(help),
        Ok(_) => Command::Shutdown { reboot },
    })
}

fn parse_doctor(p: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const CMD: Option<&str> = Some("doctor");
    // doctor takes its address as an operand, never from -c or $VMUX_ADDR: it must not open a
    // socket that was not named on its own command line.
    let mut g = GlobalBuilder::default();
    let ops = match simple(p, &mut g, "doctor", HELP_DOCTOR, |_, _| Ok(false), 1)? {
        Err(help) => return Ok(Command::Help(help)),
        Ok(ops) => ops,
    };
    if g.connect.is_some() {
        return Err(usage(
            "doctor takes the address as an operand: doctor ADDR",
            CMD,
        ));
    }
    let addr = match ops.first() {
        None => None,
        Some(s) => Some(
            s.parse::<Address>()
                .map_err(|e| usage(e.to_string(), CMD))?,
        ),
    };
    Ok(Command::Doctor { addr })
}

/// `vmux-shim --help`.
pub const HELP: &str = "\
vmux-shim: talk to a VM's vmux agent (run programs, copy files, forward ports)

Usage: vmux-shim [GLOBAL OPTIONS] COMMAND [ARGS]

Commands:
  info                          show the guest agent's facts
  ping [-n COUNT]               measure round trips (min / median / p99)
  exec [-t] [-i] [-e K=V]... [-w DIR] [--detachable] [--] CMD [ARG]...
                                run a program in the guest; its exit status is ours
  attach [--stdout-offset N] [--stderr-offset N] ID
                                take over a detachable exec: its missed output, then live
  ps                            list the execs the guest agent holds
  cp SRC DST                    copy a file; write a guest path as :PATH, - is stdin/stdout
  forward LISTEN_ADDR GUEST_ADDR
                                forward local connections to an address seen from the guest
  serve --listen unix://PATH    share one guest link with many local clients
  shutdown [--reboot]           power the guest off (or reboot it)
  doctor [ADDR]                 check this host's setup (and ADDR) and say how to fix it
  help [COMMAND]                show help (also: COMMAND --help)

Global options:
  -c, --connect ADDR   the guest (default: $VMUX_ADDR):
                         vsock://CID:PORT, hvsock://PATH:PORT, unix://PATH, tty://PATH[?baud=N]
      --timeout SECS   give up connecting after SECS (default 10)
      --serial         the address is a serial line behind a socket (a QEMU serial or
                       virtserialport chardev): payload CRCs, small chunks; tty:// implies it
  -h, --help           show help
  -V, --version        show the version

Environment: VMUX_ADDR (default address), VMUX_LOG (off|error|warn|info|debug|trace; default warn)
Exit status: exec and attach return the remote status (128+N for signal N); usage errors 2; the
shim's own failures 255 for exec and attach, 1 otherwise.
";

/// `vmux-shim info --help`.
pub const HELP_INFO: &str = "\
Usage: vmux-shim [-c ADDR] info

Shows what the guest agent reports about itself and the guest (version, kernel, uptime, ...).
";

/// `vmux-shim ping --help`.
pub const HELP_PING: &str = "\
Usage: vmux-shim [-c ADDR] ping [-n COUNT]

Sends COUNT protocol pings (default 10), one at a time, and prints the round-trip time
min / median / p99.

  -n, --count COUNT   how many pings
";

/// `vmux-shim exec --help`.
pub const HELP_EXEC: &str = "\
Usage: vmux-shim [-c ADDR] exec [-t] [-i] [-e K=V]... [-w DIR] [-u UID] [-g GID] [--] CMD [ARG]...

Runs CMD in the guest. stdout and stderr stay separate; stdin is forwarded until EOF when it is
not a terminal (or with -i / -t). SIGINT, SIGTERM and SIGHUP are passed on to the remote
program. The exit status is the remote one, or 128+N when it died of signal N.

  -t, --tty            give the program a pty in the guest, sized like this terminal; this
                       terminal goes raw until the program ends; window resizes follow
  -i, --interactive    forward stdin even when it is a terminal
  -e, --env K=V        set an environment variable (repeatable)
  -w, --workdir DIR    working directory in the guest
  -u, --uid UID        run as this numeric user id
  -g, --gid GID        run as this numeric group id
      --detachable     the agent keeps the program running when this shim, its session or
                       the link goes away, holding its unacknowledged output (see attach);
                       stdin is forwarded only while this first shim runs
      --ring BYTES     the agent's output buffer per stream for --detachable (default 1 MiB,
                       4 KiB..16 MiB); when it is full the program blocks on its next write
      --print-id       write 'vmux exec id: N' to stderr once the program started
      --id-file FILE   write the exec id N and a newline to FILE once the program started
                       (atomically: the file appears complete)
";

/// `vmux-shim attach --help`.
pub const HELP_ATTACH: &str = "\
Usage: vmux-shim [-c ADDR] attach [--stdout-offset N] [--stderr-offset N] ID

Takes over the detachable exec ID (from 'exec --detachable --print-id' or 'ps'): writes the
output the previous shim had not acknowledged, then the live output, and exits with the
program's status (128+N when it died of signal N). SIGINT, SIGTERM and SIGHUP are passed on.
Stdin is not forwarded. If another shim is attached, it is cut off.

Offsets count bytes since the program started. Pass how many bytes of each stream the consumer
already holds (e.g. the size of the file the previous shim's stdout went to) and the output
resumes exactly there, with nothing repeated or lost; without them it resumes after the last
byte the previous shim acknowledged. An offset older than what the agent still holds, or
beyond what was produced, is an error.

      --stdout-offset N   the first N bytes of stdout (with a pty: of the terminal) are had
      --stderr-offset N   the first N bytes of stderr are had
";

/// `vmux-shim ps --help`.
pub const HELP_PS: &str = "\
Usage: vmux-shim [-c ADDR] ps

Lists the execs the guest agent holds, one per line: ID, PID, STATE (running, exited N,
killed N), ATTACHED (yes/no), DETACHABLE (yes/no), BUFFERED (output bytes held for a later
attach), OUT/ERR (bytes of stdout/stderr produced so far) and the command.
";

/// `vmux-shim cp --help`.
pub const HELP_CP: &str = "\
Usage: vmux-shim [-c ADDR] cp SRC DST

Copies one file between this host and the guest. Exactly one side is a guest path, written
:PATH. '-' is stdin (as SRC) or stdout (as DST). The file mode is kept, the content is checked
end to end (CRC32C), and a progress line appears on stderr for long transfers to a terminal.

  vmux-shim cp ./app :/usr/local/bin/app
  vmux-shim cp :/var/log/messages ./messages
  tar c dir | vmux-shim cp - :/tmp/dir.tar
";

/// `vmux-shim forward --help`.
pub const HELP_FORWARD: &str = "\
Usage: vmux-shim [-c ADDR] forward LISTEN_ADDR GUEST_ADDR

Listens on LISTEN_ADDR here (tcp://IP:PORT or unix://PATH) and connects each accepted
connection to GUEST_ADDR as seen from inside the guest (for example tcp://127.0.0.1:80).
Runs until interrupted or until the guest link is lost.

  vmux-shim forward tcp://127.0.0.1:8080 tcp://127.0.0.1:80
";

/// `vmux-shim serve --help`.
pub const HELP_SERVE: &str = "\
Usage: vmux-shim [-c ADDR] serve --listen unix://PATH [--max-client-streams N]

Holds the one link to the guest (useful when it is a serial line, which only one process can
use) and lets local clients share it: each client connects to unix://PATH (created 0600) as
if it were the guest, e.g. 'vmux-shim -c unix://PATH exec ...'. When the guest link drops,
serve redials with backoff and refuses new streams meanwhile.

  -l, --listen unix://PATH   where local clients connect
  --max-client-streams N     most concurrent streams one client may hold (default 256, at most
                             1024, the guest's limit): one client cannot take every guest slot;
                             past it the client's OPEN gets OPEN_ERR(STREAM_LIMIT)
";

/// `vmux-shim shutdown --help`.
pub const HELP_SHUTDOWN: &str = "\
Usage: vmux-shim [-c ADDR] shutdown [--reboot]

Asks the guest agent to power the guest off (or, with --reboot, to reboot it).
";

/// `vmux-shim doctor --help`.
pub const HELP_DOCTOR: &str = "\
Usage: vmux-shim doctor [ADDR]

Checks this host for what vmux links need and prints one line per check (ok, warn, FAIL) with
what to do about each failure: kernel version, the vhost_vsock module and /dev/vhost-vsock, and
the VMware vsock transport that conflicts with it. With ADDR it also checks that address: for
unix:// and hvsock:// that the socket exists and accepts a connection (no CONNECT line is sent);
for tty:// that the device exists. Only vsock:// addresses open an AF_VSOCK socket.
Exit status 0 when nothing FAILed.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Cli, UsageError> {
        parse(args.iter().map(OsString::from), None)
    }

    fn cmd(args: &[&str]) -> Command {
        match run(args) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match run(args) {
            Ok(cli) => panic!("{args:?} parsed as {cli:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn exec(argv: &[&str]) -> ExecArgs {
        ExecArgs {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..ExecArgs::default()
        }
    }

    #[test]
    fn parses_each_command_table() {
        let table: Vec<(Vec<&str>, Command)> = vec![
            (vec!["info"], Command::Info),
            (vec!["ping"], Command::Ping { count: 10 }),
            (vec!["ping", "-n", "3"], Command::Ping { count: 3 }),
            (vec!["ping", "--count=5"], Command::Ping { count: 5 }),
            (vec!["exec", "true"], Command::Exec(exec(&["true"]))),
            (
                vec!["exec", "--", "ls", "-l", "--", "x"],
                Command::Exec(exec(&["ls", "-l", "--", "x"])),
            ),
            (
                vec!["exec", "sh", "-c", "exit 7"],
                Command::Exec(exec(&["sh", "-c", "exit 7"])),
            ),
            (
                vec![
                    "exec", "-ti", "-e", "A=1", "-e", "B=x=y", "-w", "/tmp", "-u", "0", "-g", "5",
                    "bash",
                ],
                Command::Exec(ExecArgs {
                    tty: true,
                    interactive: true,
                    env: vec![("A".into(), "1".into()), ("B".into(), "x=y".into())],
                    cwd: Some("/tmp".into()),
                    uid: Some(0),
                    gid: Some(5),
                    argv: vec!["bash".into()],
                    ..ExecArgs::default()
                }),
            ),
            (
                vec!["cp", "./a", ":/tmp/a"],
                Command::Cp {
                    src: CpEnd::Local("./a".into()),
                    dst: CpEnd::Guest("/tmp/a".into()),
                },
            ),
            (
                vec!["cp", ":/etc/os-release", "-"],
                Command::Cp {
                    src: CpEnd::Guest("/etc/os-release".into()),
                    dst: CpEnd::Stdio,
                },
            ),
            (
                vec!["forward", "tcp://127.0.0.1:8080", "tcp://127.0.0.1:80"],
                Command::Forward {
                    listen: LocalListen::Tcp("127.0.0.1:8080".parse().unwrap()),
                    target: "tcp://127.0.0.1:80".into(),
                },
            ),
            (
                vec!["forward", "unix:///tmp/x.sock", "unix:///run/app.sock"],
                Command::Forward {
                    listen: LocalListen::Unix("/tmp/x.sock".into()),
                    target: "unix:///run/app.sock".into(),
                },
            ),
            (
                vec!["serve", "--listen", "unix:///tmp/s.sock"],
                Command::Serve {
                    listen: "unix:///tmp/s.sock".parse().unwrap(),
                    max_client_streams: DEFAULT_MAX_CLIENT_STREAMS,
                },
            ),
            (vec!["shutdown"], Command::Shutdown { reboot: false }),
            (
                vec!["shutdown", "--reboot"],
                Command::Shutdown { reboot: true },
            ),
            (vec!["doctor"], Command::Doctor { addr: None }),
            (
                vec!["doctor", "unix:///tmp/vm.sock"],
                Command::Doctor {
                    addr: Some("unix:///tmp/vm.sock".parse().unwrap()),
                },
            ),
            (vec!["--version"], Command::Version),
            (vec!["-V"], Command::Version),
            (vec!["--help"], Command::Help(HELP)),
            (vec!["help"], Command::Help(HELP)),
            (vec!["help", "exec"], Command::Help(HELP_EXEC)),
            (vec!["exec", "--help"], Command::Help(HELP_EXEC)),
            (vec!["cp", "-h"], Command::Help(HELP_CP)),
            (vec!["serve", "--help"], Command::Help(HELP_SERVE)),
            (vec!["doctor", "--help"], Command::Help(HELP_DOCTOR)),
        ];
        for (args, want) in table {
            assert_eq!(cmd(&args), want, "{args:?}");
        }
    }

    #[test]
    fn exec_arguments_after_the_command_belong_to_it() {
        let Command::Exec(a) = cmd(&["exec", "ls", "-c", "x", "--timeout", "3"]) else {
            panic!()
        };
        assert_eq!(a.argv, ["ls", "-c", "x", "--timeout", "3"]);
    }

    #[test]
    fn global_options_go_before_or_after_the_command_name() {
        let a = run(&["-c", "unix:///a", "--timeout", "2.5", "info"]).unwrap();
        assert_eq!(a.global.connect, Some("unix:///a".parse().unwrap()));
        assert_eq!(a.global.timeout, Duration::from_millis(2500));
        assert!(!a.global.serial);
        let b = run(&["ping", "--connect=tty:///dev/ttyS1", "--serial", "-n", "2"]).unwrap();
        assert_eq!(b.global.connect, Some("tty:///dev/ttyS1".parse().unwrap()));
        assert!(b.global.serial);
        assert_eq!(b.command, Command::Ping { count: 2 });
    }

    #[test]
    fn connect_defaults_to_the_environment_and_flag_wins() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let env = parse(args(&["info"]), Some("unix:///env")).unwrap();
        assert_eq!(env.global.connect, Some("unix:///env".parse().unwrap()));
        let flag = parse(args(&["-c", "unix:///flag", "info"]), Some("unix:///env")).unwrap();
        assert_eq!(flag.global.connect, Some("unix:///flag".parse().unwrap()));
        let none = parse(args(&["info"]), None).unwrap();
        assert_eq!(none.global.connect, None);
        assert_eq!(none.global.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn detach_flags_attach_and_ps_parse() {
        let Command::Exec(a) = cmd(&[
            "exec",
            "--detachable",
            "--ring",
            "4096",
            "--print-id",
            "--id-file",
            "/tmp/id",
            "seq",
            "--ring",
        ]) else {
            panic!("not exec");
        };
        assert!(a.detachable && a.print_id);
        assert_eq!(a.ring, 4096);
        assert_eq!(a.id_file, Some(PathBuf::from("/tmp/id")));
        assert_eq!(a.argv, ["seq", "--ring"]);
        assert_eq!(
            cmd(&["attach", "--stdout-offset", "10", "7", "--stderr-offset=2"]),
            Command::Attach(AttachArgs {
                id: 7,
                stdout_offset: Some(10),
                stderr_offset: Some(2),
            })
        );
        assert_eq!(
            cmd(&["attach", "3"]),
            Command::Attach(AttachArgs {
                id: 3,
                ..AttachArgs::default()
            })
        );
        assert_eq!(cmd(&["ps"]), Command::Ps);
        assert_eq!(cmd(&["attach", "--help"]), Command::Help(HELP_ATTACH));
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        let table: &[(&[&str], &str)] = &[
            (&[], "missing command"),
            (&["frobnicate"], "unknown command 'frobnicate'"),
            (&["exec"], "missing the command to run"),
            (&["exec", "-e", "NOVALUE", "ls"], "-e takes NAME=VALUE"),
            (&["ping", "-n", "0"], "-n takes a positive count"),
            (&["ping", "-x"], "invalid option '-x'"),
            (&["cp", "a"], "cp takes a source and a destination"),
            (&["cp", "a", "b"], "neither side is in the guest"),
            (&["cp", ":a", ":b"], "both sides are in the guest"),
            (&["cp", ":", "b"], "needs a path after ':'"),
            (
                &["forward", "127.0.0.1:80", "x"],
                "expected tcp://IP:PORT or unix://PATH",
            ),
            (&["forward", "tcp://localhost:80", "x"], "numeric IP"),
            (&["serve"], "serve needs --listen unix://PATH"),
            (&["serve", "-l", "tcp://1.2.3.4:5"], "unknown"),
            (&["--timeout", "soon", "info"], "--timeout takes seconds"),
            (&["-c", "nonsense", "info"], "nonsense"),
            (
                &["doctor", "-c", "unix:///x"],
                "doctor takes the address as an operand",
            ),
            (&["info", "extra"], "unexpected argument 'extra'"),
            (&["attach"], "missing the exec id"),
            (&["attach", "x1"], "the exec id is a number, not 'x1'"),
            (
                &["attach", "--stdout-offset", "-3", "1"],
                "takes a byte offset",
            ),
            (&["attach", "1", "2"], "unexpected argument '2'"),
            (&["exec", "--ring", "1M", "ls"], "--ring takes a byte count"),
            (
                &["exec", "--ring", "4096", "ls"],
                "--ring only applies with --detachable",
            ),
            (&["ps", "x"], "unexpected argument 'x'"),
        ];
        for (args, want) in table {
            let got = err(args);
            assert!(got.contains(want), "{args:?}: {got:?} lacks {want:?}");
            assert!(got.contains("--help"), "{args:?}: {got:?} has no help hint");
            assert!(!got.contains('\n'), "{args:?}: {got:?} is not one line");
        }
    }

    #[test]
    fn cp_operands_classify_by_prefix() {
        assert_eq!(cp_end(":/x"), CpEnd::Guest("/x".into()));
        assert_eq!(cp_end("-"), CpEnd::Stdio);
        assert_eq!(cp_end("./-"), CpEnd::Local("./-".into()));
        assert_eq!(cp_end("a:b"), CpEnd::Local("a:b".into()));
    }

    #[test]
    fn every_command_has_help() {
        for name in [
            "info", "ping", "exec", "attach", "ps", "cp", "forward", "serve", "shutdown", "doctor",
            "help",
        ] {
            let text = help_for(name).unwrap();
            assert!(
                text.starts_with("Usage: vmux-shim") || name == "help",
                "{name}"
            );
        }
    }
}
