//! Input bytes in each framing, for the decoding tests (in memory and on the broker).

use mtdgate::codec::{self, AvroRecord, OutputEncoding};
use serde::Serialize;

/// `v` encoded as `enc`.
pub fn encoded<T: AvroRecord + Serialize>(v: &T, enc: OutputEncoding) -> Vec<u8> {
    let mut b = Vec::new();
    codec::encode(v, enc, &mut b).unwrap();
    b
}

/// `v`'s bare Avro datum.
pub fn datum<T: AvroRecord + Serialize>(v: &T) -> Vec<u8> {
    let mut b = Vec::new();
    codec::encode_avro_datum(v, &mut b).unwrap();
    b
}

/// `datum` in Avro single-object framing, with `T`'s schema fingerprint.
pub fn single_object<T: AvroRecord>(datum: &[u8]) -> Vec<u8> {
    let mut b = vec![0xC3, 0x01];
    b.extend_from_slice(&T::schema_entry().fingerprint_bytes());
    b.extend_from_slice(datum);
    b
}

/// `datum` in Confluent framing with schema id `id`.
pub fn confluent(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut b = vec![0x00];
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(datum);
    b
}

/// A hand-built Avro datum, for inputs no encoder would write.
#[derive(Debug, Default, Clone)]
pub struct Datum(pub Vec<u8>);

impl Datum {
    /// A zig-zag varint `long` (also an `int`, an enum index, a union branch, a block count).
    pub fn long(mut self, v: i64) -> Self {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.0.push(z as u8 | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
        self
    }

    /// Length-prefixed `bytes`.
    pub fn bytes(self, b: &[u8]) -> Self {
        let mut d = self.long(b.len() as i64);
        d.0.extend_from_slice(b);
        d
    }

    /// A length-prefixed `string`.
    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    /// Bytes as they are.
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}
