//! The UNet of Table I with configurable widths, and its registrations.
//!
//! Table I, read with its parameter column (weights + biases of each convolution):
//!
//! | block | layers | channels | Table I |
//! |---|---|---|---|
//! | conv block 1-3 | conv{1,2,3}{a,b}: 3x3 conv + BN + ReLU, then 2x2 max-pool | 32, 64, 128 | 0.9K/9K, 18K/37K, 74K/147K |
//! | bottom | conv4{a,b} (printed "conv3a/b") | 256 | 295K/590K |
//! | upblock 1-3 | upconv{4,5,6}a: 2x2 stride-2 transposed conv; concat with conv{3,2,1}b; conv{4,5,6}{c,d} | 128, 64, 256 | 131K, 295K/147K; 32K, 73K/37K; 66K, 664K/590K |
//! | head | sega, segb | 256, 2 | 66K, 0.5K |
//!
//! Two inconsistencies of Table I are resolved by its parameter counts: (1) `sega` is
//! printed as a 3x3 convolution, but its 66K parameters are those of a 1x1 convolution
//! 256 -> 256 (a 3x3 one would have 590K), so it is 1x1; (2) `upconv5a` is printed with
//! input conv4c, which would skip conv4d; it takes conv4d, as every other upblock takes
//! the last convolution of the block before. The decoder's last width is 256 (upconv6a
//! 64 -> 256 has 66K parameters). With 3 input slices the network has 3,279,842 trainable
//! parameters (convolutions 3,275,618 + BatchNorm scales and shifts 4,224), the "3.28
//! million" of Section III.B.1; BatchNorm running statistics are buffers, not counted.

use crate::layers;
use candle_core::Tensor;
use candle_nn::{
    BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig,
    VarBuilder,
};
use metricunet_core::{
    inventory, Backbone, BackboneContext, BackboneOutput, BackbonePlugin, CoreError, ParamSpec,
    Params, Result,
};

/// Encoder widths of Table I.
pub const PAPER_ENCODER: [usize; 4] = [32, 64, 128, 256];
/// Decoder widths of Table I (upblocks 1-3).
pub const PAPER_DECODER: [usize; 3] = [128, 64, 256];

/// Shape of a UNet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UNetConfig {
    pub in_channels: usize,
    /// Widths of the encoder levels, top to bottom; `len - 1` poolings.
    pub encoder: Vec<usize>,
    /// Widths of the upblocks, bottom to top; `encoder.len() - 1` of them. The last one is
    /// the embedding width.
    pub decoder: Vec<usize>,
    /// Detach the embedding before the segmentation head (MetricUNet-R-Sep).
    pub detach_head: bool,
}

impl UNetConfig {
    /// Table I with `in_channels` input slices.
    pub fn paper(in_channels: usize) -> Self {
        Self {
            in_channels,
            encoder: PAPER_ENCODER.to_vec(),
            decoder: PAPER_DECODER.to_vec(),
            detach_head: false,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |path: &str, message: String| CoreError::Param {
            path: path.into(),
            message,
        };
        if self.encoder.len() < 2 {
            return Err(bad(
                "encoder",
                format!("at least 2 levels needed, got {:?}", self.encoder),
            ));
        }
        if self.decoder.len() + 1 != self.encoder.len() {
            return Err(bad(
                "decoder",
                format!(
                    "{} widths needed (one per upblock) for encoder {:?}, got {:?}",
                    self.encoder.len() - 1,
                    self.encoder,
                    self.decoder
                ),
            ));
        }
        if self.in_channels == 0 || self.encoder.iter().chain(&self.decoder).any(|&w| w == 0) {
            return Err(bad(
                "encoder",
                "widths and input channels must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Input height and width must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        1 << (self.encoder.len() - 1)
    }
}

/// 3x3 (or 1x1) convolution + BatchNorm + ReLU.
#[derive(Debug, Clone)]
struct ConvBnRelu {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBnRelu {
    fn new(cin: usize, cout: usize, k: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding: k / 2,
            ..Default::default()
        };
        let conv = layers::conv2d(cin, cout, k, cfg, vb.pp("conv"))?;
        let bn = candle_nn::batch_norm(cout, BatchNormConfig::default(), vb.pp("bn"))?;
        Ok(Self { conv, bn })
    }

    /// On the channel concatenation `[a, b]` (not formed on the CPU).
    fn forward_cat(&self, a: &Tensor, b: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (w, bias) = (self.conv.weight(), self.conv.bias());
        metricunet_ops::conv_bn_relu::conv_cat_bn_relu(a, b, w, bias, &self.bn, train)
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (w, bias) = (self.conv.weight(), self.conv.bias());
        metricunet_ops::conv_bn_relu::conv_bn_relu(x, w, bias, &self.bn, train)
    }
}

/// `conv` (stride 1, padding k / 2) through [`metricunet_ops::conv::conv2d_same`], whose backward is
/// faster on the CPU than candle's.
fn conv_same(conv: &Conv2d, x: &Tensor) -> candle_core::Result<Tensor> {
    let y = metricunet_ops::conv::conv2d_same(x, conv.weight())?;
    match conv.bias() {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

/// 2x2 max-pool with stride 2 ([`metricunet_ops::max_pool::max_pool_2x2`]: its own op on the
/// CPU, reshape + max elsewhere; candle 0.11's `max_pool2d` backward scales gradients wrongly,
/// see `shared/notes/stack-facts.md`).
pub fn max_pool_2x2(x: &Tensor) -> candle_core::Result<Tensor> {
    metricunet_ops::max_pool::max_pool_2x2(x)
}

/// A UNet as in Table I, with any number of levels and widths.
#[derive(Debug, Clone)]
pub struct UNet {
    cfg: UNetConfig,
    encoder: Vec<(ConvBnRelu, ConvBnRelu)>,
    up: Vec<ConvTranspose2d>,
    decoder: Vec<(ConvBnRelu, ConvBnRelu)>,
    sega: ConvBnRelu,
    segb: Conv2d,
}

impl UNet {
    /// Build with Table I's layer names (`conv1a`, ..., `upconv4a`, `conv4c`, ..., `sega`,
    /// `segb`) under `vb`.
    pub fn new(cfg: UNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.check()?;
        let levels = cfg.encoder.len();
        let mut encoder = Vec::with_capacity(levels);
        let mut cin = cfg.in_channels;
        for (i, &w) in cfg.encoder.iter().enumerate() {
            let a = ConvBnRelu::new(cin, w, 3, vb.pp(format!("conv{}a", i + 1)))?;
            let b = ConvBnRelu::new(w, w, 3, vb.pp(format!("conv{}b", i + 1)))?;
            encoder.push((a, b));
            cin = w;
        }
        let mut up = Vec::with_capacity(levels - 1);
        let mut decoder = Vec::with_capacity(levels - 1);
        for (j, &w) in cfg.decoder.iter().enumerate() {
            let level = levels + j; // Table I: upblock 1 is conv4c/d for 4 levels
            let tcfg = ConvTranspose2dConfig {
                stride: 2,
                ..Default::default()
            };
            up.push(layers::conv_transpose2d(
                cin,
                w,
                2,
                tcfg,
                vb.pp(format!("upconv{level}a")),
            )?);
            let skip = cfg.encoder[levels - 2 - j];
            let c = ConvBnRelu::new(w + skip, w, 3, vb.pp(format!("conv{level}c")))?;
            let d = ConvBnRelu::new(w, w, 3, vb.pp(format!("conv{level}d")))?;
            decoder.push((c, d));
            cin = w;
        }
        let sega = ConvBnRelu::new(cin, cin, 1, vb.pp("sega"))?;
        let segb = layers::conv2d(cin, 2, 1, Conv2dConfig::default(), vb.pp("segb"))?;
        Ok(Self {
            cfg,
            encoder,
            up,
            decoder,
            sega,
            segb,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }
}

impl Backbone for UNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<BackboneOutput> {
        let (_, c, h, w) = x.dims4()?;
        let m = self.cfg.size_multiple();
        if c != self.cfg.in_channels || h % m != 0 || w % m != 0 || h == 0 || w == 0 {
            return Err(CoreError::Shape(format!(
                "UNet input {:?}: expected {} channels and height, width multiples of {m}",
                x.dims(),
                self.cfg.in_channels
            )));
        }
        let last = self.encoder.len() - 1;
        let mut skips = Vec::with_capacity(last);
        let mut cur = x.clone();
        for (i, (a, b)) in self.encoder.iter().enumerate() {
            let y = b.forward_t(&a.forward_t(&cur, train)?, train)?;
            if i < last {
                cur = max_pool_2x2(&y)?;
                skips.push(y);
            } else {
                cur = y;
            }
        }
        for ((up, (c, d)), skip) in self.up.iter().zip(&self.decoder).zip(skips.iter().rev()) {
            let u =
                metricunet_ops::conv_transpose::conv_transpose_2x2(&cur, up.weight(), up.bias())?;
            cur = d.forward_t(&c.forward_cat(&u, skip, train)?, train)?;
        }
        let head_in = if self.cfg.detach_head {
            cur.detach()
        } else {
            cur.clone()
        };
        let logits = conv_same(&self.segb, &self.sega.forward_t(&head_in, train)?)?;
        Ok(BackboneOutput {
            logits,
            embedding: cur,
        })
    }

    fn embedding_channels(&self) -> usize {
        self.cfg.decoder.last().copied().unwrap_or(0)
    }
}

const ENCODER: ParamSpec = ParamSpec::int_list(
    "encoder",
    &[32, 64, 128, 256],
    1,
    "encoder widths, top to bottom (Table I: 32, 64, 128, 256)",
);
const DECODER: ParamSpec = ParamSpec::int_list(
    "decoder",
    &[128, 64, 256],
    1,
    "upblock widths, bottom to top; the last is the embedding width (Table I: 128, 64, 256)",
);
const PAPER_PARAMS: &[ParamSpec] = &[ENCODER, DECODER];

fn build(
    p: &Params,
    ctx: &BackboneContext,
    vb: VarBuilder<'_>,
    detach_head: bool,
) -> Result<Box<dyn Backbone>> {
    let cfg = UNetConfig {
        in_channels: ctx.in_channels,
        encoder: p.usize_list("encoder")?,
        decoder: p.usize_list("decoder")?,
        detach_head,
    };
    Ok(Box::new(UNet::new(cfg, vb)?))
}

inventory::submit! {
    BackbonePlugin {
        name: "unet",
        description: "UNet of Table I (baseline): 3 poolings, skip concatenations, 1x1 head",
        params: PAPER_PARAMS,
        build: |p: &Params, ctx: &BackboneContext, vb: VarBuilder<'_>| build(p, ctx, vb, false),
    }
}

inventory::submit! {
    BackbonePlugin {
        name: "metricunet",
        description: "MetricUNet: the Table I UNet whose conv6d map feeds the voxel-metric module",
        params: PAPER_PARAMS,
        build: |p: &Params, ctx: &BackboneContext, vb: VarBuilder<'_>| build(p, ctx, vb, false),
    }
}

inventory::submit! {
    BackbonePlugin {
        name: "metricunet-sep",
        description: "MetricUNet-Sep: the head sees conv6d detached (encoder-decoder learns from the metric loss only)",
        params: PAPER_PARAMS,
        build: |p: &Params, ctx: &BackboneContext, vb: VarBuilder<'_>| build(p, ctx, vb, true),
    }
}

/// Number of trainable values in `vars` (BatchNorm running statistics excluded).
pub fn trainable_parameters(vars: &candle_nn::VarMap) -> usize {
    let data = vars.data().lock().map(|d| {
        d.iter()
            .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
            .map(|(_, v)| v.elem_count())
            .sum()
    });
    data.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn net(cfg: UNetConfig) -> (VarMap, UNet) {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let n = UNet::new(cfg, vb).expect("unet");
        (vars, n)
    }

    #[test]
    fn paper_network_has_table_one_parameter_count() {
        let (vars, _) = net(UNetConfig::paper(3));
        assert_eq!(trainable_parameters(&vars), 3_279_842);
        let d = vars.data().lock().expect("lock");
        let count = |name: &str| d.get(name).map(|v| v.elem_count()).expect(name);
        // Table I's per-layer column (weights + biases)
        assert_eq!(count("conv1a.conv.weight") + count("conv1a.conv.bias"), 896); // 0.9K
        assert_eq!(count("upconv4a.weight") + count("upconv4a.bias"), 131_200); // 131K
        assert_eq!(count("upconv6a.weight") + count("upconv6a.bias"), 65_792); // 66K
        assert_eq!(
            count("conv6c.conv.weight") + count("conv6c.conv.bias"),
            663_808
        ); // 664K
        assert_eq!(count("sega.conv.weight") + count("sega.conv.bias"), 65_792); // 66K: a 1x1 conv
        assert_eq!(count("segb.weight") + count("segb.bias"), 514); // 0.5K
    }

    #[test]
    fn shapes_and_size_check() {
        let cfg = UNetConfig {
            in_channels: 3,
            encoder: vec![4, 8, 8, 16],
            decoder: vec![8, 4, 6],
            detach_head: false,
        };
        let (_, n) = net(cfg);
        let x = Tensor::zeros((2, 3, 16, 24), DType::F32, &Device::Cpu).expect("x");
        let out = n.forward_t(&x, true).expect("forward");
        assert_eq!(out.logits.dims(), &[2, 2, 16, 24]);
        assert_eq!(out.embedding.dims(), &[2, 6, 16, 24]);
        assert_eq!(n.embedding_channels(), 6);
        let bad = Tensor::zeros((1, 3, 12, 16), DType::F32, &Device::Cpu).expect("x");
        assert!(n
            .forward_t(&bad, false)
            .unwrap_err()
            .to_string()
            .contains("multiples of 8"));
        let bad = Tensor::zeros((1, 5, 16, 16), DType::F32, &Device::Cpu).expect("x");
        assert!(n.forward_t(&bad, false).is_err());
    }

    #[test]
    fn bad_widths_are_errors() {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let cfg = UNetConfig {
            in_channels: 3,
            encoder: vec![4, 8],
            decoder: vec![8, 4],
            detach_head: false,
        };
        assert!(UNet::new(cfg, vb).is_err());
    }

    #[test]
    fn max_pool_matches_hand_values_and_gradient() {
        let x = Var::from_vec(
            (0..16).map(|v| ((v * 7) % 16) as f64).collect::<Vec<_>>(),
            (1, 1, 4, 4),
            &Device::Cpu,
        )
        .expect("var");
        let y = max_pool_2x2(x.as_tensor()).expect("pool");
        // rows: [0 7 14 5 / 12 3 10 1 / 8 15 6 13 / 4 11 2 9]
        assert_eq!(
            y.flatten_all()
                .and_then(|t| t.to_vec1::<f64>())
                .expect("vec"),
            vec![12.0, 14.0, 15.0, 13.0]
        );
        let g = y.sum_all().and_then(|s| s.backward()).expect("backward");
        let g = g
            .get(&x)
            .expect("grad")
            .flatten_all()
            .and_then(|t| t.to_vec1::<f64>())
            .expect("vec");
        let mut want = vec![0.0; 16];
        for i in [4, 2, 9, 11] {
            want[i] = 1.0;
        }
        assert_eq!(g, want);
    }

    /// -Sep: cross-entropy alone reaches the head but not the layers up to conv6d.
    #[test]
    fn sep_detaches_the_head() {
        for detach_head in [false, true] {
            let cfg = UNetConfig {
                in_channels: 3,
                encoder: vec![4, 4],
                decoder: vec![4],
                detach_head,
            };
            let (vars, n) = net(cfg);
            let x = Tensor::ones((1, 3, 4, 4), DType::F32, &Device::Cpu).expect("x");
            let out = n.forward_t(&x, true).expect("forward");
            let grads = out
                .logits
                .sqr()
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward");
            let d = vars.data().lock().expect("lock");
            let has = |name: &str| d.get(name).and_then(|v| grads.get(v)).is_some();
            assert!(has("segb.weight") && has("sega.conv.weight"));
            assert_eq!(has("conv1a.conv.weight"), !detach_head);
            assert_eq!(has("conv2c.conv.weight"), !detach_head);
        }
    }
}
