//! `vmux-rawio`: the guest half of `vmux-bench vm`, a raw byte source and sink for measuring a
//! VM device without vmux on it. It is copied into a guest that the harness booted and started
//! there through the agent's `exec`; it never runs on the host.
//!
//! ```text
//! vmux-rawio vsock PORT      listen on AF_VSOCK port PORT (any CID), serve commands per connection
//! vmux-rawio virtio NAME     open the virtio-serial port named NAME, serve commands on it
//! vmux-rawio sink            read stdin to EOF, then print the byte count
//! vmux-rawio source N        read one byte from stdin, then write N zero bytes to stdout
//! ```
//!
//! The device modes print `ready` once listening (or open) and then serve commands, each a byte
//! `R` or `S` and a little-endian `u64` count N: `R` reads N bytes and answers one byte `K`;
//! `S` writes N zero bytes and then waits for one byte from the host (its acknowledgement that
//! every byte arrived, so no tail can be lost by ending early). Every read and write moves up
//! to 64 KiB, as the host side and the vmux cases do.
//!
//! AF_VSOCK is opened only in `vsock` mode, and only when `VMUX_RAWIO_IN_GUEST=1` is set (the
//! bench sets it in its exec request): the machines that build this binary must never open an
//! AF_VSOCK socket themselves.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Bytes per read or write.
const BUF: usize = 64 << 10;
/// `VMADDR_CID_ANY`: accept connections to any of this guest's CIDs.
const CID_ANY: u32 = u32::MAX;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["vsock", port] => port
            .parse()
            .map_err(|_| io::Error::other("PORT: a number"))
            .and_then(serve_vsock),
        ["virtio", name] => serve_virtio(name),
        ["sink"] => sink(),
        ["source", n] => n
            .parse()
            .map_err(|_| io::Error::other("N: a number"))
            .and_then(source),
        _ => {
            eprintln!("usage: vmux-rawio vsock PORT | virtio NAME | sink | source N");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmux-rawio: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Says that the device is ready for commands.
fn ready() -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(b"ready\n")?;
    out.flush()
}

/// Listens on AF_VSOCK `port` and serves each connection's commands in turn.
fn serve_vsock(port: u32) -> io::Result<()> {
    use nix::sys::socket::{
        accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
    };
    use std::os::fd::AsRawFd;
    if std::env::var("VMUX_RAWIO_IN_GUEST").as_deref() != Ok("1") {
        return Err(io::Error::other(
            "refusing AF_VSOCK without VMUX_RAWIO_IN_GUEST=1 (guest only)",
        ));
    }
    let listener = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(listener.as_raw_fd(), &VsockAddr::new(CID_ANY, port))?;
    listen(&listener, Backlog::new(4)?)?;
    ready()?;
    loop {
        let fd = accept(listener.as_raw_fd())?;
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Err(e) = serve(&conn, false) {
            eprintln!("vmux-rawio: connection: {e}");
        }
    }
}

/// Opens the virtio-serial port `name` and serves commands on it for ever.
fn serve_virtio(name: &str) -> io::Result<()> {
    let path = virtio_port(name)?;
    let port = OpenOptions::new().read(true).write(true).open(&path)?;
    ready()?;
    serve(&port, true)
}

/// `/dev/vportNpM` of the port named `name` (there is no udev to make `/dev/virtio-ports/`).
fn virtio_port(name: &str) -> io::Result<PathBuf> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports")? {
        let entry = entry?;
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Ok(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio-serial port named {name}"),
    ))
}

/// Serves commands until the peer closes (a socket) or for ever (a port, where a read of 0
/// only means that the host is not connected right now).
fn serve(mut dev: &File, port: bool) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let mut cmd = [0u8; 9];
        if !read_full(&mut dev, &mut cmd, port)? {
            return Ok(());
        }
        let n = u64::from_le_bytes(cmd[1..].try_into().expect("8 bytes"));
        match cmd[0] {
            b'R' => {
                let mut left = n;
                while left > 0 {
                    let want = left.min(BUF as u64) as usize;
                    let got = read_some(&mut dev, &mut buf[..want], port)?;
                    if got == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("closed after {} of {n} bytes", n - left),
                        ));
                    }
                    left -= got as u64;
                }
                dev.write_all(b"K")?;
            }
            b'S' => {
                buf.fill(0);
                let mut left = n;
                while left > 0 {
                    let chunk = left.min(BUF as u64) as usize;
                    dev.write_all(&buf[..chunk])?;
                    left -= chunk as u64;
                }
                let mut ack = [0u8; 1];
                if !read_full(&mut dev, &mut ack, port)? {
                    return Ok(());
                }
            }
            other => {
                return Err(io::Error::other(format!("unknown command byte {other}")));
            }
        }
    }
}

/// Reads into `buf`; on a port, a read of 0 (no host connected) waits and tries again.
fn read_some(dev: &mut &File, buf: &mut [u8], port: bool) -> io::Result<usize> {
    loop {
        match dev.read(buf) {
            Ok(0) if port => std::thread::sleep(Duration::from_millis(10)),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Fills `buf`; `Ok(false)` if the peer closed before the first byte.
fn read_full(dev: &mut &File, buf: &mut [u8], port: bool) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match read_some(dev, &mut buf[got..], port)? {
            0 if got == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(true)
}

/// Reads stdin to EOF and prints how many bytes came.
fn sink() -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut stdin = io::stdin().lock();
    let mut total = 0u64;
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    println!("{total}");
    Ok(())
}

/// Waits for one byte on stdin (the host's start signal), then writes `n` zero bytes.
fn source(n: u64) -> io::Result<()> {
    let mut go = [0u8; 1];
    io::stdin().read_exact(&mut go)?;
    let buf = vec![0u8; BUF];
    // Unbuffered: std's stdout is line-buffered, which would copy every chunk once more.
    // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop keeps it open.
    let mut out = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let mut left = n;
    while left > 0 {
        let chunk = left.min(BUF as u64) as usize;
        out.write_all(&buf[..chunk])?;
        left -= chunk as u64;
    }
    Ok(())
}
