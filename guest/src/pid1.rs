//! Being init: what the agent does when it is PID 1 of a minimal initrd (no shell, no `/etc`).
//!
//! [`setup`] mounts the essential file systems, makes sure the standard descriptors exist and
//! sets a default `PATH`; [`read_cmdline`] applies `/proc/cmdline` to the settings;
//! [`modules::load_modules`] loads the requested kernel modules. Children are reaped by
//! [`crate::reaper`], and the machine ends through [`power::shutdown`] (never by returning from
//! `main`). Every step reports and logs; none of them stops the boot.

pub mod modules;
pub mod mounts;
pub mod power;

use crate::cmdline;
use crate::settings::Settings;

/// The `PATH` given to PID 1 when the kernel passes none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether this process is PID 1 (init) of its PID namespace.
pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// Mounts file systems, fixes the standard descriptors and `/dev` links, sets `PATH`.
///
/// Returns the mount reports for [`log_mounts`], to be logged once the log level from the kernel
/// command line is known (it can only be read after `/proc` is mounted); other problems are
/// logged as warnings at once. Call only when [`is_pid1`], before any thread is spawned (it may
/// set an environment variable).
pub fn setup() -> Vec<mounts::MountReport> {
    let reports = mounts::mount_all(mounts::ESSENTIAL_MOUNTS);
    if let Err(err) = mounts::ensure_std_fds() {
        log::warn!("no console for stdin/stdout/stderr: {err}");
    }
    for (link, err) in mounts::create_dev_links() {
        log::warn!("cannot create {link}: {err}");
    }
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    reports
}

/// Logs mount reports: successes at debug level, failures as errors.
pub fn log_mounts(reports: &[mounts::MountReport]) {
    for report in reports {
        match report.result {
            Ok(_) => log::debug!("{report}"),
            Err(_) => log::error!("{report}"),
        }
    }
}

/// Applies the kernel command line to `settings` and logs every ignored `vmux.*` parameter.
pub fn read_cmdline(settings: &mut Settings) {
    match std::fs::read_to_string(cmdline::PROC_CMDLINE) {
        Ok(text) => {
            for warning in cmdline::apply(&text, settings) {
                log::warn!("{warning}");
            }
        }
        Err(err) => log::error!("cannot read {}: {err}", cmdline::PROC_CMDLINE),
    }
}

/// Loads `settings.modules` and logs each result (failures as errors).
pub fn load_modules(settings: &Settings) {
    for report in modules::load_modules(&settings.modules) {
        match report.result {
            Ok(_) => log::info!("{report}"),
            Err(_) => log::error!("{report}"),
        }
    }
}
