//! Dotted paths in YAML trees (`metric.lambda`, `metric.samplers.0.k`) and the messages that
//! point into a YAML file: where a duplicate key is, what an unknown key should have been.

use serde_norway::{Mapping, Value};

use crate::error::did_you_mean;
use crate::params::describe;

/// A YAML value on one line, for labels and messages.
pub fn inline_yaml(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // flow style, one line: `[largest-component, fill-holes]`, `{name: x, k: 2}`
        Value::Sequence(items) => format!(
            "[{}]",
            items.iter().map(inline_yaml).collect::<Vec<_>>().join(", ")
        ),
        Value::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", inline_yaml(k), inline_yaml(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => serde_norway::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// Set a dotted path (`metric.lambda`, `metric.samplers.0.k`) in a YAML tree, creating
/// missing mappings on the way.
pub fn set_path(root: &mut Value, path: &str, value: Value) -> std::result::Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!(
            "`{path}` is not a dotted path such as metric.lambda"
        ));
    }
    let segs: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let here = segs[..i].join(".");
        if cur.is_null() {
            *cur = Value::Mapping(Mapping::new());
        }
        // A plugin given by its bare name takes parameters once it is a mapping.
        if let Value::String(name) = cur {
            let mut m = Mapping::new();
            m.insert(Value::from("name"), Value::from(name.clone()));
            *cur = Value::Mapping(m);
        }
        cur = match cur {
            Value::Mapping(m) => {
                if last {
                    m.insert(Value::from(*seg), value);
                    return Ok(());
                }
                m.entry(Value::from(*seg)).or_insert(Value::Null)
            }
            Value::Sequence(s) => {
                let idx: usize = seg
                    .parse()
                    .map_err(|_| format!("`{here}` is a list: `{seg}` must be an index"))?;
                let len = s.len();
                let slot = s
                    .get_mut(idx)
                    .ok_or_else(|| format!("`{here}` has {len} entries, index {idx} is outside"))?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            other => return Err(format!("`{here}` is {}, not a mapping", describe(other))),
        };
    }
    Ok(())
}

/// Read a dotted path from a YAML tree.
pub fn get_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |cur, seg| match cur {
        Value::Mapping(m) => m.get(seg),
        Value::Sequence(s) => seg.parse::<usize>().ok().and_then(|i| s.get(i)),
        _ => None,
    })
}

/// Turn a deserialisation error into one line: path, message (with the nearest valid key
/// for unknown fields) and, where the parser knows it, line and column.
/// The parser reports a duplicate key at the start of the document; find the second
/// occurrence of the key (the same indentation, in the same block) and say where it is.
pub(crate) fn locate_duplicate_key(text: &str, message: &str) -> Option<String> {
    let key = ["duplicate field `", "duplicate entry with key \""]
        .iter()
        .find_map(|p| {
            let rest = &message[message.find(p)? + p.len()..];
            rest.split(['`', '"']).next()
        })?
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_of = |l: &str| -> Option<String> {
        let t = l.trim_start().trim_start_matches("- ");
        let (k, _) = t.split_once(':')?;
        Some(k.trim().trim_matches(['"', '\'']).to_string())
    };
    for (i, first) in lines.iter().enumerate() {
        if key_of(first).as_deref() != Some(key.as_str()) {
            continue;
        }
        let depth = indent(first);
        for (j, later) in lines.iter().enumerate().skip(i + 1) {
            let t = later.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            // a shallower line ends the block; a new list item starts another mapping
            if indent(later) < depth || (indent(later) == depth && t.starts_with("- ")) {
                break;
            }
            if indent(later) == depth && key_of(later).as_deref() == Some(key.as_str()) {
                let path = message.split(':').next().unwrap_or_default();
                return Some(format!(
                    "{path}: the key `{key}` appears twice, at line {} and line {} (a YAML mapping holds each key once)",
                    i + 1,
                    j + 1
                ));
            }
        }
    }
    None
}

pub(crate) fn describe_de_error(e: &serde_path_to_error::Error<serde_norway::Error>) -> String {
    let inner = e.inner();
    let path = e.path().to_string();
    let mut msg = inner.to_string();
    // serde_norway appends " at line L column C" itself; keep one copy at the end.
    let location = inner
        .location()
        .map(|l| format!(" at line {} column {}", l.line(), l.column()));
    if let Some(loc) = &location {
        if let Some(stripped) = msg.strip_suffix(loc.as_str()) {
            msg = stripped.to_string();
        }
    }
    // serde_norway prefixes nested errors with the path it knows ("metric: msg"); ours
    // is the complete one.
    if let Some((prefix, rest)) = msg.split_once(": ") {
        if !prefix.contains(' ') && path.starts_with(prefix) {
            msg = rest.to_string();
        }
    }
    let (shown_path, extra) = unknown_field_hint(&msg, &path);
    format!("{shown_path}: {msg}{extra}{}", location.unwrap_or_default())
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the full path of the unknown
/// key and a nearest-key hint.
fn unknown_field_hint(msg: &str, path: &str) -> (String, String) {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return (
            if path == "." {
                "(top level)".into()
            } else {
                path.to_string()
            },
            String::new(),
        );
    };
    let Some((field, tail)) = rest.split_once('`') else {
        return (path.to_string(), String::new());
    };
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    // serde_path_to_error already appended the unknown key to the path.
    let full = if path == "." {
        field.to_string()
    } else {
        path.to_string()
    };
    (full, did_you_mean(field, expected.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_get_dotted_paths() {
        let mut v: Value =
            serde_norway::from_str("metric: {samplers: [{name: random}]}").expect("yaml");
        set_path(&mut v, "metric.lambda", Value::from(0.1)).expect("set");
        set_path(&mut v, "metric.samplers.0.k", Value::from(5)).expect("set");
        set_path(&mut v, "training.batch_size", Value::from(8)).expect("set creates mappings");
        assert_eq!(get_path(&v, "metric.lambda"), Some(&Value::from(0.1)));
        assert_eq!(get_path(&v, "metric.samplers.0.k"), Some(&Value::from(5)));
        assert_eq!(get_path(&v, "training.batch_size"), Some(&Value::from(8)));
        assert!(set_path(&mut v, "metric.samplers.3.k", Value::from(1))
            .unwrap_err()
            .contains("index 3"));
        assert!(set_path(&mut v, "metric.lambda.x", Value::from(1))
            .unwrap_err()
            .contains("not a mapping"));
        assert!(set_path(&mut v, "metric..x", Value::from(1)).is_err());
    }

    #[test]
    fn set_path_turns_bare_plugin_names_into_mappings() {
        let mut v: Value = serde_norway::from_str("metric: {loss: triplet-pair}").expect("yaml");
        set_path(&mut v, "metric.loss.sigma", Value::from(1.0)).expect("set");
        let want: Value =
            serde_norway::from_str("metric: {loss: {name: triplet-pair, sigma: 1.0}}")
                .expect("yaml");
        assert_eq!(v, want);
    }
}
