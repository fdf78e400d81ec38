//! Wiring the agent together: the `--listen` addresses become listeners and ports on one
//! reactor, their sessions feed the one service loop ([`crate::services::run`]), and a small
//! thread turns the SIGCHLD signalfd into "look for exited children" events.
//!
//! `auto` (the PID-1 default) picks, in order: vsock `vsock://any:1024` when `/dev/vsock`
//! exists *and* a virtio vsock device is bound to its driver (with only `vsock_loopback`
//! loaded, `/dev/vsock` exists but nothing outside the guest can connect); the virtio-serial
//! port named `org.vmux.agent.0` when it exists; else the second UART `tty:///dev/ttyS1`.
//! The choice is logged.

use crate::pid1::power::{self, PowerAction};
use crate::reaper::ChildSignals;
use crate::services::{self, Options};
use crate::settings::Settings;
use crossbeam_channel::Sender;
use nix::poll::PollTimeout;
use std::fmt;
use std::time::Duration;
use vmux::mux::Config;
use vmux::reactor::{ConfigFn, Reactor, ReactorError};
use vmux::session::Session;
use vmux::transport::{self, Address, CidAllowList, PortPaths, VsockCid};
use vmux::wire::Role;

/// The vsock port `auto` listens on.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;
/// The virtio-serial port name `auto` looks for.
pub const DEFAULT_VIRTIO_PORT: &str = "org.vmux.agent.0";
/// The UART `auto` falls back to.
pub const DEFAULT_TTY: &str = "/dev/ttyS1";
/// The listen value that asks for the automatic choice.
pub const AUTO: &str = "auto";

/// Why the agent could not start serving.
#[derive(Debug)]
pub enum ServeError {
    /// The event loop could not start.
    Reactor(ReactorError),
    /// No listen address could be used.
    NothingToServe,
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Reactor(e) => write!(f, "cannot start the event loop: {e}"),
            ServeError::NothingToServe => f.write_str("no listen address could be used"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Resolves `auto` by looking at the machine (device files under `dev`, ports under `sysfs`).
pub fn resolve_auto(paths: &PortPaths) -> Address {
    if paths.dev.join("vsock").exists() && has_vsock_device(paths) {
        return Address::Vsock {
            cid: VsockCid::Any,
            port: DEFAULT_VSOCK_PORT,
        };
    }
    if transport::virtio_serial::resolve(DEFAULT_VIRTIO_PORT, paths).is_ok() {
        return Address::VirtioSerial {
            port: transport::VirtioPort::Name(DEFAULT_VIRTIO_PORT.to_string()),
        };
    }
    let tty = format!("tty://{DEFAULT_TTY}");
    tty.parse().unwrap_or(Address::Unix {
        path: DEFAULT_TTY.into(),
    })
}

/// The sysfs folder of the virtio vsock transport driver, whose `virtioN` entries are devices.
const VSOCK_DRIVER: &str = "bus/virtio/drivers/vmw_vsock_virtio_transport";

/// Whether a virtio vsock device (a path to the host) is bound to its driver.
fn has_vsock_device(paths: &PortPaths) -> bool {
    std::fs::read_dir(paths.sysfs.join(VSOCK_DRIVER))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        })
        .unwrap_or(false)
}

/// This boot's id from `/proc/sys/kernel/random/boot_id` as 16 bytes (zeros if unreadable).
pub fn boot_id() -> [u8; 16] {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|text| parse_uuid(text.trim()))
        .unwrap_or([0; 16])
}

/// Parses a textual UUID (`8-4-4-4-12` hex digits) into its 16 bytes.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn config_fn(serial: bool, boot_id: [u8; 16]) -> ConfigFn {
    Box::new(move |link| {
        let nonce = vmux::reactor::random_nonce();
        let mut config = match (serial, link.kind()) {
            (true, vmux::transport::LinkKind::Tty) => Config::uart(Role::Server, nonce),
            (true, vmux::transport::LinkKind::VirtioSerial) => {
                Config::virtio_serial(Role::Server, nonce)
            }
            (true, _) => Config::serial(Role::Server, nonce),
            (false, _) => Config::new(Role::Server, nonce),
        };
        config.boot_id = boot_id;
        config
    })
}

/// Starts serving one address; logs and returns whether it worked.
fn start(
    reactor: &Reactor,
    text: &str,
    allow: &CidAllowList,
    sessions: &Sender<Session>,
    boot_id: [u8; 16],
) -> bool {
    let addr = if text == AUTO {
        let addr = resolve_auto(&PortPaths::default());
        log::info!("listen auto: using {addr}");
        addr
    } else {
        match text.parse::<Address>() {
            Ok(a) => a,
            Err(e) => {
                log::error!("listen {text}: {e}");
                return false;
            }
        }
    };
    let handle = reactor.handle();
    let result: Result<(), String> = match &addr {
        Address::Vsock { cid, port } => transport::listen_vsock(*cid, *port, allow.clone())
            .map_err(|e| e.to_string())
            .and_then(|l| {
                handle
                    .add_listener(Box::new(l), config_fn(false, boot_id), sessions.clone())
                    .map_err(|e| e.to_string())
            }),
        Address::Unix { .. } | Address::Hvsock { .. } => transport::listen(&addr)
            .map_err(|e| e.to_string())
            .and_then(|l| {
                handle
                    .add_listener(Box::new(l), config_fn(false, boot_id), sessions.clone())
                    .map_err(|e| e.to_string())
            }),
        Address::VirtioSerial { .. } | Address::Tty { .. } => transport::open_port(&addr)
            .map_err(|e| e.to_string())
            .and_then(|link| {
                handle
                    .add_port(link, config_fn(true, boot_id), sessions.clone())
                    .map_err(|e| e.to_string())
            }),
    };
    match result {
        Ok(()) => {
            log::info!("serving on {addr}");
            true
        }
        Err(e) => {
            log::error!("listen {addr}: {e}");
            false
        }
    }
}

/// What a confirmed `shutdown` does: power off / reboot as PID 1, else exit 0.
fn shutdown_action(reboot: bool) {
    if crate::pid1::is_pid1() {
        power::shutdown(if reboot {
            PowerAction::Reboot
        } else {
            PowerAction::PowerOff
        });
    }
    log::info!("shutdown requested: not PID 1, exiting");
    std::process::exit(0);
}

/// Serves `settings.listen` until every listener is gone; `children` is the SIGCHLD signalfd.
pub fn serve(settings: &Settings, children: &ChildSignals) -> Result<(), ServeError> {
    let reactor = Reactor::spawn().map_err(ServeError::Reactor)?;
    let (sessions_tx, sessions_rx) = crossbeam_channel::unbounded();
    let allow = CidAllowList::new(settings.allow_cids.iter().copied());
    let boot_id = boot_id();
    let mut serving = 0;
    for text in &settings.listen {
        if start(&reactor, text, &allow, &sessions_tx, boot_id) {
            serving += 1;
        }
    }
    drop(sessions_tx);
    if serving == 0 {
        return Err(ServeError::NothingToServe);
    }
    let (child_tx, child_rx) = crossbeam_channel::bounded(1);
    std::thread::scope(|scope| {
        let watcher = std::thread::Builder::new()
            .name("vmux-children".into())
            .spawn_scoped(scope, move || watch_children(children, &child_tx));
        if let Err(e) = watcher {
            log::warn!("no child watcher thread ({e}); polling for exited children");
        }
        services::run(
            sessions_rx,
            child_rx,
            Options {
                reap_interval: Duration::from_secs(1),
                on_shutdown: Box::new(shutdown_action),
                kill_on_shutdown: true,
            },
        );
        // The loop only returns when no listener is left; the watcher would wait forever.
        std::process::exit(0);
    })
}

/// Waits on the signalfd and tells the loop to reap; never reaps itself (std's `spawn` on the
/// service thread may `waitpid` a child whose `exec` failed, and must find it).
fn watch_children(children: &ChildSignals, tx: &Sender<()>) {
    loop {
        match children.wait(PollTimeout::NONE) {
            Ok(true) => {
                children.drain();
                // A full channel already says "look again".
                if let Err(crossbeam_channel::TrySendError::Disconnected(())) = tx.try_send(()) {
                    return;
                }
            }
            Ok(false) => {}
            Err(e) => {
                log::warn!("waiting for children: {}", e.desc());
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_parses_to_bytes() {
        let id = parse_uuid("0123abcd-0000-4000-8000-00000000ffff").unwrap();
        assert_eq!(id[0], 0x01);
        assert_eq!(id[3], 0xcd);
        assert_eq!(id[15], 0xff);
        assert_eq!(parse_uuid("nope"), None);
        assert_eq!(parse_uuid("0123abcd-0000-4000-8000-00000000fffg"), None);
    }

    #[test]
    fn auto_prefers_a_vsock_device_then_virtio_serial_then_ttys1() {
        let dir = std::env::temp_dir().join(format!("vmux-auto-{}", std::process::id()));
        let paths = PortPaths {
            sysfs: dir.join("sys"),
            dev: dir.join("dev"),
        };
        std::fs::create_dir_all(&paths.dev).unwrap();
        assert_eq!(resolve_auto(&paths).to_string(), "tty:///dev/ttyS1");
        let port = paths.ports_dir().join("vport1p1");
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(port.join("name"), "org.vmux.agent.0\n").unwrap();
        assert_eq!(
            resolve_auto(&paths).to_string(),
            "virtio-serial://org.vmux.agent.0"
        );
        // /dev/vsock alone (vsock_loopback) is not a way to the host.
        std::fs::write(paths.dev.join("vsock"), "").unwrap();
        assert_eq!(
            resolve_auto(&paths).to_string(),
            "virtio-serial://org.vmux.agent.0"
        );
        let device = paths.sysfs.join(VSOCK_DRIVER).join("virtio2");
        std::fs::create_dir_all(&device).unwrap();
        assert_eq!(resolve_auto(&paths).to_string(), "vsock://any:1024");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
