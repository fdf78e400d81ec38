//! The vmux guest agent as a library: settings, the PID-1 platform layer and system facts that
//! `main.rs` wires together and the services (exec, copy, info, ...) build on.
//!
//! - [`settings`], [`cmdline`], [`args`]: one [`settings::Settings`] from the kernel command line
//!   (PID 1) and from flags;
//! - [`logger`]: log lines to `/dev/kmsg` (PID 1) or stderr;
//! - [`pid1`]: mounts, kernel modules, power off, the panic hook;
//! - [`reaper`]: SIGCHLD as a pollable fd, and exited children with their statuses;
//! - [`sysinfo`]: facts for the `info` service;
//! - [`services`]: the one service loop (info, exec, copy, forward, shutdown);
//! - [`serve`]: listeners and ports from the settings, feeding the service loop.

pub mod args;
pub mod cmdline;
pub mod logger;
pub mod pid1;
pub mod reaper;
pub mod selftest;
pub mod serve;
pub mod services;
pub mod settings;
pub mod sysinfo;
