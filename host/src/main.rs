//! `vmux-shim`: the host CLI. This file only parses, dispatches and turns the outcome into an
//! exit status; every command lives in its own module.

mod basic;
mod cli;
mod connect;
mod cp;
mod doctor;
mod exec;
mod forward;
mod logger;
mod serve;
mod signals;
mod term;

use std::path::Path;
use std::process::ExitCode;

use cli::{Cli, Command, Failure};

fn main() -> ExitCode {
    one_malloc_arena();
    logger::init();
    term::install_panic_hook();
    let env_addr = std::env::var(cli::ADDR_ENV).ok();
    let cli = match cli::parse(std::env::args_os().skip(1), env_addr.as_deref()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("vmux-shim: {e}");
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    let result = dispatch(&cli);
    // Whatever happened, the terminal goes back to how it was.
    term::restore();
    match result {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            eprintln!("vmux-shim: {failure}");
            ExitCode::from(failure.status)
        }
    }
}

fn dispatch(cli: &Cli) -> Result<u8, Failure> {
    let g = &cli.global;
    match &cli.command {
        Command::Help(text) => {
            print!("{text}");
            Ok(0)
        }
        Command::Version => {
            println!("vmux-shim {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Info => basic::info(g),
        Command::Ping { count } => basic::ping(g, *count),
        Command::Shutdown { reboot } => basic::shutdown(g, *reboot),
        Command::Cp { src, dst } => cp::run(g, src, dst),
        Command::Exec(args) => exec::run(g, args, take_signals()?),
        Command::Attach(args) => exec::attach(g, args, take_signals()?),
        Command::Ps => exec::ps(g),
        Command::Forward { listen, target } => forward::run(g, listen, target, take_signals()?),
        Command::Serve {
            listen,
            max_client_streams,
        } => serve::run(g, listen, *max_client_streams, take_signals()?).map(|()| 0),
        Command::Doctor { addr } => Ok(if doctor::run(Path::new("/"), addr.as_ref(), g.timeout) {
            0
        } else {
            1
        }),
    }
}

/// Routes SIGINT, SIGTERM, SIGHUP and SIGWINCH to a channel; must run before any thread starts.
fn take_signals() -> Result<crossbeam_channel::Receiver<nix::sys::signal::Signal>, Failure> {
    let set = signals::block(&signals::HANDLED)
        .map_err(|e| Failure::new(format!("cannot block signals: {e}")))?;
    signals::listen(set).map_err(|e| Failure::new(format!("cannot start the signal thread: {e}")))
}

/// glibc gives every thread that allocates its own malloc arena (28 KiB of dirty pages for the
/// reactor's alone, idle). The shim's threads allocate little and rarely at once (send buffers
/// are recycled through the reactor's pool), so one shared arena costs nothing measurable and
/// keeps each idle shim smaller.
fn one_malloc_arena() {
    // SAFETY: mallopt only changes a malloc tunable; called before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}
