//! The `info` service: the host opens `info` with no arguments; the agent answers OPEN_OK with
//! an [`Info`] as the reply bytes and closes the stream.
//!
//! The reply is a key/value list so either side can add facts without a version bump: unknown
//! keys are skipped, and a missing key leaves its field `None`.

use super::codec::{MessageError, Reader, Writer};
use super::{ServiceError, INFO};
use crate::session::Session;
use std::fmt;

/// The most entries an info reply may hold.
const MAX_ENTRIES: usize = 256;
/// The longest key.
const MAX_KEY: usize = 64;
/// The longest string value.
const MAX_VALUE: usize = 4096;

/// Value tags.
const TAG_U64: u8 = 0;
const TAG_STR: u8 = 1;

/// Keys of the info reply (see docs/protocol.md).
mod key {
    pub const AGENT_VERSION: &str = "agent.version";
    pub const PROTOCOL_VERSION: &str = "protocol.version";
    pub const KERNEL_RELEASE: &str = "kernel.release";
    pub const UPTIME_MS: &str = "uptime.ms";
    pub const BOOT_ID: &str = "boot.id";
    pub const PID1: &str = "agent.pid1";
    pub const LINK_KIND: &str = "link.kind";
    pub const LINK_PEER: &str = "link.peer";
    pub const MAX_FRAME: &str = "session.max_frame";
    pub const MAX_STREAMS: &str = "session.max_streams";
    pub const STREAM_WINDOW: &str = "session.stream_window";
    pub const MAX_BUFFERED: &str = "session.max_buffered";
    pub const PAYLOAD_CRC: &str = "session.payload_crc";
    pub const CPU_US: &str = "agent.cpu_us";
    pub const RSS_BYTES: &str = "agent.rss_bytes";
    pub const FRAMES_IN: &str = "session.frames_in";
    pub const RESYNCS: &str = "session.resyncs";
    pub const DISCARDED_BYTES: &str = "session.discarded_bytes";
    pub const HEADER_CRC_ERRORS: &str = "session.header_crc_errors";
    pub const PAYLOAD_CRC_ERRORS: &str = "session.payload_crc_errors";
    pub const STALE_FRAMES: &str = "session.stale_frames";
    pub const RESETS_SENT: &str = "session.resets_sent";
    pub const OPENS_REFUSED: &str = "session.opens_refused";
    pub const STREAMS: &str = "session.streams";
    pub const BUFFERED_RX: &str = "session.buffered_rx";
    pub const BUFFERED_TX: &str = "session.buffered_tx";
    pub const BUFFERED_OUTPUT: &str = "session.buffered_output";
    pub const BUFFERED_DECODER: &str = "session.buffered_decoder";
    pub const GRANTED: &str = "session.granted";
    pub const HANDLE_BYTES: &str = "session.handle_bytes";
    pub const RETRANSMITTED_FRAMES: &str = "session.retransmitted_frames";
    pub const OUT_OF_ORDER: &str = "session.out_of_order";
    pub const BUFFERED_RETRANSMIT: &str = "session.buffered_retransmit";
}

/// Facts about the agent, its machine and the session the question came on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub agent_version: Option<String>,
    /// The wire protocol version the agent speaks.
    pub protocol_version: Option<u64>,
    /// `uname -r` of the guest kernel.
    pub kernel_release: Option<String>,
    /// Milliseconds since the guest booted.
    pub uptime_ms: Option<u64>,
    /// The guest's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: Option<String>,
    /// Whether the agent runs as PID 1.
    pub pid1: Option<bool>,
    /// The kind of link the session runs on (`unix`, `vsock`, `virtio-serial`, ...).
    pub link_kind: Option<String>,
    /// The link's peer as the agent sees it.
    pub link_peer: Option<String>,
    /// The agent's largest accepted frame payload.
    pub max_frame: Option<u64>,
    /// The agent's most concurrent streams.
    pub max_streams: Option<u64>,
    /// The agent's receive window per stream.
    pub stream_window: Option<u64>,
    /// The agent's most buffered receive bytes per session.
    pub max_buffered: Option<u64>,
    /// Whether payload CRC trailers are on.
    pub payload_crc: Option<bool>,
    /// CPU time the agent process used (user + system), in microseconds.
    pub cpu_time_us: Option<u64>,
    /// The agent's resident memory in bytes.
    pub rss_bytes: Option<u64>,
    /// Counters and memory gauges of the session the question came on.
    pub session: SessionFacts,
}

/// The integrity counters and buffered-bytes gauges of the session an `info` request came on
/// (from the agent's [`crate::session::SessionStats`] when it answered), so a peer can see what
/// the agent made of its bytes and how much memory the session holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// Verified frames received.
    pub frames_in: Option<u64>,
    /// Times the decoder lost the frame boundary and resynchronised.
    pub resyncs: Option<u64>,
    /// Bytes discarded while resynchronising.
    pub discarded_bytes: Option<u64>,
    /// Headers whose CRC failed.
    pub header_crc_errors: Option<u64>,
    /// Payloads whose CRC trailer failed.
    pub payload_crc_errors: Option<u64>,
    /// Frames dropped as stale (before HELLO, or for an ended stream).
    pub stale_frames: Option<u64>,
    /// RESET frames the agent sent.
    pub resets_sent: Option<u64>,
    /// Incoming OPENs the agent refused.
    pub opens_refused: Option<u64>,
    /// Streams open on the session.
    pub streams: Option<u64>,
    /// Received stream bytes waiting in the mux.
    pub buffered_rx: Option<u64>,
    /// Stream bytes queued for sending and not yet framed.
    pub buffered_tx: Option<u64>,
    /// Framed bytes waiting to be written to the link.
    pub buffered_output: Option<u64>,
    /// Partial frame bytes held by the decoder.
    pub buffered_decoder: Option<u64>,
    /// Credit granted to the peer and not yet consumed (the receive bound).
    pub granted: Option<u64>,
    /// Bytes held in stream handles' queues (both directions).
    pub handle_bytes: Option<u64>,
    /// Frames the agent sent again (serial links with retransmission).
    pub retransmitted_frames: Option<u64>,
    /// Frames the agent dropped because one before them was lost.
    pub out_of_order: Option<u64>,
    /// Sent frames held until acknowledged.
    pub buffered_retransmit: Option<u64>,
}

impl SessionFacts {
    /// The facts of a stats snapshot.
    pub fn from_stats(stats: &crate::session::SessionStats) -> SessionFacts {
        let c = &stats.counters;
        let b = &stats.buffered;
        SessionFacts {
            frames_in: Some(c.frames_in),
            resyncs: Some(c.resyncs),
            discarded_bytes: Some(c.discarded_bytes),
            header_crc_errors: Some(c.header_crc_errors),
            payload_crc_errors: Some(c.payload_crc_errors),
            stale_frames: Some(c.stale_frames),
            resets_sent: Some(c.resets_sent),
            opens_refused: Some(c.opens_refused),
            streams: Some(stats.streams as u64),
            buffered_rx: Some(b.rx as u64),
            buffered_tx: Some(b.tx as u64),
            buffered_output: Some(b.output as u64),
            buffered_decoder: Some(b.decoder as u64),
            granted: Some(b.granted as u64),
            handle_bytes: Some((stats.handle_rx + stats.handle_tx) as u64),
            retransmitted_frames: Some(c.retransmitted_frames),
            out_of_order: Some(c.out_of_order),
            buffered_retransmit: Some(b.retransmit as u64),
        }
    }

    /// Every fact with its key.
    fn entries(&self) -> [(&'static str, Option<u64>); 18] {
        [
            (key::FRAMES_IN, self.frames_in),
            (key::RESYNCS, self.resyncs),
            (key::DISCARDED_BYTES, self.discarded_bytes),
            (key::HEADER_CRC_ERRORS, self.header_crc_errors),
            (key::PAYLOAD_CRC_ERRORS, self.payload_crc_errors),
            (key::STALE_FRAMES, self.stale_frames),
            (key::RESETS_SENT, self.resets_sent),
            (key::OPENS_REFUSED, self.opens_refused),
            (key::STREAMS, self.streams),
            (key::BUFFERED_RX, self.buffered_rx),
            (key::BUFFERED_TX, self.buffered_tx),
            (key::BUFFERED_OUTPUT, self.buffered_output),
            (key::BUFFERED_DECODER, self.buffered_decoder),
            (key::GRANTED, self.granted),
            (key::HANDLE_BYTES, self.handle_bytes),
            (key::RETRANSMITTED_FRAMES, self.retransmitted_frames),
            (key::OUT_OF_ORDER, self.out_of_order),
            (key::BUFFERED_RETRANSMIT, self.buffered_retransmit),
        ]
    }

    /// Sets the fact named `k`; returns whether `k` is a session fact.
    fn set(&mut self, k: &str, v: Option<u64>) -> bool {
        let slot = match k {
            key::FRAMES_IN => &mut self.frames_in,
            key::RESYNCS => &mut self.resyncs,
            key::DISCARDED_BYTES => &mut self.discarded_bytes,
            key::HEADER_CRC_ERRORS => &mut self.header_crc_errors,
            key::PAYLOAD_CRC_ERRORS => &mut self.payload_crc_errors,
            key::STALE_FRAMES => &mut self.stale_frames,
            key::RESETS_SENT => &mut self.resets_sent,
            key::OPENS_REFUSED => &mut self.opens_refused,
            key::STREAMS => &mut self.streams,
            key::BUFFERED_RX => &mut self.buffered_rx,
            key::BUFFERED_TX => &mut self.buffered_tx,
            key::BUFFERED_OUTPUT => &mut self.buffered_output,
            key::BUFFERED_DECODER => &mut self.buffered_decoder,
            key::GRANTED => &mut self.granted,
            key::HANDLE_BYTES => &mut self.handle_bytes,
            key::RETRANSMITTED_FRAMES => &mut self.retransmitted_frames,
            key::OUT_OF_ORDER => &mut self.out_of_order,
            key::BUFFERED_RETRANSMIT => &mut self.buffered_retransmit,
            _ => return false,
        };
        *slot = v;
        true
    }
}

impl Info {
    /// The reply bytes: `u32 count`, then per entry `str key`, `u8 tag`, value
    /// (tag 0: `u64`; tag 1: `str`).
    pub fn encode(&self) -> Vec<u8> {
        let mut entries: Vec<(&str, Value<'_>)> = Vec::new();
        let texts = [
            (key::AGENT_VERSION, &self.agent_version),
            (key::KERNEL_RELEASE, &self.kernel_release),
            (key::BOOT_ID, &self.boot_id),
            (key::LINK_KIND, &self.link_kind),
            (key::LINK_PEER, &self.link_peer),
        ];
        for (k, v) in texts {
            if let Some(v) = v {
                entries.push((k, Value::Str(crate::wire::truncate_utf8(v, MAX_VALUE))));
            }
        }
        let mut n = |k, v: Option<u64>| {
            if let Some(v) = v {
                entries.push((k, Value::U64(v)));
            }
        };
        n(key::PROTOCOL_VERSION, self.protocol_version);
        n(key::UPTIME_MS, self.uptime_ms);
        n(key::PID1, self.pid1.map(u64::from));
        n(key::MAX_FRAME, self.max_frame);
        n(key::MAX_STREAMS, self.max_streams);
        n(key::STREAM_WINDOW, self.stream_window);
        n(key::MAX_BUFFERED, self.max_buffered);
        n(key::PAYLOAD_CRC, self.payload_crc.map(u64::from));
        n(key::CPU_US, self.cpu_time_us);
        n(key::RSS_BYTES, self.rss_bytes);
        for (k, v) in self.session.entries() {
            n(k, v);
        }
        let mut w = Writer::new();
        w.u32(entries.len() as u32);
        for (k, v) in entries {
            w.str(k);
            match v {
                Value::U64(x) => w.u8(TAG_U64).u64(x),
                Value::Str(x) => w.u8(TAG_STR).str(x),
            };
        }
        w.finish()
    }

    /// Parses reply bytes; unknown keys are skipped, unknown tags are an error.
    pub fn decode(bytes: &[u8]) -> Result<Info, MessageError> {
        let mut r = Reader::new(bytes);
        // Smallest entry: empty key (4) + tag (1) + empty string (4).
        let count = r.count("info entries", MAX_ENTRIES, 9)?;
        let mut info = Info::default();
        for _ in 0..count {
            let k = r.str("info key", MAX_KEY)?;
            let v = match r.u8()? {
                TAG_U64 => Value::U64(r.u64()?),
                TAG_STR => Value::Str(r.str("info value", MAX_VALUE)?),
                tag => {
                    return Err(MessageError::BadValue {
                        field: "info value tag",
                        value: u64::from(tag),
                    })
                }
            };
            info.set(k, v);
        }
        r.finish()?;
        Ok(info)
    }

    fn set(&mut self, k: &str, v: Value<'_>) {
        let text = |v: &Value<'_>| match v {
            Value::Str(s) => Some(s.to_string()),
            Value::U64(_) => None,
        };
        let num = |v: &Value<'_>| match v {
            Value::U64(n) => Some(*n),
            Value::Str(_) => None,
        };
        match k {
            key::AGENT_VERSION => self.agent_version = text(&v),
            key::KERNEL_RELEASE => self.kernel_release = text(&v),
            key::BOOT_ID => self.boot_id = text(&v),
            key::LINK_KIND => self.link_kind = text(&v),
            key::LINK_PEER => self.link_peer = text(&v),
            key::PROTOCOL_VERSION => self.protocol_version = num(&v),
            key::UPTIME_MS => self.uptime_ms = num(&v),
            key::PID1 => self.pid1 = num(&v).map(|n| n != 0),
            key::MAX_FRAME => self.max_frame = num(&v),
            key::MAX_STREAMS => self.max_streams = num(&v),
            key::STREAM_WINDOW => self.stream_window = num(&v),
            key::MAX_BUFFERED => self.max_buffered = num(&v),
            key::PAYLOAD_CRC => self.payload_crc = num(&v).map(|n| n != 0),
            key::CPU_US => self.cpu_time_us = num(&v),
            key::RSS_BYTES => self.rss_bytes = num(&v),
            _ => {
                self.session.set(k, num(&v));
            }
        }
    }
}

enum Value<'a> {
    U64(u64),
    Str(&'a str),
}

impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn opt<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref()
                .map_or_else(|| "unknown".to_string(), |v| v.to_string())
        }
        writeln!(f, "agent version:    {}", opt(&self.agent_version))?;
        writeln!(f, "protocol version: {}", opt(&self.protocol_version))?;
        writeln!(f, "kernel:           {}", opt(&self.kernel_release))?;
        match self.uptime_ms {
            Some(ms) => writeln!(f, "uptime:           {}.{:03} s", ms / 1000, ms % 1000)?,
            None => writeln!(f, "uptime:           unknown")?,
        }
        writeln!(f, "boot id:          {}", opt(&self.boot_id))?;
        writeln!(f, "pid 1:            {}", opt(&self.pid1.map(yes_no)))?;
        writeln!(
            f,
            "link:             {} ({})",
            opt(&self.link_kind),
            opt(&self.link_peer)
        )?;
        writeln!(
            f,
            "session limits:   max frame {}, max streams {}, window {}, buffered {}, payload crc {}",
            opt(&self.max_frame),
            opt(&self.max_streams),
            opt(&self.stream_window),
            opt(&self.max_buffered),
            opt(&self.payload_crc.map(yes_no)),
        )?;
        match self.cpu_time_us {
            Some(us) => writeln!(
                f,
                "agent cpu time:   {}.{:06} s",
                us / 1_000_000,
                us % 1_000_000
            )?,
            None => writeln!(f, "agent cpu time:   unknown")?,
        }
        match self.rss_bytes {
            Some(b) => writeln!(f, "agent rss:        {} KiB", b / 1024)?,
            None => writeln!(f, "agent rss:        unknown")?,
        }
        let s = &self.session;
        writeln!(
            f,
            "session frames:   {} in, {} resyncs ({} bytes discarded), crc errors {} header / {} payload, {} stale",
            opt(&s.frames_in),
            opt(&s.resyncs),
            opt(&s.discarded_bytes),
            opt(&s.header_crc_errors),
            opt(&s.payload_crc_errors),
            opt(&s.stale_frames),
        )?;
        writeln!(
            f,
            "session streams:  {} open, {} resets sent, {} opens refused",
            opt(&s.streams),
            opt(&s.resets_sent),
            opt(&s.opens_refused),
        )?;
        writeln!(
            f,
            "session memory:   rx {}, tx {}, output {}, decoder {}, handles {}, granted {} (bytes)",
            opt(&s.buffered_rx),
            opt(&s.buffered_tx),
            opt(&s.buffered_output),
            opt(&s.buffered_decoder),
            opt(&s.handle_bytes),
            opt(&s.granted),
        )
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Asks the agent for its [`Info`].
pub fn info(session: &Session) -> Result<Info, ServiceError> {
    let (stream, reply) = session.open_with_reply(INFO, &[])?;
    drop(stream);
    Ok(Info::decode(&reply)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Info {
        Info {
            agent_version: Some("0.1.0".into()),
            protocol_version: Some(1),
            kernel_release: Some("6.1.0".into()),
            uptime_ms: Some(1234),
            boot_id: Some("abc".into()),
            pid1: Some(true),
            link_kind: Some("vsock".into()),
            link_peer: Some("vsock://2:1".into()),
            max_frame: Some(65536),
            max_streams: Some(1024),
            stream_window: Some(262144),
            max_buffered: Some(16 << 20),
            payload_crc: Some(false),
            cpu_time_us: Some(5000),
            rss_bytes: Some(1 << 20),
            session: SessionFacts {
                frames_in: Some(7),
                resyncs: Some(1),
                discarded_bytes: Some(20),
                header_crc_errors: Some(1),
                payload_crc_errors: Some(0),
                stale_frames: Some(2),
                resets_sent: Some(3),
                opens_refused: Some(4),
                streams: Some(1),
                buffered_rx: Some(0),
                buffered_tx: Some(0),
                buffered_output: Some(64),
                buffered_decoder: Some(0),
                granted: Some(16384),
                handle_bytes: Some(0),
                retransmitted_frames: Some(5),
                out_of_order: Some(6),
                buffered_retransmit: Some(4096),
            },
        }
    }

    #[test]
    fn info_round_trips() {
        let info = sample();
        assert_eq!(Info::decode(&info.encode()), Ok(info));
        assert_eq!(Info::decode(&Info::default().encode()), Ok(Info::default()));
    }

    #[test]
    fn unknown_info_keys_are_skipped() {
        let bytes = Writer::new()
            .u32(2)
            .str("future.key")
            .u8(TAG_STR)
            .str("x")
            .str(key::UPTIME_MS)
            .u8(TAG_U64)
            .u64(5)
            .finish();
        let info = Info::decode(&bytes).unwrap();
        assert_eq!(info.uptime_ms, Some(5));
    }

    #[test]
    fn info_displays_every_field() {
        let text = sample().to_string();
        assert!(text.contains("uptime:           1.234 s"), "{text}");
        assert!(
            text.contains("link:             vsock (vsock://2:1)"),
            "{text}"
        );
        assert!(text.contains("pid 1:            yes"), "{text}");
        assert!(
            text.contains("session frames:   7 in, 1 resyncs (20 bytes discarded), crc errors 1 header / 0 payload, 2 stale"),
            "{text}"
        );
    }

    #[test]
    fn an_older_agent_without_session_facts_leaves_them_unknown() {
        let old = Info {
            session: SessionFacts::default(),
            ..sample()
        };
        let decoded = Info::decode(&old.encode()).unwrap();
        assert_eq!(decoded.session, SessionFacts::default());
        assert!(decoded
            .to_string()
            .contains("session streams:  unknown open"));
    }

    proptest! {
        #[test]
        fn info_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Info::decode(&bytes);
        }
    }
}
