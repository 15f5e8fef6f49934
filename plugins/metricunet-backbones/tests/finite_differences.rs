//! Every layer whose backward the networks use, and a whole small network, checked against
//! central finite differences in f64 (candle 0.11's own `max_pool2d` backward is wrong,
//! which is why each op is checked rather than trusted).

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{
    BatchNorm, BatchNormConfig, Conv2dConfig, ConvTranspose2dConfig, VarBuilder, VarMap,
};
use metricunet_backbones::{max_pool_2x2, UNet, UNetConfig};
use metricunet_core::Backbone;
use metricunet_ops::testing::{check_gradient, random, weighted_sum};

fn vb(vars: &VarMap) -> VarBuilder<'_> {
    VarBuilder::from_varmap(vars, DType::F64, &Device::Cpu)
}

#[test]
fn conv2d_3x3_and_1x1() {
    for (k, pad) in [(3, 1), (1, 0)] {
        let vars = VarMap::new();
        let conv = candle_nn::conv2d(
            3,
            4,
            k,
            Conv2dConfig {
                padding: pad,
                ..Default::default()
            },
            vb(&vars).pp("c"),
        )
        .expect("conv");
        let x = random(2 * 3 * 5 * 6, 1);
        check_gradient(
            &format!("conv2d {k}x{k} (input)"),
            &x,
            &[2, 3, 5, 6],
            180,
            &|t| weighted_sum(&conv.forward(t).expect("fwd"), 2),
        );
        // and with respect to the weights
        let w = conv
            .weight()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f64>())
            .expect("w");
        let xt = Tensor::from_vec(x.clone(), (2, 3, 5, 6), &Device::Cpu).expect("x");
        let bias = conv.bias().cloned();
        let dims = conv.weight().dims().to_vec();
        check_gradient(&format!("conv2d {k}x{k} (weight)"), &w, &dims, 200, &|wt| {
            let c = candle_nn::Conv2d::new(
                wt.clone(),
                bias.clone(),
                Conv2dConfig {
                    padding: pad,
                    ..Default::default()
                },
            );
            weighted_sum(&c.forward(&xt).expect("fwd"), 2)
        });
    }
}

#[test]
fn conv_transpose_2x2_stride_2() {
    let vars = VarMap::new();
    let cfg = ConvTranspose2dConfig {
        stride: 2,
        ..Default::default()
    };
    let up = candle_nn::conv_transpose2d(4, 3, 2, cfg, vb(&vars).pp("u")).expect("tconv");
    let x = random(2 * 4 * 3 * 3, 3);
    check_gradient("conv_transpose2d (input)", &x, &[2, 4, 3, 3], 72, &|t| {
        weighted_sum(&up.forward(t).expect("fwd"), 4)
    });
    let w = up
        .weight()
        .flatten_all()
        .and_then(|t| t.to_vec1::<f64>())
        .expect("w");
    let xt = Tensor::from_vec(x, (2, 4, 3, 3), &Device::Cpu).expect("x");
    let bias = up.bias().cloned();
    check_gradient("conv_transpose2d (weight)", &w, &[4, 3, 2, 2], 48, &|wt| {
        let c = candle_nn::ConvTranspose2d::new(wt.clone(), bias.clone(), cfg);
        weighted_sum(&c.forward(&xt).expect("fwd"), 4)
    });
}

#[test]
fn batch_norm_in_training_mode() {
    let vars = VarMap::new();
    let bn: BatchNorm =
        candle_nn::batch_norm(3, BatchNormConfig::default(), vb(&vars).pp("bn")).expect("bn");
    let x = random(4 * 3 * 3 * 3, 5);
    check_gradient("batch_norm (train)", &x, &[4, 3, 3, 3], 108, &|t| {
        weighted_sum(&bn.forward_t(t, true).expect("fwd"), 6)
    });
}

#[test]
fn relu_cat_pool_and_cross_entropy() {
    // keep inputs away from ReLU's kink and from ties in the pool
    let x: Vec<f64> = random(2 * 2 * 4 * 4, 7)
        .into_iter()
        .map(|v| if v.abs() < 0.05 { v + 0.1 } else { v })
        .collect();
    check_gradient("relu", &x, &[2, 2, 4, 4], 64, &|t| {
        weighted_sum(&t.relu().expect("relu"), 8)
    });
    check_gradient("max_pool_2x2", &x, &[2, 2, 4, 4], 64, &|t| {
        weighted_sum(&max_pool_2x2(t).expect("pool"), 9)
    });
    let other = Tensor::from_vec(random(2 * 3 * 4 * 4, 10), (2, 3, 4, 4), &Device::Cpu).expect("o");
    check_gradient("cat", &x, &[2, 2, 4, 4], 64, &|t| {
        weighted_sum(&Tensor::cat(&[t, &other], 1).expect("cat"), 11)
    });
    let target = Tensor::from_vec(
        (0..32u32).map(|i| i % 2).collect::<Vec<_>>(),
        32,
        &Device::Cpu,
    )
    .expect("t");
    check_gradient("cross_entropy", &random(32 * 2, 12), &[32, 2], 64, &|t| {
        candle_nn::loss::cross_entropy(t, &target).expect("ce")
    });
}

/// The whole (small) UNet in training mode: d(loss)/d(input) and d(loss)/d(weights).

#[test]
fn whole_small_unet() {
    let vars = VarMap::new();
    let cfg = UNetConfig {
        in_channels: 3,
        encoder: vec![3, 4, 4],
        decoder: vec![4, 3],
        detach_head: false,
    };
    let net = UNet::new(cfg, vb(&vars)).expect("unet");
    // candle initialises from an unseeded RNG; fixed weights keep this check deterministic
    // (with random ones an input can land on a ReLU kink or a pooling tie now and then)
    {
        let d = vars.data().lock().expect("lock");
        let mut names: Vec<&String> = d.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            let var = &d[name];
            let n = var.elem_count();
            let values: Vec<f64> = if name.ends_with("running_var") {
                vec![1.0; n]
            } else if name.ends_with("running_mean") {
                vec![0.0; n]
            } else if name.contains(".bn.") && name.ends_with(".weight") {
                random(n, 100 + i as u64)
                    .into_iter()
                    .map(|v| 1.0 + 0.5 * v)
                    .collect()
            } else {
                random(n, 100 + i as u64)
                    .into_iter()
                    .map(|v| 0.5 * v)
                    .collect()
            };
            var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu).expect("t"))
                .expect("set");
        }
    }
    let x = random(2 * 3 * 8 * 8, 13);
    let loss = |out: metricunet_core::BackboneOutput| {
        let ce = {
            let (n, c, h, w) = out.logits.dims4().expect("dims");
            let flat = out
                .logits
                .permute((0, 2, 3, 1))
                .and_then(|t| t.reshape((n * h * w, c)))
                .expect("flat");
            let target = Tensor::from_vec(
                (0..(n * h * w) as u32)
                    .map(|i| u32::from(i % 5 == 0))
                    .collect::<Vec<_>>(),
                n * h * w,
                &Device::Cpu,
            )
            .expect("target");
            candle_nn::loss::cross_entropy(&flat, &target).expect("ce")
        };
        (ce + weighted_sum(&out.embedding, 14) * 0.01).expect("loss")
    };
    check_gradient("UNet (input)", &x, &[2, 3, 8, 8], 60, &|t| {
        loss(net.forward_t(t, true).expect("fwd"))
    });
    // weights deep in the encoder and in the decoder, through every layer after them
    let xt = Tensor::from_vec(x, (2, 3, 8, 8), &Device::Cpu).expect("x");
    for name in ["conv2a.conv.weight", "upconv3a.weight", "conv4d.bn.weight"] {
        let var = {
            let d = vars.data().lock().expect("lock");
            d.get(name).expect("var").clone()
        };
        let w0 = var
            .flatten_all()
            .and_then(|t| t.to_vec1::<f64>())
            .expect("w");
        let dims = var.dims().to_vec();
        let grads = loss(net.forward_t(&xt, true).expect("fwd"))
            .backward()
            .expect("backward");
        let g = grads
            .get(&var)
            .expect("gradient")
            .flatten_all()
            .and_then(|t| t.to_vec1::<f64>())
            .expect("g");
        let eval = |w: Vec<f64>| {
            var.set(&Tensor::from_vec(w, dims.as_slice(), &Device::Cpu).expect("t"))
                .expect("set");
            loss(net.forward_t(&xt, true).expect("fwd"))
                .to_scalar::<f64>()
                .expect("scalar")
        };
        let eps = 1e-5;
        for i in (0..w0.len()).step_by((w0.len() / 30).max(1)) {
            let (mut up, mut down) = (w0.clone(), w0.clone());
            up[i] += eps;
            down[i] -= eps;
            let fd = (eval(up) - eval(down)) / (2.0 * eps);
            let err = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-3);
            assert!(
                err < 1e-4,
                "UNet {name}[{i}]: finite difference {fd}, backward {}",
                g[i]
            );
        }
        eval(w0);
    }
}
