//! Progress bars on the terminal: the binary's [`Progress`], drawn with indicatif. Library
//! crates report tasks; only this file draws them.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use metricunet_core::{Progress, ProgressTask};

/// Bars stacked on standard error (hidden when it is not a terminal).
#[derive(Debug, Clone)]
pub struct Bars {
    multi: MultiProgress,
}

impl Bars {
    /// Bars on standard error.
    pub fn stderr() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        }
    }
}

/// One bar; dropping it clears it.
struct Bar {
    multi: MultiProgress,
    bar: ProgressBar,
}

impl Progress for Bars {
    fn task(&self, label: &str, len: Option<u64>) -> Box<dyn ProgressTask> {
        let bar = match len {
            Some(n) => {
                let bar = self.multi.add(ProgressBar::new(n));
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} {msg} eta {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar
            }
            None => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            }
        };
        bar.set_prefix(label.to_string());
        Box::new(Bar {
            multi: self.multi.clone(),
            bar,
        })
    }
}

impl ProgressTask for Bar {
    fn set_position(&self, position: u64) {
        self.bar.set_position(position);
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        self.multi.remove(&self.bar);
    }
}
