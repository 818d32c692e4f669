//! Maps dotted YAML key paths (`git.url`, `registries[0].host`) to 1-based source lines.
//!
//! serde errors carry their own location, but problems found after parsing (an unsupported URL
//! scheme, a missing credential source) are about a field, not a parser position. This index lets
//! those problems name the line too, without wrapping every config field in a span type.

use std::collections::BTreeMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// Line numbers of every mapping key and sequence item in one YAML document.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    /// Path -> (line, column), both 1-based.
    lines: BTreeMap<String, (usize, usize)>,
}

enum Frame {
    /// Inside a mapping; `key` is `Some` while the value of that key is pending.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

impl LineIndex {
    /// Builds the index. Invalid YAML yields a partial index: the parse error itself is reported
    /// by the deserializer, with its own location.
    pub fn new(text: &str) -> Self {
        let mut lines = BTreeMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            // The parser counts columns from 0, serde errors (and editors) from 1.
            let line = (span.start.line(), span.start.col() + 1);
            // Where does a node that starts here live?
            let node_path = |stack: &mut Vec<Frame>, lines: &mut BTreeMap<String, (usize, usize)>| -> Option<String> {
                match stack.last_mut() {
                    None => Some(String::new()),
                    Some(Frame::Map { path, key }) => key.take().map(|k| join_key(path, &k)),
                    Some(Frame::Seq { path, next }) => {
                        let p = format!("{path}[{next}]");
                        *next += 1;
                        lines.entry(p.clone()).or_insert(line);
                        Some(p)
                    }
                }
            };
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { path, key: key @ None }) = stack.last_mut() {
                        // A scalar in key position: remember it and the line of the key.
                        lines.entry(join_key(path, &value)).or_insert(line);
                        *key = Some(value.into_owned());
                    } else {
                        node_path(&mut stack, &mut lines);
                    }
                }
                Event::Alias(_) => {
                    node_path(&mut stack, &mut lines);
                }
                Event::MappingStart(..) => {
                    let path = node_path(&mut stack, &mut lines).unwrap_or_default();
                    stack.push(Frame::Map { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = node_path(&mut stack, &mut lines).unwrap_or_default();
                    stack.push(Frame::Seq { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        LineIndex { lines }
    }

    /// The line of `path`, or of its nearest ancestor that appears in the document (a missing
    /// field is reported at the mapping that should hold it).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some((line, _)) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The field written at `line`, nearest before `column` (to name the field a parser error
    /// points at; several fields share a line in flow style such as `{a: 1, b: 2}`).
    pub fn path_at(&self, line: usize, column: usize) -> Option<&str> {
        self.lines
            .iter()
            .filter(|(_, (l, c))| *l == line && *c <= column)
            .max_by_key(|(p, (_, c))| (*c, p.len()))
            .map(|(p, _)| p.as_str())
    }

    /// Whether `path` itself is written in the document.
    pub fn contains(&self, path: &str) -> bool {
        self.lines.contains_key(path)
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
identity:
  nodeName: store-node-1
git:
  url: ftp://example
registries:
  - host: a.example
  - host: b.example
    aliases: [x]
";

    #[test]
    fn nested_keys_and_sequence_items_have_their_own_lines() {
        let idx = LineIndex::new(DOC);
        assert_eq!(idx.line("identity.nodeName"), Some(2));
        assert_eq!(idx.line("git.url"), Some(4));
        assert_eq!(idx.line("registries[0].host"), Some(6));
        assert_eq!(idx.line("registries[1].host"), Some(7));
        assert_eq!(idx.line("registries[1].aliases"), Some(8));
    }

    #[test]
    fn a_missing_field_is_located_at_its_nearest_written_ancestor() {
        let idx = LineIndex::new(DOC);
        assert_eq!(idx.line("git.ref"), Some(3));
        assert_eq!(idx.line("registries[1].auth.passwordFile"), Some(7));
        assert!(!idx.contains("git.ref"));
    }

    #[test]
    fn the_field_at_a_line_and_column_is_found() {
        let idx = LineIndex::new(DOC);
        assert_eq!(idx.path_at(8, 5), Some("registries[1].aliases"));
        assert_eq!(idx.path_at(8, 15), Some("registries[1].aliases[0]"));
        assert_eq!(idx.path_at(99, 1), None);
    }

    #[test]
    fn invalid_yaml_gives_a_partial_index_instead_of_panicking() {
        let idx = LineIndex::new("a: 1\nb: [unclosed\n");
        assert_eq!(idx.line("a"), Some(1));
    }
}
