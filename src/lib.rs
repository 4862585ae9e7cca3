//! mtdgate: a Kafka-native Mobile Threat Defense compliance engine.
//!
//! The crate is split into a pure core (`model`, `codec`, `catalogue`, `engine`) with no I/O,
//! clock or Kafka in it, and the runtime shell that feeds it from Kafka.

pub mod catalogue;
pub mod codec;
pub mod config;
pub mod engine;
pub mod http;
pub mod model;
pub mod registry;
pub mod runtime;
pub mod service;
pub mod telemetry;
