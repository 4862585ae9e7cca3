//! A compact, reference-free form of an Avro schema that the binary serializer and deserializer
//! walk: nodes in one vector, named-type references resolved to node indexes, logical types
//! reduced to their underlying encoding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use apache_avro::Schema;

/// Index of a node in [`Compiled::nodes`].
pub(crate) type NodeId = u32;

/// A name of the schema (field name or enum symbol) that remembers the address of the last
/// `&'static str` found equal to it, so that serializing the same Rust field or variant again
/// costs a pointer comparison instead of a string comparison.
#[derive(Debug)]
pub(crate) struct Name {
    text: Box<str>,
    seen: AtomicUsize,
}

impl Name {
    pub(crate) fn new(text: &str) -> Name {
        Name {
            text: text.into(),
            seen: AtomicUsize::new(0),
        }
    }

    /// Whether `candidate` is this name.
    #[inline]
    pub fn matches(&self, candidate: &'static str) -> bool {
        let addr = candidate.as_ptr() as usize;
        // Same address and length as a static string already found equal: same bytes.
        if self.seen.load(Ordering::Relaxed) == addr && candidate.len() == self.text.len() {
            return true;
        }
        if *self.text == *candidate {
            self.seen.store(addr, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Remembers whether a `&'static [&'static str]` of Rust names (the field list serde passes to
/// `deserialize_struct`, the variant list it passes to `deserialize_enum`) is exactly the node's
/// names, in order: then a derived `Deserialize` can be fed fields by position and variants by
/// index, with no name comparison per value. The answer is kept per list address, like
/// [`Name::matches`], so it is worked out once per Rust type.
#[derive(Debug, Default)]
pub(crate) struct RustNames {
    same: AtomicUsize,
    differs: AtomicUsize,
}

impl RustNames {
    /// Whether `candidate` lists exactly `names`, in the same order.
    #[inline]
    pub fn same<'n>(
        &self,
        names: impl ExactSizeIterator<Item = &'n str>,
        candidate: &'static [&'static str],
    ) -> bool {
        let addr = candidate.as_ptr() as usize;
        // Same address and length as a list already found equal: the same list.
        if self.same.load(Ordering::Relaxed) == addr && candidate.len() == names.len() {
            return true;
        }
        if self.differs.load(Ordering::Relaxed) == addr {
            return false;
        }
        self.check(names, candidate)
    }

    #[cold]
    fn check<'n>(
        &self,
        names: impl ExactSizeIterator<Item = &'n str>,
        candidate: &'static [&'static str],
    ) -> bool {
        let addr = candidate.as_ptr() as usize;
        let same = names.len() == candidate.len() && names.zip(candidate).all(|(a, b)| a == *b);
        if same {
            self.same.store(addr, Ordering::Relaxed);
        } else {
            self.differs.store(addr, Ordering::Relaxed);
        }
        same
    }
}

/// One field of a record node.
#[derive(Debug)]
pub(crate) struct Field {
    pub name: Name,
    pub node: NodeId,
    /// The schema gives the field a default (what a reader needs to read writers without it).
    pub has_default: bool,
}

/// One schema node, by its binary encoding.
#[derive(Debug)]
pub(crate) enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Array(NodeId),
    Map(NodeId),
    Union(Box<[NodeId]>),
    Record {
        name: Box<str>,
        fields: Box<[Field]>,
        /// Rust struct field lists found to be `fields`, in order.
        rust: RustNames,
    },
    Enum {
        name: Box<str>,
        /// The symbol of each index, as the reader of a datum sees it: the schema's own symbols,
        /// except in the compiled writer schema of another version, where a symbol the reader
        /// lacks reads as the reader's default (`resolve::resolve`).
        symbols: Box<[Name]>,
        /// Index of the enum's `default` symbol (used when the enum is a reader's).
        default: Option<u32>,
        /// Rust variant lists found to be `symbols`, in order.
        rust: RustNames,
    },
}

/// A compiled schema: `root` is the record (or other type) a datum encodes.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub nodes: Vec<Node>,
    /// Smallest number of bytes a value of each node takes (bounds untrusted item counts).
    pub min_size: Vec<u32>,
    pub root: NodeId,
    /// A `string` node, for map keys.
    pub string_node: NodeId,
}

/// Why a schema could not be compiled.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unsupported schema: {0}")]
pub(crate) struct CompileError(pub String);

impl Compiled {
    /// Compiles an apache-avro schema (standalone: every named type defined inside it).
    pub fn new(schema: &Schema) -> Result<Compiled, CompileError> {
        let mut c = Compiler {
            nodes: Vec::new(),
            names: HashMap::new(),
        };
        let root = c.compile(schema, None)?;
        let string_node = c.push(Node::String);
        let mut compiled = Compiled {
            min_size: vec![0; c.nodes.len()],
            nodes: c.nodes,
            root,
            string_node,
        };
        compiled.compute_min_sizes();
        Ok(compiled)
    }

    #[inline]
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// Replaces the symbols of enum node `id` (schema resolution: the symbol each writer index
    /// reads as). Does nothing to other nodes.
    pub(crate) fn set_symbols(&mut self, id: NodeId, new: Box<[Name]>) {
        if let Some(Node::Enum { symbols, .. }) = self.nodes.get_mut(id as usize) {
            *symbols = new;
        }
    }

    fn compute_min_sizes(&mut self) {
        // Iterate to a fixed point: recursive records start at 0 and only grow, bounded by the
        // non-recursive path sizes; a few rounds settle every schema used in practice.
        for _ in 0..self.nodes.len().max(1) {
            let mut changed = false;
            for i in (0..self.nodes.len()).rev() {
                let size = match &self.nodes[i] {
                    Node::Null => 0,
                    Node::Boolean | Node::Int | Node::Long | Node::Bytes | Node::String => 1,
                    Node::Float => 4,
                    Node::Double => 8,
                    Node::Fixed(n) => u32::try_from(*n).unwrap_or(u32::MAX),
                    Node::Array(_) | Node::Map(_) | Node::Enum { .. } => 1,
                    Node::Union(branches) => {
                        1 + branches
                            .iter()
                            .map(|b| self.min_size[*b as usize])
                            .min()
                            .unwrap_or(0)
                    }
                    Node::Record { fields, .. } => fields
                        .iter()
                        .map(|f| self.min_size[f.node as usize])
                        .fold(0u32, u32::saturating_add),
                };
                if size != self.min_size[i] {
                    self.min_size[i] = size;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
}

struct Compiler {
    nodes: Vec<Node>,
    names: HashMap<String, NodeId>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    fn compile(&mut self, schema: &Schema, ns: Option<&str>) -> Result<NodeId, CompileError> {
        let id = match schema {
            Schema::Null => self.push(Node::Null),
            Schema::Boolean => self.push(Node::Boolean),
            Schema::Int | Schema::Date | Schema::TimeMillis => self.push(Node::Int),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.push(Node::Long),
            Schema::Float => self.push(Node::Float),
            Schema::Double => self.push(Node::Double),
            Schema::Bytes | Schema::BigDecimal => self.push(Node::Bytes),
            Schema::String | Schema::Uuid => self.push(Node::String),
            Schema::Duration => self.push(Node::Fixed(12)),
            Schema::Decimal(d) => return self.compile(&d.inner, ns),
            Schema::Array(a) => {
                let id = self.push(Node::Null);
                let items = self.compile(&a.items, ns)?;
                self.nodes[id as usize] = Node::Array(items);
                id
            }
            Schema::Map(m) => {
                let id = self.push(Node::Null);
                let values = self.compile(&m.types, ns)?;
                self.nodes[id as usize] = Node::Map(values);
                id
            }
            Schema::Union(u) => {
                let id = self.push(Node::Null);
                let branches = u
                    .variants()
                    .iter()
                    .map(|b| self.compile(b, ns))
                    .collect::<Result<Vec<_>, _>>()?;
                self.nodes[id as usize] = Node::Union(branches.into_boxed_slice());
                id
            }
            Schema::Record(r) => {
                let full = r.name.fullname(ns.map(str::to_owned));
                let id = self.push(Node::Null);
                self.names.insert(full.clone(), id);
                let inner_ns = r.name.namespace.clone().or_else(|| ns.map(str::to_owned));
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let node = self.compile(&f.schema, inner_ns.as_deref())?;
                    fields.push(Field {
                        name: Name::new(&f.name),
                        node,
                        has_default: f.default.is_some(),
                    });
                }
                self.nodes[id as usize] = Node::Record {
                    name: full.into(),
                    fields: fields.into_boxed_slice(),
                    rust: RustNames::default(),
                };
                id
            }
            Schema::Enum(e) => {
                let full = e.name.fullname(ns.map(str::to_owned));
                let default = match &e.default {
                    Some(d) => Some(
                        e.symbols
                            .iter()
                            .position(|s| s == d)
                            .and_then(|i| u32::try_from(i).ok())
                            .ok_or_else(|| {
                                CompileError(format!("enum {full}: default {d} is not a symbol"))
                            })?,
                    ),
                    None => None,
                };
                let id = self.push(Node::Enum {
                    name: full.as_str().into(),
                    symbols: e.symbols.iter().map(|s| Name::new(s)).collect(),
                    default,
                    rust: RustNames::default(),
                });
                self.names.insert(full, id);
                id
            }
            Schema::Fixed(f) => {
                let full = f.name.fullname(ns.map(str::to_owned));
                let id = self.push(Node::Fixed(f.size));
                self.names.insert(full, id);
                id
            }
            Schema::Ref { name } => {
                let full = name.fullname(ns.map(str::to_owned));
                return self
                    .names
                    .get(&full)
                    .or_else(|| self.names.get(&name.name))
                    .copied()
                    .ok_or_else(|| CompileError(format!("reference to undefined type {full}")));
            }
        };
        Ok(id)
    }
}
