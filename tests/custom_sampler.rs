//! Adding a sampler touches no core file: this test registers one (the README's worked
//! example, verbatim) and uses it by name from YAML.

mod common;

use metricunet_core::{SampleBatch, VoxelMetricModule};
use rand::SeedableRng;

// The README's example, compiled here from the out-of-tree example crate's file (its binary is
// tested in examples/custom-sampler/tests).
include!("../examples/custom-sampler/src/interior.rs");

#[test]
fn a_sampler_registered_outside_the_core_is_usable_by_name() {
    let plan =
        common::plan("metric:\n  samplers:\n    - {name: interior, k: 2}\n    - contour-aware\n")
            .expect("valid");
    let cfg = &plan.cells[0].config;
    assert_eq!(
        cfg.metric.samplers[0].params.get("m"),
        Some(&serde_norway::Value::from(1))
    );
    let module = VoxelMetricModule::from_config(
        &cfg.model.segmentation_loss,
        "model.segmentation_loss",
        &cfg.metric,
    )
    .expect("module");
    // one 5x5 image, 3x3 square: the only interior voxel is the centre (12)
    let labels: Vec<u8> = (0..25)
        .map(|v| u8::from((1..4).contains(&(v / 5)) && (1..4).contains(&(v % 5))))
        .collect();
    let batch = SampleBatch::new(&labels, None, 1, 5, 5).expect("batch");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let t = module.samplers()[0]
        .sampler
        .sample(&batch, &mut rng)
        .expect("sample");
    assert_eq!(t.anchors, vec![12]);
    let e = common::plan_err("metric:\n  samplers: [{name: interior, kk: 2}]\n");
    assert!(e.contains("did you mean `k`"), "{e}");
}

/// The first Rust block of the README's section `heading`, and `file` without its `// `
/// comment lines, both with whitespace removed.
fn readme_block_and_file(heading: &str, file: &str) -> (String, String, usize) {
    let squash = |t: &str| t.split_whitespace().collect::<String>();
    let code: String = file
        .lines()
        .filter(|l| !l.starts_with("// "))
        .collect::<Vec<_>>()
        .join("\n");
    let readme = include_str!("../README.md");
    let section = &readme[readme.find(heading).expect("section")..];
    let block = section
        .split("```rust")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("block");
    let lines = block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("use "))
        .count();
    (squash(block), squash(&code), lines)
}

/// The README's "Adding a sampler" block is the example crate's sampler file (its module
/// header and whitespace aside), and short.
#[test]
fn the_readme_shows_this_sampler() {
    let (block, file, lines) = readme_block_and_file(
        "## Adding a sampler",
        include_str!("../examples/custom-sampler/src/interior.rs"),
    );
    assert_eq!(block, file, "README and example differ");
    assert!(lines <= 20, "the example sampler takes {lines} lines");
}

/// The README's "Adding a metric" block is the example crate's metric file.
#[test]
fn the_readme_shows_the_example_metric() {
    let (block, file, _) = readme_block_and_file(
        "## Adding a metric",
        include_str!("../examples/custom-sampler/src/volume_error.rs"),
    );
    assert_eq!(block, file, "README and example differ");
}
