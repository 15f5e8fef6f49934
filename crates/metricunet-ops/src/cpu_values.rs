//! Helpers shared by the CPU custom ops (`conv`, `bn_relu`): contiguous views of candle CPU
//! storage and the environment switches back to candle's own ops.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, WithDType};
use std::mem::MaybeUninit;

use crate::conv_cpu::Elem;

/// A vector of `len` values that `fill` writes, every one, without zero-filling the memory
/// first. The ops' outputs are written in full by their kernels; zero-filling each first
/// (mimalloc zeroes reused memory for a zeroed allocation) was about 4 % of the quickstart's
/// CPU training step (perf, session 14). In tests the memory starts as NaN, so a value that
/// `fill` misses shows up in every comparison with a reference op.
///
/// # Safety
/// `fill` must write all `len` values.
pub(crate) unsafe fn written_in_full<T: Elem>(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    if cfg!(test) {
        spare.fill(MaybeUninit::new(T::NAN));
    }
    fill(spare);
    // SAFETY: `fill` wrote the `len` values (the caller's promise)
    unsafe { v.set_len(len) };
    v
}

/// [`env_switch`] read once per `cell`.
pub(crate) fn env_flag(
    cell: &'static std::sync::OnceLock<bool>,
    name: &str,
    default: bool,
) -> bool {
    *cell.get_or_init(|| env_switch(name, default))
}

/// The switch `name` of the environment: `1` on, `0` off, unset `default`; any other value is
/// warned about (naming the variable and what it takes) and read as `default`. Public for the
/// command line's own switches (`METRICUNET_MAIN_ON_WORKER`).
pub fn env_switch(name: &str, default: bool) -> bool {
    switch_value(name, std::env::var(name), default)
}

/// The whole number `name` of the environment, `default` where unset; a value that is not a
/// whole number is warned about and read as `default`.
pub(crate) fn env_count(name: &str, default: usize) -> usize {
    count_value(name, std::env::var(name), default)
}

type EnvValue = std::result::Result<String, std::env::VarError>;

fn switch_value(name: &str, value: EnvValue, default: bool) -> bool {
    let parse = |v: &str| match v {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    env_value(name, value, default, "0 or 1", u8::from(default), parse)
}

fn count_value(name: &str, value: EnvValue, default: usize) -> usize {
    env_value(name, value, default, "a whole number", default, |v| {
        v.trim().parse().ok()
    })
}

/// `parse` of the variable's value; unset: `default`; not parsed (or not UTF-8): a warning that
/// names the variable, the value, what it takes (`expected`) and what is used (`shown`), and
/// `default`.
fn env_value<T>(
    name: &str,
    value: EnvValue,
    default: T,
    expected: &str,
    shown: impl std::fmt::Display,
    parse: impl Fn(&str) -> Option<T>,
) -> T {
    let text = match value {
        Err(std::env::VarError::NotPresent) => return default,
        Ok(v) => v,
        Err(std::env::VarError::NotUnicode(v)) => v.to_string_lossy().into_owned(),
    };
    parse(&text).unwrap_or_else(|| {
        tracing::warn!("{name}={text}: expected {expected}; using {shown}");
        default
    })
}

/// `t` itself where it is contiguous from offset 0, else a contiguous copy.
pub(crate) fn dense(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}

/// The values of a contiguous CPU storage in `layout`; `op` names the caller in the error.
pub(crate) fn slice<'a, T: WithDType>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: non-contiguous input {:?}", l.shape())
    };
    Ok(&s.as_slice::<T>()?[a..b])
}

/// `f` on the values of `K` CPU tensors (contiguous copies where needed).
pub(crate) fn with_values<T: WithDType, R, const K: usize>(
    op: &str,
    tensors: [&Tensor; K],
    f: impl FnOnce([&[T]; K]) -> R,
) -> Result<R> {
    let dense: Vec<Tensor> = tensors.iter().map(|t| dense(t)).collect::<Result<_>>()?;
    let guards: Vec<_> = dense.iter().map(|t| t.storage_and_layout()).collect();
    let mut values: Vec<&[T]> = Vec::with_capacity(K);
    for (s, l) in &guards {
        let Storage::Cpu(s) = &**s else {
            candle_core::bail!("{op}: CPU tensors expected")
        };
        values.push(slice(op, s, l)?);
    }
    let Ok(values) = <[&[T]; K]>::try_from(values) else {
        candle_core::bail!("{op}: {K} tensors expected")
    };
    Ok(f(values))
}

/// Helpers of the ops' tests.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::Tensor;

    /// The values of an f64 tensor, flattened.
    pub(crate) fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .and_then(|f| f.to_vec1::<f64>())
            .expect("f64 values")
    }

    /// Each `got[k]` equal to `want[k]` (named `names[k]`) in length and, value by value,
    /// to `tol * (1 + |want|)`.
    pub(crate) fn assert_close(names: &[&str], got: &[Vec<f64>], want: &[Vec<f64>], tol: f64) {
        assert_eq!(got.len(), want.len());
        for ((name, g), w) in names.iter().zip(got).zip(want) {
            assert_eq!(g.len(), w.len(), "{name}: lengths");
            for (p, q) in g.iter().zip(w) {
                assert!((p - q).abs() < tol * (1.0 + q.abs()), "{name}: {p} vs {q}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::env::VarError;

    #[test]
    fn environment_values_are_read_or_fall_back_to_the_default() {
        let set = |v: &str| Ok(v.to_string());
        assert!(switch_value("X", set("1"), false));
        assert!(!switch_value("X", set("0"), true));
        assert!(switch_value("X", Err(VarError::NotPresent), true));
        // a typo is not read as either setting: the default, with a warning
        assert!(switch_value("X", set("yes"), true));
        assert!(!switch_value("X", set("true"), false));
        assert_eq!(count_value("N", set("128"), 64), 128);
        assert_eq!(count_value("N", set(" 0 "), 64), 0);
        assert_eq!(count_value("N", Err(VarError::NotPresent), 64), 64);
        assert_eq!(count_value("N", set("64MB"), 64), 64);
        assert_eq!(count_value("N", set("-1"), 64), 64);
    }
}
