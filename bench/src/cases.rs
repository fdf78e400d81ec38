//! The measured workloads, each over one connected pair in this process: a raw copy (the
//! limit), vmux (two reactors, one per side, as two processes would have) and yamux (one tokio
//! current-thread runtime per side, each in its own thread, for the same reason).
//!
//! Throughput cases return the time from releasing the writers to the last reader's EOF;
//! latency cases return every round trip.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use vmux::mux::Config;
use vmux::reactor::{random_nonce, Reactor};
use vmux::transport::{Link, LinkKind};
use vmux::wire::Role;

/// Size of each application write.
pub const CHUNK: usize = 64 << 10;
/// Stack size of the benchmark's own threads (they keep their buffers on the heap).
const STACK: usize = 128 << 10;

/// A 64 KiB source buffer with a non-trivial pattern, shared by every writer.
fn source() -> &'static [u8] {
    static SRC: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SRC.get_or_init(|| (0..CHUNK).map(|i| (i * 131 + i / 251) as u8).collect())
}

fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawn")
}

/// Writes `len` bytes in `CHUNK` writes.
pub fn write_n(mut w: impl Write, len: u64) {
    write_n_ref(&mut w, len)
}

/// Writes `len` bytes in `CHUNK` writes, keeping the writer.
fn write_n_ref(w: &mut impl Write, len: u64) {
    let src = source();
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        w.write_all(&src[..n]).expect("write");
        left -= n as u64;
    }
}

/// Reads to EOF with a `buf_len` buffer; returns the byte count.
pub fn read_all(r: impl Read, buf_len: usize) -> u64 {
    read_upto(r, buf_len, u64::MAX)
}

/// Reads to EOF or until `limit` bytes arrived; returns the byte count.
fn read_upto(mut r: impl Read, buf_len: usize, limit: u64) -> u64 {
    let mut buf = vec![0u8; buf_len];
    let mut total = 0u64;
    while total < limit {
        match r.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    total
}

// ----- raw -----

/// One writer thread and one reader thread over a byte pipe (socketpair or pty). The reader
/// stops at `size` bytes and the writer's end stays open until then: closing a pty master
/// discards what the slave has not read, and the slave then reads EIO, not EOF.
pub fn raw_throughput(
    w: impl Write + Send + 'static,
    r: impl Read + Send + 'static,
    size: u64,
    read_buf: usize,
) -> Duration {
    let start = Instant::now();
    let mut w = w;
    let writer = spawn(move || {
        write_n_ref(&mut w, size);
        w
    });
    let reader = spawn(move || read_upto(r, read_buf, size));
    let w = writer.join().expect("writer");
    let got = reader.join().expect("reader");
    let elapsed = start.elapsed();
    drop(w);
    assert_eq!(got, size, "raw: short read");
    elapsed
}

/// `pairs` socketpairs, each with its own writer and reader thread moving `size / pairs` bytes:
/// the thread layout of the 64-stream multiplexer cases without a multiplexer, so their peak RSS
/// and throughput can be read against what 128 blocking threads cost by themselves.
pub fn raw_parallel_throughput(pairs: usize, size: u64, read_buf: usize) -> Duration {
    let per = size / pairs as u64;
    let go = Arc::new(Barrier::new(pairs + 1));
    let mut readers = Vec::with_capacity(pairs);
    let mut writers = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let (a, b) = socketpair();
        readers.push(spawn(move || read_all(b, read_buf)));
        let go = go.clone();
        writers.push(spawn(move || {
            go.wait();
            write_n(a, per);
        }));
    }
    go.wait();
    let start = Instant::now();
    for w in writers {
        w.join().expect("writer");
    }
    let got: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    let elapsed = start.elapsed();
    assert_eq!(got, per * pairs as u64, "raw parallel: short read");
    elapsed
}

/// A unix socketpair, both ends blocking.
pub fn socketpair() -> (UnixStream, UnixStream) {
    UnixStream::pair().expect("socketpair")
}

/// A pty pair in raw mode on both sides: (master, slave).
pub fn raw_pty() -> (OwnedFd, OwnedFd) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        let mut t = nix::sys::termios::tcgetattr(fd).expect("tcgetattr");
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &t)
            .expect("tcsetattr");
    }
    (pty.master, pty.slave)
}

/// Ping-pong of `msg`-byte messages over a socketpair: `count` round trips.
pub fn raw_latency(count: usize, msg: usize) -> Vec<Duration> {
    let (mut a, mut b) = socketpair();
    let echo = spawn(move || {
        let mut buf = vec![0u8; msg];
        while b.read_exact(&mut buf).is_ok() {
            b.write_all(&buf).expect("echo write");
        }
    });
    let rtts = ping_pong(&mut a, count, msg);
    drop(a);
    echo.join().expect("echo");
    rtts
}

fn ping_pong(mut s: impl Read + Write, count: usize, msg: usize) -> Vec<Duration> {
    let out = vec![7u8; msg];
    let mut back = vec![0u8; msg];
    // Warm up: the first trips pay for page faults and lazy setup.
    for _ in 0..(count / 100).clamp(10, 1000) {
        s.write_all(&out).expect("ping");
        s.read_exact(&mut back).expect("pong");
    }
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(&out).expect("ping");
        s.read_exact(&mut back).expect("pong");
        rtts.push(t.elapsed());
    }
    rtts
}

// ----- vmux -----

/// Two vmux sessions over a pair of links, each with its own reactor.
pub struct VmuxPair {
    /// The client side (opens streams); dropped after the server.
    pub client: vmux::session::Session,
    /// The server side (accepts streams).
    pub server: vmux::session::Session,
    _reactors: (Reactor, Reactor),
}

impl VmuxPair {
    /// Sessions over `links` with the given configs (role and nonce are set here).
    pub fn new(links: (Link, Link), client: Config, server: Config) -> VmuxPair {
        let ra = Reactor::spawn().expect("reactor");
        let rb = Reactor::spawn().expect("reactor");
        let client = Config {
            role: Role::Client,
            nonce: random_nonce(),
            ..client
        };
        let server = Config {
            role: Role::Server,
            nonce: random_nonce(),
            ..server
        };
        let c = ra.add_link(links.0, client).expect("add_link");
        let s = rb.add_link(links.1, server).expect("add_link");
        c.wait_established(Duration::from_secs(10))
            .expect("established");
        VmuxPair {
            client: c,
            server: s,
            _reactors: (ra, rb),
        }
    }

    /// Over a fresh socketpair with `Config::new`.
    pub fn socketpair() -> VmuxPair {
        let (a, b) = Link::pair().expect("link pair");
        VmuxPair::new(
            (a, b),
            Config::new(Role::Client, 0),
            Config::new(Role::Server, 0),
        )
    }

    /// Over a fresh raw pty pair (master: client, slave: server) with `config`.
    pub fn pty(config: Config) -> VmuxPair {
        let (m, s) = raw_pty();
        let a = Link::from_fd(m, LinkKind::Tty, "pty master").expect("link");
        let b = Link::from_fd(s, LinkKind::Tty, "pty slave").expect("link");
        VmuxPair::new((a, b), config.clone(), config)
    }

    /// Opens `n` streams; returns (client ends, server ends) in matching order.
    pub fn streams(&self, n: usize) -> (Vec<vmux::session::Stream>, Vec<vmux::session::Stream>) {
        let server = self.server.clone();
        let acceptor = spawn(move || {
            (0..n)
                .map(|_| {
                    server
                        .accept()
                        .expect("accept")
                        .accept(b"")
                        .expect("accept")
                })
                .collect::<Vec<_>>()
        });
        let c: Vec<_> = (0..n)
            .map(|_| self.client.open("bench", b"").expect("open"))
            .collect();
        let s = acceptor.join().expect("acceptor");
        (c, s)
    }
}

/// `streams` streams each carrying `size / streams` bytes from client to server.
pub fn vmux_throughput(pair: VmuxPair, streams: usize, size: u64, read_buf: usize) -> Duration {
    let per = size / streams as u64;
    let (cs, ss) = pair.streams(streams);
    let go = Arc::new(Barrier::new(streams + 1));
    let readers: Vec<_> = ss
        .into_iter()
        .map(|s| spawn(move || read_all(&s, read_buf)))
        .collect();
    let writers: Vec<_> = cs
        .into_iter()
        .map(|s| {
            let go = go.clone();
            spawn(move || {
                go.wait();
                write_n(&s, per);
                s.shutdown_write().expect("shutdown_write");
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    for w in writers {
        w.join().expect("writer");
    }
    let got: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    let elapsed = start.elapsed();
    assert_eq!(got, per * streams as u64, "vmux: short read");
    drop(pair);
    elapsed
}

/// Ping-pong over one vmux stream on a socketpair.
pub fn vmux_latency(count: usize, msg: usize) -> Vec<Duration> {
    let pair = VmuxPair::socketpair();
    let (mut cs, mut ss) = pair.streams(1);
    let (c, s) = (cs.pop().expect("stream"), ss.pop().expect("stream"));
    let echo = spawn(move || {
        let mut buf = vec![0u8; msg];
        while (&s).read_exact(&mut buf).is_ok() {
            (&s).write_all(&buf).expect("echo write");
        }
    });
    let rtts = ping_pong(&c, count, msg);
    c.shutdown_write().expect("shutdown");
    echo.join().expect("echo");
    drop(c);
    drop(pair);
    rtts
}

// ----- yamux -----

/// yamux over a socketpair, one current-thread tokio runtime per side.
pub mod ymx {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use std::future::poll_fn;
    use std::task::Poll;
    use tokio_util::compat::TokioAsyncReadCompatExt;

    type Conn = yamux::Connection<tokio_util::compat::Compat<tokio::net::UnixStream>>;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn conn(s: UnixStream, mode: yamux::Mode) -> Conn {
        s.set_nonblocking(true).expect("nonblocking");
        let s = tokio::net::UnixStream::from_std(s).expect("tokio stream");
        yamux::Connection::new(s.compat(), yamux::Config::default(), mode)
    }

    /// Drives a connection until it closes, handing inbound streams to `inbound`.
    async fn drive(mut c: Conn, inbound: tokio::sync::mpsc::UnboundedSender<yamux::Stream>) {
        poll_fn(|cx| loop {
            match c.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(s))) => {
                    let _ = inbound.send(s);
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }

    /// Client side: opens `n` streams, then drives the connection in a task.
    async fn client(s: UnixStream, n: usize) -> Vec<yamux::Stream> {
        let mut c = conn(s, yamux::Mode::Client);
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            streams.push(poll_fn(|cx| c.poll_new_outbound(cx)).await.expect("open"));
        }
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(drive(c, tx));
        streams
    }

    /// Server side: drives the connection in a task and returns the first `n` inbound streams.
    async fn server(s: UnixStream, n: usize) -> Vec<yamux::Stream> {
        let c = conn(s, yamux::Mode::Server);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(drive(c, tx));
        let mut streams = Vec::with_capacity(n);
        while streams.len() < n {
            streams.push(rx.recv().await.expect("inbound"));
        }
        streams
    }

    /// `streams` streams each carrying `size / streams` bytes from client to server.
    pub fn throughput(streams: usize, size: u64, read_buf: usize) -> Duration {
        let per = size / streams as u64;
        let (a, b) = socketpair();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u64>();
        let server = spawn(move || {
            runtime().block_on(async move {
                let ss = server(b, streams).await;
                let readers: Vec<_> = ss
                    .into_iter()
                    .map(|mut s| {
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; read_buf];
                            let mut total = 0u64;
                            loop {
                                let n = s.read(&mut buf).await.expect("read");
                                if n == 0 {
                                    return total;
                                }
                                total += n as u64;
                            }
                        })
                    })
                    .collect();
                let mut got = 0;
                for r in readers {
                    got += r.await.expect("reader");
                }
                let _ = done_tx.send(got);
            })
        });
        let elapsed = runtime().block_on(async move {
            let cs = client(a, streams).await;
            let start = Instant::now();
            let writers: Vec<_> = cs
                .into_iter()
                .map(|mut s| {
                    tokio::spawn(async move {
                        let src = source();
                        let mut left = per;
                        while left > 0 {
                            let n = (left as usize).min(CHUNK);
                            s.write_all(&src[..n]).await.expect("write");
                            left -= n as u64;
                        }
                        s.close().await.expect("close");
                        // Keep the stream until the peer has read everything.
                        s
                    })
                })
                .collect();
            let mut keep = Vec::new();
            for w in writers {
                keep.push(w.await.expect("writer"));
            }
            let got = done_rx.await.expect("server done");
            assert_eq!(got, per * streams as u64, "yamux: short read");
            start.elapsed()
        });
        server.join().expect("server");
        elapsed
    }

    /// Ping-pong over one yamux stream.
    pub fn latency(count: usize, msg: usize) -> Vec<Duration> {
        let (a, b) = socketpair();
        let server = spawn(move || {
            runtime().block_on(async move {
                let mut s = server(b, 1).await.pop().expect("stream");
                let mut buf = vec![0u8; msg];
                while s.read_exact(&mut buf).await.is_ok() {
                    s.write_all(&buf).await.expect("echo");
                }
            })
        });
        let rtts = runtime().block_on(async move {
            let mut s = client(a, 1).await.pop().expect("stream");
            let out = vec![7u8; msg];
            let mut back = vec![0u8; msg];
            for _ in 0..(count / 100).clamp(10, 1000) {
                s.write_all(&out).await.expect("ping");
                s.read_exact(&mut back).await.expect("pong");
            }
            let mut rtts = Vec::with_capacity(count);
            for _ in 0..count {
                let t = Instant::now();
                s.write_all(&out).await.expect("ping");
                s.read_exact(&mut back).await.expect("pong");
                rtts.push(t.elapsed());
            }
            s.close().await.expect("close");
            rtts
        });
        server.join().expect("server");
        rtts
    }
}
