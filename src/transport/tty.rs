//! UARTs and ptys: opening a serial device 8N1, raw, without flow control, as a nonblocking link.
//!
//! The line is configured with `serialport` (default features off), then its fd is taken over, set
//! `O_NONBLOCK` and wrapped in a [`Link`]: `serialport`'s own `Read`/`Write` clear `O_NONBLOCK` and
//! poll per call, which does not fit a `mio` reactor.
//!
//! Why `serialport` and not hand-made termios: the agent is linked `crt-static`, and libc 0.2.191
//! binds `cfsetspeed` / `cf{g,s}et{i,o}speed` to versioned glibc symbols that break such a link.
//! Reading serialport 4.10.1's source (`src/posix/tty.rs` `TTYPort::open`, `src/posix/termios.rs`),
//! on Linux other than powerpc its open path calls `tcgetattr`, `cfmakeraw`, `tcsetattr` and then
//! the `TCGETS2`/`TCSETS2` ioctls with `BOTHER` and `c_ispeed`/`c_ospeed` for the rate: none of the
//! `cfset*speed` family. Its `cfmakeraw` gives `VMIN = 1, VTIME = 0`; it sets `CLOCAL | CREAD`, `CS8`,
//! and clears `CRTSCTS`, `IXON | IXOFF | IXANY`, parity and `CSTOPB` from the builder below. It also
//! takes `TIOCEXCL` and an exclusive `flock`, so a second opener fails instead of sharing the line.
//!
//! A serial line has no carrier or hang-up signal: a missing peer looks like silence, and bytes
//! written by the peer before this side configured the line (or, on a pty, before the slave was
//! opened) may have been cooked by the default line discipline or lost. That is the caller's
//! problem, solved at the protocol level: every link start begins with a HELLO exchange and the
//! decoder resynchronises on garbage. Closing a pty master discards what the slave has not read.

use std::os::fd::IntoRawFd;
use std::path::Path;

use serialport::{DataBits, FlowControl, Parity, StopBits};

use super::error::TransportError;
use super::{sys, Link, LinkKind};

/// Opens `path` at `baud`, 8N1, raw, no flow control, as a nonblocking [`LinkKind::Tty`] link.
pub(crate) fn open_port(path: &Path, baud: u32, addr: &str) -> Result<Link, TransportError> {
    let Some(name) = path.to_str() else {
        return Err(TransportError::Unsupported {
            addr: addr.to_string(),
            why: "tty path is not valid UTF-8",
        });
    };
    let port = serialport::new(name, baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native()
        .map_err(|e| TransportError::io(addr, "open", e.into()))?;
    let fd = sys::own(port.into_raw_fd());
    Link::from_fd(fd, LinkKind::Tty, addr).map_err(|e| TransportError::io(addr, "configure", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::openpty;
    use nix::sys::termios::{
        tcgetattr, ControlFlags, InputFlags, LocalFlags, OutputFlags, SpecialCharacterIndices,
    };
    use std::os::fd::AsFd;

    fn slave_path(slave: &std::os::fd::OwnedFd) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", sys::raw(slave))).unwrap()
    }

    #[test]
    fn pty_is_configured_raw_8n1_without_flow_control() {
        let pty = openpty(None, None).unwrap();
        let path = slave_path(&pty.slave);
        let link = open_port(&path, 115_200, "tty://test").unwrap();
        assert_eq!(link.kind(), LinkKind::Tty);
        let t = tcgetattr(link.as_fd()).unwrap();
        assert!(!t.local_flags.intersects(
            LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN
        ));
        assert!(!t.output_flags.contains(OutputFlags::OPOST));
        assert!(!t.input_flags.intersects(
            InputFlags::ICRNL
                | InputFlags::INLCR
                | InputFlags::IGNCR
                | InputFlags::IXON
                | InputFlags::IXOFF
                | InputFlags::ISTRIP
        ));
        assert_eq!(t.control_flags & ControlFlags::CSIZE, ControlFlags::CS8);
        assert!(t
            .control_flags
            .contains(ControlFlags::CLOCAL | ControlFlags::CREAD));
        assert!(!t
            .control_flags
            .intersects(ControlFlags::CRTSCTS | ControlFlags::PARENB | ControlFlags::CSTOPB));
        assert_eq!(t.control_chars[SpecialCharacterIndices::VMIN as usize], 1);
        assert_eq!(t.control_chars[SpecialCharacterIndices::VTIME as usize], 0);
    }

    nix::ioctl_read_bad!(tcgets2, nix::libc::TCGETS2, nix::libc::termios2);

    /// The line's output speed as the kernel holds it (`TCGETS2`), whatever its encoding.
    fn kernel_speed(link: &Link) -> u32 {
        use std::os::fd::AsRawFd;
        let mut t = std::mem::MaybeUninit::<nix::libc::termios2>::zeroed();
        // SAFETY: TCGETS2 fills a termios2, which is what the pointer points to; the fd is open.
        unsafe { tcgets2(link.as_raw_fd(), t.as_mut_ptr()) }.unwrap();
        // SAFETY: zero-initialised, then filled by the kernel; every bit pattern is valid.
        let t = unsafe { t.assume_init() };
        if t.c_cflag & nix::libc::CBAUD == nix::libc::BOTHER {
            t.c_ospeed
        } else {
            // A driver may re-encode an exact standard rate into the CBAUD bits.
            match t.c_cflag & nix::libc::CBAUD {
                nix::libc::B9600 => 9600,
                nix::libc::B115200 => 115_200,
                other => panic!("unexpected CBAUD bits {other:#o}"),
            }
        }
    }

    #[test]
    fn baud_rate_reaches_the_kernel() {
        for baud in [9600, 115_200] {
            let pty = openpty(None, None).unwrap();
            let path = slave_path(&pty.slave);
            let link = open_port(&path, baud, "tty://test").unwrap();
            assert_eq!(kernel_speed(&link), baud);
        }
    }

    #[test]
    fn missing_device_is_not_found_with_address() {
        let err = open_port(
            Path::new("/dev/nonexistent-vmux-tty"),
            115_200,
            "tty:///dev/x",
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(err.to_string().starts_with("tty:///dev/x: open: "), "{err}");
    }
}
