//! Avro Parsing Canonical Form and the CRC-64-AVRO ("Rabin") fingerprint, as the Avro
//! specification defines them ("Parsing Canonical Form for Schemas" and "Schema Fingerprints").
//!
//! The canonical form is computed from the schema's JSON, the way the Java reference
//! implementation does it: in particular a primitive type carrying a `logicalType` (our
//! `timestamp-millis` fields) reduces to the bare primitive name (`"long"`), so the fingerprints
//! written into single-object encoded values match those of other Avro implementations.

use serde_json::Value;

/// The CRC-64-AVRO of the empty input (the spec's `EMPTY`).
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const fn table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
            j += 1;
        }
        t[i] = fp;
        i += 1;
    }
    t
}

static TABLE: [u64; 256] = table();

/// CRC-64-AVRO fingerprint of `data` (the spec's 64-bit Rabin fingerprint).
///
/// In single-object encoding it is written as its 8 little-endian bytes.
pub fn crc64_avro(data: &[u8]) -> u64 {
    let mut fp = EMPTY;
    for &b in data {
        fp = (fp >> 8) ^ TABLE[((fp ^ b as u64) & 0xff) as usize];
    }
    fp
}

/// Errors of [`canonical_form`]: the JSON is not an Avro schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Avro schema: {0}")]
pub struct CanonicalError(String);

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Parsing Canonical Form of a schema given as JSON text.
pub fn canonical_form_of_str(schema: &str) -> Result<String, CanonicalError> {
    let json: Value =
        serde_json::from_str(schema).map_err(|e| CanonicalError(format!("invalid JSON: {e}")))?;
    canonical_form(&json)
}

/// Parsing Canonical Form of a schema given as parsed JSON.
pub fn canonical_form(schema: &Value) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    let mut defined = Vec::new();
    write_schema(schema, "", &mut defined, &mut out)?;
    Ok(out)
}

fn fullname(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn namespace_of(fullname: &str) -> &str {
    match fullname.rfind('.') {
        Some(i) => &fullname[..i],
        None => "",
    }
}

fn push_quoted(out: &mut String, s: &str) {
    // [STRINGS]: literals are written in UTF-8 form; escapes only where JSON demands them.
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_schema(
    schema: &Value,
    namespace: &str,
    defined: &mut Vec<String>,
    out: &mut String,
) -> Result<(), CanonicalError> {
    match schema {
        Value::String(name) => {
            if PRIMITIVES.contains(&name.as_str()) {
                push_quoted(out, name);
            } else {
                // [FULLNAMES]: a reference to a named type.
                push_quoted(out, &fullname(name, namespace));
            }
            Ok(())
        }
        Value::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_schema(b, namespace, defined, out)?;
            }
            out.push(']');
            Ok(())
        }
        Value::Object(map) => {
            let ty = map
                .get("type")
                .ok_or_else(|| CanonicalError("object without \"type\"".into()))?;
            let ty = match ty {
                Value::String(s) => s.as_str(),
                // A nested type object (`{"type": {...}}`) stands for that type.
                other => return write_schema(other, namespace, defined, out),
            };
            match ty {
                // [PRIMITIVES]: primitive (also with a logicalType) -> simple form.
                t if PRIMITIVES.contains(&t) => {
                    push_quoted(out, t);
                    Ok(())
                }
                "record" | "error" | "enum" | "fixed" => {
                    let raw = map
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| CanonicalError(format!("{ty} without a name")))?;
                    let ns = match map.get("namespace") {
                        Some(Value::String(ns)) => ns.as_str(),
                        Some(Value::Null) | None => namespace,
                        Some(_) => return Err(CanonicalError("namespace is not a string".into())),
                    };
                    let full = fullname(raw, ns);
                    if defined.contains(&full) {
                        push_quoted(out, &full);
                        return Ok(());
                    }
                    defined.push(full.clone());
                    out.push_str("{\"name\":");
                    push_quoted(out, &full);
                    out.push_str(",\"type\":");
                    push_quoted(out, ty);
                    let inner_ns = namespace_of(&full).to_owned();
                    match ty {
                        "enum" => {
                            let symbols =
                                map.get("symbols")
                                    .and_then(Value::as_array)
                                    .ok_or_else(|| {
                                        CanonicalError(format!("enum {full} without symbols"))
                                    })?;
                            out.push_str(",\"symbols\":[");
                            for (i, s) in symbols.iter().enumerate() {
                                let s = s.as_str().ok_or_else(|| {
                                    CanonicalError(format!("enum {full}: symbol is not a string"))
                                })?;
                                if i > 0 {
                                    out.push(',');
                                }
                                push_quoted(out, s);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            let size = match map.get("size") {
                                Some(Value::Number(n)) => n.as_u64(),
                                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                                _ => None,
                            }
                            .ok_or_else(|| {
                                CanonicalError(format!("fixed {full} without a size"))
                            })?;
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            let fields =
                                map.get("fields").and_then(Value::as_array).ok_or_else(|| {
                                    CanonicalError(format!("record {full} without fields"))
                                })?;
                            out.push_str(",\"fields\":[");
                            for (i, f) in fields.iter().enumerate() {
                                let fname =
                                    f.get("name").and_then(Value::as_str).ok_or_else(|| {
                                        CanonicalError(format!(
                                            "record {full}: field without a name"
                                        ))
                                    })?;
                                let fty = f.get("type").ok_or_else(|| {
                                    CanonicalError(format!(
                                        "record {full}: field {fname} without a type"
                                    ))
                                })?;
                                if i > 0 {
                                    out.push(',');
                                }
                                out.push_str("{\"name\":");
                                push_quoted(out, fname);
                                out.push_str(",\"type\":");
                                write_schema(fty, &inner_ns, defined, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                    Ok(())
                }
                "array" | "map" => {
                    let key = if ty == "array" { "items" } else { "values" };
                    let inner = map
                        .get(key)
                        .ok_or_else(|| CanonicalError(format!("{ty} without {key}")))?;
                    out.push_str("{\"type\":");
                    push_quoted(out, ty);
                    out.push(',');
                    push_quoted(out, key);
                    out.push(':');
                    write_schema(inner, namespace, defined, out)?;
                    out.push('}');
                    Ok(())
                }
                // A named type referenced in the object form (`{"type": "io.x.Name"}`).
                name => {
                    push_quoted(out, &fullname(name, namespace));
                    Ok(())
                }
            }
        }
        other => Err(CanonicalError(format!("unexpected JSON {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors of the Avro project's `share/test/data/schema-tests.txt`.
    #[test]
    fn spec_vectors() {
        let cases: &[(&str, &str, i64)] = &[
            (r#""null""#, r#""null""#, 7195948357588979594),
            (r#"{"type":"null"}"#, r#""null""#, 7195948357588979594),
            (r#""boolean""#, r#""boolean""#, -6970731678124411036),
            (r#""int""#, r#""int""#, 8247732601305521295),
            (r#""long""#, r#""long""#, -3434872931120570953),
            (r#""double""#, r#""double""#, -8181574048448539266),
            (
                r#"{"type":"fixed","name":"foo","size":15}"#,
                r#"{"name":"foo","type":"fixed","size":15}"#,
                1756455273707447556,
            ),
            (
                r#"{"type":"record","name":"foo","fields":[{"name":"f1","type":"boolean"}]}"#,
                r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}"#,
                7843277075252814651,
            ),
            (
                r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
                r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
                -1759257747318642341,
            ),
        ];
        for (input, canonical, fp) in cases {
            let c = canonical_form_of_str(input).unwrap();
            assert_eq!(&c, canonical, "{input}");
            assert_eq!(crc64_avro(c.as_bytes()) as i64, *fp, "{input}");
        }
        assert_eq!(crc64_avro(b"hello world") as i64, 2906301498937520992);
    }

    #[test]
    fn namespaces_and_logical_types() {
        let s = r#"{"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"],"doc":"d"}},
            {"name":"e2","type":"E","default":"X"},
            {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"o","type":["null",{"type":"map","values":{"type":"array","items":"string"}}]},
            {"name":"q","type":{"type":"fixed","name":"c.Q","size":"4"}}]}"#;
        assert_eq!(
            canonical_form_of_str(s).unwrap(),
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["X","Y"]}},{"name":"e2","type":"a.b.E"},{"name":"t","type":"long"},{"name":"o","type":["null",{"type":"map","values":{"type":"array","items":"string"}}]},{"name":"q","type":{"name":"c.Q","type":"fixed","size":4}}]}"#
        );
    }

    #[test]
    fn defaults_do_not_change_the_form() {
        // An enum's own `default` symbol and field defaults (arrays, null, booleans) are not part
        // of the canonical form: adding them to a schema keeps its fingerprint.
        let with = r#"{"type":"record","name":"R","namespace":"a","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"],"default":"Y"},"default":"X"},
            {"name":"l","type":{"type":"array","items":"string"},"default":[]},
            {"name":"o","type":["null",{"type":"array","items":"E"}],"default":null},
            {"name":"b","type":"boolean","default":false}]}"#;
        let without = r#"{"type":"record","name":"R","namespace":"a","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"l","type":{"type":"array","items":"string"}},
            {"name":"o","type":["null",{"type":"array","items":"E"}]},
            {"name":"b","type":"boolean"}]}"#;
        let c = canonical_form_of_str(with).unwrap();
        assert_eq!(c, canonical_form_of_str(without).unwrap());
        assert_eq!(
            c,
            r#"{"name":"a.R","type":"record","fields":[{"name":"e","type":{"name":"a.E","type":"enum","symbols":["X","Y"]}},{"name":"l","type":{"type":"array","items":"string"}},{"name":"o","type":["null",{"type":"array","items":"a.E"}]},{"name":"b","type":"boolean"}]}"#
        );
        // apache-avro agrees.
        let parsed = apache_avro::Schema::parse_str(with).unwrap();
        assert_eq!(parsed.canonical_form(), c);
    }
}
