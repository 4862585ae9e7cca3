//! The test kit: what the tests share.
//!
//! - [`broker`]: the project's real Kafka broker, per-test configurations, an in-process or
//!   child-process service, a vendor gateway producer and read_committed readers;
//! - [`engine`]: a harness around the pure engine and record builders for the rules tests;
//! - [`wire`]: input bytes in each framing (JSON, Avro single-object, Confluent);
//! - [`world`]: the world builders (ids, tenants' tables, device populations) that the tests,
//!   `benches/core.rs`, `examples/memory.rs` and `mtdgate bench` share, included by path there.
// Each test binary uses a part of the kit.
#![allow(dead_code, unused_imports)]

pub mod broker;
pub mod engine;
pub mod wire;
pub mod world;

pub use broker::*;
