//! The `metricunet` command line: links every plugin crate and implements the
//! subcommands on top of `metricunet-core`. [`cli::main`] is the whole program, for the
//! `metricunet` binary and for a researcher's own binary with more plugins.

mod bench_cmds;
pub mod cli;
mod cost;
mod data_cmds;
mod eval_cmds;
mod progress;
mod run_cmd;
mod samplers_cmd;
mod train_cmd;

/// mimalloc keeps freed pages for reuse; with the system allocator every large tensor was
/// fresh pages the kernel had to zero (about 15 % of a training step, see bench/NOTES.md).
/// Declared here, so a binary built on this crate gets it too (it then must not declare a
/// global allocator of its own).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;

use metricunet_core::registry::{self, PluginKind};
use metricunet_core::{ExperimentPlan, ParamKind};

/// Reference every plugin crate so that the linker keeps their `inventory` registrations.
pub fn link_plugins() {
    metricunet_samplers::link();
    metricunet_losses::link();
    metricunet_backbones::link();
    metricunet_metrics::link();
    metricunet_postprocess::link();
}

/// `metricunet plugins`: every registered plugin by kind, with parameters and defaults.
pub fn plugins_text() -> String {
    link_plugins();
    let mut out = String::new();
    for kind in PluginKind::ALL {
        let list = registry::list(kind);
        let _ = writeln!(out, "{} ({})", kind.plural(), list.len());
        if list.is_empty() {
            let _ = writeln!(out, "  (none registered)");
        }
        let width = list.iter().map(|p| p.name.len()).max().unwrap_or(0).max(16);
        for p in list {
            let _ = writeln!(out, "  {:<width$} {}", p.name, p.description);
            for s in p.params {
                let kind = match s.kind {
                    ParamKind::Float => "float".to_string(),
                    ParamKind::Int => "int".to_string(),
                    ParamKind::Bool => "bool".to_string(),
                    ParamKind::Choice(c) => c.join("|"),
                    ParamKind::IntList => "[int]".to_string(),
                };
                let range = s.range_text();
                let range = if range.is_empty() {
                    String::new()
                } else {
                    format!(" {range}")
                };
                let _ = writeln!(
                    out,
                    "      {:<10} {:<9} default {:<18} {}{range}",
                    s.name,
                    kind,
                    s.default_value().to_string(),
                    s.help
                );
            }
        }
        out.push('\n');
    }
    let presets = metricunet_core::presets::PRESETS;
    let _ = writeln!(out, "presets ({})", presets.len());
    let width = presets
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(0)
        .max(16);
    for p in presets {
        let mut parts = vec![format!("backbone {}", p.backbone)];
        if !p.samplers.is_empty() {
            parts.push(format!(
                "samplers [{}]{}",
                p.samplers.join(", "),
                if p.pair { " + pair term" } else { "" }
            ));
        }
        if !p.segmentation_loss.is_empty() {
            let losses: Vec<String> = p
                .segmentation_loss
                .iter()
                .map(|(n, w)| format!("{w} {n}"))
                .collect();
            parts.push(format!("segmentation loss {}", losses.join(" + ")));
        }
        let _ = writeln!(
            out,
            "  {:<width$} {}: {}",
            p.name,
            p.paper_name,
            parts.join(", ")
        );
    }
    out
}

/// `metricunet validate`: the resolved configuration of one cell and the list of cells.
pub fn validate_text(plan: &ExperimentPlan, show_cell: usize) -> metricunet_core::Result<String> {
    let mut out = String::new();
    let cell = plan
        .cells
        .get(show_cell)
        .ok_or_else(|| metricunet_core::CoreError::Config {
            source_name: plan.source_name.clone(),
            message: format!(
                "--cell {show_cell}: the experiment has {} cells (0..{})",
                plan.cells.len(),
                plan.cells.len()
            ),
        })?;
    let _ = writeln!(
        out,
        "# {}: resolved configuration of cell {} ({})",
        plan.source_name,
        cell.index,
        cell.label()
    );
    out.push_str(&cell.to_yaml()?);
    let axes: Vec<&str> = plan.base.grid.keys().filter_map(|k| k.as_str()).collect();
    let _ = writeln!(
        out,
        "\n# {} cells = {} grid combinations x {} seeds{}",
        plan.cells.len(),
        plan.cells.len() / plan.base.seeds.len().max(1),
        plan.base.seeds.len(),
        if axes.is_empty() {
            String::new()
        } else {
            format!(
                " ({} over {})",
                if plan.grid_mode.is_product() {
                    "grid"
                } else {
                    "one-at-a-time grid"
                },
                axes.join(", ")
            )
        }
    );
    let _ = writeln!(
        out,
        "# {:>4}  {:<16}  {:>6}  overrides",
        "cell", "config hash", "seed"
    );
    for c in &plan.cells {
        let _ = writeln!(
            out,
            "# {:>4}  {:<16}  {:>6}  {}",
            c.index,
            c.run_hash()?,
            c.seed,
            c.label()
        );
    }
    Ok(out)
}
