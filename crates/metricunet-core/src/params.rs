//! Declared plugin parameters and their validation against a YAML mapping.
//!
//! Every plugin declares its parameters as a static slice of [`ParamSpec`]. The YAML
//! mapping a user writes for a plugin is checked against it by [`Params::from_yaml`]:
//! unknown keys, wrong types and out-of-range values are errors that name the path of the
//! key; missing keys take the declared default.

use std::collections::BTreeMap;
use std::fmt;

use serde_norway::{Mapping, Value};

use crate::error::{did_you_mean, CoreError, Result};

/// The type of a plugin parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamKind {
    /// A real number (YAML integers are accepted too).
    Float,
    /// A non-negative integer.
    Int,
    /// `true` or `false`.
    Bool,
    /// One string out of a fixed list.
    Choice(&'static [&'static str]),
    /// A non-empty list of non-negative integers (layer widths, for example).
    IntList,
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::Float => write!(f, "a number"),
            ParamKind::Int => write!(f, "a non-negative integer"),
            ParamKind::Bool => write!(f, "true or false"),
            ParamKind::Choice(c) => write!(f, "one of {}", c.join(", ")),
            ParamKind::IntList => write!(f, "a non-empty list of non-negative integers"),
        }
    }
}

/// A parameter value, as a default in a [`ParamSpec`] or as given by a user.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Float(f64),
    Int(u64),
    Bool(bool),
    Str(String),
    IntList(Vec<u64>),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Float(v) => write!(f, "{v}"),
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Str(v) => write!(f, "{v}"),
            ParamValue::IntList(v) => {
                let items: Vec<String> = v.iter().map(u64::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

impl ParamValue {
    /// The value as YAML, for printing a resolved configuration.
    pub fn to_yaml(&self) -> Value {
        match self {
            ParamValue::Float(v) => Value::from(*v),
            ParamValue::Int(v) => Value::from(*v),
            ParamValue::Bool(v) => Value::from(*v),
            ParamValue::Str(v) => Value::from(v.clone()),
            ParamValue::IntList(v) => Value::Sequence(v.iter().map(|x| Value::from(*x)).collect()),
        }
    }
}

/// A default value that can live in a `static` table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    Float(f64),
    Int(u64),
    Bool(bool),
    Str(&'static str),
    IntList(&'static [u64]),
}

impl ParamDefault {
    fn to_value(self) -> ParamValue {
        match self {
            ParamDefault::Float(v) => ParamValue::Float(v),
            ParamDefault::Int(v) => ParamValue::Int(v),
            ParamDefault::Bool(v) => ParamValue::Bool(v),
            ParamDefault::Str(v) => ParamValue::Str(v.to_string()),
            ParamDefault::IntList(v) => ParamValue::IntList(v.to_vec()),
        }
    }
}

/// One declared parameter of a plugin.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// Key in the YAML mapping.
    pub name: &'static str,
    /// Accepted type.
    pub kind: ParamKind,
    /// Value used when the key is absent.
    pub default: ParamDefault,
    /// Smallest accepted value (numbers only), inclusive.
    pub min: Option<f64>,
    /// Largest accepted value (numbers only), inclusive.
    pub max: Option<f64>,
    /// One line for `metricunet plugins`.
    pub help: &'static str,
}

impl ParamSpec {
    /// A real-valued parameter with a default and an inclusive range.
    pub const fn float(
        name: &'static str,
        default: f64,
        min: Option<f64>,
        max: Option<f64>,
        help: &'static str,
    ) -> Self {
        Self {
            name,
            kind: ParamKind::Float,
            default: ParamDefault::Float(default),
            min,
            max,
            help,
        }
    }
    /// An integer parameter with a default and an inclusive lower bound.
    pub const fn int(name: &'static str, default: u64, min: u64, help: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Int,
            default: ParamDefault::Int(default),
            min: Some(min as f64),
            max: None,
            help,
        }
    }
    /// A boolean parameter.
    pub const fn bool(name: &'static str, default: bool, help: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Bool,
            default: ParamDefault::Bool(default),
            min: None,
            max: None,
            help,
        }
    }
    /// A parameter taking one string out of `choices`.
    pub const fn choice(
        name: &'static str,
        choices: &'static [&'static str],
        default: &'static str,
        help: &'static str,
    ) -> Self {
        Self {
            name,
            kind: ParamKind::Choice(choices),
            default: ParamDefault::Str(default),
            min: None,
            max: None,
            help,
        }
    }

    /// A list of integers, each at least `min`.
    pub const fn int_list(
        name: &'static str,
        default: &'static [u64],
        min: u64,
        help: &'static str,
    ) -> Self {
        Self {
            name,
            kind: ParamKind::IntList,
            default: ParamDefault::IntList(default),
            min: Some(min as f64),
            max: None,
            help,
        }
    }

    /// The default as a [`ParamValue`].
    pub fn default_value(&self) -> ParamValue {
        self.default.to_value()
    }

    /// `[min, max]` as text, or `""` when unbounded.
    pub fn range_text(&self) -> String {
        match (self.min, self.max) {
            (Some(a), Some(b)) => format!("[{a}, {b}]"),
            (Some(a), None) => format!(">= {a}"),
            (None, Some(b)) => format!("<= {b}"),
            (None, None) => String::new(),
        }
    }

    fn parse(&self, v: &Value, path: &str) -> Result<ParamValue> {
        let bad = || CoreError::Param {
            path: path.to_string(),
            message: format!("expected {}, got {}", self.kind, describe(v)),
        };
        let value = match self.kind {
            ParamKind::Float => ParamValue::Float(v.as_f64().ok_or_else(bad)?),
            ParamKind::Int => ParamValue::Int(v.as_u64().ok_or_else(bad)?),
            ParamKind::Bool => ParamValue::Bool(v.as_bool().ok_or_else(bad)?),
            ParamKind::Choice(choices) => {
                let s = v.as_str().ok_or_else(bad)?;
                if !choices.contains(&s) {
                    return Err(CoreError::Param {
                        path: path.to_string(),
                        message: format!(
                            "`{s}` is not one of {}{}",
                            choices.join(", "),
                            did_you_mean(s, choices.iter().copied())
                        ),
                    });
                }
                ParamValue::Str(s.to_string())
            }
            ParamKind::IntList => {
                let items = v.as_sequence().filter(|s| !s.is_empty()).ok_or_else(bad)?;
                ParamValue::IntList(
                    items
                        .iter()
                        .map(Value::as_u64)
                        .collect::<Option<Vec<u64>>>()
                        .ok_or_else(bad)?,
                )
            }
        };
        let xs: Vec<f64> = match &value {
            ParamValue::Float(x) => vec![*x],
            ParamValue::Int(x) => vec![*x as f64],
            ParamValue::IntList(v) => v.iter().map(|&x| x as f64).collect(),
            _ => Vec::new(),
        };
        for x in xs {
            let below = self.min.is_some_and(|m| x < m);
            let above = self.max.is_some_and(|m| x > m);
            if below || above || x.is_nan() {
                return Err(CoreError::Param {
                    path: path.to_string(),
                    message: format!("{x} is out of range, expected {}", self.range_text()),
                });
            }
        }
        Ok(value)
    }
}

/// A short description of a YAML value for error messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string \"{s}\""),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}

/// Validated parameters of one plugin instance: every declared key present, typed.
#[derive(Debug, Clone)]
pub struct Params {
    values: BTreeMap<&'static str, ParamValue>,
    specs: &'static [ParamSpec],
}

impl PartialEq for Params {
    /// Equal when the resolved values are equal.
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl Params {
    /// Check `map` against `specs`; `path` (for example `metric.samplers[0]`) prefixes
    /// every error.
    pub fn from_yaml(specs: &'static [ParamSpec], map: &Mapping, path: &str) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (k, v) in map {
            let key = k.as_str().ok_or_else(|| CoreError::Param {
                path: path.to_string(),
                message: format!("parameter names must be strings, got {}", describe(k)),
            })?;
            let key_path = format!("{path}.{key}");
            let spec = specs.iter().find(|s| s.name == key).ok_or_else(|| {
                let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                CoreError::Param {
                    path: key_path.clone(),
                    message: format!(
                        "unknown parameter `{key}`{}; valid parameters: {}",
                        did_you_mean(key, known.iter().copied()),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                }
            })?;
            values.insert(spec.name, spec.parse(v, &key_path)?);
        }
        for s in specs {
            values.entry(s.name).or_insert_with(|| s.default_value());
        }
        Ok(Self { values, specs })
    }

    /// All defaults of `specs`.
    pub fn defaults(specs: &'static [ParamSpec]) -> Self {
        let values = specs.iter().map(|s| (s.name, s.default_value())).collect();
        Self { values, specs }
    }

    /// The declared parameters these values were checked against.
    pub fn specs(&self) -> &'static [ParamSpec] {
        self.specs
    }

    /// Resolved values in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ParamValue)> {
        self.values.iter().map(|(k, v)| (*k, v))
    }

    fn get(&self, name: &str) -> Result<&ParamValue> {
        self.values.get(name).ok_or_else(|| CoreError::Param {
            path: name.to_string(),
            message: "parameter not declared by this plugin".into(),
        })
    }

    fn wrong(name: &str, want: &str, got: &ParamValue) -> CoreError {
        CoreError::Param {
            path: name.to_string(),
            message: format!("declared as {got:?}, read as {want}"),
        }
    }

    /// A `Float` parameter.
    pub fn f64(&self, name: &str) -> Result<f64> {
        match self.get(name)? {
            ParamValue::Float(v) => Ok(*v),
            other => Err(Self::wrong(name, "a float", other)),
        }
    }
    /// An `Int` parameter.
    pub fn usize(&self, name: &str) -> Result<usize> {
        match self.get(name)? {
            ParamValue::Int(v) => usize::try_from(*v).map_err(|_| CoreError::Param {
                path: name.to_string(),
                message: format!("{v} does not fit in usize"),
            }),
            other => Err(Self::wrong(name, "an integer", other)),
        }
    }
    /// A `Bool` parameter.
    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.get(name)? {
            ParamValue::Bool(v) => Ok(*v),
            other => Err(Self::wrong(name, "a boolean", other)),
        }
    }
    /// A `Choice` parameter.
    pub fn str(&self, name: &str) -> Result<&str> {
        match self.get(name)? {
            ParamValue::Str(v) => Ok(v),
            other => Err(Self::wrong(name, "a string", other)),
        }
    }

    /// An `IntList` parameter.
    pub fn usize_list(&self, name: &str) -> Result<Vec<usize>> {
        match self.get(name)? {
            ParamValue::IntList(v) => v
                .iter()
                .map(|&x| {
                    usize::try_from(x).map_err(|_| CoreError::Param {
                        path: name.to_string(),
                        message: format!("{x} does not fit in usize"),
                    })
                })
                .collect(),
            other => Err(Self::wrong(name, "a list of integers", other)),
        }
    }

    /// The resolved values as a YAML mapping (every key, defaults included).
    pub fn to_yaml(&self) -> Mapping {
        self.specs
            .iter()
            .filter_map(|s| {
                self.values
                    .get(s.name)
                    .map(|v| (Value::from(s.name), v.to_yaml()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPECS: &[ParamSpec] = &[
        ParamSpec::int("k", 20, 1, "anchors"),
        ParamSpec::float("tau", 0.1, Some(0.0), Some(1.0), "threshold"),
        ParamSpec::bool("normalize", false, "unit length"),
        ParamSpec::choice("reduction", &["mean", "sum"], "mean", "reduction"),
        ParamSpec::int_list("widths", &[32, 64], 1, "widths"),
    ];

    fn map(text: &str) -> Mapping {
        serde_norway::from_str(text).expect("test yaml")
    }

    #[test]
    fn defaults_fill_missing_keys() {
        let p = Params::from_yaml(SPECS, &map("k: 5"), "s").expect("valid");
        assert_eq!(p.usize("k").expect("k"), 5);
        assert_eq!(p.f64("tau").expect("tau"), 0.1);
        assert!(!p.bool("normalize").expect("normalize"));
        assert_eq!(p.str("reduction").expect("reduction"), "mean");
        assert_eq!(
            p,
            Params::from_yaml(SPECS, &map("k: 5\ntau: 0.1"), "s").expect("same")
        );
    }

    #[test]
    fn integers_are_accepted_as_floats() {
        let p = Params::from_yaml(SPECS, &map("tau: 1"), "s").expect("valid");
        assert_eq!(p.f64("tau").expect("tau"), 1.0);
    }

    #[test]
    fn unknown_key_names_path_and_nearest() {
        let e = Params::from_yaml(SPECS, &map("tua: 0.2"), "metric.samplers[1]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metric.samplers[1].tua"), "{e}");
        assert!(e.contains("did you mean `tau`"), "{e}");
    }

    #[test]
    fn wrong_type_and_range_are_errors() {
        let e = Params::from_yaml(SPECS, &map("k: many"), "s")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s.k") && e.contains("non-negative integer") && e.contains("\"many\""),
            "{e}"
        );
        let e = Params::from_yaml(SPECS, &map("k: 0"), "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range") && e.contains(">= 1"), "{e}");
        let e = Params::from_yaml(SPECS, &map("tau: 1.5"), "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[0, 1]"), "{e}");
        let e = Params::from_yaml(SPECS, &map("reduction: summ"), "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `sum`"), "{e}");
        let e = Params::from_yaml(SPECS, &map("widths: [8, 0]"), "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.widths") && e.contains("out of range"), "{e}");
        let e = Params::from_yaml(SPECS, &map("widths: []"), "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-empty list"), "{e}");
        let p = Params::from_yaml(SPECS, &map("widths: [8, 16, 32]"), "s").expect("valid");
        assert_eq!(p.usize_list("widths").expect("list"), vec![8, 16, 32]);
        let e = Params::from_yaml(SPECS, &map("k: -3"), "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("number -3"), "{e}");
    }

    #[test]
    fn to_yaml_lists_every_declared_key_in_order() {
        let p = Params::defaults(SPECS);
        let yaml = p.to_yaml();
        let keys: Vec<&str> = yaml.keys().filter_map(|k| k.as_str()).collect();
        assert_eq!(keys, vec!["k", "tau", "normalize", "reduction", "widths"]);
    }
}
