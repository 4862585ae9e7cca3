//! The error of the Avro binary serializer and deserializer: a message, whether the bytes are
//! malformed or well-formed but not a valid value, and the field path it happened at.

use std::fmt;

/// Whether the datum itself is broken or only a value in it is unacceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AvroErrorKind {
    /// Not valid Avro binary for the schema (truncated, bad varint, bad UTF-8, trailing bytes,
    /// impossible lengths).
    Malformed,
    /// Valid Avro, but a value does not fit the record (wrong type, unknown enum symbol, missing
    /// field, out-of-range number).
    Invalid,
}

#[derive(Debug, Clone)]
enum Segment {
    Field(Box<str>),
    Index(u64),
    Key(Box<str>),
}

#[derive(Debug, Clone)]
struct Inner {
    kind: AvroErrorKind,
    message: String,
    /// Innermost segment first (segments are added while the error travels outwards).
    path: Vec<Segment>,
}

/// Error of the Avro binary codec. Boxed so that `Result`s on the hot path stay small.
#[derive(Debug, Clone)]
pub(crate) struct AvroError(Box<Inner>);

impl AvroError {
    pub fn new(kind: AvroErrorKind, message: impl Into<String>) -> Self {
        AvroError(Box::new(Inner {
            kind,
            message: message.into(),
            path: Vec::new(),
        }))
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(AvroErrorKind::Malformed, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(AvroErrorKind::Invalid, message)
    }

    pub fn kind(&self) -> AvroErrorKind {
        self.0.kind
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The error happened inside field `name` of a record.
    #[cold]
    pub fn at_field(mut self, name: &str) -> Self {
        self.0.path.push(Segment::Field(name.into()));
        self
    }

    /// The error happened inside item `index` of an array.
    #[cold]
    pub fn at_index(mut self, index: u64) -> Self {
        self.0.path.push(Segment::Index(index));
        self
    }

    /// The error happened inside the value of map key `key`.
    #[cold]
    pub fn at_key(mut self, key: &str) -> Self {
        self.0.path.push(Segment::Key(key.into()));
        self
    }

    /// The field path, e.g. `threats[2].severity`; empty at the record itself.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for seg in self.0.path.iter().rev() {
            match seg {
                Segment::Field(name) | Segment::Key(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

impl fmt::Display for AvroError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path();
        if path.is_empty() {
            f.write_str(&self.0.message)
        } else {
            write!(f, "{path}: {}", self.0.message)
        }
    }
}

impl std::error::Error for AvroError {}

impl serde::de::Error for AvroError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        AvroError::invalid(msg.to_string())
    }
}

impl serde::ser::Error for AvroError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        AvroError::invalid(msg.to_string())
    }
}
