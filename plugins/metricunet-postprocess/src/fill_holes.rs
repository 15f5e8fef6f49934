//! `fill-holes`: background enclosed by the mask in 3D (not 6-connected to the volume's
//! border) becomes foreground, as scipy's `binary_fill_holes`.

use metricunet_core::mask::fill_holes;
use metricunet_core::{Params, PostProcess, PostprocessPlugin, Result};

struct FillHoles;

impl PostProcess for FillHoles {
    fn apply(&self, mask: &[bool], dims: [usize; 3], _: [f64; 3]) -> Result<Vec<bool>> {
        Ok(fill_holes(mask, dims))
    }
}

inventory::submit! {
    PostprocessPlugin {
        name: "fill-holes",
        description: "fill background enclosed by the mask (3D, 6-connected)",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn PostProcess>> { Ok(Box::new(FillHoles)) },
    }
}

#[cfg(test)]
mod tests {
    use metricunet_core::config::PluginSpec;
    use metricunet_core::registry;

    #[test]
    fn fills_an_enclosed_voxel() {
        let (step, _) =
            registry::build_postprocess(&PluginSpec::named("fill-holes"), "postprocess[0]")
                .expect("registered");
        // a 3 x 3 x 3 shell in a 5^3 volume: its centre is enclosed
        let at = |x: usize, y: usize, z: usize| (z * 5 + y) * 5 + x;
        let mut m = vec![false; 125];
        for z in 1..4 {
            for y in 1..4 {
                for x in 1..4 {
                    m[at(x, y, z)] = (x, y, z) != (2, 2, 2);
                }
            }
        }
        let out = step.apply(&m, [5, 5, 5], [1.0; 3]).expect("apply");
        assert!(out[at(2, 2, 2)]);
        assert_eq!(out.iter().filter(|&&b| b).count(), 27);
    }
}
