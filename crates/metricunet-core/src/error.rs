//! Error type of the core crate.

use thiserror::Error;

/// Everything that can go wrong in the core: bad configuration, unknown plugins,
/// bad plugin parameters, shape mismatches and tensor errors.
#[derive(Debug, Error)]
pub enum CoreError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The experiment YAML is not valid (syntax, type or unknown key).
    #[error("{source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    /// A plugin name that no plugin of that kind registered.
    #[error("{path}: unknown {kind} `{name}`{suggestion}; registered: {registered}")]
    UnknownPlugin {
        path: String,
        kind: &'static str,
        name: String,
        suggestion: String,
        registered: String,
    },
    /// A plugin parameter that is unknown, of the wrong type or out of range.
    #[error("{path}: {message}")]
    Param { path: String, message: String },
    /// Inputs whose shapes or lengths do not agree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A numeric error inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the core crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// `" (did you mean `x`?)"` when a candidate is close enough to `name`, else `""`.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(name, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// The candidate with the smallest edit distance to `name`, if that distance is at most
/// a third of the longer string (at least 1 edit, at most 3 edits).
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let d = levenshtein(&name.to_lowercase(), &c.to_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (name.chars().count().max(c.chars().count()) / 3).clamp(1, 3);
    (d <= limit).then_some(c)
}

/// Edit distance (insertions, deletions, substitutions and transpositions of neighbours,
/// the optimal-string-alignment distance) between two strings.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_hand_values() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("lamda", "lambda"), 1);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("tua", "tau"), 1);
    }

    #[test]
    fn nearest_picks_close_names_only() {
        let keys = ["lambda", "samplers", "loss"];
        assert_eq!(nearest("lamda", keys), Some("lambda"));
        assert_eq!(nearest("sampler", keys), Some("samplers"));
        assert_eq!(nearest("optimizer", keys), None);
        assert_eq!(did_you_mean("los", keys), " (did you mean `loss`?)");
    }
}
