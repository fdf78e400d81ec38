//! The output ring of a detachable exec: what the process wrote and the host has not yet
//! acknowledged, per fd, bounded.
//!
//! A reader thread moves the process's pipe (or pty master) into the ring. When the ring holds
//! its capacity the reader stops reading, so the process blocks on its next write: a full ring
//! is backpressure, never loss. While a host is attached, a sender thread copies the bytes
//! after its replay point into that host's `exec.io` stream. Bytes leave the ring only when the
//! host acknowledges them ([`Ring::ack`]): having sent them proves nothing, the host may die
//! before writing them out. Offsets count bytes since the process started and never wrap.
//!
//! Each attachment has a generation; [`Ring::rebind`] and [`Ring::detach`] start a new one, and a
//! sender of an older generation resets its stream and ends (its host is gone or replaced).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::Sender;
use vmux::session::{SessionError, Stream};
use vmux::wire::ErrorCode;

/// The ring size when the request leaves it to the agent (0).
pub const DEFAULT_RING: usize = 1 << 20;
/// The smallest ring the agent makes.
pub const MIN_RING: usize = 4 << 10;
/// The largest ring the agent makes, whatever the request asks.
pub const MAX_RING: usize = 16 << 20;
/// Bytes moved per read or stream write.
const CHUNK: usize = 64 << 10;
/// How often a sender blocked on credit checks whether it was replaced.
const SENDER_RECHECK: Duration = Duration::from_secs(1);

/// The ring capacity for a requested size (0 = default), clamped to the agent's bounds.
pub fn capacity(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_RING,
        n => (n as usize).clamp(MIN_RING, MAX_RING),
    }
}

/// The bytes of one output fd that are not acknowledged yet.
#[derive(Debug)]
pub struct Ring {
    state: Mutex<RingState>,
    cond: Condvar,
}

#[derive(Debug)]
struct RingState {
    /// Bytes `base .. base + buf.len()`.
    buf: VecDeque<u8>,
    /// Offset of `buf[0]`: everything before it is acknowledged and gone.
    base: u64,
    cap: usize,
    /// How far the current attachment's sender took bytes (acks beyond it are clamped to it).
    sent: u64,
    /// The attachment generation; senders of older ones stop.
    generation: u64,
    /// The process's end of output was read.
    eof: bool,
    /// The exec was forgotten: the reader stops.
    closed: bool,
}

impl RingState {
    fn produced(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Drops every byte before `offset` (which must lie within the ring).
    fn drop_before(&mut self, offset: u64) {
        if offset > self.base {
            let n = (offset - self.base).min(self.buf.len() as u64) as usize;
            self.buf.drain(..n);
            self.base += n as u64;
        }
    }
}

impl Ring {
    /// An empty ring holding at most `cap` unacknowledged bytes.
    pub fn new(cap: usize) -> Arc<Ring> {
        Arc::new(Ring {
            state: Mutex::new(RingState {
                buf: VecDeque::new(),
                base: 0,
                cap,
                sent: 0,
                generation: 0,
                eof: false,
                closed: false,
            }),
            cond: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held (produced, not acknowledged).
    pub fn buffered(&self) -> u64 {
        self.lock().buf.len() as u64
    }

    /// Bytes the process wrote to this fd so far (as far as the reader got).
    pub fn produced(&self) -> u64 {
        self.lock().produced()
    }

    /// The host wrote out everything before `offset`: drop it (never past what was sent).
    pub fn ack(&self, offset: u64) {
        let mut st = self.lock();
        let upto = offset.min(st.sent);
        st.drop_before(upto);
        self.cond.notify_all();
    }

    /// Where an attachment that asked for `offset` (`None`: from the last acknowledged byte)
    /// would start, or why it cannot (`what` names the fd in the message).
    pub fn check(&self, offset: Option<u64>, what: &str) -> Result<u64, String> {
        let st = self.lock();
        let start = offset.unwrap_or(st.base);
        if start < st.base {
            return Err(format!(
                "{what} offset {start} is older than the oldest byte the agent still holds ({})",
                st.base
            ));
        }
        if start > st.produced() {
            return Err(format!(
                "{what} offset {start} is beyond the {} bytes produced so far",
                st.produced()
            ));
        }
        Ok(start)
    }

    /// Starts a new attachment replaying from `start` (checked with [`Ring::check`]); the
    /// consumer holds everything before it, so that is dropped. Returns the generation.
    pub fn rebind(&self, start: u64) -> u64 {
        let mut st = self.lock();
        let start = start.clamp(st.base, st.produced());
        st.drop_before(start);
        st.sent = start;
        st.generation += 1;
        self.cond.notify_all();
        st.generation
    }

    /// Binds a new sender at the oldest byte held: returns its start offset and generation.
    pub fn bind_sender(&self) -> (u64, u64) {
        let mut st = self.lock();
        st.sent = st.base;
        st.generation += 1;
        self.cond.notify_all();
        (st.base, st.generation)
    }

    /// Ends the current attachment: its sender stops; bytes stay until the next one.
    pub fn detach(&self) {
        let mut st = self.lock();
        st.generation += 1;
        self.cond.notify_all();
    }

    /// The exec is forgotten: the reader and any sender stop.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.generation += 1;
        self.cond.notify_all();
    }

    /// Reads `fd` into the ring until EOF, never holding more than the capacity.
    pub fn fill_from(&self, fd: OwnedFd) {
        let mut file = File::from(fd);
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let room = {
                let mut st = self.lock();
                while st.buf.len() >= st.cap && !st.closed {
                    st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.closed {
                    return;
                }
                st.cap - st.buf.len()
            };
            let n = match file.read(&mut chunk[..room.min(CHUNK)]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A pty master reads EIO once the last slave fd closed: that is its EOF.
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => 0,
                Err(e) => {
                    log::warn!("reading exec output: {e}");
                    0
                }
            };
            let mut st = self.lock();
            if n == 0 {
                st.eof = true;
                self.cond.notify_all();
                return;
            }
            st.buf.extend(&chunk[..n]);
            self.cond.notify_all();
        }
    }

    /// The bytes from `pos` (at most [`CHUNK`]) for a sender of `generation`: `Ok(None)` at the
    /// end of output, `Err` when the sender was replaced. Waits for bytes.
    fn next_chunk(&self, pos: u64, generation: u64) -> Result<Option<Vec<u8>>, ()> {
        let mut st = self.lock();
        loop {
            if st.generation != generation {
                return Err(());
            }
            if pos < st.produced() && pos >= st.base {
                let from = (pos - st.base) as usize;
                let to = (from + CHUNK).min(st.buf.len());
                let (a, b) = st.buf.as_slices();
                let mut out = Vec::with_capacity(to - from);
                if from < a.len() {
                    out.extend_from_slice(&a[from..to.min(a.len())]);
                }
                if to > a.len() {
                    out.extend_from_slice(&b[from.saturating_sub(a.len())..to - a.len()]);
                }
                // Counted as sent once taken: the host may acknowledge these bytes before
                // the write that hands them to the stream even returns here.
                st.sent = st.sent.max(pos + out.len() as u64);
                return Ok(Some(out));
            }
            if st.eof && pos >= st.produced() {
                return Ok(None);
            }
            st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    #[cfg(test)]
    fn record_sent(&self, pos: u64, generation: u64) {
        let mut st = self.lock();
        if st.generation == generation {
            st.sent = pos;
        }
    }

    fn current(&self, generation: u64) -> bool {
        self.lock().generation == generation
    }
}

/// A sender's end, reported to the service loop.
#[derive(Debug)]
pub struct SenderDone {
    /// The exec.
    pub exec_id: u64,
    /// 1 = stdout, 2 = stderr.
    pub fd: u8,
    /// The attachment it served.
    pub generation: u64,
    /// Every byte up to the process's EOF is in the session and the stream is closed.
    pub delivered: bool,
}

/// What a sender thread serves, and who to tell when it ends.
pub struct SenderJob {
    /// The ring to send from.
    pub ring: Arc<Ring>,
    /// The attachment's generation, from [`Ring::rebind`].
    pub generation: u64,
    /// Where the attachment starts.
    pub start: u64,
    /// The `exec.io` stream.
    pub stream: Stream,
    /// The exec, for the report.
    pub exec_id: u64,
    /// 1 = stdout, 2 = stderr.
    pub fd: u8,
    /// Told when the sender ends.
    pub done: Sender<SenderDone>,
}

/// Sends the ring's bytes from `job.start` into the stream until EOF (then closes it), or until
/// the attachment is replaced or the stream fails (then resets it).
pub fn send(job: SenderJob) {
    let SenderJob {
        ring,
        generation,
        start,
        mut stream,
        exec_id,
        fd,
        done,
    } = job;
    stream.set_write_timeout(Some(SENDER_RECHECK));
    let mut pos = start;
    let result = loop {
        match ring.next_chunk(pos, generation) {
            Err(()) => {
                break Err(SessionError::Reset {
                    code: ErrorCode::CANCEL,
                    message: "the exec was attached elsewhere or detached".into(),
                    by_peer: false,
                })
            }
            Ok(None) => break stream.shutdown_write(),
            Ok(Some(chunk)) => {
                if let Err(e) = write_chunk(&ring, generation, &stream, &chunk) {
                    break Err(e);
                }
                pos += chunk.len() as u64;
            }
        }
    };
    if result.is_err() {
        // Never a graceful close: the host must not take a cut stream for the whole output.
        let _ = stream.reset(ErrorCode::CANCEL);
    }
    log::debug!(
        "exec {exec_id} fd {fd}: sender ends after {} bytes: {result:?}",
        pos - start
    );
    let _ = done.send(SenderDone {
        exec_id,
        fd,
        generation,
        delivered: result.is_ok(),
    });
}

/// Writes all of `chunk`, giving up when the stream fails or the sender was replaced.
fn write_chunk(
    ring: &Ring,
    generation: u64,
    stream: &Stream,
    mut chunk: &[u8],
) -> Result<(), SessionError> {
    let mut out = stream;
    while !chunk.is_empty() {
        match out.write(chunk) {
            Ok(n) => chunk = &chunk[n..],
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if !ring.current(generation) {
                    return Err(SessionError::Reset {
                        code: ErrorCode::CANCEL,
                        message: "the exec was attached elsewhere or detached".into(),
                        by_peer: false,
                    });
                }
            }
            Err(e) => {
                log::debug!("exec output stream: {e}");
                return Err(SessionError::Reset {
                    code: ErrorCode::INTERNAL,
                    message: e.to_string(),
                    by_peer: false,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(bytes: &[u8], cap: usize) -> Arc<Ring> {
        let ring = Ring::new(cap);
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = File::from(w);
        w.write_all(bytes).unwrap();
        drop(w);
        ring.fill_from(r);
        ring
    }

    #[test]
    fn acks_drop_only_bytes_that_were_sent() {
        let ring = ring_with(b"0123456789", 64);
        ring.ack(5);
        assert_eq!(ring.buffered(), 10, "nothing was sent yet");
        let g = ring.rebind(0);
        ring.record_sent(6, g);
        ring.ack(9);
        assert_eq!(ring.buffered(), 4);
        assert_eq!(ring.produced(), 10);
    }

    #[test]
    fn attach_offsets_are_checked_against_what_is_held() {
        let ring = ring_with(b"0123456789", 64);
        let g = ring.rebind(4);
        ring.record_sent(8, g);
        ring.ack(6);
        assert_eq!(ring.check(None, "stdout"), Ok(6));
        assert_eq!(ring.check(Some(10), "stdout"), Ok(10));
        assert_eq!(
            ring.check(Some(5), "stdout"),
            Err("stdout offset 5 is older than the oldest byte the agent still holds (6)".into())
        );
        assert_eq!(
            ring.check(Some(11), "stderr"),
            Err("stderr offset 11 is beyond the 10 bytes produced so far".into())
        );
    }

    #[test]
    fn chunks_start_at_the_replay_point() {
        let ring = ring_with(b"abcdef", 64);
        let g = ring.rebind(2);
        assert_eq!(ring.next_chunk(2, g), Ok(Some(b"cdef".to_vec())));
        assert_eq!(ring.next_chunk(6, g), Ok(None));
        ring.detach();
        assert_eq!(ring.next_chunk(2, g), Err(()));
    }

    #[test]
    fn a_full_ring_stops_reading_until_acks_free_room() {
        let ring = Ring::new(MIN_RING);
        let (r, w) = nix::unistd::pipe().unwrap();
        let filler = {
            let ring = ring.clone();
            std::thread::spawn(move || ring.fill_from(r))
        };
        let data: Vec<u8> = (0..3 * MIN_RING).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || File::from(w).write_all(&data))
        };
        let g = ring.rebind(0);
        let mut got = Vec::new();
        while let Ok(Some(chunk)) = ring.next_chunk(got.len() as u64, g) {
            assert!(ring.buffered() as usize <= MIN_RING);
            got.extend_from_slice(&chunk);
            ring.record_sent(got.len() as u64, g);
            ring.ack(got.len() as u64);
        }
        writer.join().unwrap().unwrap();
        filler.join().unwrap();
        assert_eq!(got, data);
    }
}
