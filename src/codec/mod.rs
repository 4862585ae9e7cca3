//! Wire encodings of the contract's records.
//!
//! Every input value is accepted in three encodings, told apart by their first bytes
//! ([`Encoding::detect`]): Confluent wire format (`0x00` + 4-byte big-endian schema id), Avro
//! single-object encoding (`0xC3 0x01` + 8-byte little-endian CRC-64-AVRO fingerprint) and JSON
//! (`{`). [`decode`] turns any of them into the model type the topic expects, or a
//! [`DecodeError`] that carries the [`RejectReason`] and a detail naming the offending field.
//! [`encode`] writes outputs in the configured [`OutputEncoding`] into a reusable buffer.
//!
//! Avro binary is read and written by schema-driven serde (de)serializers straight from and into
//! the model structs. A Confluent schema id or fingerprint of another version of the record is
//! read with Avro schema resolution (`resolve`), straight into the model struct as well: the
//! earlier versions shipped in `schemas/history/` (ids in `schemas/ids.toml`) with no further
//! configuration, any other version once a [`SchemaResolver`] (a schema registry) gives its
//! schema. With a resolver, Confluent ids are the registry's alone (`schemas/ids.toml` is the
//! registry-less fallback), and one it cannot give now is [`DecodeError::Unavailable`]: the
//! caller waits instead of rejecting. Values of the current schemas take the same path as before there were versions: one
//! look-up, then the positional decoder.
//!
//! # Why a hand-written decoder (measured 2026-12-01)
//!
//! The `serde_avro_fast` crate (2.1.2) is also a serde Avro decoder with a compiled schema and
//! single-object support. `benches/core.rs`, group `avro_codec`, compares it with this module
//! on the `decode` benchmark's `DeviceThreatReport` single-object values (40,000 reports, 190
//! bytes each on average). Both decoders get the same schema text and refuse leftover bytes,
//! and the benchmark checks that both give the same value for every report first. Results per
//! decode, with in place meaning [`decode_into`] or `deserialize_in_place` into one reused
//! value, as the service decodes:
//!
//! | decoder | fresh value: instructions | in place: instructions | in place: thread CPU time |
//! |---|---|---|---|
//! | this module | 3,180 | **2,489** | 180–220 ns (4.5–5.5 M/s) |
//! | `serde_avro_fast` | 4,589 | 3,907 | 237–304 ns (3.3–4.2 M/s) |
//!
//! By instructions, `serde_avro_fast` runs at 0.64x the speed in place and 0.69x fresh. By
//! time, four runs gave 0.67–0.81x in place and 0.80–0.91x fresh. The bar for switching was
//! 0.85x in place, and it was not met, so this decoder stays. Most of the difference comes
//! from three things `serde_avro_fast` does that this decoder avoids: it matches record fields
//! by name (`visit_map`) where this decoder feeds them by position, it matches enum symbols as
//! strings where this decoder uses the variant index, and it runs full UTF-8 validation where
//! this decoder first checks for ASCII. The figures and commands are in `benches/RESULTS.md`.

mod avro_de;
mod avro_error;
mod avro_ser;
pub mod canonical;
mod compiled;
mod resolve;
pub mod schemas;

use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, RwLock};

pub use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use self::avro_error::{AvroError, AvroErrorKind};
pub use self::canonical::{canonical_form, crc64_avro};
use self::compiled::Compiled;
use self::schemas::IdMap;
pub use self::schemas::{
    schema_set, AvroRecord, HistoricSchema, SchemaEntry, SchemaSet, NAMESPACE,
};
use crate::model::RejectReason;

/// First byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// First two bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the Confluent header (magic + schema id).
pub const CONFLUENT_HEADER_LEN: usize = 5;
/// Length of the single-object header (magic + fingerprint).
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;

/// How an input value is encoded, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `0x00` + 4-byte big-endian schema id, then Avro binary.
    Confluent { schema_id: u32 },
    /// `0xC3 0x01` + 8-byte little-endian CRC-64-AVRO fingerprint, then Avro binary.
    SingleObject { fingerprint: u64 },
    /// A JSON object with the schema's field names.
    Json,
}

impl Encoding {
    /// Tells the encoding of `bytes` from its first bytes; `UNDECODABLE` when none applies.
    pub fn detect(bytes: &[u8]) -> Result<Encoding, DecodeError> {
        match bytes {
            [] => Err(DecodeError::Undecodable("empty value".into())),
            [CONFLUENT_MAGIC, rest @ ..] => match rest {
                [a, b, c, d, ..] => Ok(Encoding::Confluent {
                    schema_id: u32::from_be_bytes([*a, *b, *c, *d]),
                }),
                _ => Err(DecodeError::Undecodable(format!(
                    "truncated Confluent header: {} byte(s), need {CONFLUENT_HEADER_LEN}",
                    bytes.len()
                ))),
            },
            [0xC3, 0x01, rest @ ..] => match rest.first_chunk::<8>() {
                Some(fp) => Ok(Encoding::SingleObject {
                    fingerprint: u64::from_le_bytes(*fp),
                }),
                None => Err(DecodeError::Undecodable(format!(
                    "truncated Avro single-object header: {} byte(s), need {SINGLE_OBJECT_HEADER_LEN}",
                    bytes.len()
                ))),
            },
            _ => match bytes
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                Some(i) if bytes[i] == b'{' => Ok(Encoding::Json),
                Some(i) => Err(DecodeError::Undecodable(format!(
                    "unknown encoding: {} byte 0x{:02x} (expected 0x00 for Confluent, \
                     0xC3 0x01 for Avro single-object or '{{' for JSON)",
                    if i == 0 { "first" } else { "first non-blank" },
                    bytes[i]
                ))),
                None => Err(DecodeError::Undecodable("blank value".into())),
            },
        }
    }

    /// Bytes of framing before the datum.
    pub fn header_len(self) -> usize {
        match self {
            Encoding::Confluent { .. } => CONFLUENT_HEADER_LEN,
            Encoding::SingleObject { .. } => SINGLE_OBJECT_HEADER_LEN,
            Encoding::Json => 0,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoding::Confluent { schema_id } => write!(f, "Confluent schema id {schema_id}"),
            Encoding::SingleObject { fingerprint } => {
                write!(f, "Avro fingerprint 0x{fingerprint:016x}")
            }
            Encoding::Json => f.write_str("JSON"),
        }
    }
}

/// Why an input value could not be decoded; [`reason`](Self::reason) is the contract's
/// rejection reason and [`detail`](Self::detail) says what exactly, naming the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a value in any accepted encoding: empty, unknown magic, truncated, malformed Avro,
    /// JSON syntax errors, invalid UTF-8, trailing bytes.
    #[error("undecodable: {0}")]
    Undecodable(String),
    /// The Confluent schema id or fingerprint is unknown, or belongs to another record type.
    #[error("unknown schema: {0}")]
    UnknownSchema(String),
    /// Well-formed, but a field is missing, of the wrong type or an unknown enum symbol.
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// The writer schema is in a schema registry that cannot be asked now. Not a property of
    /// the record: it is never a rejection; the caller waits and decodes it again later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

impl DecodeError {
    /// The rejection reason of the contract.
    pub fn reason(&self) -> RejectReason {
        match self {
            DecodeError::Undecodable(_) => RejectReason::Undecodable,
            DecodeError::UnknownSchema(_) => RejectReason::UnknownSchema,
            DecodeError::InvalidField(_) => RejectReason::InvalidField,
            // Callers wait instead of rejecting (`is_unavailable`); were one to reject anyway,
            // the closest reason is the schema's.
            DecodeError::Unavailable(_) => RejectReason::UnknownSchema,
        }
    }

    /// Whether decoding must wait for the schema registry (not a rejection).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DecodeError::Unavailable(_))
    }

    /// Human-readable detail, e.g. `threats[2].severity: enum index 9 out of range (5 symbols)`.
    pub fn detail(&self) -> &str {
        match self {
            DecodeError::Undecodable(d)
            | DecodeError::UnknownSchema(d)
            | DecodeError::InvalidField(d)
            | DecodeError::Unavailable(d) => d,
        }
    }
}

impl From<AvroError> for DecodeError {
    #[cold]
    fn from(e: AvroError) -> Self {
        match e.kind() {
            AvroErrorKind::Malformed => DecodeError::Undecodable(e.to_string()),
            AvroErrorKind::Invalid => DecodeError::InvalidField(e.to_string()),
        }
    }
}

/// Looks up writer schemas that are not in the embedded schema set, e.g. in a schema registry.
///
/// The [`Decoder`] keeps the schemas it was given (up to its capacity), so each id or
/// fingerprint is asked about once; an `Ok(None)` is not remembered (the schema may be
/// registered later), so an implementation whose look-ups are expensive should remember its
/// own misses for a while.
pub trait SchemaResolver: Send + Sync {
    /// The schema registered under Confluent schema id `id`; `Ok(None)` when the source
    /// answered that it has none.
    fn resolve(&self, id: u32) -> Result<Option<Arc<Schema>>, ResolveError>;

    /// The schema with this CRC-64-AVRO fingerprint (single-object encoding of other versions).
    fn resolve_fingerprint(&self, _fingerprint: u64) -> Result<Option<Arc<Schema>>, ResolveError> {
        Ok(None)
    }
}

/// Why a [`SchemaResolver`] gave no schema, other than not having one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The source did not answer (unreachable, timed out, a server error): ask again later.
    #[error("{0}")]
    Unavailable(String),
    /// The source answered with something that is not a usable Avro schema (another schema
    /// type, unparsable text, references): the record is `UNKNOWN_SCHEMA`.
    #[error("{0}")]
    Unusable(String),
}

/// A writer schema found through a [`SchemaResolver`], prepared once.
struct WriterSchema {
    /// How it was found, for messages: `Confluent schema id 77`.
    label: String,
    full_name: String,
    plan: Plan,
}

/// How values of a [`WriterSchema`] are read as the current record of their name.
enum Plan {
    /// It is an embedded current schema (same canonical form): its fast path.
    Current(&'static SchemaEntry),
    /// Another version: its datum is decoded with it, resolved into the current record.
    Resolve(Compiled),
    /// Its datums cannot be read as the current record, for this reason.
    Incompatible(String),
}

impl WriterSchema {
    fn new(label: String, schema: Arc<Schema>) -> Result<WriterSchema, DecodeError> {
        let full_name = match &*schema {
            Schema::Record(r) => r.name.fullname(None),
            _ => {
                return Err(DecodeError::UnknownSchema(format!(
                    "{label} is not a record schema"
                )))
            }
        };
        let set = schema_set();
        let json = serde_json::to_value(&*schema)
            .map_err(|e| DecodeError::UnknownSchema(format!("{label}: {e}")))?;
        let canonical = canonical_form(&json)
            .map_err(|e| DecodeError::UnknownSchema(format!("{label}: {e}")))?;
        let current = set
            .by_fingerprint(crc64_avro(canonical.as_bytes()))
            .filter(|e| e.canonical_form() == canonical);
        let plan = match (current, set.by_name(&full_name)) {
            (Some(entry), _) => Plan::Current(entry),
            (None, Some(reader)) => {
                let mut compiled = Compiled::new(&schema)
                    .map_err(|e| DecodeError::UnknownSchema(format!("{label}: {e}")))?;
                match resolve::resolve(&mut compiled, &reader.compiled) {
                    Ok(()) => Plan::Resolve(compiled),
                    Err(why) => Plan::Incompatible(why),
                }
            }
            (None, None) => Plan::Incompatible(format!("no record {full_name}")),
        };
        Ok(WriterSchema {
            label,
            full_name,
            plan,
        })
    }
}

/// Decodes input values; holds the optional [`SchemaResolver`] and what it resolved.
#[derive(Default)]
pub struct Decoder {
    resolver: Option<Arc<dyn SchemaResolver>>,
    by_id: RwLock<IdMap<u32, Arc<WriterSchema>>>,
    by_fingerprint: RwLock<IdMap<u64, Arc<WriterSchema>>>,
    /// Most resolved schemas kept per map; past it an arbitrary one is dropped (and asked for
    /// again if it is seen again). Ids given with [`Decoder::prime`] are kept apart, always.
    capacity: usize,
    /// Ids of the embedded current schemas as a registry gave them (mtdgate's own outputs).
    primed: RwLock<IdMap<u32, Arc<WriterSchema>>>,
}

/// Schemas a [`Decoder`] keeps by default (per map).
pub const DEFAULT_DECODER_CAPACITY: usize = 1000;

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("resolver", &self.resolver.is_some())
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder that knows the embedded schemas, their earlier versions (`schemas/history/`)
    /// and the ids of `schemas/ids.toml` only.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder that resolves every Confluent schema id with `resolver` (a schema registry:
    /// its ids replace those of `schemas/ids.toml`, as the contract says), keeping up to
    /// `capacity` schemas; fingerprints of neither the embedded schemas nor their earlier
    /// versions are asked of it too.
    pub fn with_resolver(resolver: Arc<dyn SchemaResolver>, capacity: usize) -> Decoder {
        Decoder {
            resolver: Some(resolver),
            capacity: capacity.max(1),
            ..Decoder::default()
        }
    }

    /// Records that the registry gave Confluent id `id` to the embedded current schema
    /// `entry`, so that values under it (mtdgate's own outputs read back) take the fast path
    /// without asking the registry.
    pub fn prime(&self, id: u32, entry: &'static SchemaEntry) {
        let writer = Arc::new(WriterSchema {
            label: Encoding::Confluent { schema_id: id }.to_string(),
            full_name: entry.full_name().to_owned(),
            plan: Plan::Current(entry),
        });
        write_lock(&self.primed).insert(id, writer);
    }

    /// Asks the resolver now for the writer schema of `bytes` if it is a Confluent value
    /// whose id is not known yet, so that decoding it later needs no request. An id the
    /// resolver has no schema for is fine here (decoding will say so); only
    /// [`DecodeError::Unavailable`] is an error.
    pub fn prefetch(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        match Encoding::detect(bytes) {
            Ok(Encoding::Confluent { schema_id }) if self.resolver.is_some() => {
                match self.writer_by_id(schema_id) {
                    Err(e) if e.is_unavailable() => Err(e),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether Confluent ids are resolved by a registry (not `schemas/ids.toml`).
    pub fn has_resolver(&self) -> bool {
        self.resolver.is_some()
    }

    /// Decodes `bytes` (any accepted encoding) as a `T`.
    pub fn decode<T: AvroRecord + DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        let encoding = Encoding::detect(bytes)?;
        let payload = &bytes[encoding.header_len()..];
        let set = schema_set();
        match encoding {
            Encoding::Json => decode_json(bytes),
            Encoding::SingleObject { fingerprint } => {
                if let Some(entry) = set.by_fingerprint(fingerprint) {
                    return decode_entry::<T>(entry, payload, &encoding);
                }
                if let Some(old) = set.historic_by_fingerprint(fingerprint) {
                    return decode_historic::<T>(old, payload, &encoding);
                }
                if let Some(writer) = self.writer_by_fingerprint(fingerprint)? {
                    return decode_writer::<T>(&writer, payload);
                }
                Err(DecodeError::UnknownSchema(format!(
                    "unknown Avro schema fingerprint 0x{fingerprint:016x}"
                )))
            }
            Encoding::Confluent { schema_id } => {
                if self.resolver.is_some() {
                    return match self.writer_by_id(schema_id)? {
                        Some(writer) => decode_writer::<T>(&writer, payload),
                        None => Err(DecodeError::UnknownSchema(format!(
                            "Confluent schema id {schema_id} is not in the schema registry"
                        ))),
                    };
                }
                if let Some(entry) = set.by_id(schema_id) {
                    return decode_entry::<T>(entry, payload, &encoding);
                }
                if let Some(old) = set.historic_by_id(schema_id) {
                    return decode_historic::<T>(old, payload, &encoding);
                }
                Err(DecodeError::UnknownSchema(format!(
                    "unknown Confluent schema id {schema_id}"
                )))
            }
        }
    }

    /// [`decode`](Self::decode) into `place`, reusing its strings' and vectors' buffers when
    /// the input is Avro of the embedded schema (the hot path: a processor decodes every
    /// report into one scratch value). Other encodings and other versions of the schema decode
    /// anew and replace `place`. On error `place` holds an unspecified value of `T`.
    pub fn decode_into<T: AvroRecord + DeserializeOwned>(
        &self,
        bytes: &[u8],
        place: &mut T,
    ) -> Result<(), DecodeError> {
        let encoding = Encoding::detect(bytes)?;
        let payload = &bytes[encoding.header_len()..];
        let set = schema_set();
        let embedded = match encoding {
            Encoding::SingleObject { fingerprint } => set.by_fingerprint(fingerprint),
            Encoding::Confluent { schema_id } if self.resolver.is_none() => set.by_id(schema_id),
            // Through the registry: in place when it is the current schema, already known.
            Encoding::Confluent { schema_id } => self.known(schema_id).and_then(|w| match w.plan {
                Plan::Current(entry) => Some(entry),
                _ => None,
            }),
            _ => None,
        };
        match embedded {
            Some(entry) if std::ptr::eq(entry, T::schema_entry()) => Ok(
                avro_de::from_slice_in_place(&entry.compiled, payload, place)?,
            ),
            _ => {
                *place = self.decode(bytes)?;
                Ok(())
            }
        }
    }

    /// The writer schema of Confluent id `id` if it is known without asking the resolver.
    fn known(&self, id: u32) -> Option<Arc<WriterSchema>> {
        if let Some(w) = read_lock(&self.primed).get(&id) {
            return Some(w.clone());
        }
        read_lock(&self.by_id).get(&id).cloned()
    }

    fn writer_by_id(&self, id: u32) -> Result<Option<Arc<WriterSchema>>, DecodeError> {
        if let Some(w) = read_lock(&self.primed).get(&id) {
            return Ok(Some(w.clone()));
        }
        let encoding = Encoding::Confluent { schema_id: id };
        self.writer(&self.by_id, id, encoding, |r| r.resolve(id))
    }

    fn writer_by_fingerprint(&self, fp: u64) -> Result<Option<Arc<WriterSchema>>, DecodeError> {
        let encoding = Encoding::SingleObject { fingerprint: fp };
        self.writer(&self.by_fingerprint, fp, encoding, |r| {
            r.resolve_fingerprint(fp)
        })
    }

    /// The writer schema under `key` in `cache`, found with `resolve` the first time (labelled
    /// with the `encoding` it came under, e.g. `Confluent schema id 77`).
    fn writer<K: Copy + Eq + Hash>(
        &self,
        cache: &RwLock<IdMap<K, Arc<WriterSchema>>>,
        key: K,
        encoding: Encoding,
        resolve: impl FnOnce(&dyn SchemaResolver) -> Result<Option<Arc<Schema>>, ResolveError>,
    ) -> Result<Option<Arc<WriterSchema>>, DecodeError> {
        let Some(resolver) = &self.resolver else {
            return Ok(None);
        };
        if let Some(w) = read_lock(cache).get(&key) {
            return Ok(Some(w.clone()));
        }
        let schema = match resolve(&**resolver) {
            Ok(Some(schema)) => schema,
            Ok(None) => return Ok(None),
            Err(ResolveError::Unavailable(why)) => return Err(DecodeError::Unavailable(why)),
            Err(ResolveError::Unusable(why)) => {
                return Err(DecodeError::UnknownSchema(format!("{encoding}: {why}")))
            }
        };
        let writer = Arc::new(WriterSchema::new(encoding.to_string(), schema)?);
        let mut map = write_lock(cache);
        if map.len() >= self.capacity.max(1) {
            if let Some(&evicted) = map.keys().next() {
                map.remove(&evicted);
            }
        }
        map.insert(key, writer.clone());
        Ok(Some(writer))
    }
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Decodes `bytes` (Confluent, Avro single-object or JSON) as a `T`, with the embedded schemas
/// and the Confluent ids of `schemas/ids.toml`.
pub fn decode<T: AvroRecord + DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    embedded_decoder().decode(bytes)
}

/// The decoder of the embedded schemas, built once.
fn embedded_decoder() -> &'static Decoder {
    static DECODER: OnceLock<Decoder> = OnceLock::new();
    DECODER.get_or_init(Decoder::new)
}

/// [`Decoder::decode_into`] with the embedded schemas only.
pub fn decode_into<T: AvroRecord + DeserializeOwned>(
    bytes: &[u8],
    place: &mut T,
) -> Result<(), DecodeError> {
    embedded_decoder().decode_into(bytes, place)
}

fn expected_full_name<T: AvroRecord>() -> String {
    format!("{NAMESPACE}.{}", T::SCHEMA_NAME)
}

/// Avro binary of an embedded schema (fast path).
#[inline]
fn decode_entry<T: AvroRecord + DeserializeOwned>(
    entry: &'static SchemaEntry,
    payload: &[u8],
    label: &dyn fmt::Display,
) -> Result<T, DecodeError> {
    if !std::ptr::eq(entry, T::schema_entry()) {
        return Err(DecodeError::UnknownSchema(format!(
            "{label} is {}, expected {}",
            entry.full_name(),
            expected_full_name::<T>()
        )));
    }
    Ok(avro_de::from_slice(&entry.compiled, payload)?)
}

/// Avro binary of an earlier version shipped in `schemas/history/`, resolved into the current
/// record (off the hot path: not inlined into [`Decoder::decode`]).
#[inline(never)]
fn decode_historic<T: AvroRecord + DeserializeOwned>(
    old: &'static HistoricSchema,
    payload: &[u8],
    label: &dyn fmt::Display,
) -> Result<T, DecodeError> {
    if old.current_index() != T::SCHEMA_INDEX {
        return Err(DecodeError::UnknownSchema(format!(
            "{label} is {} (version {}), expected {}",
            old.current().full_name(),
            old.version(),
            expected_full_name::<T>()
        )));
    }
    Ok(avro_de::from_slice(&old.compiled, payload)?)
}

/// Avro binary of a resolved writer schema: the fast path when it is the current version,
/// Avro schema resolution into the current version otherwise.
fn decode_writer<T: AvroRecord + DeserializeOwned>(
    writer: &WriterSchema,
    payload: &[u8],
) -> Result<T, DecodeError> {
    let reader = T::schema_entry();
    if writer.full_name != reader.full_name() {
        return Err(DecodeError::UnknownSchema(format!(
            "{} is {}, expected {}",
            writer.label,
            writer.full_name,
            reader.full_name()
        )));
    }
    match &writer.plan {
        Plan::Current(current) => decode_entry::<T>(current, payload, &writer.label),
        // Decoded with the writer's schema straight into `T` (module `resolve`): no value of
        // the reader's schema is built in between.
        Plan::Resolve(compiled) => Ok(avro_de::from_slice(compiled, payload)?),
        Plan::Incompatible(why) => Err(DecodeError::UnknownSchema(format!(
            "{} ({}) cannot be read as the current {}: {why}",
            writer.label,
            writer.full_name,
            reader.name()
        ))),
    }
}

fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let e = e.into_inner();
        // serde_json reports some type errors (a number where an enum symbol belongs) as syntax
        // errors: a document that parses as JSON has a bad field, not bad syntax.
        if e.classify() == serde_json::error::Category::Syntax
            && serde_json::from_slice::<serde_json::Value>(bytes).is_ok()
        {
            return DecodeError::InvalidField(format!("{path}: {e}"));
        }
        json_error(&path, e)
    })?;
    de.end().map_err(|e| json_error("", e))?;
    Ok(value)
}

#[cold]
fn json_error(path: &str, e: serde_json::Error) -> DecodeError {
    let detail = if path.is_empty() || path == "." {
        e.to_string()
    } else {
        format!("{path}: {e}")
    };
    match e.classify() {
        serde_json::error::Category::Data => DecodeError::InvalidField(detail),
        _ => DecodeError::Undecodable(format!("JSON: {detail}")),
    }
}

/// Encoding of output values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputEncoding {
    /// JSON with the schema's field names (enums as symbols, `bytes` as base64).
    #[default]
    Json,
    /// Avro single-object encoding (`0xC3 0x01` + fingerprint + Avro binary).
    Avro,
    /// Confluent wire format with the schema id a configured schema registry gave the
    /// topic's subject, else the one of `schemas/ids.toml`.
    AvroConfluent,
}

impl OutputEncoding {
    /// The configuration name: `json`, `avro` or `avro-confluent`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputEncoding::Json => "json",
            OutputEncoding::Avro => "avro",
            OutputEncoding::AvroConfluent => "avro-confluent",
        }
    }
}

impl fmt::Display for OutputEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutputEncoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(OutputEncoding::Json),
            "avro" => Ok(OutputEncoding::Avro),
            "avro-confluent" | "avro_confluent" | "confluent" => Ok(OutputEncoding::AvroConfluent),
            other => Err(format!(
                "unknown output encoding `{other}` (expected json, avro or avro-confluent)"
            )),
        }
    }
}

/// Why an output value could not be encoded (a bug: outputs are built by the engine).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("Avro encoding of {record}: {detail}")]
    Avro {
        record: &'static str,
        detail: String,
    },
    #[error("JSON encoding of {record}: {source}")]
    Json {
        record: &'static str,
        source: serde_json::Error,
    },
}

/// Appends `value` in encoding `enc` to `buf` (nothing is appended on error).
pub fn encode<T: AvroRecord + Serialize>(
    value: &T,
    enc: OutputEncoding,
    buf: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_with_id(value, enc, None, buf)
}

/// [`encode`], with `confluent_id` (the id a schema registry gave the record's schema under
/// the destination topic's subject) instead of the one of `schemas/ids.toml` when `enc` is
/// `avro-confluent`.
pub fn encode_with_id<T: AvroRecord + Serialize>(
    value: &T,
    enc: OutputEncoding,
    confluent_id: Option<u32>,
    buf: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let entry = T::schema_entry();
    let result = match enc {
        OutputEncoding::Json => {
            serde_json::to_writer(&mut *buf, value).map_err(|source| EncodeError::Json {
                record: T::SCHEMA_NAME,
                source,
            })
        }
        OutputEncoding::Avro | OutputEncoding::AvroConfluent => {
            if enc == OutputEncoding::Avro {
                buf.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                buf.extend_from_slice(&entry.fingerprint_bytes());
            } else {
                buf.push(CONFLUENT_MAGIC);
                let id = confluent_id.unwrap_or_else(|| entry.confluent_id());
                buf.extend_from_slice(&id.to_be_bytes());
            }
            avro_ser::to_vec(&entry.compiled, value, buf).map_err(|e| EncodeError::Avro {
                record: T::SCHEMA_NAME,
                detail: e.to_string(),
            })
        }
    };
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// Appends the bare Avro binary datum of `value` (no framing) to `buf`.
pub fn encode_avro_datum<T: AvroRecord + Serialize>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    avro_ser::to_vec(&T::schema_entry().compiled, value, buf).map_err(|e| {
        buf.truncate(start);
        EncodeError::Avro {
            record: T::SCHEMA_NAME,
            detail: e.to_string(),
        }
    })
}

/// Decodes a bare Avro binary datum (no framing) written with `T`'s current schema.
pub fn decode_avro_datum<T: AvroRecord + DeserializeOwned>(datum: &[u8]) -> Result<T, DecodeError> {
    Ok(avro_de::from_slice(&T::schema_entry().compiled, datum)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_copies_of_the_current_schemas_take_the_fast_path() {
        for entry in schema_set().entries() {
            let w = WriterSchema::new("test".into(), Arc::new(entry.schema().clone())).unwrap();
            assert!(
                matches!(w.plan, Plan::Current(c) if std::ptr::eq(c, entry)),
                "{}",
                entry.name()
            );
            assert_eq!(w.full_name, entry.full_name());
        }
    }

    #[test]
    fn registry_copies_of_earlier_versions_resolve() {
        for old in schema_set().history() {
            let w = WriterSchema::new("test".into(), old.schema().clone()).unwrap();
            assert!(matches!(w.plan, Plan::Resolve(_)), "{}", old.name());
            assert_eq!(w.full_name, old.current().full_name());
        }
    }
}
