//! The `copy` service: put a file into the guest or get one out, checked end to end.
//!
//! The host opens `copy` with a [`CopyRequest`]; the agent prepares (put: a temporary file in the
//! target's directory; get: the open file) and answers OPEN_OK with a [`CopyReady`]. That stream
//! is the control stream. The bytes travel on a `copy.data` stream opened with [`CopyData`]:
//! put: host to agent, then the host half-closes; get: agent to host. When the data stream is
//! over the agent sends [`ControlMsg::CopyResult`] (bytes and CRC32C it moved, or why it
//! failed) and closes; a put is renamed over the target (after `fsync`) only when every byte
//! arrived, so a failed put never leaves a partial file under the target's name. The client
//! compares the agent's count and CRC32C with its own.

use super::codec::{MessageError, Reader, Writer, MAX_STRING};
use super::control::{ControlDecoder, ControlMsg, CopyResult};
use super::{stream_error, ServiceError, COPY, COPY_DATA};
use crate::session::{Session, Stream};
use crate::wire::ErrorCode;
use std::io::{self, Read, Write};

/// Bytes per read or write while streaming a file.
const CHUNK: usize = 64 << 10;

/// What to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyRequest {
    /// Host to guest: write `size` bytes to `path` with permission bits `mode`.
    Put {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits (`0o7777` at most) for the new file.
        mode: u32,
        /// Exactly how many bytes will follow.
        size: u64,
    },
    /// Guest to host: read the regular file at `path`.
    Get {
        /// Absolute path in the guest.
        path: String,
    },
}

/// Op bytes.
const OP_PUT: u8 = 1;
const OP_GET: u8 = 2;

impl CopyRequest {
    /// The guest path.
    pub fn path(&self) -> &str {
        match self {
            CopyRequest::Put { path, .. } | CopyRequest::Get { path } => path,
        }
    }

    /// The OPEN arguments: `u8 op` (1 put, 2 get), `str path`, and for put `u32 mode, u64 size`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            CopyRequest::Put { path, mode, size } => w.u8(OP_PUT).str(path).u32(*mode).u64(*size),
            CopyRequest::Get { path } => w.u8(OP_GET).str(path),
        };
        w.finish()
    }

    /// Parses and checks OPEN arguments (absolute path, no NUL, mode within `0o7777`).
    pub fn decode(bytes: &[u8]) -> Result<CopyRequest, MessageError> {
        let mut r = Reader::new(bytes);
        let op = r.u8()?;
        let path = r.str("copy path", MAX_STRING)?.to_string();
        let req = match op {
            OP_PUT => CopyRequest::Put {
                path,
                mode: r.u32()?,
                size: r.u64()?,
            },
            OP_GET => CopyRequest::Get { path },
            v => {
                return Err(MessageError::BadValue {
                    field: "copy op",
                    value: u64::from(v),
                })
            }
        };
        r.finish()?;
        let path = req.path();
        if !path.starts_with('/') || path.contains('\0') {
            return Err(MessageError::Invalid(format!(
                "copy path {path:?} is not an absolute path"
            )));
        }
        if let CopyRequest::Put { mode, .. } = &req {
            if *mode > 0o7777 {
                return Err(MessageError::Invalid(format!(
                    "copy mode {mode:o} has bits beyond 7777"
                )));
            }
        }
        Ok(req)
    }
}

/// The agent's OPEN_OK reply to `copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyReady {
    /// Names the transfer in the `copy.data` request.
    pub copy_id: u64,
    /// Put: the announced size; get: the file's size when it was opened.
    pub size: u64,
    /// Put: the mode the file gets; get: the file's permission bits.
    pub mode: u32,
}

impl CopyReady {
    /// `u64 copy_id`, `u64 size`, `u32 mode`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::new()
            .u64(self.copy_id)
            .u64(self.size)
            .u32(self.mode)
            .finish()
    }

    /// Parses the reply.
    pub fn decode(bytes: &[u8]) -> Result<CopyReady, MessageError> {
        let mut r = Reader::new(bytes);
        let ready = CopyReady {
            copy_id: r.u64()?,
            size: r.u64()?,
            mode: r.u32()?,
        };
        r.finish()?;
        Ok(ready)
    }
}

/// The OPEN arguments of a `copy.data` stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyData {
    /// The transfer, from [`CopyReady::copy_id`].
    pub copy_id: u64,
}

impl CopyData {
    /// `u64 copy_id`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::new().u64(self.copy_id).finish()
    }

    /// Parses the arguments.
    pub fn decode(bytes: &[u8]) -> Result<CopyData, MessageError> {
        let mut r = Reader::new(bytes);
        let d = CopyData { copy_id: r.u64()? };
        r.finish()?;
        Ok(d)
    }
}

/// What a finished copy moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    /// Bytes moved.
    pub bytes: u64,
    /// Their CRC32C (computed on both ends, and equal).
    pub crc: u32,
    /// The file's permission bits.
    pub mode: u32,
}

/// Reads control messages until a [`CopyResult`] arrives.
fn read_result(control: &Stream) -> Result<CopyResult, ServiceError> {
    let mut decoder = ControlDecoder::new();
    let mut buf = [0u8; 512];
    loop {
        let n = (&*control).read(&mut buf).map_err(stream_error)?;
        if n == 0 {
            return Err(ServiceError::Failed(
                "the agent closed the copy control stream without a result".into(),
            ));
        }
        decoder.push(&buf[..n])?;
        while let Some(msg) = decoder.next_msg()? {
            if let ControlMsg::CopyResult(r) = msg {
                return Ok(r);
            }
        }
    }
}

/// Checks the agent's result against what this side counted.
fn check_result(
    result: CopyResult,
    bytes: u64,
    crc: u32,
    mode: u32,
) -> Result<CopyReport, ServiceError> {
    if !result.ok {
        return Err(ServiceError::Failed(result.message));
    }
    if result.bytes != bytes {
        return Err(ServiceError::Corrupt(format!(
            "{bytes} bytes on this side, {} on the agent's",
            result.bytes
        )));
    }
    if result.crc != crc {
        return Err(ServiceError::Corrupt(format!(
            "CRC32C {crc:08x} on this side, {:08x} on the agent's",
            result.crc
        )));
    }
    Ok(CopyReport { bytes, crc, mode })
}

/// Opens the control and data streams of a transfer.
fn start(
    session: &Session,
    request: &CopyRequest,
) -> Result<(Stream, Stream, CopyReady), ServiceError> {
    let (control, reply) = session.open_with_reply(COPY, &request.encode())?;
    let ready = match CopyReady::decode(&reply) {
        Ok(r) => r,
        Err(e) => {
            let _ = control.reset(ErrorCode::PROTOCOL);
            return Err(e.into());
        }
    };
    let data = match session.open(
        COPY_DATA,
        &CopyData {
            copy_id: ready.copy_id,
        }
        .encode(),
    ) {
        Ok(d) => d,
        Err(e) => {
            let _ = control.reset(ErrorCode::CANCEL);
            return Err(e.into());
        }
    };
    Ok((control, data, ready))
}

/// Aborts a transfer: both streams are reset, so the agent removes its temporary file.
fn abort(control: &Stream, data: &Stream) {
    let _ = data.reset(ErrorCode::CANCEL);
    let _ = control.reset(ErrorCode::CANCEL);
}

/// Sends `size` bytes from `reader` to the guest file `remote` (created or replaced atomically
/// with permission bits `mode`); `progress` is called with the running byte count.
pub fn copy_put(
    session: &Session,
    mut reader: impl Read,
    remote: &str,
    mode: u32,
    size: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<CopyReport, ServiceError> {
    let request = CopyRequest::Put {
        path: remote.to_string(),
        mode,
        size,
    };
    CopyRequest::decode(&request.encode())
        .map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
    let (control, data, ready) = start(session, &request)?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let mut crc = 0u32;
    let mut send_error = None;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                abort(&control, &data);
                return Err(ServiceError::Io(e));
            }
        };
        if sent + n as u64 > size {
            abort(&control, &data);
            return Err(ServiceError::InvalidRequest(format!(
                "the source has more than the announced {size} bytes"
            )));
        }
        if let Err(e) = (&data).write_all(&buf[..n]) {
            // The agent may have reset the data stream (a full disk): its result says why.
            send_error = Some(stream_error(e));
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        sent += n as u64;
        progress(sent);
    }
    if send_error.is_none() && sent != size {
        abort(&control, &data);
        return Err(ServiceError::InvalidRequest(format!(
            "the source ended after {sent} of the announced {size} bytes"
        )));
    }
    if send_error.is_none() {
        if let Err(e) = data.shutdown_write() {
            send_error = Some(e.into());
        }
    }
    let result = read_result(&control);
    drop(data);
    match (result, send_error) {
        (Ok(result), None) => check_result(result, sent, crc, ready.mode),
        (Ok(result), Some(e)) if result.ok => Err(e),
        (Ok(result), Some(_)) => Err(ServiceError::Failed(result.message)),
        (Err(e), _) => Err(e),
    }
}

/// Reads the guest file `remote` into `writer`; `progress` is called with the running count.
pub fn copy_get(
    session: &Session,
    remote: &str,
    mut writer: impl Write,
    progress: &mut dyn FnMut(u64),
) -> Result<CopyReport, ServiceError> {
    let request = CopyRequest::Get {
        path: remote.to_string(),
    };
    CopyRequest::decode(&request.encode())
        .map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
    let (control, data, ready) = start(session, &request)?;
    // The host sends nothing on the data stream; the agent's pump ends once both sides closed.
    if let Err(e) = data.shutdown_write() {
        abort(&control, &data);
        return Err(e.into());
    }
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    let mut crc = 0u32;
    loop {
        let n = match (&data).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let e = stream_error(e);
                // A failed read on the agent's side resets the data stream; the result says why.
                return match read_result(&control) {
                    Ok(r) if !r.ok => Err(ServiceError::Failed(r.message)),
                    _ => Err(e),
                };
            }
        };
        if let Err(e) = writer.write_all(&buf[..n]) {
            abort(&control, &data);
            return Err(ServiceError::Io(e));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        received += n as u64;
        progress(received);
    }
    if let Err(e) = writer.flush() {
        abort(&control, &data);
        return Err(ServiceError::Io(e));
    }
    let result = read_result(&control)?;
    check_result(result, received, crc, ready.mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn put_request_bytes() {
        let req = CopyRequest::Put {
            path: "/a".into(),
            mode: 0o644,
            size: 3,
        };
        let want = [
            1, 2, 0, 0, 0, b'/', b'a', 0xa4, 1, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(req.encode(), want);
        assert_eq!(CopyRequest::decode(&want), Ok(req));
    }

    #[test]
    fn relative_paths_and_wide_modes_are_refused() {
        let rel = CopyRequest::Get { path: "a/b".into() };
        assert!(matches!(
            CopyRequest::decode(&rel.encode()),
            Err(MessageError::Invalid(_))
        ));
        let wide = CopyRequest::Put {
            path: "/a".into(),
            mode: 0o10000,
            size: 0,
        };
        assert!(CopyRequest::decode(&wide.encode()).is_err());
    }

    #[test]
    fn ready_and_data_round_trip() {
        let r = CopyReady {
            copy_id: 1,
            size: 2,
            mode: 0o600,
        };
        assert_eq!(CopyReady::decode(&r.encode()), Ok(r));
        let d = CopyData { copy_id: 42 };
        assert_eq!(CopyData::decode(&d.encode()), Ok(d));
    }

    #[test]
    fn result_mismatch_is_corrupt() {
        let r = CopyResult {
            ok: true,
            bytes: 3,
            crc: 1,
            message: String::new(),
        };
        assert!(matches!(
            check_result(r.clone(), 3, 2, 0),
            Err(ServiceError::Corrupt(_))
        ));
        assert!(check_result(r, 3, 1, 0).is_ok());
    }

    proptest! {
        #[test]
        fn copy_requests_round_trip(path in "/[a-z/]{0,20}", mode in 0u32..0o7777, size in any::<u64>(), put in any::<bool>()) {
            let req = if put { CopyRequest::Put { path, mode, size } } else { CopyRequest::Get { path } };
            prop_assert_eq!(CopyRequest::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn copy_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = CopyRequest::decode(&bytes);
            let _ = CopyReady::decode(&bytes);
            let _ = CopyData::decode(&bytes);
        }
    }
}
