//! The instruction set of the ops' own element loops (Winograd's tile transforms, the fused
//! BatchNorm + ReLU passes and sums), chosen at run time: the shipped binary is built for
//! baseline x86-64 (SSE2, two f64 or four f32 per instruction), so each loop body is compiled
//! a second and a third time inside a `#[target_feature]` function (AVX2 + FMA; AVX-512) and
//! [`vectorised`] calls the widest one the CPU has.
//!
//! The loops add, multiply and compare; Rust never contracts `a * b + c` into a fused
//! multiply-add, and the sums keep their explicit lanes, so every level computes the same bits
//! (checked by the ops' tests at each level the CPU has). The level only changes the speed.
//!
//! `METRICUNET_AVX512=0` stops at AVX2 (as for the matrix products, see
//! [`crate::conv_cpu::avx512_allowed`]); `METRICUNET_SIMD_LOOPS=0` keeps the loops at the
//! baseline, for A/B measurements.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the element loops are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// What the target was built for (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F, BW, VL and DQ with AVX2 and FMA (x86-64-v4).
    Avx512,
}

impl Level {
    const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn of_code(code: u8) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.code() == code)
    }
}

/// The widest level this CPU runs.
pub fn supported() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let v3 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let v4 = v3
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq");
        if v4 {
            return Level::Avx512;
        }
        if v3 {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// The level from the CPU and the environment (see the module's notes).
pub(crate) fn from_environment() -> Level {
    let cap = if !crate::cpu_values::env_switch("METRICUNET_SIMD_LOOPS", true) {
        Level::Baseline
    } else if crate::conv_cpu::avx512_allowed() {
        Level::Avx512
    } else {
        Level::Avx2
    };
    supported().min(cap)
}

/// 0: not chosen yet.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The level the element loops run at (chosen once).
pub fn level() -> Level {
    match Level::of_code(CHOSEN.load(Ordering::Relaxed)) {
        Some(l) => l,
        None => {
            let l = from_environment();
            CHOSEN.store(l.code(), Ordering::Relaxed);
            l
        }
    }
}

/// Makes the loops run at `level` (at most what the CPU has) from now on: for the tests, which
/// compare the levels' results.
#[cfg(test)]
pub(crate) fn set_level(level: Level) {
    CHOSEN.store(level.min(supported()).code(), Ordering::Relaxed);
}

/// `f()`, compiled for the chosen [`level`]. `f` and what it calls with `#[inline(always)]`
/// are inlined into the wider function; anything that runs on other threads (rayon jobs) is
/// not, so call this inside the per-thread body of a parallel loop.
#[inline]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level` is at most what `supported` detected on this CPU
        Level::Avx512 => unsafe { avx512(f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above
        Level::Avx2 => unsafe { avx2(f) },
        _ => f(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Helpers of the tests that compare the levels.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Held while a test switches the level, so that two such tests running at once do not
    /// switch it under each other (the other tests may run at any level: the bits are equal).
    static SWITCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// `run()` at every level this CPU has, Baseline first, then the level of the environment
    /// again; the results with their level.
    pub(crate) fn at_every_level<R>(run: impl Fn() -> R) -> Vec<(Level, R)> {
        let _one_at_a_time = SWITCHING.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for l in Level::ALL.into_iter().filter(|&l| l <= supported()) {
            set_level(l);
            out.push((l, run()));
        }
        set_level(from_environment());
        out
    }

    /// Every level's results equal the baseline's bit for bit; `what` names them.
    pub(crate) fn assert_same_bits(what: &str, results: &[(Level, Vec<Vec<f64>>)]) {
        let Some((_, base)) = results.first() else {
            panic!("{what}: no level ran")
        };
        for (level, r) in &results[1..] {
            assert_eq!(
                r.len(),
                base.len(),
                "{what} at {level:?}: number of outputs"
            );
            for (k, (a, b)) in r.iter().zip(base).enumerate() {
                assert_eq!(
                    a.len(),
                    b.len(),
                    "{what} at {level:?}: length of output {k}"
                );
                if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
                    panic!(
                        "{what} at {level:?}: output {k} value {i} is {} where the baseline has {}",
                        a[i], b[i]
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_capped_by_the_cpu() {
        assert!(Level::Baseline < Level::Avx2 && Level::Avx2 < Level::Avx512);
        for l in Level::ALL {
            assert_eq!(Level::of_code(l.code()), Some(l));
        }
        assert_eq!(Level::of_code(0), None);
        assert!(from_environment() <= supported());
        // the wrapper runs its closure (and returns its value) at every level
        let r = testing::at_every_level(|| vectorised(|| (0..100u32).map(|i| i * i).sum::<u32>()));
        assert!(!r.is_empty());
        assert!(r.iter().all(|(_, v)| *v == 328_350));
    }
}
