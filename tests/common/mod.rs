//! Helpers shared by the integration tests; each test file includes this module with `mod common;`.
//!
//! The QEMU harness lives in the `vmux-vmtest` crate so that `cargo xtask demo` can use it too.
#![allow(dead_code)]

pub mod noisy;
pub mod pattern;

#[allow(unused_imports)]
pub use vmux_vmtest as vm;
