//! The schema set: every record of `schemas/*.avsc`, embedded at build time and parsed once,
//! with its CRC-64-AVRO fingerprint and its Confluent schema id from `schemas/ids.toml`; and the
//! earlier versions of records whose schema changed (`schemas/history/<version>/<Name>.avsc`,
//! with their ids in the `[history."<version>"]` tables of `ids.toml`), which keep decoding by
//! schema resolution into the current record.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use apache_avro::{rabin::Rabin, Schema};

use super::canonical::{canonical_form_of_str, crc64_avro};
use super::compiled::Compiled;
use super::resolve::resolve;
use crate::model;

/// Avro namespace of every record of the contract.
pub const NAMESPACE: &str = "io.mtdgate.v1";

/// `schemas/ids.toml`, as embedded.
pub const IDS_TOML: &str = include_str!("../../schemas/ids.toml");

macro_rules! records {
    ($($idx:literal => $ty:ident),+ $(,)?) => {
        /// (record name, `.avsc` text) of every schema, in [`SchemaSet`] order.
        pub const SOURCES: &[(&str, &str)] = &[
            $((stringify!($ty), include_str!(concat!("../../schemas/", stringify!($ty), ".avsc")))),+
        ];
        $(
            impl AvroRecord for model::$ty {
                const SCHEMA_NAME: &'static str = stringify!($ty);
                const SCHEMA_INDEX: usize = $idx;
            }
        )+
    };
}

records! {
    0 => DeviceThreatReport,
    1 => ConnectorHeartbeat,
    2 => ConnectorConfig,
    3 => ThreatPolicy,
    4 => DeviceEnrollment,
    5 => AppInventory,
    6 => ComplianceChange,
    7 => AppProtectionAction,
    8 => ConnectorStatusChange,
    9 => PartnerAppInventory,
    10 => RejectedEvent,
    11 => DeviceStateRecord,
    12 => GroupMembership,
    13 => TenantSettings,
}

macro_rules! history {
    ($($version:literal => [$($ty:ident),+ $(,)?]),* $(,)?) => {
        /// (version, record name, `.avsc` text) of every earlier version of a record, from
        /// `schemas/history/<version>/<Name>.avsc`. Each needs its id in `ids.toml`'s
        /// `[history."<version>"]` table (and each id there a file here): the set checks both.
        pub const HISTORY_SOURCES: &[(&str, &str, &str)] = &[
            $($((
                $version,
                stringify!($ty),
                include_str!(concat!(
                    "../../schemas/history/", $version, "/", stringify!($ty), ".avsc"
                )),
            ),)+)*
        ];
    };
}

history! {
    "1.0" => [
        ThreatPolicy,
        ComplianceChange,
        AppProtectionAction,
        RejectedEvent,
        DeviceStateRecord,
    ],
    "1.1" => [DeviceStateRecord],
}

/// A model type that is a top-level record of the schema set.
pub trait AvroRecord {
    /// Record name, e.g. `"DeviceThreatReport"` (the full name adds [`NAMESPACE`]).
    const SCHEMA_NAME: &'static str;
    /// Position in [`SchemaSet::entries`].
    #[doc(hidden)]
    const SCHEMA_INDEX: usize;

    /// The record's schema entry.
    fn schema_entry() -> &'static SchemaEntry {
        &schema_set().entries[Self::SCHEMA_INDEX]
    }
}

/// One record of the schema set.
#[derive(Debug)]
pub struct SchemaEntry {
    name: &'static str,
    full_name: String,
    source: &'static str,
    schema: Schema,
    canonical_form: String,
    fingerprint: u64,
    /// The fingerprint apache-avro (Rust) computes, when it differs (see [`Self::fingerprint`]).
    alt_fingerprint: Option<u64>,
    confluent_id: u32,
    pub(crate) compiled: Compiled,
}

impl SchemaEntry {
    /// Record name, e.g. `DeviceThreatReport`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Full name, e.g. `io.mtdgate.v1.DeviceThreatReport`.
    pub fn full_name(&self) -> &str {
        &self.full_name
    }

    /// The `.avsc` text (e.g. to register it with a schema registry).
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Avro Parsing Canonical Form.
    pub fn canonical_form(&self) -> &str {
        &self.canonical_form
    }

    /// CRC-64-AVRO fingerprint of the canonical form, as the Avro specification and its Java
    /// implementation compute it. Single-object outputs carry this one.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The fingerprint the apache-avro Rust crate computes for this schema when it differs
    /// from [`Self::fingerprint`]: it keeps `{"type":"long"}` for a `timestamp-millis` field
    /// in the canonical form where the specification reduces it to `"long"`. Accepted on input
    /// so that producers built on that crate are understood too.
    pub fn alt_fingerprint(&self) -> Option<u64> {
        self.alt_fingerprint
    }

    /// The fingerprint as written in single-object encoding (8 bytes, little-endian).
    pub fn fingerprint_bytes(&self) -> [u8; 8] {
        self.fingerprint.to_le_bytes()
    }

    /// Confluent schema id from `schemas/ids.toml`.
    pub fn confluent_id(&self) -> u32 {
        self.confluent_id
    }
}

/// An earlier version of a record (`schemas/history/<version>/<Name>.avsc`): values written
/// with it, under its Confluent id or its fingerprint, are decoded by Avro schema resolution
/// into the current record, the fields added since taking their defaults.
#[derive(Debug)]
pub struct HistoricSchema {
    version: &'static str,
    name: &'static str,
    source: &'static str,
    schema: Arc<Schema>,
    canonical_form: String,
    fingerprint: u64,
    alt_fingerprint: Option<u64>,
    confluent_id: u32,
    /// Index of the current record in [`SchemaSet::entries`].
    current: usize,
    /// The writer schema, its enums resolved against the current record's (`resolve`).
    pub(crate) compiled: Compiled,
}

impl HistoricSchema {
    /// The contract version it belongs to, e.g. `1.0`.
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// Record name, e.g. `ThreatPolicy`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The `.avsc` text.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Avro Parsing Canonical Form.
    pub fn canonical_form(&self) -> &str {
        &self.canonical_form
    }

    /// CRC-64-AVRO fingerprint of the canonical form (see [`SchemaEntry::fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The fingerprint apache-avro (Rust) computes, when it differs (see
    /// [`SchemaEntry::alt_fingerprint`]).
    pub fn alt_fingerprint(&self) -> Option<u64> {
        self.alt_fingerprint
    }

    /// The Confluent schema id it was written under, from `ids.toml`.
    pub fn confluent_id(&self) -> u32 {
        self.confluent_id
    }

    /// The current version of the record, which values of this one are read as.
    pub fn current(&self) -> &'static SchemaEntry {
        &schema_set().entries[self.current]
    }

    pub(crate) fn current_index(&self) -> usize {
        self.current
    }
}

/// Hasher for keys that are already well mixed (fingerprints) or small (schema ids).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Every record schema, with O(1) look-ups by fingerprint, Confluent id and full name, and the
/// earlier versions of records (looked up apart, so that the current schemas' look-ups stay
/// what they are).
#[derive(Debug)]
pub struct SchemaSet {
    entries: Vec<SchemaEntry>,
    by_fingerprint: IdMap<u64, usize>,
    by_id: IdMap<u32, usize>,
    by_full_name: HashMap<String, usize>,
    history: Vec<HistoricSchema>,
    history_by_fingerprint: IdMap<u64, usize>,
    history_by_id: IdMap<u32, usize>,
}

/// The schema set, parsed on first use.
///
/// # Panics
/// When an embedded schema or `ids.toml` is invalid: they are part of the build, and the codec
/// tests check them.
pub fn schema_set() -> &'static SchemaSet {
    static SET: OnceLock<SchemaSet> = OnceLock::new();
    SET.get_or_init(|| SchemaSet::load().unwrap_or_else(|e| panic!("embedded schemas: {e}")))
}

impl SchemaSet {
    fn load() -> Result<SchemaSet, String> {
        let (ids, history_ids) = parse_ids(IDS_TOML)?;
        let mut entries = Vec::with_capacity(SOURCES.len());
        for &(name, source) in SOURCES {
            let schema = Schema::parse_str(source).map_err(|e| format!("{name}.avsc: {e}"))?;
            let canonical_form =
                canonical_form_of_str(source).map_err(|e| format!("{name}.avsc: {e}"))?;
            let fingerprint = crc64_avro(canonical_form.as_bytes());
            let full_name = match &schema {
                Schema::Record(r) => r.name.fullname(None),
                _ => return Err(format!("{name}.avsc is not a record")),
            };
            if full_name != format!("{NAMESPACE}.{name}") {
                return Err(format!("{name}.avsc defines {full_name}"));
            }
            let confluent_id = *ids
                .get(name)
                .ok_or_else(|| format!("ids.toml has no id for {name}"))?;
            let compiled = Compiled::new(&schema).map_err(|e| format!("{name}.avsc: {e}"))?;
            let alt = schema.fingerprint::<Rabin>().bytes;
            let alt_fingerprint = <[u8; 8]>::try_from(alt.as_slice())
                .ok()
                .map(u64::from_le_bytes)
                .filter(|&alt| alt != fingerprint);
            entries.push(SchemaEntry {
                name,
                full_name,
                source,
                schema,
                canonical_form,
                fingerprint,
                alt_fingerprint,
                confluent_id,
                compiled,
            });
        }
        if let Some(extra) = ids.keys().find(|k| !SOURCES.iter().any(|(n, _)| n == *k)) {
            return Err(format!("ids.toml names {extra}, which has no schema"));
        }
        let mut set = SchemaSet {
            by_fingerprint: IdMap::default(),
            by_id: IdMap::default(),
            by_full_name: HashMap::new(),
            entries,
            history: Vec::new(),
            history_by_fingerprint: IdMap::default(),
            history_by_id: IdMap::default(),
        };
        for (i, e) in set.entries.iter().enumerate() {
            for fp in std::iter::once(e.fingerprint).chain(e.alt_fingerprint) {
                if set.by_fingerprint.insert(fp, i).is_some() {
                    return Err(format!("{}: duplicate fingerprint", e.name));
                }
            }
            if set.by_id.insert(e.confluent_id, i).is_some() {
                return Err(format!(
                    "{}: duplicate schema id {}",
                    e.name, e.confluent_id
                ));
            }
            set.by_full_name.insert(e.full_name.clone(), i);
        }
        set.load_history(history_ids)?;
        Ok(set)
    }

    /// Parses and checks the earlier versions, given their ids from `ids.toml`.
    fn load_history(&mut self, mut ids: HistoryIds) -> Result<(), String> {
        for &(version, name, source) in HISTORY_SOURCES {
            let file = format!("history/{version}/{name}.avsc");
            let schema = Schema::parse_str(source).map_err(|e| format!("{file}: {e}"))?;
            let canonical_form =
                canonical_form_of_str(source).map_err(|e| format!("{file}: {e}"))?;
            let fingerprint = crc64_avro(canonical_form.as_bytes());
            let current = *self
                .by_full_name
                .get(&format!("{NAMESPACE}.{name}"))
                .ok_or_else(|| format!("{file}: no current record {name}"))?;
            let entry = &self.entries[current];
            match &schema {
                Schema::Record(r) if r.name.fullname(None) == entry.full_name => {}
                _ => return Err(format!("{file} does not define {}", entry.full_name)),
            }
            if canonical_form == entry.canonical_form {
                return Err(format!(
                    "{file} is the current {name}.avsc: an unchanged record keeps its id"
                ));
            }
            let confluent_id = ids
                .remove(&(version.to_owned(), name.to_owned()))
                .ok_or_else(|| format!("ids.toml has no [history.\"{version}\"] id for {name}"))?;
            let mut compiled = Compiled::new(&schema).map_err(|e| format!("{file}: {e}"))?;
            resolve(&mut compiled, &entry.compiled)
                .map_err(|e| format!("{file} cannot be read as the current {name}: {e}"))?;
            let alt = schema.fingerprint::<Rabin>().bytes;
            let alt_fingerprint = <[u8; 8]>::try_from(alt.as_slice())
                .ok()
                .map(u64::from_le_bytes)
                .filter(|&alt| alt != fingerprint);
            let i = self.history.len();
            for fp in std::iter::once(fingerprint).chain(alt_fingerprint) {
                if self.by_fingerprint.contains_key(&fp)
                    || self.history_by_fingerprint.insert(fp, i).is_some()
                {
                    return Err(format!("{file}: duplicate fingerprint"));
                }
            }
            if self.by_id.contains_key(&confluent_id)
                || self.history_by_id.insert(confluent_id, i).is_some()
            {
                return Err(format!("{file}: duplicate schema id {confluent_id}"));
            }
            self.history.push(HistoricSchema {
                version,
                name,
                source,
                schema: Arc::new(schema),
                canonical_form,
                fingerprint,
                alt_fingerprint,
                confluent_id,
                current,
                compiled,
            });
        }
        if let Some((version, name)) = ids.keys().next() {
            return Err(format!(
                "ids.toml names {name} in [history.\"{version}\"], which has no \
                 schemas/history/{version}/{name}.avsc"
            ));
        }
        Ok(())
    }

    /// Every record, in a fixed order.
    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }

    /// The record with this CRC-64-AVRO fingerprint (or its [`SchemaEntry::alt_fingerprint`]).
    #[inline]
    pub fn by_fingerprint(&self, fingerprint: u64) -> Option<&SchemaEntry> {
        self.by_fingerprint
            .get(&fingerprint)
            .map(|&i| &self.entries[i])
    }

    /// The record with this Confluent schema id (from `ids.toml`).
    #[inline]
    pub fn by_id(&self, id: u32) -> Option<&SchemaEntry> {
        self.by_id.get(&id).map(|&i| &self.entries[i])
    }

    /// Every earlier version of a record, in `HISTORY_SOURCES` order.
    pub fn history(&self) -> &[HistoricSchema] {
        &self.history
    }

    /// The earlier version with this fingerprint (or its apache-avro fingerprint).
    pub fn historic_by_fingerprint(&self, fingerprint: u64) -> Option<&HistoricSchema> {
        self.history_by_fingerprint
            .get(&fingerprint)
            .map(|&i| &self.history[i])
    }

    /// The earlier version written under this Confluent schema id.
    pub fn historic_by_id(&self, id: u32) -> Option<&HistoricSchema> {
        self.history_by_id.get(&id).map(|&i| &self.history[i])
    }

    /// The record with this name (`DeviceThreatReport`) or full name.
    pub fn by_name(&self, name: &str) -> Option<&SchemaEntry> {
        self.by_full_name
            .get(name)
            .or_else(|| self.by_full_name.get(&format!("{NAMESPACE}.{name}")))
            .map(|&i| &self.entries[i])
    }
}

/// Ids of earlier versions: (version, record name) -> Confluent schema id.
type HistoryIds = HashMap<(String, String), u32>;

/// Parses `ids.toml`: a table `[ids]` of record name = Confluent schema id, and tables
/// `[history."<version>"]` of the same for earlier versions.
fn parse_ids(text: &str) -> Result<(HashMap<String, u32>, HistoryIds), String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("ids.toml: {e}"))?;
    let id_table = |table: &toml::Table, what: &str| -> Result<HashMap<String, u32>, String> {
        table
            .iter()
            .map(|(name, id)| {
                let id = id
                    .as_integer()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        format!("ids.toml: id of {name} in {what} is not a schema id")
                    })?;
                Ok((name.clone(), id))
            })
            .collect()
    };
    let table = doc
        .get("ids")
        .and_then(toml::Value::as_table)
        .ok_or("ids.toml has no [ids] table")?;
    let ids = id_table(table, "[ids]")?;
    let mut history = HashMap::new();
    if let Some(versions) = doc.get("history") {
        let versions = versions
            .as_table()
            .ok_or("ids.toml: history is not a table of versions")?;
        for (version, table) in versions {
            let what = format!("[history.\"{version}\"]");
            let table = table
                .as_table()
                .ok_or_else(|| format!("ids.toml: {what} is not a table"))?;
            for (name, id) in id_table(table, &what)? {
                history.insert((version.clone(), name), id);
            }
        }
    }
    if let Some(other) = doc.keys().find(|k| *k != "ids" && *k != "history") {
        return Err(format!("ids.toml: unknown table [{other}]"));
    }
    Ok((ids, history))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_toml_has_current_and_history_tables() {
        let (ids, history) =
            parse_ids("[ids]\nA = 1\nB = 3\n[history.\"1.0\"]\nA = 2\n[history.\"1.1\"]\nA = 4\n")
                .unwrap();
        assert_eq!((ids["A"], ids["B"]), (1, 3));
        assert_eq!(history[&("1.0".to_owned(), "A".to_owned())], 2);
        assert_eq!(history[&("1.1".to_owned(), "A".to_owned())], 4);
        assert_eq!(history.len(), 2);
        for (text, needle) in [
            ("[ids]\nA = 1\n[other]\nB = 2\n", "unknown table [other]"),
            ("[ids]\nA = -1\n", "id of A in [ids] is not a schema id"),
            (
                "[ids]\n[history]\nA = 3\n",
                "[history.\"A\"] is not a table",
            ),
            (
                "[ids]\n[history.\"1.0\"]\nA = \"x\"\n",
                "in [history.\"1.0\"]",
            ),
            ("[history.\"1.0\"]\nA = 1\n", "no [ids] table"),
        ] {
            let e = parse_ids(text).unwrap_err();
            assert!(e.contains(needle), "`{needle}` not in `{e}`");
        }
    }

    #[test]
    fn the_embedded_history_loads() {
        let set = schema_set();
        assert_eq!(set.history().len(), HISTORY_SOURCES.len());
        for h in set.history() {
            assert!(std::ptr::eq(
                set.historic_by_id(h.confluent_id()).unwrap(),
                h
            ));
            assert_eq!(h.current().name(), h.name());
            assert!(set.by_id(h.confluent_id()).is_none());
        }
    }
}
