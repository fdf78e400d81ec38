//! vmux: frames and multiplexes byte streams between a virtual machine and its host.
//!
//! The crate is layered (see `docs/protocol.md` for the wire reference):
//! - [`wire`] and [`codec`] turn frames into bytes and back (sans-I/O);
//! - [`mux`] is the session state machine: streams, credit, keepalive, shutdown (sans-I/O);
//! - [`reactor`] is the one thread that owns every file descriptor and drives sessions with `mio`;
//! - [`session`] gives application threads blocking [`session::Stream`] handles;
//! - [`service`] defines the agent's services (messages and the host-side client API);
//! - [`transport`] opens the links: unix sockets, vsock, hybrid vsock, virtio-serial, tty.

pub mod arq;
pub mod codec;
pub mod mux;
pub mod reactor;
pub mod service;
pub mod session;
pub mod time;
pub mod transport;
pub mod wire;
