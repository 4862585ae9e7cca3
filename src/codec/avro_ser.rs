//! A schema-driven serde `Serializer` writing Avro binary.
//!
//! Structs are written field by field and must present exactly the schema's fields, by name,
//! in schema order; enums are written as the index of their symbol in the schema; `Option`s
//! pick the `null` or the matching branch of a union.

use serde::ser::{self, Serialize};

use super::avro_error::AvroError;
use super::compiled::{Compiled, Field, Node, NodeId};

type Result<T> = std::result::Result<T, AvroError>;

/// Appends the Avro binary encoding of `value` (a datum of `schema`) to `out`.
pub(crate) fn to_vec<T: Serialize + ?Sized>(
    schema: &Compiled,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<()> {
    value.serialize(Ser {
        out,
        s: schema,
        node: schema.root,
    })
}

/// Appends a zigzag varint `long`.
#[inline]
pub(crate) fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

#[cold]
fn variant_with_data(name: &str, variant: &str) -> AvroError {
    AvroError::invalid(format!(
        "enum variant {name}::{variant} with data has no Avro mapping"
    ))
}

#[cold]
fn mismatch(what: &str, node: &Node) -> AvroError {
    AvroError::invalid(format!("cannot write {what} as {}", describe(node)))
}

fn describe(node: &Node) -> String {
    match node {
        Node::Null => "null".into(),
        Node::Boolean => "boolean".into(),
        Node::Int => "int".into(),
        Node::Long => "long".into(),
        Node::Float => "float".into(),
        Node::Double => "double".into(),
        Node::Bytes => "bytes".into(),
        Node::String => "string".into(),
        Node::Fixed(n) => format!("fixed({n})"),
        Node::Array(_) => "array".into(),
        Node::Map(_) => "map".into(),
        Node::Union(_) => "union".into(),
        Node::Record { name, .. } => format!("record {name}"),
        Node::Enum { name, .. } => format!("enum {name}"),
    }
}

/// Serializer for one value of node `node`.
pub(crate) struct Ser<'a> {
    out: &'a mut Vec<u8>,
    s: &'a Compiled,
    node: NodeId,
}

impl<'a> Ser<'a> {
    /// The node the value is written as: the node itself, or for a union the first branch
    /// accepting the value (whose index is written first).
    #[inline(always)]
    fn pick(&mut self, accept: impl Fn(&Node) -> bool, what: &str) -> Result<&'a Node> {
        let s: &'a Compiled = self.s;
        let node = s.node(self.node);
        if let Node::Union(branches) = node {
            for (i, &b) in branches.iter().enumerate() {
                if accept(s.node(b)) {
                    write_long(self.out, i as i64);
                    self.node = b;
                    return Ok(s.node(b));
                }
            }
        } else if accept(node) {
            return Ok(node);
        }
        Err(mismatch(what, node))
    }

    /// Starts an array or a map: `inner` is the item (value) node of the node kind it takes.
    #[inline]
    fn items(
        mut self,
        len: Option<usize>,
        what: &str,
        inner: impl Fn(&Node) -> Option<NodeId>,
    ) -> Result<ItemsSer<'a>> {
        let node = self.pick(|n| inner(n).is_some(), what)?;
        let item = inner(node).unwrap_or_else(|| unreachable!("pick returned {}", describe(node)));
        let start = self.out.len();
        if let Some(n) = len {
            if n > 0 {
                write_long(self.out, n as i64);
            }
        }
        Ok(ItemsSer {
            out: self.out,
            s: self.s,
            item,
            announced: len,
            start,
            written: 0,
            key: (0, 0),
        })
    }

    #[inline]
    fn long(mut self, v: i64, what: &str) -> Result<()> {
        match self.pick(|n| matches!(n, Node::Long | Node::Int), what)? {
            Node::Int if i32::try_from(v).is_err() => Err(AvroError::invalid(format!(
                "{what} {v} does not fit an Avro int"
            ))),
            _ => {
                write_long(self.out, v);
                Ok(())
            }
        }
    }

    /// Writes an enum symbol (or, into a `string`, its text).
    #[inline]
    fn symbol(mut self, variant: Option<(u32, &'static str)>, symbol: &str) -> Result<()> {
        match self.pick(
            |n| matches!(n, Node::Enum { .. } | Node::String),
            "a symbol",
        )? {
            Node::Enum { name, symbols, .. } => {
                // Serde's variant index is the declaration order, which is the schema order.
                let idx = match variant {
                    Some((i, v)) if symbols.get(i as usize).is_some_and(|s| s.matches(v)) => {
                        i as usize
                    }
                    _ => symbols.iter().position(|s| **s == *symbol).ok_or_else(|| {
                        AvroError::invalid(format!("symbol `{symbol}` is not in enum {name}"))
                    })?,
                };
                write_long(self.out, idx as i64);
            }
            _ => write_bytes(self.out, symbol.as_bytes()),
        }
        Ok(())
    }
}

/// The serializer methods of tuple and struct variants (same signature): variants carrying data
/// have no Avro mapping.
macro_rules! variants_with_data {
    ($($method:ident -> $ty:ident),+ $(,)?) => {
        $(
            fn $method(
                self,
                name: &'static str,
                _variant_index: u32,
                variant: &'static str,
                _len: usize,
            ) -> Result<Self::$ty> {
                Err(variant_with_data(name, variant))
            }
        )+
    };
}

/// Serializer methods of the integer types that widen losslessly to `long`.
macro_rules! serialize_as_long {
    ($($method:ident: $ty:ty),+ $(,)?) => {
        $(
            fn $method(self, v: $ty) -> Result<()> {
                self.long(v.into(), "an integer")
            }
        )+
    };
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = AvroError;
    type SerializeSeq = ItemsSer<'a>;
    type SerializeTuple = ser::Impossible<(), AvroError>;
    type SerializeTupleStruct = ser::Impossible<(), AvroError>;
    type SerializeTupleVariant = ser::Impossible<(), AvroError>;
    type SerializeMap = ItemsSer<'a>;
    type SerializeStruct = StructSer<'a>;
    type SerializeStructVariant = ser::Impossible<(), AvroError>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(mut self, v: bool) -> Result<()> {
        self.pick(|n| matches!(n, Node::Boolean), "a boolean")?;
        self.out.push(v as u8);
        Ok(())
    }

    serialize_as_long! {
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
    }

    fn serialize_i64(self, v: i64) -> Result<()> {
        self.long(v, "an integer")
    }

    fn serialize_u64(self, v: u64) -> Result<()> {
        let v = i64::try_from(v)
            .map_err(|_| AvroError::invalid(format!("integer {v} does not fit an Avro long")))?;
        self.long(v, "an integer")
    }

    fn serialize_f32(mut self, v: f32) -> Result<()> {
        match self.pick(|n| matches!(n, Node::Float | Node::Double), "a float")? {
            Node::Float => self.out.extend_from_slice(&v.to_le_bytes()),
            _ => self.out.extend_from_slice(&f64::from(v).to_le_bytes()),
        }
        Ok(())
    }

    fn serialize_f64(mut self, v: f64) -> Result<()> {
        self.pick(|n| matches!(n, Node::Double), "a double")?;
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_str(mut self, v: &str) -> Result<()> {
        match self.pick(
            |n| matches!(n, Node::String | Node::Enum { .. }),
            "a string",
        )? {
            Node::String => {
                write_bytes(self.out, v.as_bytes());
                Ok(())
            }
            _ => {
                // Already past the union branch: write the symbol against the enum node itself.
                self.symbol(None, v)
            }
        }
    }

    fn serialize_bytes(mut self, v: &[u8]) -> Result<()> {
        match self.pick(|n| matches!(n, Node::Bytes | Node::Fixed(_)), "bytes")? {
            Node::Fixed(n) if *n != v.len() => Err(AvroError::invalid(format!(
                "{} bytes written as fixed({n})",
                v.len()
            ))),
            Node::Fixed(_) => {
                self.out.extend_from_slice(v);
                Ok(())
            }
            _ => {
                write_bytes(self.out, v);
                Ok(())
            }
        }
    }

    fn serialize_none(self) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_unit(mut self) -> Result<()> {
        self.pick(|n| matches!(n, Node::Null), "null")?;
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        variant: &'static str,
    ) -> Result<()> {
        self.symbol(Some((variant_index, variant)), variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<()> {
        Err(variant_with_data(name, variant))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<ItemsSer<'a>> {
        self.items(len, "a sequence", |n| match n {
            Node::Array(item) => Some(*item),
            _ => None,
        })
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple> {
        Err(AvroError::invalid("tuples have no Avro mapping"))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(AvroError::invalid(format!(
            "tuple struct {name} has no Avro mapping"
        )))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<ItemsSer<'a>> {
        self.items(len, "a map", |n| match n {
            Node::Map(value) => Some(*value),
            _ => None,
        })
    }

    fn serialize_struct(mut self, name: &'static str, _len: usize) -> Result<StructSer<'a>> {
        match self.pick(|n| matches!(n, Node::Record { .. }), "a struct")? {
            Node::Record {
                name: record,
                fields,
                ..
            } => Ok(StructSer {
                out: self.out,
                s: self.s,
                record,
                fields,
                next: 0,
            }),
            _ => Err(AvroError::invalid(format!("struct {name} is not a record"))),
        }
    }

    variants_with_data! {
        serialize_tuple_variant -> SerializeTupleVariant,
        serialize_struct_variant -> SerializeStructVariant,
    }
}

/// The items of an array or the entries of a map, written as one block: its count goes in front
/// of the items when serde announces it, or is inserted there once they are written.
pub(crate) struct ItemsSer<'a> {
    out: &'a mut Vec<u8>,
    s: &'a Compiled,
    /// The item node (the value node of a map).
    item: NodeId,
    announced: Option<usize>,
    start: usize,
    written: usize,
    /// Where the last map key was written in `out`, for error paths.
    key: (usize, usize),
}

impl ItemsSer<'_> {
    /// Ends the block (and the array or map).
    fn finish(self) -> Result<()> {
        let ItemsSer {
            out,
            announced,
            start,
            written,
            ..
        } = self;
        match announced {
            Some(n) if n != written => {
                return Err(AvroError::invalid(format!(
                    "sequence announced {n} items but wrote {written}"
                )))
            }
            Some(_) => {}
            None if written > 0 => {
                let mut count = Vec::with_capacity(10);
                write_long(&mut count, written as i64);
                out.splice(start..start, count);
            }
            None => {}
        }
        out.push(0);
        Ok(())
    }
}

impl ser::SerializeSeq for ItemsSer<'_> {
    type Ok = ();
    type Error = AvroError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let index = self.written;
        value
            .serialize(Ser {
                out: self.out,
                s: self.s,
                node: self.item,
            })
            .map_err(|e| e.at_index(index as u64))?;
        self.written += 1;
        Ok(())
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeMap for ItemsSer<'_> {
    type Ok = ();
    type Error = AvroError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        let start = self.out.len();
        key.serialize(Ser {
            out: self.out,
            s: self.s,
            node: self.s.string_node,
        })
        .map_err(|e| AvroError::invalid(format!("map key: {}", e.message())))?;
        self.key = (start, self.out.len());
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let result = value.serialize(Ser {
            out: self.out,
            s: self.s,
            node: self.item,
        });
        if let Err(e) = result {
            let (start, end) = self.key;
            let written = self.out.get(start..end).unwrap_or_default();
            // The key as written: a varint length, then the UTF-8 text.
            let text_at = written
                .iter()
                .position(|b| b & 0x80 == 0)
                .map_or(0, |i| i + 1);
            let key = String::from_utf8_lossy(written.get(text_at..).unwrap_or_default());
            return Err(e.at_key(&key));
        }
        self.written += 1;
        Ok(())
    }

    fn end(self) -> Result<()> {
        self.finish()
    }
}

pub(crate) struct StructSer<'a> {
    out: &'a mut Vec<u8>,
    s: &'a Compiled,
    record: &'a str,
    fields: &'a [Field],
    next: usize,
}

impl ser::SerializeStruct for StructSer<'_> {
    type Ok = ();
    type Error = AvroError;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        let field = match self.fields.get(self.next) {
            Some(f) if f.name.matches(key) => f,
            Some(f) => {
                return Err(AvroError::invalid(format!(
                    "field `{key}` written where record {} expects `{}` (position {})",
                    self.record, f.name, self.next
                )))
            }
            None => {
                return Err(AvroError::invalid(format!(
                    "field `{key}` is not in record {}",
                    self.record
                )))
            }
        };
        value
            .serialize(Ser {
                out: self.out,
                s: self.s,
                node: field.node,
            })
            .map_err(|e| e.at_field(key))?;
        self.next += 1;
        Ok(())
    }

    fn skip_field(&mut self, key: &'static str) -> Result<()> {
        Err(AvroError::invalid(format!(
            "field `{key}` of record {} skipped: Avro records need every field",
            self.record
        )))
    }

    fn end(self) -> Result<()> {
        if self.next == self.fields.len() {
            Ok(())
        } else {
            let missing: Vec<&str> = self.fields[self.next..].iter().map(|f| &*f.name).collect();
            Err(AvroError::invalid(format!(
                "record {} is missing field(s) {}",
                self.record,
                missing.join(", ")
            )))
        }
    }
}
