//! Adding a sampler touches no core file: this test registers one (the README's worked
//! example, verbatim) and uses it by name from YAML.

mod common;

use metricunet_core::{
    register_sampler, Draw, Result, SampleBatch, SampleItem, Sampler, VoxelMetricModule,
};
use rand::SeedableRng;

// --- README example starts ---
/// Anchors deep inside the organ: foreground voxels whose 4 neighbours are foreground too.
#[derive(Debug)]
struct InteriorSampler(Draw);

impl Sampler for InteriorSampler {
    fn draw(&self) -> Draw {
        self.0
    }
    fn candidates(&self, item: &SampleItem<'_>) -> Result<Vec<usize>> {
        let (h, w) = item.dims();
        let fg = |v: usize| item.is_foreground(v);
        let inside = |v: usize| v / w > 0 && v % w > 0 && v / w + 1 < h && v % w + 1 < w;
        let around = |v: usize| [v, v - 1, v + 1, v - w, v + w];
        Ok((0..h * w)
            .filter(|&v| inside(v) && around(v).into_iter().all(fg))
            .collect())
    }
}

register_sampler!("interior", "anchors away from the boundary", |d, _| Ok(
    InteriorSampler(d)
));
// --- README example ends ---

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
    let module = VoxelMetricModule::from_config(&cfg.metric).expect("module");
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

/// The README's "Adding a sampler" block is the code above (whitespace aside), and short.
#[test]
fn the_readme_shows_this_sampler() {
    let squash = |t: &str| t.split_whitespace().collect::<String>();
    let here = include_str!("custom_sampler.rs");
    let start = "// --- README example starts ---";
    let code = &here[here.find(start).expect("start") + start.len()
        ..here.find("// --- README example ends ---").expect("end")];
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("## Adding a sampler").expect("section")..];
    let block = section
        .split("```rust")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("block");
    let block_code = block
        .split_once("\n\n")
        .map(|(_use_line, rest)| rest)
        .expect("use line");
    assert_eq!(squash(block_code), squash(code), "README and test differ");
    let lines = block_code.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(lines <= 20, "the example sampler takes {lines} lines");
}
