//! `largest-component`: keep the largest 6-connected component of the mask (what stage 1
//! does to find the prostate), dropping islands such as a blob in the bladder or rectum that
//! is not connected to the prostate.

use metricunet_core::mask::largest_component;
use metricunet_core::{Params, PostProcess, PostprocessPlugin, Result};

struct LargestComponent;

impl PostProcess for LargestComponent {
    fn apply(&self, mask: &[bool], dims: [usize; 3], _: [f64; 3]) -> Result<Vec<bool>> {
        Ok(largest_component(mask, dims))
    }
}

inventory::submit! {
    PostprocessPlugin {
        name: "largest-component",
        description: "keep the largest 6-connected component of the mask",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn PostProcess>> { Ok(Box::new(LargestComponent)) },
    }
}

#[cfg(test)]
mod tests {
    use metricunet_core::config::PluginSpec;
    use metricunet_core::registry;

    #[test]
    fn keeps_the_largest_island_only() {
        let (step, _) =
            registry::build_postprocess(&PluginSpec::named("largest-component"), "postprocess[0]")
                .expect("registered");
        // in a 5 x 1 x 1 row: islands of 1 and 3 voxels
        let m = [true, false, true, true, true];
        let out = step.apply(&m, [5, 1, 1], [1.0; 3]).expect("apply");
        assert_eq!(out, [false, false, true, true, true]);
    }
}
