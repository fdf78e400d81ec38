//! Helpers shared by the integration tests; each test file includes this module with `mod common;`.
//!
//! Not every test file uses every helper, so dead-code warnings are off for the whole module.
#![allow(dead_code)]

pub mod vm;
