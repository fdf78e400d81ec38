//! Pumps and channel endpoints: streams served inside the reactor thread, without a thread
//! per stream.

use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;
use vmux::mux::Config;
use vmux::reactor::Reactor;
use vmux::session::{ChannelEventKind, PumpSpec};
use vmux::transport::Link;
use vmux::wire::Role;

fn sessions() -> (
    Reactor,
    vmux::session::Session,
    Reactor,
    vmux::session::Session,
) {
    let (a, b) = Link::pair().unwrap();
    let ra = Reactor::spawn().unwrap();
    let rb = Reactor::spawn().unwrap();
    let client = ra.add_link(a, Config::new(Role::Client, 1)).unwrap();
    let server = rb.add_link(b, Config::new(Role::Server, 2)).unwrap();
    (ra, client, rb, server)
}

#[test]
fn a_pump_moves_a_regular_file_out_and_a_stream_into_a_pipe() {
    let (_ra, client, _rb, server) = sessions();
    // Source: a 3 MiB regular file (not pollable: served as always ready).
    let mut file = tempfile();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    file.write_all(&data).unwrap();
    file.rewind().unwrap();
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let acceptor = std::thread::spawn(move || {
        let incoming = server.accept().unwrap();
        let spec = PumpSpec {
            from_fd: Some(OwnedFd::from(file)),
            to_fd: Some(pipe_w),
            done: Some(done_tx),
            crc: true,
        };
        incoming.accept_pump(b"", spec).unwrap();
        server
    });
    let mut stream = client.open("pump", b"").unwrap();
    // What the client writes goes into the pipe; read it on another thread.
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(pipe_r);
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        got
    });
    let sent: Vec<u8> = (0..1u32 << 20).map(|i| (i % 13) as u8).collect();
    let mut received = Vec::new();
    std::thread::scope(|s| {
        let st = &stream;
        let payload = &sent;
        s.spawn(move || {
            let mut w = st;
            w.write_all(payload).unwrap();
            st.shutdown_write().unwrap();
        });
        let mut r = &stream;
        r.read_to_end(&mut received).unwrap();
    });
    assert!(received == data, "file content came through the stream");
    assert!(
        reader.join().unwrap() == sent,
        "stream content came out of the pipe"
    );
    let done = done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(done.result.is_ok(), "{:?}", done.result);
    assert_eq!(done.bytes_sent, data.len() as u64);
    assert_eq!(done.bytes_received, sent.len() as u64);
    assert_eq!(done.crc_sent, crc32c::crc32c(&data));
    assert_eq!(done.crc_received, crc32c::crc32c(&sent));
    let _server = acceptor.join().unwrap();
    let _ = stream.flush();
}

#[test]
fn a_channel_stream_delivers_messages_to_the_service_loop() {
    let (_ra, client, _rb, server) = sessions();
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let service = std::thread::spawn(move || {
        let incoming = server.accept().unwrap();
        let stream = incoming.accept_channel(b"hi", events_tx).unwrap();
        // Echo every message, upper-cased, then close when the peer does.
        loop {
            let event = events_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            match event.kind {
                ChannelEventKind::Data(bytes) => stream.send(bytes.to_ascii_uppercase()).unwrap(),
                ChannelEventKind::PeerClosed => stream.close().unwrap(),
                ChannelEventKind::Ended(result) => {
                    assert!(result.is_ok(), "{result:?}");
                    break;
                }
            }
        }
        server
    });
    let (mut stream, reply) = client.open_with_reply("ctl", b"").unwrap();
    assert_eq!(reply, b"hi");
    stream.write_all(b"hello channel").unwrap();
    stream.shutdown_write().unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"HELLO CHANNEL");
    let _server = service.join().unwrap();
}

fn tempfile() -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "vmux-pump-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    file
}
