//! Messages on the long-lived control streams of `exec` and `copy`: each is framed as
//! `[u8 type][u32 body length][body]`, so either side can reassemble them from any chunking.
//!
//! [`ControlDecoder`] buffers at most one message (header plus [`MAX_CONTROL_BODY`]); a larger
//! announced length is an error at once, never an allocation.

use super::codec::{MessageError, Reader, Writer};
use std::fmt;

/// The largest control message body.
pub const MAX_CONTROL_BODY: usize = 4096;
/// Bytes before the body: type and length.
const HEADER: usize = 5;

/// Control message types (the first byte of a frame).
mod kind {
    /// Host to agent: deliver a signal to the process group.
    pub const SIGNAL: u8 = 0x01;
    /// Host to agent: set the pty window size.
    pub const RESIZE: u8 = 0x02;
    /// Host to agent (detachable exec): output up to an offset is delivered.
    pub const ACK: u8 = 0x03;
    /// Agent to host: the process ended and all its output was sent.
    pub const EXIT: u8 = 0x81;
    /// Agent to host: the copy ended (ok or failed).
    pub const COPY_RESULT: u8 = 0x82;
}

/// How a remote process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The code a shell would report: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// The end of a copy, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    /// Whether the copy succeeded (put: the file is in place; get: the file was read whole).
    pub ok: bool,
    /// Bytes the agent wrote (put) or read (get).
    pub bytes: u64,
    /// CRC32C of those bytes.
    pub crc: u32,
    /// Why it failed (empty when `ok`).
    pub message: String,
}

/// One control-stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMsg {
    /// Host to agent (exec): send signal `signo` to the process group.
    Signal {
        /// The signal number (1..=64).
        signo: u32,
    },
    /// Host to agent (exec with a pty): set the window size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Host to agent (detachable exec): the first `offset` bytes of output `fd` are durably
    /// delivered (written out), so the agent may drop them from its ring.
    Ack {
        /// 1 = stdout (with a pty: the terminal), 2 = stderr.
        fd: u8,
        /// Bytes of that fd's output since the process started.
        offset: u64,
    },
    /// Agent to host (exec): the process ended; every output byte is already sent.
    Exit(ExitStatus),
    /// Agent to host (copy): the transfer ended.
    CopyResult(CopyResult),
}

impl ControlMsg {
    /// The framed bytes: type, body length, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Writer::new();
        let kind = match self {
            ControlMsg::Signal { signo } => {
                body.u32(*signo);
                kind::SIGNAL
            }
            ControlMsg::Resize { rows, cols } => {
                body.u16(*rows).u16(*cols);
                kind::RESIZE
            }
            ControlMsg::Ack { fd, offset } => {
                body.u8(*fd).u64(*offset);
                kind::ACK
            }
            ControlMsg::Exit(status) => {
                match status {
                    ExitStatus::Code(c) => body.u8(0).i32(*c),
                    ExitStatus::Signal(s) => body.u8(1).i32(*s),
                };
                kind::EXIT
            }
            ControlMsg::CopyResult(r) => {
                let message = crate::wire::truncate_utf8(&r.message, MAX_CONTROL_BODY - 32);
                body.u8(u8::from(r.ok)).u64(r.bytes).u32(r.crc).str(message);
                kind::COPY_RESULT
            }
        };
        let body = body.finish();
        let mut out = Writer::new();
        out.u8(kind).u32(body.len() as u32).raw(&body);
        out.finish()
    }

    /// Parses one message from its type and body.
    pub fn decode(kind: u8, body: &[u8]) -> Result<ControlMsg, MessageError> {
        let mut r = Reader::new(body);
        let msg = match kind {
            kind::SIGNAL => ControlMsg::Signal { signo: r.u32()? },
            kind::RESIZE => ControlMsg::Resize {
                rows: r.u16()?,
                cols: r.u16()?,
            },
            kind::ACK => {
                let fd = r.u8()?;
                if fd != 1 && fd != 2 {
                    return Err(MessageError::BadValue {
                        field: "ack fd",
                        value: u64::from(fd),
                    });
                }
                ControlMsg::Ack {
                    fd,
                    offset: r.u64()?,
                }
            }
            kind::EXIT => {
                let how = r.u8()?;
                let value = r.i32()?;
                match how {
                    0 => ControlMsg::Exit(ExitStatus::Code(value)),
                    1 => ControlMsg::Exit(ExitStatus::Signal(value)),
                    v => {
                        return Err(MessageError::BadValue {
                            field: "exit kind",
                            value: u64::from(v),
                        })
                    }
                }
            }
            kind::COPY_RESULT => ControlMsg::CopyResult(CopyResult {
                ok: r.bool("copy result ok")?,
                bytes: r.u64()?,
                crc: r.u32()?,
                message: r.str("copy result message", MAX_CONTROL_BODY)?.to_string(),
            }),
            other => {
                return Err(MessageError::BadValue {
                    field: "control message type",
                    value: u64::from(other),
                })
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Reassembles control messages from stream chunks of any size.
#[derive(Debug, Default)]
pub struct ControlDecoder {
    buf: Vec<u8>,
}

impl ControlDecoder {
    /// An empty decoder.
    pub fn new() -> ControlDecoder {
        ControlDecoder::default()
    }

    /// Adds received bytes. Fails (and should end the stream) once the buffered bytes cannot
    /// be the start of a valid frame; never buffers more than one maximal frame beyond `data`.
    pub fn push(&mut self, data: &[u8]) -> Result<(), MessageError> {
        self.buf.extend_from_slice(data);
        self.check_header()
    }

    fn check_header(&self) -> Result<(), MessageError> {
        if self.buf.len() >= HEADER {
            let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            if len as usize > MAX_CONTROL_BODY {
                return Err(MessageError::TooLong {
                    field: "control message",
                    len: u64::from(len),
                    max: MAX_CONTROL_BODY,
                });
            }
        }
        Ok(())
    }

    /// The next complete message, if one is buffered.
    pub fn next_msg(&mut self) -> Result<Option<ControlMsg>, MessageError> {
        self.check_header()?;
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let msg = ControlMsg::decode(kind, &self.buf[HEADER..HEADER + len]);
        self.buf.drain(..HEADER + len);
        msg.map(Some)
    }

    /// Bytes buffered that do not form a complete message yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signal_frame_bytes() {
        assert_eq!(
            ControlMsg::Signal { signo: 15 }.encode(),
            [0x01, 4, 0, 0, 0, 15, 0, 0, 0]
        );
    }

    #[test]
    fn ack_frame_bytes() {
        let ack = ControlMsg::Ack {
            fd: 2,
            offset: 0x0102,
        };
        let want = [0x03, 9, 0, 0, 0, 2, 2, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(ack.encode(), want);
        assert_eq!(ControlMsg::decode(want[0], &want[5..]), Ok(ack));
        assert!(ControlMsg::decode(0x03, &[3, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn exit_frame_bytes() {
        assert_eq!(
            ControlMsg::Exit(ExitStatus::Signal(9)).encode(),
            [0x81, 5, 0, 0, 0, 1, 9, 0, 0, 0]
        );
        assert_eq!(
            ControlMsg::Exit(ExitStatus::Code(7)).encode(),
            [0x81, 5, 0, 0, 0, 0, 7, 0, 0, 0]
        );
    }

    #[test]
    fn decoder_reassembles_byte_by_byte() {
        let mut wire = ControlMsg::Resize { rows: 24, cols: 80 }.encode();
        wire.extend(ControlMsg::Exit(ExitStatus::Code(3)).encode());
        let mut d = ControlDecoder::new();
        let mut got = Vec::new();
        for b in wire {
            d.push(&[b]).unwrap();
            while let Some(m) = d.next_msg().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                ControlMsg::Resize { rows: 24, cols: 80 },
                ControlMsg::Exit(ExitStatus::Code(3))
            ]
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn decoder_rejects_oversized_length_at_once() {
        let mut d = ControlDecoder::new();
        assert!(d.push(&[0x01, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn shell_code_adds_128_to_signals() {
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        assert_eq!(ExitStatus::Signal(15).shell_code(), 143);
        assert_eq!(ExitStatus::Signal(15).to_string(), "killed by signal 15");
    }

    fn arb_msg() -> impl Strategy<Value = ControlMsg> {
        prop_oneof![
            any::<u32>().prop_map(|signo| ControlMsg::Signal { signo }),
            (any::<u16>(), any::<u16>()).prop_map(|(rows, cols)| ControlMsg::Resize { rows, cols }),
            (1u8..=2, any::<u64>()).prop_map(|(fd, offset)| ControlMsg::Ack { fd, offset }),
            any::<i32>().prop_map(|c| ControlMsg::Exit(ExitStatus::Code(c))),
            any::<i32>().prop_map(|s| ControlMsg::Exit(ExitStatus::Signal(s))),
            (any::<bool>(), any::<u64>(), any::<u32>(), ".{0,40}").prop_map(
                |(ok, bytes, crc, message)| ControlMsg::CopyResult(CopyResult {
                    ok,
                    bytes,
                    crc,
                    message
                })
            ),
        ]
    }

    proptest! {
        #[test]
        fn control_messages_round_trip(msgs in proptest::collection::vec(arb_msg(), 1..8), split in 1usize..16) {
            let wire: Vec<u8> = msgs.iter().flat_map(|m| m.encode()).collect();
            let mut d = ControlDecoder::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                d.push(chunk).unwrap();
                while let Some(m) = d.next_msg().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn control_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = ControlDecoder::new();
            if d.push(&bytes).is_ok() {
                while let Ok(Some(_)) = d.next_msg() {}
            }
        }
    }
}
