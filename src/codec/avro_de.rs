//! A schema-driven serde `Deserializer` over Avro binary.
//!
//! It walks the writer schema and hands the values straight to the target type's `Deserialize`
//! implementation: records become maps keyed by field name (so derived structs match fields by
//! name, take their serde defaults for fields the writer lacks and skip fields they do not
//! know), enums become their symbol, `["null", T]` unions become options. Strings and bytes are
//! borrowed from the input. No length read from the input is trusted before it is checked
//! against the bytes that are left.
//!
//! Two shortcuts keep name matching off the hot path when the Rust type mirrors the schema,
//! which is checked once per type (`compiled::RustNames`): a struct whose field list is the
//! record's, in order, is fed the fields as a sequence, and an enum whose variant list is the
//! schema's symbols, in order, is handed the variant index. Serde-derived types accept both.
//! Types that do not mirror the schema take the by-name path.

use serde::de::{
    self,
    value::{BorrowedStrDeserializer, StrDeserializer, U32Deserializer},
    DeserializeSeed, Deserializer, Visitor,
};

use super::avro_error::AvroError;
use super::compiled::{Compiled, Field, Name, Node, NodeId};

type Result<T> = std::result::Result<T, AvroError>;

/// Deepest nesting of records, arrays and maps accepted (only recursive schemas get near it).
const MAX_DEPTH: u32 = 64;

/// Most items of a zero-sized type (e.g. `null`) accepted in one array or map block.
const MAX_ZERO_SIZED_ITEMS: u64 = 1 << 16;

/// Decodes one datum of `schema` from `data` into `T`; bytes left over are an error.
pub(crate) fn from_slice<'de, T: de::Deserialize<'de>>(
    schema: &Compiled,
    data: &'de [u8],
) -> Result<T> {
    let mut reader = Reader { data, pos: 0 };
    let value = T::deserialize(De::root(&mut reader, schema))?;
    reader.finish()?;
    Ok(value)
}

/// Decodes one datum of `schema` from `data` into `place`, reusing its allocations (strings
/// and vectors keep their buffers); bytes left over are an error. On error `place` holds a
/// partly overwritten value that must not be used.
pub(crate) fn from_slice_in_place<'de, T: de::Deserialize<'de>>(
    schema: &Compiled,
    data: &'de [u8],
    place: &mut T,
) -> Result<()> {
    let mut reader = Reader { data, pos: 0 };
    T::deserialize_in_place(De::root(&mut reader, schema), place)?;
    reader.finish()
}

/// A cursor over the input.
pub(crate) struct Reader<'de> {
    data: &'de [u8],
    pos: usize,
}

impl<'de> Reader<'de> {
    #[inline]
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(AvroError::malformed(format!(
                "{n} trailing byte(s) after the record (it ends at byte {} of the datum)",
                self.pos
            ))),
        }
    }

    #[cold]
    fn truncated(&self, what: &str, need: u64) -> AvroError {
        AvroError::malformed(format!(
            "truncated: {what} needs {need} byte(s) at byte {} of the datum, {} left",
            self.pos,
            self.remaining()
        ))
    }

    #[inline]
    fn byte(&mut self, what: &str) -> Result<u8> {
        match self.data.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.truncated(what, 1)),
        }
    }

    #[inline]
    fn take(&mut self, n: usize, what: &str) -> Result<&'de [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(what, n as u64));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// A zigzag varint `long` (at most 10 bytes).
    #[inline(always)]
    fn long(&mut self) -> Result<i64> {
        // Lengths, union branches and enum indexes are nearly always one byte: that case is
        // inlined, longer varints take a call.
        match self.data.get(self.pos) {
            Some(&b) if b & 0x80 == 0 => {
                self.pos += 1;
                Ok(zigzag(b as u64))
            }
            _ => self.long_multi_byte(),
        }
    }

    #[inline(never)]
    fn long_multi_byte(&mut self) -> Result<i64> {
        let start = self.pos;
        let mut v = 0u64;
        for (i, &b) in self.data[start..].iter().take(10).enumerate() {
            if i == 9 && b > 1 {
                self.pos = start + 10;
                return Err(AvroError::malformed(format!(
                    "varint overflows 64 bits at offset {}",
                    start + 9
                )));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                self.pos = start + i + 1;
                return Ok(zigzag(v));
            }
        }
        // Fewer than ten bytes left, all with the continuation bit.
        self.pos = self.data.len();
        Err(self.truncated("long", 1))
    }

    #[inline]
    fn int(&mut self) -> Result<i32> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| AvroError::malformed(format!("int value {v} out of range")))
    }

    /// A length prefix followed by that many bytes, checked against the remaining input.
    #[inline(always)]
    fn sized(&mut self, what: &str) -> Result<&'de [u8]> {
        let n = self.long()?;
        if n < 0 || n as u64 > self.remaining() as u64 {
            return Err(self.bad_length(what, n));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    #[cold]
    #[inline(never)]
    fn bad_length(&self, what: &str, n: i64) -> AvroError {
        if n < 0 {
            AvroError::malformed(format!("negative {what} length {n}"))
        } else {
            self.truncated(what, n as u64)
        }
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'de [u8]> {
        self.sized("bytes")
    }

    #[inline(always)]
    fn str(&mut self) -> Result<&'de str> {
        let s = self.sized("string")?;
        if s.is_ascii() {
            // SAFETY: ASCII is valid UTF-8. Ids and symbols are nearly always ASCII, and the
            // ASCII check is cheaper than full validation.
            return Ok(unsafe { std::str::from_utf8_unchecked(s) });
        }
        self.utf8(s)
    }

    /// Full UTF-8 validation of a string just read.
    #[inline(never)]
    fn utf8(&self, s: &'de [u8]) -> Result<&'de str> {
        std::str::from_utf8(s).map_err(|e| {
            AvroError::malformed(format!(
                "invalid UTF-8 in string at offset {}",
                self.pos - s.len() + e.valid_up_to()
            ))
        })
    }

    #[inline]
    fn boolean(&mut self) -> Result<bool> {
        match self.byte("boolean")? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(AvroError::malformed(format!(
                "invalid boolean byte 0x{b:02x} at offset {}",
                self.pos - 1
            ))),
        }
    }

    /// Reads an array/map block header: the item count (0 = end), skipping the byte size of a
    /// negative count, and checks that `count` items of at least `min_size` bytes can fit.
    fn block(&mut self, min_size: u32, what: &str) -> Result<u64> {
        let count = self.long()?;
        let count = if count < 0 {
            let size = self.long()?;
            if size < 0 || size as u64 > self.remaining() as u64 {
                return Err(AvroError::malformed(format!(
                    "{what} block byte size {size} does not fit the {} byte(s) left",
                    self.remaining()
                )));
            }
            count.unsigned_abs()
        } else {
            count as u64
        };
        let fits = if min_size == 0 {
            count <= MAX_ZERO_SIZED_ITEMS
        } else {
            count <= (self.remaining() / min_size as usize) as u64
        };
        if !fits {
            return Err(AvroError::malformed(format!(
                "{what} block of {count} items cannot fit in the {} byte(s) left",
                self.remaining()
            )));
        }
        Ok(count)
    }
}

#[cold]
#[inline(never)]
fn bad_branch(idx: i64, branches: usize) -> AvroError {
    AvroError::malformed(format!(
        "union branch index {idx} out of range ({branches} branches)"
    ))
}

#[cold]
#[inline(never)]
fn bad_symbol(idx: i64, symbols: usize) -> AvroError {
    AvroError::invalid(format!("enum index {idx} out of range ({symbols} symbols)"))
}

#[inline(always)]
fn zigzag(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

/// Deserializer for one value of node `node`.
pub(crate) struct De<'a, 'de> {
    r: &'a mut Reader<'de>,
    s: &'a Compiled,
    node: NodeId,
    depth: u32,
}

impl<'a, 'de> De<'a, 'de> {
    #[inline]
    fn root(r: &'a mut Reader<'de>, s: &'a Compiled) -> Self {
        De {
            r,
            s,
            node: s.root,
            depth: 0,
        }
    }

    /// The node to decode, after reading the branch index of a union.
    #[inline(always)]
    fn resolve(&mut self) -> Result<&'a Node> {
        let s: &'a Compiled = self.s;
        match s.node(self.node) {
            Node::Union(branches) => {
                let b = self.branch(branches)?;
                self.node = b;
                Ok(s.node(b))
            }
            n => Ok(n),
        }
    }

    /// Reads a union branch index and returns the branch's node.
    #[inline(always)]
    fn branch(&mut self, branches: &[NodeId]) -> Result<NodeId> {
        let idx = self.r.long()?;
        match usize::try_from(idx).ok().and_then(|i| branches.get(i)) {
            Some(&b) => Ok(b),
            None => Err(bad_branch(idx, branches.len())),
        }
    }

    #[inline]
    fn deeper(&self) -> Result<u32> {
        if self.depth >= MAX_DEPTH {
            Err(AvroError::malformed(format!(
                "nesting deeper than {MAX_DEPTH} levels"
            )))
        } else {
            Ok(self.depth + 1)
        }
    }

    /// The fields of a record one level down.
    #[inline]
    fn record(self, fields: &'a [Field]) -> Result<RecordAccess<'a, 'de>> {
        Ok(RecordAccess {
            depth: self.deeper()?,
            r: self.r,
            s: self.s,
            fields,
            next: 0,
        })
    }

    /// The items (or values) of node `item` of an array or map one level down, before the
    /// first block header.
    #[inline]
    fn items<At>(self, item: NodeId, min_size: u32, at: At) -> Result<Items<'a, 'de, At>> {
        Ok(Items {
            depth: self.deeper()?,
            r: self.r,
            s: self.s,
            item,
            min_size,
            left: 0,
            done: false,
            at,
        })
    }

    #[inline]
    fn symbol(&mut self, symbols: &'a [Name]) -> Result<&'a str> {
        let idx = self.symbol_index(symbols)?;
        Ok(&symbols[idx as usize])
    }

    /// An enum index, checked against the symbols.
    #[inline(always)]
    fn symbol_index(&mut self, symbols: &[Name]) -> Result<u32> {
        let idx = self.r.long()?;
        match u32::try_from(idx) {
            Ok(i) if (i as usize) < symbols.len() => Ok(i),
            _ => Err(bad_symbol(idx, symbols.len())),
        }
    }

    fn visit_node<V: Visitor<'de>>(mut self, node: &'a Node, visitor: V) -> Result<V::Value> {
        match node {
            Node::Null => visitor.visit_unit(),
            Node::Boolean => visitor.visit_bool(self.r.boolean()?),
            Node::Int => visitor.visit_i32(self.r.int()?),
            Node::Long => visitor.visit_i64(self.r.long()?),
            Node::Float => visitor.visit_f32(f32::from_le_bytes(self.r.array("float")?)),
            Node::Double => visitor.visit_f64(f64::from_le_bytes(self.r.array("double")?)),
            Node::Bytes => visitor.visit_borrowed_bytes(self.r.bytes()?),
            Node::String => visitor.visit_borrowed_str(self.r.str()?),
            Node::Fixed(n) => visitor.visit_borrowed_bytes(self.r.take(*n, "fixed")?),
            Node::Enum { symbols, .. } => visitor.visit_str(self.symbol(symbols)?),
            Node::Record { fields, .. } => visitor.visit_map(self.record(fields)?),
            Node::Array(item) => {
                let min_size = self.s.min_size[*item as usize];
                let mut items = self.items(*item, min_size, 0u64)?;
                items.next_block("array").map_err(|e| e.at_index(0))?;
                visitor.visit_seq(items)
            }
            Node::Map(value) => {
                let min_size = self.s.min_size[*value as usize].saturating_add(1);
                let mut entries = self.items(*value, min_size, "")?;
                entries.next_block("map")?;
                visitor.visit_map(entries)
            }
            Node::Union(_) => Err(AvroError::malformed("union directly inside a union")),
        }
    }

    /// Reads past one value without building anything (validating it all the same).
    pub(crate) fn skip(mut self) -> Result<()> {
        match self.resolve()? {
            Node::Null => Ok(()),
            Node::Boolean => self.r.boolean().map(drop),
            Node::Int => self.r.int().map(drop),
            Node::Long => self.r.long().map(drop),
            Node::Float => self.r.take(4, "float").map(drop),
            Node::Double => self.r.take(8, "double").map(drop),
            Node::Bytes => self.r.bytes().map(drop),
            Node::String => self.r.str().map(drop),
            Node::Fixed(n) => self.r.take(*n, "fixed").map(drop),
            Node::Enum { symbols, .. } => self.symbol(symbols).map(drop),
            Node::Record { fields, .. } => {
                let mut record = self.record(fields)?;
                for f in fields.iter() {
                    record.de(f.node).skip().map_err(|e| e.at_field(&f.name))?;
                }
                Ok(())
            }
            Node::Array(item) => {
                let min_size = self.s.min_size[*item as usize];
                let mut items = self.items(*item, min_size, 0u64)?;
                while items.more("array")? {
                    let index = items.at;
                    items.de().skip().map_err(|e| e.at_index(index))?;
                    items.at += 1;
                }
                Ok(())
            }
            Node::Map(value) => {
                let min_size = self.s.min_size[*value as usize].saturating_add(1);
                let mut entries = self.items(*value, min_size, "")?;
                while entries.more("map")? {
                    let key = entries.r.str()?;
                    entries.de().skip().map_err(|e| e.at_key(key))?;
                }
                Ok(())
            }
            Node::Union(_) => Err(AvroError::malformed("union directly inside a union")),
        }
    }
}

impl<'a, 'de> Deserializer<'de> for De<'a, 'de> {
    type Error = AvroError;

    #[inline]
    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        let node = self.resolve()?;
        self.visit_node(node, visitor)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        let s: &'a Compiled = self.s;
        match s.node(self.node) {
            Node::Union(branches) => {
                let b = self.branch(branches)?;
                match s.node(b) {
                    Node::Null => visitor.visit_none(),
                    _ => {
                        self.node = b;
                        visitor.visit_some(self)
                    }
                }
            }
            Node::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        rust_fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let node = self.resolve()?;
        match node {
            Node::Record { fields, rust, .. }
                if rust.same(fields.iter().map(|f| &*f.name), rust_fields) =>
            {
                visitor.visit_seq(self.record(fields)?)
            }
            _ => self.visit_node(node, visitor),
        }
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.resolve()? {
            Node::Enum { symbols, rust, .. } => {
                if rust.same(symbols.iter().map(|s| &**s), variants) {
                    let idx = self.symbol_index(symbols)?;
                    visitor.visit_enum(U32Deserializer::<AvroError>::new(idx))
                } else {
                    let sym = self.symbol(symbols)?;
                    visitor.visit_enum(StrDeserializer::<AvroError>::new(sym))
                }
            }
            Node::String => {
                let s = self.r.str()?;
                visitor.visit_enum(BorrowedStrDeserializer::<AvroError>::new(s))
            }
            node => self.visit_node(node, visitor),
        }
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip()?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

/// The fields of a record, in schema order: keyed by field name as a map, or, for a struct whose
/// fields are the record's in the same order, as a sequence.
struct RecordAccess<'a, 'de> {
    r: &'a mut Reader<'de>,
    s: &'a Compiled,
    fields: &'a [Field],
    next: usize,
    depth: u32,
}

impl<'de> RecordAccess<'_, 'de> {
    #[inline(always)]
    fn de(&mut self, node: NodeId) -> De<'_, 'de> {
        De {
            r: self.r,
            s: self.s,
            node,
            depth: self.depth,
        }
    }

    /// Decodes the value of the next field, `f`.
    #[inline(always)]
    fn value<T: DeserializeSeed<'de>>(&mut self, f: &Field, seed: T) -> Result<T::Value> {
        self.next += 1;
        seed.deserialize(self.de(f.node))
            .map_err(|e| e.at_field(&f.name))
    }
}

impl<'a, 'de> de::MapAccess<'de> for RecordAccess<'a, 'de> {
    type Error = AvroError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.fields.get(self.next) {
            Some(f) => seed
                .deserialize(StrDeserializer::<AvroError>::new(&f.name))
                .map(Some),
            None => Ok(None),
        }
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let Some(f) = self.fields.get(self.next) else {
            return Err(AvroError::invalid("value requested past the last field"));
        };
        self.value(f, seed)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len() - self.next)
    }
}

impl<'a, 'de> de::SeqAccess<'de> for RecordAccess<'a, 'de> {
    type Error = AvroError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        let Some(f) = self.fields.get(self.next) else {
            return Ok(None);
        };
        self.value(f, seed).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len() - self.next)
    }
}

/// The items of an array or the entries of a map, which come in blocks (each header is read when
/// the block before runs out). `at` places errors: the item index, or the last key read.
struct Items<'a, 'de, At> {
    r: &'a mut Reader<'de>,
    s: &'a Compiled,
    /// The item node (the value node of a map).
    item: NodeId,
    min_size: u32,
    /// Items left in the current block.
    left: u64,
    done: bool,
    at: At,
    depth: u32,
}

impl<'de, At> Items<'_, 'de, At> {
    #[inline]
    fn next_block(&mut self, what: &str) -> Result<()> {
        self.left = self.r.block(self.min_size, what)?;
        self.done = self.left == 0;
        Ok(())
    }

    /// Whether another item follows (then it is counted off its block).
    #[inline(always)]
    fn more(&mut self, what: &str) -> Result<bool> {
        if self.left == 0 {
            if self.done {
                return Ok(false);
            }
            self.next_block(what)?;
            if self.done {
                return Ok(false);
            }
        }
        self.left -= 1;
        Ok(true)
    }

    #[inline(always)]
    fn de(&mut self) -> De<'_, 'de> {
        De {
            r: self.r,
            s: self.s,
            node: self.item,
            depth: self.depth,
        }
    }
}

impl<'a, 'de> de::SeqAccess<'de> for Items<'a, 'de, u64> {
    type Error = AvroError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        let index = self.at;
        if !self.more("array").map_err(|e| e.at_index(index))? {
            return Ok(None);
        }
        self.at += 1;
        seed.deserialize(self.de())
            .map(Some)
            .map_err(|e| e.at_index(index))
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left).ok()
    }
}

impl<'a, 'de> de::MapAccess<'de> for Items<'a, 'de, &'de str> {
    type Error = AvroError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.more("map")? {
            return Ok(None);
        }
        self.at = self.r.str().map_err(|e| e.at_key("<key>"))?;
        seed.deserialize(BorrowedStrDeserializer::<AvroError>::new(self.at))
            .map(Some)
            .map_err(|e| e.at_key(self.at))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let key = self.at;
        seed.deserialize(self.de()).map_err(|e| e.at_key(key))
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::avro_ser::write_long;

    fn read_long(bytes: &[u8]) -> Result<i64> {
        let mut r = Reader {
            data: bytes,
            pos: 0,
        };
        let v = r.long()?;
        r.finish()?;
        Ok(v)
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0,
            -1,
            1,
            63,
            -64,
            64,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = Vec::new();
            write_long(&mut buf, v);
            assert!(buf.len() <= 10);
            assert_eq!(read_long(&buf).unwrap(), v, "{buf:02x?}");
        }
        // Spec examples: 0 -> 00, -1 -> 01, 1 -> 02, -64 -> 7f, 64 -> 80 01.
        let mut buf = Vec::new();
        for v in [0, -1, 1, -64, 64] {
            write_long(&mut buf, v);
        }
        assert_eq!(buf, [0x00, 0x01, 0x02, 0x7f, 0x80, 0x01]);
    }

    const SCHEMA: &str = r#"{"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y", "Z"]}},
        {"name": "o", "type": ["null", "E"]}
    ]}"#;
    /// a = "hé", e = Y, o = Z.
    const DATUM: &[u8] = &[0x06, b'h', 0xC3, 0xA9, 0x02, 0x02, 0x04];

    fn compiled() -> Compiled {
        Compiled::new(&apache_avro::Schema::parse_str(SCHEMA).unwrap()).unwrap()
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    enum Same {
        X,
        Y,
        Z,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    enum Reordered {
        Z,
        Y,
        X,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Mirror {
        a: String,
        e: Same,
        o: Option<Same>,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Other {
        o: Option<Reordered>,
        e: Reordered,
        #[serde(default)]
        missing: u8,
    }

    #[test]
    fn mirrored_types_and_others_decode_alike() {
        let c = compiled();
        for _ in 0..2 {
            // Twice: the second time the name comparisons are remembered.
            let m: Mirror = from_slice(&c, DATUM).unwrap();
            assert_eq!(
                m,
                Mirror {
                    a: "hé".into(),
                    e: Same::Y,
                    o: Some(Same::Z)
                }
            );
            let o: Other = from_slice(&c, DATUM).unwrap();
            assert_eq!(
                o,
                Other {
                    o: Some(Reordered::Z),
                    e: Reordered::Y,
                    missing: 0
                }
            );
        }
        let mut bad = DATUM.to_vec();
        bad[4] = 0x06;
        let err = from_slice::<Mirror>(&c, &bad).unwrap_err().to_string();
        assert!(err.contains("e: enum index 3 out of range"), "{err}");
        let mut bad = DATUM.to_vec();
        bad[2] = 0xFF;
        let err = from_slice::<Mirror>(&c, &bad).unwrap_err().to_string();
        assert!(err.contains("a: invalid UTF-8"), "{err}");
    }

    #[test]
    fn varints_beyond_64_bits_are_rejected() {
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(read_long(&max).unwrap(), i64::MIN);
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(read_long(&over)
            .unwrap_err()
            .to_string()
            .contains("overflows"));
        let mut long = vec![0x80; 10];
        long.push(0x00);
        assert!(read_long(&long).is_err());
        assert!(read_long(&[0x80])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
