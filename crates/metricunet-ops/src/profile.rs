//! Per-op wall time for a profile of a training step: with profiling on, each op of this crate
//! waits for the device before and after it ([`candle_core::Device::synchronize`]) and adds
//! its time to a table, by op and pass. Switch and table belong to the calling thread (the one
//! that runs the steps: the ops' entry points and candle's backward run on it), so a profile
//! sees neither another thread's steps nor a test running beside it. The synchronisation serialises the device's queue, so
//! the sum of a profiled step is somewhat above an unprofiled one; the shares are what a
//! profile is for. Off (the default) it costs one relaxed atomic load per op.
//!
//! `metricunet bench train --profile` turns it on for extra steps after the timed ones and
//! prints each op's share of the step, with the rest (candle's own ops: pooling, loss, metric
//! module, optimizer) as the difference to the step's synchronised time. On a GPU machine
//! without Nsight this is the device profile; with it, the same names show up in its kernel
//! list.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Result};

/// Forward or backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pass {
    Forward,
    Backward,
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
        })
    }
}

/// One op's total over the profiled calls.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    pub op: &'static str,
    pub pass: Pass,
    pub calls: u64,
    pub seconds: f64,
}

type Table = BTreeMap<(&'static str, Pass), (u64, f64)>;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static TABLE: RefCell<Table> = const { RefCell::new(BTreeMap::new()) };
    /// Depth of profiled calls on this thread: an op that calls another (the skip
    /// concatenation's convolution on CUDA calls the same convolution) is counted once, as
    /// the outer op.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Switch profiling on or off on this thread; switching it on empties the table.
pub fn set_enabled(on: bool) {
    if on {
        TABLE.with(|t| t.borrow_mut().clear());
    }
    ON.with(|o| o.set(on));
}

/// Whether ops are being profiled on this thread.
pub fn enabled() -> bool {
    ON.with(|o| o.get())
}

/// Restores the depth when the timed call returns or unwinds.
struct Nested;

impl Nested {
    fn enter() -> (Self, bool) {
        let outer = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get() == 1
        });
        (Nested, outer)
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// `f()`, timed as `op`'s `pass` between two waits for `device` when profiling is on.
pub fn timed<R>(
    op: &'static str,
    pass: Pass,
    device: &Device,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if !enabled() {
        return f();
    }
    let (_nested, outer) = Nested::enter();
    if !outer {
        return f();
    }
    device.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    device.synchronize()?;
    record(op, pass, start.elapsed().as_secs_f64());
    Ok(out)
}

/// Add one call of `seconds` to `op`'s `pass`.
fn record(op: &'static str, pass: Pass, seconds: f64) {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let e = t.entry((op, pass)).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += seconds;
    })
}

/// The table so far, largest time first; it is emptied.
pub fn take() -> Vec<OpTime> {
    let mut rows: Vec<OpTime> = TABLE
        .with(|t| std::mem::take(&mut *t.borrow_mut()))
        .into_iter()
        .map(|((op, pass), (calls, seconds))| OpTime {
            op,
            pass,
            calls,
            seconds,
        })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outer_calls_only_and_only_when_on() -> Result<()> {
        set_enabled(false);
        timed("a", Pass::Forward, &Device::Cpu, || Ok(()))?;
        set_enabled(true);
        for _ in 0..3 {
            timed("a", Pass::Forward, &Device::Cpu, || {
                // nested: not counted separately
                timed("b", Pass::Forward, &Device::Cpu, || Ok(()))
            })?;
        }
        timed("a", Pass::Backward, &Device::Cpu, || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        })?;
        set_enabled(false);
        let rows = take();
        assert_eq!(rows.len(), 2, "{rows:?}");
        // largest first: the sleeping backward
        assert_eq!(
            (rows[0].op, rows[0].pass, rows[0].calls),
            ("a", Pass::Backward, 1)
        );
        assert!(rows[0].seconds >= 0.02, "{rows:?}");
        assert_eq!(
            (rows[1].op, rows[1].pass, rows[1].calls),
            ("a", Pass::Forward, 3)
        );
        assert!(take().is_empty(), "take empties the table");
        // another thread has its own switch and table
        set_enabled(true);
        std::thread::spawn(|| {
            assert!(!enabled());
            timed("e", Pass::Forward, &Device::Cpu, || Ok(()))
        })
        .join()
        .expect("thread")?;
        set_enabled(false);
        assert!(take().is_empty(), "nothing recorded from the other thread");
        Ok(())
    }

    #[test]
    fn an_error_inside_leaves_the_depth_balanced() -> Result<()> {
        set_enabled(true);
        let failed: Result<()> = timed("c", Pass::Forward, &Device::Cpu, || {
            candle_core::bail!("inside")
        });
        assert!(failed.is_err());
        timed("d", Pass::Forward, &Device::Cpu, || Ok(()))?;
        set_enabled(false);
        let rows = take();
        assert!(
            rows.iter().any(|r| r.op == "d"),
            "after an error the next op is an outer op again: {rows:?}"
        );
        Ok(())
    }
}
