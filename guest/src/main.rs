//! `vmux-agent`: the guest side of vmux. As PID 1 of a minimal initrd it sets the machine up
//! (mounts, modules, reaping) from the kernel command line; otherwise it takes flags.
//!
//! PID 1 never returns from `main`: it ends through `pid1::power::shutdown`. [`serve`] runs the
//! listeners from `settings.listen` and the service loop (`vmux_agent::serve`).

use std::ffi::OsString;
use std::process::ExitCode;

use nix::poll::PollTimeout;
use vmux_agent::args::{self, Action, USAGE};
use vmux_agent::logger::{self, Sink};
use vmux_agent::pid1::power::{self, fatal, PowerAction};
use vmux_agent::pid1::{self, is_pid1};
use vmux_agent::reaper::ChildSignals;
use vmux_agent::settings::{Settings, DEFAULT_LOG_LEVEL};
use vmux_agent::sysinfo::{SysInfo, AGENT_VERSION};

fn main() -> ExitCode {
    if is_pid1() {
        run_as_init()
    }
    run_as_process()
}

/// PID 1: set the machine up, serve, and never return.
fn run_as_init() -> ! {
    power::install_panic_hook();
    // Lines logged before /dev is mounted go to the console through stderr.
    let _ = logger::init(Sink::Kmsg, DEFAULT_LOG_LEVEL);
    let mounts = pid1::setup();
    let mut settings = Settings::default();
    pid1::read_cmdline(&mut settings);
    apply_init_argv(&mut settings);
    let settings = settings.resolve(true).unwrap_or_else(|err| fatal(err));
    logger::set_level(settings.log_level);
    pid1::log_mounts(&mounts);
    pid1::load_modules(&settings);
    let children = ChildSignals::install()
        .unwrap_or_else(|errno| fatal(format_args!("cannot watch children: {}", errno.desc())));
    announce(&settings);
    // Boot-test hooks: prove that setup completes, and that a panic powers off instead of
    // killing init.
    if settings.test_mode_is("poweroff") {
        power::shutdown(PowerAction::PowerOff);
    }
    if settings.test_mode_is("panic") {
        panic!("vmux.test=panic");
    }
    if settings.test_mode_is("vsock-loopback") {
        vmux_agent::selftest::vsock_loopback();
        power::shutdown(PowerAction::PowerOff);
    }
    serve(&settings, &children);
    // The services ended (or none are wired yet): keep reaping orphans, as init must.
    loop {
        if let Err(errno) = children.wait(PollTimeout::NONE) {
            fatal(format_args!("waiting for children: {}", errno.desc()));
        }
        for reaped in children.reap() {
            log::debug!("reaped orphan {}: {:?}", reaped.pid, reaped.status);
        }
    }
}

/// Applies flags that reached init's argv (after `--` on the kernel command line, or from a
/// container runtime) over the kernel command line; a bad one is logged and ignored as a whole.
fn apply_init_argv(settings: &mut Settings) {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if argv.is_empty() {
        return;
    }
    let mut candidate = settings.clone();
    match args::parse(argv, &mut candidate) {
        Ok(Action::Run | Action::Check) => *settings = candidate,
        Ok(action) => log::warn!("ignoring {action:?} flag as PID 1"),
        Err(err) => log::warn!("ignoring init arguments: {err}"),
    }
}

/// Not PID 1: flags only; usage errors exit 2.
fn run_as_process() -> ExitCode {
    let mut settings = Settings::default();
    let action = match args::parse(std::env::args_os().skip(1), &mut settings) {
        Ok(action) => action,
        Err(err) => return usage_error(err),
    };
    match action {
        Action::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Action::Version => {
            println!("vmux-agent {AGENT_VERSION}");
            return ExitCode::SUCCESS;
        }
        Action::Run | Action::Check => {}
    }
    let settings = match settings.resolve(false) {
        Ok(settings) => settings,
        Err(err) => return usage_error(err),
    };
    if action == Action::Check {
        print!("{settings}");
        return ExitCode::SUCCESS;
    }
    let _ = logger::init(Sink::Stderr, settings.log_level);
    let children = match ChildSignals::install() {
        Ok(children) => children,
        Err(errno) => {
            log::error!("cannot watch children: {}", errno.desc());
            return ExitCode::FAILURE;
        }
    };
    announce(&settings);
    serve(&settings, &children);
    ExitCode::SUCCESS
}

fn usage_error(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("vmux-agent: {err}");
    eprint!("{USAGE}");
    ExitCode::from(2)
}

/// Logs the system facts (debug) and the ready line that boot tests wait for.
fn announce(settings: &Settings) {
    for line in SysInfo::collect().to_string().lines() {
        log::debug!("{line}");
    }
    log::info!("vmux-agent ready (listen: {})", settings.listen.join(", "));
}

/// Runs the services until they end; a failure to start is logged (PID 1 then keeps reaping).
fn serve(settings: &Settings, children: &ChildSignals) {
    if let Err(e) = vmux_agent::serve::serve(settings, children) {
        log::error!("{e}");
    }
}
