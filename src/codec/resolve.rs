//! Avro schema resolution ("Schema Resolution" in the Avro specification) of a writer schema
//! into a reader schema, both compiled.
//!
//! A datum of another version of a record is decoded with its own (writer) schema, straight
//! into the model type, by field name: fields the writer lacks take the model's serde defaults
//! (which are the reader schema's defaults: `tests/codec_evolution.rs` checks every record),
//! fields the reader lacks are skipped, `int` and `long` values widen where the reader wants a
//! wider number, and a value that is not a union reads as the `["null", T]` union of its type.
//! What is left for this module is to check, once per writer schema, that every datum of it can
//! be read that way, and to prepare the writer's enums: each writer index is given the symbol
//! the reader reads it as, which is the same symbol when the reader has it and the reader enum's
//! `default` otherwise. A writer symbol the reader has neither as a symbol nor through a default
//! is kept: a datum that uses it is then rejected (`INVALID_FIELD`, naming the field), as the
//! specification asks, and the datums that do not use it still decode.
//!
//! Not supported (no record of the contract would use them): field aliases, the `string` /
//! `bytes` promotions, and a writer union whose branches the reader cannot all read.

use super::compiled::{Compiled, Name, Node, NodeId};

/// Checks that datums of `writer` can be read as `reader`, and rewrites the writer's enum
/// symbols to the ones the reader reads (see the module documentation). On error `writer` is
/// unchanged and the message says where the schemas disagree.
pub(crate) fn resolve(writer: &mut Compiled, reader: &Compiled) -> Result<(), String> {
    let mut r = Resolver {
        w: writer,
        r: reader,
        in_progress: Vec::new(),
        symbols: Vec::new(),
    };
    r.check(writer.root, reader.root, &mut String::new())?;
    let Resolver { symbols, .. } = r;
    for (node, new) in symbols {
        writer.set_symbols(node, new);
    }
    Ok(())
}

struct Resolver<'a> {
    w: &'a Compiled,
    r: &'a Compiled,
    /// Record pairs being checked (recursive schemas) or already found to resolve.
    in_progress: Vec<(NodeId, NodeId)>,
    /// New symbols for writer enum nodes.
    symbols: Vec<(NodeId, Box<[Name]>)>,
}

/// The unqualified part of a full name (named types match by it).
fn short(full: &str) -> &str {
    full.rsplit('.').next().unwrap_or(full)
}

fn kind(n: &Node) -> &'static str {
    match n {
        Node::Null => "null",
        Node::Boolean => "boolean",
        Node::Int => "int",
        Node::Long => "long",
        Node::Float => "float",
        Node::Double => "double",
        Node::Bytes => "bytes",
        Node::String => "string",
        Node::Fixed(_) => "fixed",
        Node::Array(_) => "array",
        Node::Map(_) => "map",
        Node::Union(_) => "union",
        Node::Record { .. } => "record",
        Node::Enum { .. } => "enum",
    }
}

impl Resolver<'_> {
    fn check(&mut self, w: NodeId, r: NodeId, path: &mut String) -> Result<(), String> {
        let (wn, rn) = (self.w.node(w), self.r.node(r));
        let at = |path: &str| {
            if path.is_empty() {
                String::new()
            } else {
                format!("{path}: ")
            }
        };
        match (wn, rn) {
            // A writer union: whichever branch a datum takes, the reader must read it.
            (Node::Union(branches), _) => {
                for (i, &b) in branches.iter().enumerate() {
                    self.check(b, r, path).map_err(|e| {
                        format!("{e} (writer union branch {i} of {})", branches.len())
                    })?;
                }
                Ok(())
            }
            // A reader union: the first branch that reads the writer's type.
            (_, Node::Union(branches)) => {
                let (progress, symbols) = (self.in_progress.len(), self.symbols.len());
                for &b in branches.iter() {
                    if self.check(w, b, path).is_ok() {
                        return Ok(());
                    }
                    self.in_progress.truncate(progress);
                    self.symbols.truncate(symbols);
                }
                Err(format!(
                    "{}the reader's union has no branch for the writer's {}",
                    at(path),
                    kind(wn)
                ))
            }
            (Node::Null, Node::Null)
            | (Node::Boolean, Node::Boolean)
            | (Node::Int, Node::Int | Node::Long | Node::Float | Node::Double)
            | (Node::Long, Node::Long | Node::Float | Node::Double)
            | (Node::Float, Node::Float | Node::Double)
            | (Node::Double, Node::Double)
            | (Node::Bytes, Node::Bytes)
            | (Node::String, Node::String) => Ok(()),
            (Node::Fixed(a), Node::Fixed(b)) if a == b => Ok(()),
            (Node::Array(wi), Node::Array(ri)) | (Node::Map(wi), Node::Map(ri)) => {
                self.check(*wi, *ri, path)
            }
            (
                Node::Record {
                    name: wname,
                    fields: wfields,
                    ..
                },
                Node::Record {
                    name: rname,
                    fields: rfields,
                    ..
                },
            ) => {
                if short(wname) != short(rname) {
                    return Err(format!(
                        "{}the writer's record {wname} is not the reader's {rname}",
                        at(path)
                    ));
                }
                if self.in_progress.contains(&(w, r)) {
                    return Ok(());
                }
                self.in_progress.push((w, r));
                for rf in rfields.iter() {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&rf.name);
                    let result = match wfields.iter().find(|wf| *wf.name == *rf.name) {
                        Some(wf) => self.check(wf.node, rf.node, path),
                        None if rf.has_default => Ok(()),
                        None => Err(format!(
                            "{path}: the writer has no such field and the reader gives it no \
                             default"
                        )),
                    };
                    path.truncate(len);
                    result?;
                }
                Ok(())
            }
            (
                Node::Enum {
                    name: wname,
                    symbols: wsyms,
                    ..
                },
                Node::Enum {
                    name: rname,
                    symbols: rsyms,
                    default,
                    ..
                },
            ) => {
                if short(wname) != short(rname) {
                    return Err(format!(
                        "{}the writer's enum {wname} is not the reader's {rname}",
                        at(path)
                    ));
                }
                let default = default.map(|d| &*rsyms[d as usize]);
                let read: Vec<&str> = wsyms
                    .iter()
                    .map(|s| match rsyms.iter().any(|x| **x == **s) {
                        true => &**s,
                        false => default.unwrap_or(s),
                    })
                    .collect();
                if read.iter().zip(wsyms.iter()).all(|(a, b)| *a == &**b) {
                    return Ok(());
                }
                let new: Box<[Name]> = read.iter().map(|s| Name::new(s)).collect();
                match self.symbols.iter().find(|(n, _)| *n == w) {
                    Some((_, earlier)) if earlier.iter().map(|s| &**s).ne(read.iter().copied()) => {
                        Err(format!(
                            "{}the writer's enum {wname} is read as two different enums",
                            at(path)
                        ))
                    }
                    Some(_) => Ok(()),
                    None => {
                        self.symbols.push((w, new));
                        Ok(())
                    }
                }
            }
            (Node::String, Node::Bytes) | (Node::Bytes, Node::String) => Err(format!(
                "{}the writer's {} is the reader's {} (string/bytes promotion is not supported)",
                at(path),
                kind(wn),
                kind(rn)
            )),
            _ => Err(format!(
                "{}the writer's {} cannot be read as the reader's {}",
                at(path),
                kind(wn),
                kind(rn)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;

    fn compiled(s: &str) -> Compiled {
        Compiled::new(&Schema::parse_str(s).unwrap()).unwrap()
    }

    fn symbols(c: &Compiled) -> Vec<Vec<String>> {
        c.nodes
            .iter()
            .filter_map(|n| match n {
                Node::Enum { symbols, .. } => Some(symbols.iter().map(|s| s.to_string()).collect()),
                _ => None,
            })
            .collect()
    }

    const READER: &str = r#"{"type":"record","name":"R","namespace":"a","fields":[
        {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"],"default":"Y"}},
        {"name":"f","type":{"type":"enum","name":"F","symbols":["P","Q"]}},
        {"name":"n","type":"long"},
        {"name":"o","type":["null","string"],"default":null},
        {"name":"a","type":{"type":"array","items":"string"},"default":[]}]}"#;

    #[test]
    fn unknown_writer_symbols_read_as_the_reader_default() {
        let mut w = compiled(
            r#"{"type":"record","name":"R","namespace":"b","fields":[
            {"name":"extra","type":"string"},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["Z","X","Y"]}},
            {"name":"f","type":{"type":"enum","name":"F","symbols":["Q","NEW","P"]}},
            {"name":"n","type":"int"},
            {"name":"o","type":"string"}]}"#,
        );
        resolve(&mut w, &compiled(READER)).unwrap();
        // E: Z is unknown and reads as the default Y; F has no default, NEW is kept (a datum
        // using it is rejected by the model's enum).
        assert_eq!(
            symbols(&w),
            [vec!["Y", "X", "Y"], vec!["Q", "NEW", "P"]],
            "{w:?}"
        );
    }

    #[test]
    fn incompatible_writers_are_refused_with_the_place() {
        let reader = compiled(READER);
        let base = r#"{"name":"e","type":{"type":"enum","name":"E","symbols":["X"]}},
            {"name":"f","type":{"type":"enum","name":"F","symbols":["P"]}}"#;
        for (fields, needle) in [
            (
                base.to_owned(),
                "n: the writer has no such field and the reader gives it no default",
            ),
            (
                format!(r#"{base},{{"name":"n","type":"string"}}"#),
                "n: the writer's string cannot be read as the reader's long",
            ),
            (
                format!(r#"{base},{{"name":"n","type":"double"}}"#),
                "n: the writer's double cannot be read as the reader's long",
            ),
            (
                format!(r#"{base},{{"name":"n","type":"long"}},{{"name":"o","type":"int"}}"#),
                "o: the reader's union has no branch for the writer's int",
            ),
            (
                format!(
                    r#"{base},{{"name":"n","type":["null","long"]}}"#
                ),
                "n: the writer's null cannot be read as the reader's long (writer union branch 0 of 2)",
            ),
            (
                format!(
                    r#"{base},{{"name":"n","type":"long"}},{{"name":"a","type":{{"type":"array","items":"bytes"}}}}"#
                ),
                "a: the writer's bytes is the reader's string",
            ),
        ] {
            let mut w = compiled(&format!(
                r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
            ));
            let e = resolve(&mut w, &reader).unwrap_err();
            assert!(e.contains(needle), "`{needle}` not in `{e}`");
        }
        let mut w = compiled(r#"{"type":"record","name":"S","fields":[]}"#);
        assert!(resolve(&mut w, &reader)
            .unwrap_err()
            .contains("record S is not the reader's a.R"));
    }

    #[test]
    fn recursive_schemas_resolve() {
        let s = r#"{"type":"record","name":"L","fields":[
            {"name":"v","type":"int"},{"name":"next","type":["null","L"]}]}"#;
        let r = r#"{"type":"record","name":"L","fields":[
            {"name":"v","type":"long"},{"name":"next","type":["null","L"]},
            {"name":"w","type":"boolean","default":false}]}"#;
        resolve(&mut compiled(s), &compiled(r)).unwrap();
    }
}
