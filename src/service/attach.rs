//! Detachable execs: `exec.attach` takes over a process started with
//! [`ExecRequest::detach`](super::ExecRequest::detach) from a new session, and `exec.list`
//! lists the processes the agent holds.
//!
//! A detachable process outlives its control stream: the agent keeps reading its output into
//! a bounded ring per fd and keeps every byte the host has not acknowledged
//! ([`ControlMsg::Ack`](super::ControlMsg::Ack)). An attach names the exec and, optionally, the
//! absolute offset per fd the consumer already holds; the agent answers with the offsets its
//! output streams will start at, and the new stream is the exec's control stream from then on
//! (Signal, Resize, Ack, Exit), exactly as for `exec`.

use super::codec::{MessageError, Reader, Writer};
use super::control::ExitStatus;
use super::exec::{with_stdio, RemoteProcess, Started};
use super::{ServiceError, EXEC_ATTACH, EXEC_LIST};
use crate::session::Session;
use std::fmt;

/// The most entries an `exec.list` reply holds.
pub const MAX_LIST: usize = 256;
/// The most argv entries an `exec.list` entry shows.
pub const MAX_LIST_ARGS: usize = 16;
/// The longest argv entry an `exec.list` entry shows.
pub const MAX_LIST_ARG: usize = 256;

/// The OPEN arguments of `exec.attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecAttach {
    /// The exec, from [`ExecReply::exec_id`](super::ExecReply::exec_id).
    pub exec_id: u64,
    /// Per output (stdout, stderr): the bytes the consumer already has, counted since the
    /// process started; `None` = replay from the last acknowledged offset.
    pub offsets: [Option<u64>; 2],
}

impl ExecAttach {
    /// `u64 exec_id`, then per fd `bool present` and, if present, `u64 offset`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.exec_id);
        for offset in self.offsets {
            match offset {
                Some(o) => w.u8(1).u64(o),
                None => w.u8(0),
            };
        }
        w.finish()
    }

    /// Parses the arguments.
    pub fn decode(bytes: &[u8]) -> Result<ExecAttach, MessageError> {
        let mut r = Reader::new(bytes);
        let exec_id = r.u64()?;
        let mut offsets = [None; 2];
        for slot in &mut offsets {
            if r.bool("offset flag")? {
                *slot = Some(r.u64()?);
            }
        }
        r.finish()?;
        Ok(ExecAttach { exec_id, offsets })
    }
}

/// The agent's OPEN_OK reply to `exec.attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachReply {
    /// The process id in the guest.
    pub pid: u32,
    /// Whether the process runs on a pty (then there is no stderr stream).
    pub pty: bool,
    /// Where the stdout and stderr streams of this attachment start (absolute offsets).
    pub offsets: [u64; 2],
}

impl AttachReply {
    /// `u32 pid`, `bool pty`, `u64 stdout offset`, `u64 stderr offset` (21 bytes).
    pub fn encode(&self) -> Vec<u8> {
        Writer::new()
            .u32(self.pid)
            .u8(u8::from(self.pty))
            .u64(self.offsets[0])
            .u64(self.offsets[1])
            .finish()
    }

    /// Parses the reply.
    pub fn decode(bytes: &[u8]) -> Result<AttachReply, MessageError> {
        let mut r = Reader::new(bytes);
        let reply = AttachReply {
            pid: r.u32()?,
            pty: r.bool("pty flag")?,
            offsets: [r.u64()?, r.u64()?],
        };
        r.finish()?;
        Ok(reply)
    }
}

/// Whether a listed process still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecState {
    /// Not reaped yet.
    Running,
    /// Reaped, with this status.
    Exited(ExitStatus),
}

impl fmt::Display for ExecState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecState::Running => f.write_str("running"),
            ExecState::Exited(ExitStatus::Code(c)) => write!(f, "exited {c}"),
            ExecState::Exited(ExitStatus::Signal(s)) => write!(f, "killed {s}"),
        }
    }
}

/// One process in an `exec.list` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecEntry {
    /// Its exec id.
    pub exec_id: u64,
    /// Its pid in the guest.
    pub pid: u32,
    /// Running, or how it ended.
    pub state: ExecState,
    /// Whether it survives its control stream.
    pub detachable: bool,
    /// Whether a control stream is attached now.
    pub attached: bool,
    /// Output bytes the agent holds for it (not yet acknowledged), all fds together.
    pub buffered: u64,
    /// Output bytes produced so far (stdout, stderr); 0 for an exec that is not detachable.
    pub produced: [u64; 2],
    /// Its command line, possibly shortened by the agent.
    pub argv: Vec<String>,
}

impl ExecEntry {
    fn encode_into(&self, w: &mut Writer) {
        w.u64(self.exec_id).u32(self.pid);
        match self.state {
            ExecState::Running => w.u8(0).i32(0),
            ExecState::Exited(ExitStatus::Code(c)) => w.u8(1).i32(c),
            ExecState::Exited(ExitStatus::Signal(s)) => w.u8(2).i32(s),
        };
        w.u8(u8::from(self.detachable))
            .u8(u8::from(self.attached))
            .u64(self.buffered)
            .u64(self.produced[0])
            .u64(self.produced[1]);
        let argc = self.argv.len().min(MAX_LIST_ARGS);
        w.u32(argc as u32);
        for a in &self.argv[..argc] {
            w.str(crate::wire::truncate_utf8(a, MAX_LIST_ARG));
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<ExecEntry, MessageError> {
        let exec_id = r.u64()?;
        let pid = r.u32()?;
        let how = r.u8()?;
        let value = r.i32()?;
        let state = match how {
            0 => ExecState::Running,
            1 => ExecState::Exited(ExitStatus::Code(value)),
            2 => ExecState::Exited(ExitStatus::Signal(value)),
            v => {
                return Err(MessageError::BadValue {
                    field: "exec state",
                    value: u64::from(v),
                })
            }
        };
        let detachable = r.bool("detachable flag")?;
        let attached = r.bool("attached flag")?;
        let buffered = r.u64()?;
        let produced = [r.u64()?, r.u64()?];
        let argc = r.count("listed argv", MAX_LIST_ARGS, 4)?;
        let mut argv = Vec::with_capacity(argc);
        for _ in 0..argc {
            argv.push(r.str("listed argv entry", MAX_LIST_ARG)?.to_string());
        }
        Ok(ExecEntry {
            exec_id,
            pid,
            state,
            detachable,
            attached,
            buffered,
            produced,
            argv,
        })
    }
}

/// The OPEN_OK reply of `exec.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecList {
    /// The processes, oldest first.
    pub entries: Vec<ExecEntry>,
    /// Processes left out because the reply would have grown too large.
    pub omitted: u32,
}

impl ExecList {
    /// The largest reply the agent builds (well under the smallest `max_frame`).
    pub const MAX_BYTES: usize = 12 << 10;

    /// `u32 count`, the entries, `u32 omitted`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        let count = self.entries.len().min(MAX_LIST);
        w.u32(count as u32);
        for e in &self.entries[..count] {
            e.encode_into(&mut w);
        }
        let omitted = self.entries.len() - count;
        w.u32(self.omitted.saturating_add(omitted as u32));
        w.finish()
    }

    /// Builds a list from `entries`, leaving out those past [`ExecList::MAX_BYTES`].
    pub fn bounded(entries: impl IntoIterator<Item = ExecEntry>) -> ExecList {
        let mut list = ExecList::default();
        let mut size = 8;
        for e in entries {
            let mut w = Writer::new();
            e.encode_into(&mut w);
            let len = w.finish().len();
            if list.omitted > 0 || size + len > Self::MAX_BYTES || list.entries.len() == MAX_LIST {
                list.omitted += 1;
                continue;
            }
            size += len;
            list.entries.push(e);
        }
        list
    }

    /// Parses the reply.
    pub fn decode(bytes: &[u8]) -> Result<ExecList, MessageError> {
        let mut r = Reader::new(bytes);
        // An entry is at least 47 bytes.
        let count = r.count("exec list", MAX_LIST, 47)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(ExecEntry::decode_from(&mut r)?);
        }
        let omitted = r.u32()?;
        r.finish()?;
        Ok(ExecList { entries, omitted })
    }
}

/// Attaches to a detachable exec from this session: its control stream moves here, its output
/// is replayed from `request.offsets` (or from the last acknowledged offsets) and then goes on
/// live. Stdin is not re-attached.
pub fn attach(session: &Session, request: &ExecAttach) -> Result<RemoteProcess, ServiceError> {
    let (control, reply) = session.open_with_reply(EXEC_ATTACH, &request.encode())?;
    let reply = match AttachReply::decode(&reply) {
        Ok(r) => r,
        Err(e) => {
            let _ = control.reset(crate::wire::ErrorCode::PROTOCOL);
            return Err(e.into());
        }
    };
    let started = Started {
        exec_id: request.exec_id,
        pid: reply.pid,
        detachable: true,
        offsets: reply.offsets,
        stdin: false,
        pty: reply.pty,
    };
    with_stdio(session, control, started)
}

/// Lists the processes the agent holds.
pub fn exec_list(session: &Session) -> Result<ExecList, ServiceError> {
    let (stream, reply) = session.open_with_reply(EXEC_LIST, &[])?;
    drop(stream);
    Ok(ExecList::decode(&reply)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn attach_request_bytes() {
        let a = ExecAttach {
            exec_id: 3,
            offsets: [Some(0x10), None],
        };
        let want = [3, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(a.encode(), want);
        assert_eq!(ExecAttach::decode(&want), Ok(a));
    }

    #[test]
    fn attach_reply_bytes() {
        let r = AttachReply {
            pid: 7,
            pty: false,
            offsets: [1, 2],
        };
        let want = [
            7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(r.encode(), want);
        assert_eq!(AttachReply::decode(&want), Ok(r));
    }

    fn entry(id: u64, argv: Vec<String>) -> ExecEntry {
        ExecEntry {
            exec_id: id,
            pid: 40 + id as u32,
            state: ExecState::Exited(ExitStatus::Signal(9)),
            detachable: true,
            attached: false,
            buffered: 4096,
            produced: [10, 20],
            argv,
        }
    }

    #[test]
    fn exec_list_round_trips_and_stays_bounded() {
        let list = ExecList::bounded([entry(1, vec!["sh".into(), "-c".into()])]);
        assert_eq!(ExecList::decode(&list.encode()), Ok(list));
        let big: Vec<ExecEntry> = (0..200)
            .map(|i| entry(i, vec!["x".repeat(MAX_LIST_ARG); MAX_LIST_ARGS]))
            .collect();
        let list = ExecList::bounded(big);
        assert!(list.encode().len() <= ExecList::MAX_BYTES);
        assert_eq!(list.entries.len() as u32 + list.omitted, 200);
        assert!(list.omitted > 0);
    }

    #[test]
    fn exec_states_display() {
        assert_eq!(ExecState::Running.to_string(), "running");
        assert_eq!(
            ExecState::Exited(ExitStatus::Code(3)).to_string(),
            "exited 3"
        );
        assert_eq!(
            ExecState::Exited(ExitStatus::Signal(9)).to_string(),
            "killed 9"
        );
    }

    proptest! {
        #[test]
        fn attach_requests_round_trip(id in any::<u64>(), a in proptest::option::of(any::<u64>()), b in proptest::option::of(any::<u64>())) {
            let req = ExecAttach { exec_id: id, offsets: [a, b] };
            prop_assert_eq!(ExecAttach::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn attach_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = ExecAttach::decode(&bytes);
            let _ = AttachReply::decode(&bytes);
            let _ = ExecList::decode(&bytes);
        }
    }
}
