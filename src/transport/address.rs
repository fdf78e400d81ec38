//! Link addresses: the one place where the text a user types (`vsock://2:1024`,
//! `hvsock:///run/vm1.vsock:1024`, `tty:///dev/ttyS1?baud=9600`, ...) becomes a typed [`Address`].
//!
//! The syntax follows Kata Containers' agent URLs. Parsing and printing round-trip: for every
//! `Address` `a`, `a.to_string().parse() == Ok(a)`; a string in canonical form also prints back
//! unchanged (`vsock://-1:P` prints as `vsock://any:P`, a default baud is not printed). Every
//! malformed form has its own [`AddressError`] whose message is one line naming the fix.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::LinkKind;

/// The baud rate a `tty://` address gets when it does not say `?baud=`.
pub const DEFAULT_BAUD: u32 = 115_200;

/// The baud rates Linux's termios can name with `CBAUD` bits (`B50` .. `B4000000`).
pub const SUPPORTED_BAUDS: &[u32] = &[
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19_200, 38_400, 57_600,
    115_200, 230_400, 460_800, 500_000, 576_000, 921_600, 1_000_000, 1_152_000, 1_500_000,
    2_000_000, 2_500_000, 3_000_000, 3_500_000, 4_000_000,
];

/// The vsock context id (CID) of the host.
pub const VSOCK_CID_HOST: u32 = 2;

/// The CID part of a `vsock://` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VsockCid {
    /// `any` or `-1` (`VMADDR_CID_ANY`): listen on every CID of this machine.
    Any,
    /// A concrete context id: 2 is the host, 3 and up are guests, 1 is local loopback.
    Id(u32),
}

/// Which virtio-serial port a `virtio-serial://` address names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VirtioPort {
    /// A port name as given to QEMU's `virtserialport,name=...`, resolved through sysfs.
    Name(String),
    /// A device path under `/dev/` (`/dev/vport1p1`), used as is.
    Device(PathBuf),
}

/// A parsed link address: what to dial, listen on, or open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `vsock://CID:PORT` (dial) or `vsock://any:PORT` / `vsock://-1:PORT` (listen).
    Vsock {
        /// The context id.
        cid: VsockCid,
        /// The vsock port.
        port: u32,
    },
    /// `hvsock://PATH:PORT`: the host side of a Firecracker / Cloud Hypervisor hybrid vsock.
    Hvsock {
        /// The VMM's unix socket (may itself contain `:`; the port follows the last one).
        path: PathBuf,
        /// The guest vsock port to `CONNECT` to (dial) or that the guest dials (listen).
        port: u32,
    },
    /// `unix://PATH`: a unix stream socket (also QEMU's chardev socket for a serial port).
    Unix {
        /// The socket path.
        path: PathBuf,
    },
    /// `virtio-serial://NAME` or `virtio-serial:///dev/vportNpM`: a guest virtio-serial port.
    VirtioSerial {
        /// The port, by name or by device path.
        port: VirtioPort,
    },
    /// `tty://PATH[?baud=N]`: a UART or pty, configured 8N1, raw, no flow control.
    Tty {
        /// The device path.
        path: PathBuf,
        /// The line speed.
        baud: u32,
    },
}

/// Why an address string did not parse; `Display` is one line naming the expected form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// No `SCHEME://` prefix.
    MissingScheme(String),
    /// A scheme this crate does not know.
    UnknownScheme(String),
    /// `vsock://` or `hvsock://` without a `:PORT` suffix.
    MissingPort(String),
    /// A port that is not a decimal number below 2^32 - 1.
    BadPort(String),
    /// A vsock CID that is neither `any`, `-1` nor a decimal number.
    BadCid(String),
    /// An empty path (or port name) where one is required.
    EmptyPath(String),
    /// A path containing a NUL byte, which no system call accepts.
    NulInPath(String),
    /// A virtio-serial name with `/`, whitespace or control characters (and not a `/dev/` path).
    BadPortName(String),
    /// A query (`?...`) on a scheme that takes none.
    UnexpectedQuery(String),
    /// A tty query key other than `baud`, or one given twice.
    UnknownQueryKey(String),
    /// A baud rate that is not a number or not one of [`SUPPORTED_BAUDS`].
    BadBaud(String),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::MissingScheme(s) => write!(
                f,
                "address {s:?} has no scheme: expected vsock://, hvsock://, unix://, virtio-serial:// or tty://"
            ),
            AddressError::UnknownScheme(s) => write!(
                f,
                "unknown address scheme {s:?}: expected vsock, hvsock, unix, virtio-serial or tty"
            ),
            AddressError::MissingPort(s) => {
                write!(f, "address {s:?} has no port: expected ...:PORT, e.g. vsock://2:1024")
            }
            AddressError::BadPort(p) => write!(
                f,
                "bad port {p:?}: expected a decimal number from 0 to 4294967294"
            ),
            AddressError::BadCid(c) => write!(
                f,
                "bad vsock CID {c:?}: expected a decimal number, or any / -1 to listen on every CID"
            ),
            AddressError::EmptyPath(s) => write!(f, "address {s:?} has an empty path"),
            AddressError::NulInPath(s) => write!(f, "address {s:?} contains a NUL byte"),
            AddressError::BadPortName(n) => write!(
                f,
                "bad virtio-serial port name {n:?}: expected a name without '/', spaces or control characters, or a /dev/ path"
            ),
            AddressError::UnexpectedQuery(s) => write!(
                f,
                "address {s:?} has a query, but only tty:// takes one (?baud=N)"
            ),
            AddressError::UnknownQueryKey(k) => write!(
                f,
                "unknown or repeated tty option {k:?}: the only option is baud=N"
            ),
            AddressError::BadBaud(b) => write!(
                f,
                "bad baud rate {b:?}: expected a standard rate such as 9600, 115200 or 921600"
            ),
        }
    }
}

impl std::error::Error for AddressError {}

impl Address {
    /// The kind of link this address yields.
    pub fn link_kind(&self) -> LinkKind {
        match self {
            Address::Vsock { .. } => LinkKind::Vsock,
            Address::Hvsock { .. } => LinkKind::Hvsock,
            Address::Unix { .. } => LinkKind::Unix,
            Address::VirtioSerial { .. } => LinkKind::VirtioSerial,
            Address::Tty { .. } => LinkKind::Tty,
        }
    }

    /// Whether the address names a port that is opened (virtio-serial, tty), not dialed or listened on.
    pub fn is_port(&self) -> bool {
        matches!(self, Address::VirtioSerial { .. } | Address::Tty { .. })
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Address, AddressError> {
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(AddressError::MissingScheme(s.to_string()));
        };
        if s.contains('\0') {
            return Err(AddressError::NulInPath(s.to_string()));
        }
        let (body, query) = match rest.split_once('?') {
            Some((body, query)) => (body, Some(query)),
            None => (rest, None),
        };
        if query.is_some() && scheme != "tty" {
            return Err(AddressError::UnexpectedQuery(s.to_string()));
        }
        match scheme {
            "vsock" => {
                let (cid, port) = split_port(s, body)?;
                Ok(Address::Vsock {
                    cid: parse_cid(cid)?,
                    port,
                })
            }
            "hvsock" => {
                let (path, port) = split_port(s, body)?;
                Ok(Address::Hvsock {
                    path: non_empty_path(s, path)?,
                    port,
                })
            }
            "unix" => Ok(Address::Unix {
                path: non_empty_path(s, body)?,
            }),
            "virtio-serial" => Ok(Address::VirtioSerial {
                port: parse_virtio_port(s, body)?,
            }),
            "tty" => Ok(Address::Tty {
                path: non_empty_path(s, body)?,
                baud: parse_tty_query(query)?,
            }),
            _ => Err(AddressError::UnknownScheme(scheme.to_string())),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Vsock {
                cid: VsockCid::Any,
                port,
            } => write!(f, "vsock://any:{port}"),
            Address::Vsock {
                cid: VsockCid::Id(cid),
                port,
            } => write!(f, "vsock://{cid}:{port}"),
            Address::Hvsock { path, port } => write!(f, "hvsock://{}:{port}", path.display()),
            Address::Unix { path } => write!(f, "unix://{}", path.display()),
            Address::VirtioSerial {
                port: VirtioPort::Name(name),
            } => write!(f, "virtio-serial://{name}"),
            Address::VirtioSerial {
                port: VirtioPort::Device(path),
            } => write!(f, "virtio-serial://{}", path.display()),
            Address::Tty { path, baud } if *baud == DEFAULT_BAUD => {
                write!(f, "tty://{}", path.display())
            }
            Address::Tty { path, baud } => write!(f, "tty://{}?baud={baud}", path.display()),
        }
    }
}

/// Splits `BODY:PORT` at the last `:` and parses the port.
fn split_port<'a>(whole: &str, body: &'a str) -> Result<(&'a str, u32), AddressError> {
    let Some((head, port)) = body.rsplit_once(':') else {
        return Err(AddressError::MissingPort(whole.to_string()));
    };
    Ok((head, parse_port(port)?))
}

/// A port is decimal digits only (no sign), below `VMADDR_PORT_ANY` (2^32 - 1).
fn parse_port(port: &str) -> Result<u32, AddressError> {
    match parse_decimal(port) {
        Some(p) if p != u32::MAX => Ok(p),
        _ => Err(AddressError::BadPort(port.to_string())),
    }
}

fn parse_cid(cid: &str) -> Result<VsockCid, AddressError> {
    match cid {
        "any" | "-1" => Ok(VsockCid::Any),
        _ => match parse_decimal(cid) {
            // VMADDR_CID_ANY spelled as a number is still "any".
            Some(u32::MAX) => Ok(VsockCid::Any),
            Some(id) => Ok(VsockCid::Id(id)),
            None => Err(AddressError::BadCid(cid.to_string())),
        },
    }
}

/// Parses plain ASCII decimal digits (no sign, no spaces) into a `u32`.
fn parse_decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn non_empty_path(whole: &str, path: &str) -> Result<PathBuf, AddressError> {
    if path.is_empty() {
        return Err(AddressError::EmptyPath(whole.to_string()));
    }
    Ok(PathBuf::from(path))
}

fn parse_virtio_port(whole: &str, body: &str) -> Result<VirtioPort, AddressError> {
    if body.is_empty() {
        return Err(AddressError::EmptyPath(whole.to_string()));
    }
    if let Some(file) = body.strip_prefix("/dev/") {
        if file.is_empty() {
            return Err(AddressError::EmptyPath(whole.to_string()));
        }
        return Ok(VirtioPort::Device(Path::new(body).to_path_buf()));
    }
    if body
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(AddressError::BadPortName(body.to_string()));
    }
    Ok(VirtioPort::Name(body.to_string()))
}

fn parse_tty_query(query: Option<&str>) -> Result<u32, AddressError> {
    let Some(query) = query else {
        return Ok(DEFAULT_BAUD);
    };
    let mut baud = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "baud" || baud.is_some() {
            return Err(AddressError::UnknownQueryKey(key.to_string()));
        }
        match parse_decimal(value) {
            Some(rate) if SUPPORTED_BAUDS.contains(&rate) => baud = Some(rate),
            _ => return Err(AddressError::BadBaud(value.to_string())),
        }
    }
    baud.ok_or_else(|| AddressError::UnknownQueryKey(String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vsock(cid: VsockCid, port: u32) -> Address {
        Address::Vsock { cid, port }
    }

    #[test]
    fn canonical_forms_parse_and_print_back_unchanged() {
        let table: &[(&str, Address)] = &[
            ("vsock://2:1024", vsock(VsockCid::Id(2), 1024)),
            ("vsock://3:0", vsock(VsockCid::Id(3), 0)),
            ("vsock://any:1024", vsock(VsockCid::Any, 1024)),
            (
                "hvsock:///run/vm1.vsock:1024",
                Address::Hvsock {
                    path: "/run/vm1.vsock".into(),
                    port: 1024,
                },
            ),
            (
                "hvsock:///run/a:b/vm:1.sock:52",
                Address::Hvsock {
                    path: "/run/a:b/vm:1.sock".into(),
                    port: 52,
                },
            ),
            (
                "unix:///run/vm1/console.sock",
                Address::Unix {
                    path: "/run/vm1/console.sock".into(),
                },
            ),
            (
                "unix://relative.sock",
                Address::Unix {
                    path: "relative.sock".into(),
                },
            ),
            (
                "virtio-serial://org.vmux.0",
                Address::VirtioSerial {
                    port: VirtioPort::Name("org.vmux.0".into()),
                },
            ),
            (
                "virtio-serial:///dev/vport1p1",
                Address::VirtioSerial {
                    port: VirtioPort::Device("/dev/vport1p1".into()),
                },
            ),
            (
                "tty:///dev/ttyS1",
                Address::Tty {
                    path: "/dev/ttyS1".into(),
                    baud: 115_200,
                },
            ),
            (
                "tty:///dev/ttyS1?baud=9600",
                Address::Tty {
                    path: "/dev/ttyS1".into(),
                    baud: 9600,
                },
            ),
        ];
        for (text, want) in table {
            let got: Address = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(&got, want, "{text}");
            assert_eq!(got.to_string(), *text);
        }
    }

    #[test]
    fn aliases_parse_to_the_canonical_address() {
        let table: &[(&str, &str)] = &[
            ("vsock://-1:1024", "vsock://any:1024"),
            ("vsock://4294967295:1024", "vsock://any:1024"),
            ("tty:///dev/ttyS0?baud=115200", "tty:///dev/ttyS0"),
        ];
        for (alias, canonical) in table {
            let got: Address = alias.parse().unwrap_or_else(|e| panic!("{alias}: {e}"));
            assert_eq!(got.to_string(), *canonical, "{alias}");
        }
    }

    #[test]
    fn every_address_round_trips_through_display() {
        let addrs = [
            vsock(VsockCid::Any, u32::MAX - 1),
            vsock(VsockCid::Id(u32::MAX - 1), 1),
            Address::Hvsock {
                path: "x:1".into(),
                port: 2,
            },
            Address::Tty {
                path: "/dev/pts/7".into(),
                baud: 4_000_000,
            },
            Address::VirtioSerial {
                port: VirtioPort::Name("a:b.c-d_e".into()),
            },
        ];
        for addr in addrs {
            assert_eq!(addr.to_string().parse::<Address>(), Ok(addr.clone()));
        }
    }

    #[test]
    fn bad_forms_are_rejected_with_a_specific_error() {
        use AddressError as E;
        let table: &[(&str, AddressError)] = &[
            ("", E::MissingScheme("".into())),
            ("/run/x.sock", E::MissingScheme("/run/x.sock".into())),
            ("vsock:2:1024", E::MissingScheme("vsock:2:1024".into())),
            ("tcp://1.2.3.4:5", E::UnknownScheme("tcp".into())),
            ("VSOCK://2:1", E::UnknownScheme("VSOCK".into())),
            ("vsock://2", E::MissingPort("vsock://2".into())),
            ("vsock://2:", E::BadPort("".into())),
            ("vsock://2:-1", E::BadPort("-1".into())),
            ("vsock://2:+5", E::BadPort("+5".into())),
            ("vsock://2:4294967295", E::BadPort("4294967295".into())),
            ("vsock://2:4294967296", E::BadPort("4294967296".into())),
            ("vsock://2:10 ", E::BadPort("10 ".into())),
            ("vsock://host:1024", E::BadCid("host".into())),
            ("vsock://:1024", E::BadCid("".into())),
            ("vsock://-2:1024", E::BadCid("-2".into())),
            (
                "vsock://2:1024?x=1",
                E::UnexpectedQuery("vsock://2:1024?x=1".into()),
            ),
            (
                "hvsock:///run/vm.sock",
                E::MissingPort("hvsock:///run/vm.sock".into()),
            ),
            ("hvsock://:1024", E::EmptyPath("hvsock://:1024".into())),
            ("hvsock:///run/vm.sock:x", E::BadPort("x".into())),
            ("unix://", E::EmptyPath("unix://".into())),
            ("unix:///a\0b", E::NulInPath("unix:///a\0b".into())),
            ("unix:///a?b", E::UnexpectedQuery("unix:///a?b".into())),
            ("virtio-serial://", E::EmptyPath("virtio-serial://".into())),
            (
                "virtio-serial:///dev/",
                E::EmptyPath("virtio-serial:///dev/".into()),
            ),
            ("virtio-serial://a/b", E::BadPortName("a/b".into())),
            ("virtio-serial:///tmp/x", E::BadPortName("/tmp/x".into())),
            ("virtio-serial://a b", E::BadPortName("a b".into())),
            ("tty://", E::EmptyPath("tty://".into())),
            ("tty://?baud=9600", E::EmptyPath("tty://?baud=9600".into())),
            (
                "tty:///dev/ttyS0?speed=9600",
                E::UnknownQueryKey("speed".into()),
            ),
            (
                "tty:///dev/ttyS0?baud=9600&baud=9600",
                E::UnknownQueryKey("baud".into()),
            ),
            ("tty:///dev/ttyS0?", E::UnknownQueryKey("".into())),
            ("tty:///dev/ttyS0?baud=", E::BadBaud("".into())),
            ("tty:///dev/ttyS0?baud=fast", E::BadBaud("fast".into())),
            ("tty:///dev/ttyS0?baud=0", E::BadBaud("0".into())),
            ("tty:///dev/ttyS0?baud=12345", E::BadBaud("12345".into())),
            ("tty:///dev/ttyS0?baud=-9600", E::BadBaud("-9600".into())),
        ];
        for (text, want) in table {
            assert_eq!(text.parse::<Address>().as_ref(), Err(want), "{text:?}");
        }
    }

    #[test]
    fn error_messages_are_one_actionable_line() {
        let table: &[(&str, &str)] = &[
            (
                "tcp://x",
                "unknown address scheme \"tcp\": expected vsock, hvsock, unix, virtio-serial or tty",
            ),
            (
                "vsock://2",
                "address \"vsock://2\" has no port: expected ...:PORT, e.g. vsock://2:1024",
            ),
            (
                "vsock://host:1",
                "bad vsock CID \"host\": expected a decimal number, or any / -1 to listen on every CID",
            ),
            (
                "tty:///dev/ttyS0?baud=12345",
                "bad baud rate \"12345\": expected a standard rate such as 9600, 115200 or 921600",
            ),
            (
                "tty:///dev/ttyS0?parity=even",
                "unknown or repeated tty option \"parity\": the only option is baud=N",
            ),
            (
                "/tmp/x",
                "address \"/tmp/x\" has no scheme: expected vsock://, hvsock://, unix://, virtio-serial:// or tty://",
            ),
            ("unix://", "address \"unix://\" has an empty path"),
        ];
        for (text, want) in table {
            let err = text.parse::<Address>().unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
        // Every variant's message is a single line.
        let all = [
            AddressError::MissingScheme("a\nb".into()),
            AddressError::BadPort("1".into()),
            AddressError::NulInPath("x".into()),
            AddressError::BadPortName("a b".into()),
            AddressError::UnexpectedQuery("q".into()),
        ];
        for e in all {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn link_kind_and_port_role_follow_the_scheme() {
        let table: &[(&str, LinkKind, bool)] = &[
            ("vsock://2:1", LinkKind::Vsock, false),
            ("hvsock://p:1", LinkKind::Hvsock, false),
            ("unix://p", LinkKind::Unix, false),
            ("virtio-serial://n", LinkKind::VirtioSerial, true),
            ("tty://p", LinkKind::Tty, true),
        ];
        for (text, kind, port) in table {
            let addr: Address = text.parse().unwrap();
            assert_eq!(addr.link_kind(), *kind, "{text}");
            assert_eq!(addr.is_port(), *port, "{text}");
        }
    }
}
