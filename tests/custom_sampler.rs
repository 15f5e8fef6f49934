//! Adding a sampler touches no core file: this test registers one (the README's worked
//! example, verbatim) and uses it by name from YAML.

mod common;

use metricunet_core::{
    draw_tuples, inventory, ParamSpec, Params, Result, SampleBatch, Sampler, SamplerPlugin, Tuples,
    VoxelMetricModule,
};
use rand::{RngCore, SeedableRng};

// --- README example starts ---
/// Anchors deep inside the organ: foreground voxels whose 4 neighbours are foreground too.
#[derive(Debug)]
struct InteriorSampler {
    k: usize,
    m: usize,
}

impl Sampler for InteriorSampler {
    fn sample(&self, batch: &SampleBatch<'_>, rng: &mut dyn RngCore) -> Result<Tuples> {
        let (h, w) = batch.dims();
        let mut out = Tuples::empty(self.m);
        for i in 0..batch.batch_size() {
            let labels = batch.item_labels(i);
            let fg = |y: usize, x: usize| labels[y * w + x] != 0;
            let interior: Vec<usize> = (0..h * w)
                .filter(|&v| {
                    let (y, x) = (v / w, v % w);
                    y > 0
                        && x > 0
                        && y + 1 < h
                        && x + 1 < w
                        && fg(y, x)
                        && fg(y - 1, x)
                        && fg(y + 1, x)
                        && fg(y, x - 1)
                        && fg(y, x + 1)
                })
                .collect();
            draw_tuples(
                i * batch.item_len(),
                labels,
                &interior,
                self.k,
                self.m,
                rng,
                &mut out,
            );
        }
        Ok(out)
    }
}

inventory::submit! {
    SamplerPlugin {
        name: "interior",
        description: "anchors on foreground voxels away from the boundary",
        params: &[
            ParamSpec::int("k", 20, 1, "anchors drawn per image"),
            ParamSpec::int("m", 1, 1, "positives and negatives per anchor"),
        ],
        build: |p: &Params| -> Result<Box<dyn Sampler>> {
            Ok(Box::new(InteriorSampler { k: p.usize("k")?, m: p.usize("m")? }))
        },
    }
}
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
