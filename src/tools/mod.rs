//! The tools around the product, compiled into the `mtdgate` binary only (the library is the
//! engine and its Kafka runtime): the fleet simulator, the zero-setup demo, the benchmarks and
//! the explain CLI.

pub mod bench;
pub mod demo;
pub mod explain_cli;
pub mod simulate;

pub use mtdgate::runtime::kafka::send_waiting as send;
