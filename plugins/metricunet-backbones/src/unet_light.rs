//! `unet-light`: the lightweight stage-1 UNet (Section III.A) that segments the prostate
//! coarsely on the CT downsampled to 1/4, from 5 adjacent slices. It is the Table I design
//! with fewer and narrower levels (defaults: encoder 16, 32, 64; decoder 32, 16).

use candle_nn::VarBuilder;
use metricunet_core::{
    inventory, Backbone, BackboneContext, BackbonePlugin, ParamSpec, Params, Result,
};

use crate::unet::{UNet, UNetConfig};

inventory::submit! {
    BackbonePlugin {
        name: "unet-light",
        description: "light stage-1 UNet for localisation on the 1/4-downsampled CT (2 poolings, narrow)",
        params: &[
            ParamSpec::int_list("encoder", &[16, 32, 64], 1, "encoder widths, top to bottom"),
            ParamSpec::int_list("decoder", &[32, 16], 1, "upblock widths, bottom to top"),
        ],
        build: |p: &Params, ctx: &BackboneContext, vb: VarBuilder<'_>| -> Result<Box<dyn Backbone>> {
            let cfg = UNetConfig {
                in_channels: ctx.in_channels,
                encoder: p.usize_list("encoder")?,
                decoder: p.usize_list("decoder")?,
                detach_head: false,
            };
            Ok(Box::new(UNet::new(cfg, vb)?))
        },
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use metricunet_core::{registry, BackboneContext};
    use serde_norway::Mapping;

    #[test]
    fn builds_from_the_registry_on_five_slices() {
        let plugin = registry::backbone("unet-light", "stage1.backbone").expect("registered");
        let params = plugin
            .params(&Mapping::new(), "stage1.backbone")
            .expect("defaults");
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let net = (plugin.build)(&params, &BackboneContext { in_channels: 5 }, vb).expect("build");
        let x = Tensor::zeros((1, 5, 64, 64), DType::F32, &Device::Cpu).expect("x");
        let out = net.forward_t(&x, false).expect("forward");
        assert_eq!(out.logits.dims(), &[1, 2, 64, 64]);
        assert_eq!(net.embedding_channels(), 16);
        // far lighter than Table I
        assert!(crate::unet::trainable_parameters(&vars) < 150_000);
    }
}
