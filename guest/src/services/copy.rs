//! `copy` and `copy.data` in the agent: files in and out, atomic on the way in.
//!
//! Put writes into a temporary file created `O_EXCL` next to the target (same directory, so
//! the final `rename` is atomic and never crosses a filesystem), pumped by the reactor with
//! CRC32C on. When the pump ends with every announced byte: `fsync`, `rename` over the target,
//! `fsync` of the directory, then the result. Any failure removes the temporary file, so the
//! target name never shows a partial file. Get opens the file, replies its size and mode, and
//! pumps it out.

use super::{reject, reject_args, ChannelOwner, Ctx, PumpOwner};
use std::collections::HashMap;
use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use vmux::reactor::SessionId;
use vmux::service::{ControlMsg, CopyData, CopyReady, CopyRequest, CopyResult};
use vmux::session::{ChannelEventKind, Incoming, PumpDone, PumpSpec, StreamRef};
use vmux::wire::ErrorCode;

/// What a transfer is doing.
enum Op {
    /// Receiving into `temp`, to be renamed to `target`.
    Put {
        target: PathBuf,
        temp: PathBuf,
        file: File,
        size: u64,
    },
    /// Sending `file` (taken when the data stream opens).
    Get { file: Option<File> },
}

/// One transfer.
struct Transfer {
    session: SessionId,
    path: String,
    control: Option<StreamRef>,
    op: Op,
    data_opened: bool,
}

impl Transfer {
    /// Removes a put's temporary file.
    fn discard(&self) {
        if let Op::Put { temp, .. } = &self.op {
            let _ = std::fs::remove_file(temp);
        }
    }

    /// Sends the result on the control stream and closes it.
    fn finish(&self, result: CopyResult) {
        if let Some(control) = &self.control {
            if control
                .send(ControlMsg::CopyResult(result).encode())
                .is_ok()
            {
                let _ = control.close();
            }
        }
    }

    fn fail(&self, message: String) {
        log::debug!("{message}");
        self.discard();
        self.finish(CopyResult {
            ok: false,
            bytes: 0,
            crc: 0,
            message,
        });
    }
}

/// Every transfer in progress.
#[derive(Default)]
pub(super) struct Copies {
    by_id: HashMap<u64, Transfer>,
    temp_counter: u64,
}

/// `copy PATH: error` as people read it.
fn copy_error(path: &str, e: &io::Error) -> String {
    format!("copy {path}: {e}")
}

impl Copies {
    /// `copy`: prepare the file and accept the control stream with `{copy_id, size, mode}`.
    pub fn open(&mut self, ctx: &mut Ctx, incoming: Incoming) {
        let req = match CopyRequest::decode(&incoming.args) {
            Ok(r) => r,
            Err(e) => return reject_args(incoming, &e),
        };
        let path = req.path().to_string();
        let prepared = match &req {
            CopyRequest::Put { path, mode, size } => self.prepare_put(path, *mode, *size),
            CopyRequest::Get { path } => prepare_get(path),
        };
        let (op, size, mode) = match prepared {
            Ok(p) => p,
            Err(e) => return reject(incoming, ErrorCode::REFUSED, &copy_error(&path, &e)),
        };
        let id = ctx.next_id();
        let key = (incoming.session_id(), incoming.id());
        let session = incoming.session_id();
        let ready = CopyReady {
            copy_id: id,
            size,
            mode,
        };
        let transfer = Transfer {
            session,
            path,
            control: None,
            op,
            data_opened: false,
        };
        match incoming.accept_channel(&ready.encode(), ctx.channel_tx.clone()) {
            Ok(control) => {
                ctx.channels.insert(key, ChannelOwner::Copy(id));
                self.by_id.insert(
                    id,
                    Transfer {
                        control: Some(control),
                        ..transfer
                    },
                );
            }
            Err(e) => {
                log::debug!("copy: {e}");
                transfer.discard();
            }
        }
    }

    /// Creates the temporary file of a put.
    fn prepare_put(&mut self, path: &str, mode: u32, size: u64) -> io::Result<(Op, u64, u32)> {
        let target = PathBuf::from(path);
        if std::fs::metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(io::Error::from_raw_os_error(nix::libc::EISDIR));
        }
        let dir = target.parent().unwrap_or(Path::new("/"));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| io::Error::from_raw_os_error(nix::libc::EISDIR))?;
        let mut last = io::Error::from_raw_os_error(nix::libc::EEXIST);
        for _ in 0..16 {
            self.temp_counter += 1;
            let temp = dir.join(format!(
                ".{name}.vmux-{}-{}",
                std::process::id(),
                self.temp_counter
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(nix::libc::O_CLOEXEC)
                .open(&temp)
            {
                Ok(file) => {
                    // The umask may have cleared bits the host asked for.
                    if let Err(e) = file.set_permissions(Permissions::from_mode(mode)) {
                        let _ = std::fs::remove_file(&temp);
                        return Err(e);
                    }
                    let op = Op::Put {
                        target,
                        temp,
                        file,
                        size,
                    };
                    return Ok((op, size, mode));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// `copy.data`: start the pump of a prepared transfer.
    pub fn open_data(&mut self, ctx: &mut Ctx, incoming: Incoming) {
        let data = match CopyData::decode(&incoming.args) {
            Ok(d) => d,
            Err(e) => return reject_args(incoming, &e),
        };
        let transfer = match self.by_id.get_mut(&data.copy_id) {
            Some(t) if t.session == incoming.session_id() && !t.data_opened => t,
            _ => {
                let message = format!(
                    "copy.data: no copy {} waiting on this session",
                    data.copy_id
                );
                return reject(incoming, ErrorCode::REFUSED, &message);
            }
        };
        let spec = match &mut transfer.op {
            Op::Put { file, .. } => match file.try_clone() {
                Ok(dup) => PumpSpec {
                    to_fd: Some(OwnedFd::from(dup)),
                    crc: true,
                    ..ctx.pump()
                },
                Err(e) => {
                    let message = copy_error(&transfer.path, &e);
                    return reject(incoming, ErrorCode::REFUSED, &message);
                }
            },
            Op::Get { file } => match file.take() {
                Some(f) => PumpSpec {
                    from_fd: Some(OwnedFd::from(f)),
                    crc: true,
                    ..ctx.pump()
                },
                None => return reject(incoming, ErrorCode::REFUSED, "copy.data: already open"),
            },
        };
        transfer.data_opened = true;
        let key = (incoming.session_id(), incoming.id());
        match incoming.accept_pump(&[], spec) {
            Ok(()) => {
                ctx.pumps.insert(key, PumpOwner::CopyData(data.copy_id));
            }
            Err(e) => {
                if let Some(t) = self.by_id.remove(&data.copy_id) {
                    t.fail(format!("copy {}: {e}", t.path));
                }
            }
        }
    }

    /// Something happened on a control stream: only its end matters.
    pub fn control_event(&mut self, id: u64, kind: ChannelEventKind) {
        match kind {
            ChannelEventKind::Data(_) | ChannelEventKind::PeerClosed => {}
            ChannelEventKind::Ended(Ok(())) => {
                self.by_id.remove(&id);
            }
            ChannelEventKind::Ended(Err(e)) => {
                if let Some(t) = self.by_id.remove(&id) {
                    log::debug!("copy {}: abandoned: {e}", t.path);
                    t.discard();
                }
            }
        }
    }

    /// The data pump of `id` ended: commit or fail, and report.
    pub fn data_done(&mut self, id: u64, done: PumpDone) {
        let Some(t) = self.by_id.remove(&id) else {
            return;
        };
        if let Err(e) = &done.result {
            return t.fail(format!("copy {}: {e}", t.path));
        }
        match &t.op {
            Op::Put {
                target,
                temp,
                file,
                size,
            } => {
                if done.bytes_received != *size {
                    return t.fail(format!(
                        "copy {}: size mismatch: {size} bytes announced, {} received",
                        t.path, done.bytes_received
                    ));
                }
                if let Err(e) = commit(file, temp, target) {
                    return t.fail(copy_error(&t.path, &e));
                }
                t.finish(CopyResult {
                    ok: true,
                    bytes: done.bytes_received,
                    crc: done.crc_received,
                    message: String::new(),
                });
            }
            Op::Get { .. } => t.finish(CopyResult {
                ok: true,
                bytes: done.bytes_sent,
                crc: done.crc_sent,
                message: String::new(),
            }),
        }
        // Keep the control stream's channel mapping until its Ended event; the transfer is done.
    }
}

/// Makes a received file durable and puts it in place atomically.
fn commit(file: &File, temp: &Path, target: &Path) -> io::Result<()> {
    file.sync_all()?;
    std::fs::rename(temp, target)?;
    if let Some(dir) = target.parent() {
        // Best effort: the rename itself is already atomic.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Opens a file to send: a regular file only.
fn prepare_get(path: &str) -> io::Result<(Op, u64, u32)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(nix::libc::EISDIR));
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    Ok((Op::Get { file: Some(file) }, meta.len(), mode))
}
