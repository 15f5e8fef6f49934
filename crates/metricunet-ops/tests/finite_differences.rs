//! The ops' own backward passes against central finite differences in f64, and against
//! candle's ops where candle has the same op.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder, VarMap};
use metricunet_ops::testing::{check_gradient, random, weighted_sum};

fn vb(vars: &VarMap) -> VarBuilder<'_> {
    VarBuilder::from_varmap(vars, DType::F64, &Device::Cpu)
}

/// The custom "same" convolution (own backward): input and weight gradients against finite
/// differences, and equal to candle's own conv2d backward.
#[test]
fn conv2d_same_custom_backward() {
    use metricunet_ops::conv::conv2d_same;
    for k in [3usize, 1] {
        let (xs, ws) = ([2usize, 3, 5, 6], [4usize, 3, k, k]);
        let x = random(xs.iter().product(), 11);
        let w = random(ws.iter().product(), 12);
        let wt = Tensor::from_vec(w.clone(), &ws[..], &Device::Cpu).expect("w");
        let xt = Tensor::from_vec(x.clone(), &xs[..], &Device::Cpu).expect("x");
        check_gradient(&format!("conv2d_same {k}x{k} input"), &x, &xs, 60, &|t| {
            weighted_sum(&conv2d_same(t, &wt).expect("conv"), 13)
        });
        check_gradient(&format!("conv2d_same {k}x{k} weight"), &w, &ws, 60, &|t| {
            weighted_sum(&conv2d_same(&xt, t).expect("conv"), 13)
        });
        // the same gradients as candle's conv2d backward
        let (xv, wv) = (
            Var::from_vec(x.clone(), &xs[..], &Device::Cpu).expect("x"),
            Var::from_vec(w.clone(), &ws[..], &Device::Cpu).expect("w"),
        );
        let ours = weighted_sum(&conv2d_same(&xv, &wv).expect("ours"), 14)
            .backward()
            .expect("bwd");
        let theirs = weighted_sum(&xv.conv2d(&wv, k / 2, 1, 1, 1).expect("candle"), 14)
            .backward()
            .expect("bwd");
        for v in [&xv, &wv] {
            let a = ours
                .get(v)
                .expect("g")
                .flatten_all()
                .and_then(|t| t.to_vec1::<f64>())
                .expect("a");
            let b = theirs
                .get(v)
                .expect("g")
                .flatten_all()
                .and_then(|t| t.to_vec1::<f64>())
                .expect("b");
            let worst = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 1e-10,
                "{k}x{k}: differs from candle's backward by {worst}"
            );
        }
    }
}

/// The project's own 2 x 2 transposed convolution (the decoder's upsampling on the CPU):
/// input, kernel and bias gradients, at a batch below and above the thread count.
#[test]
fn conv_transpose_2x2_custom_backward() {
    use metricunet_ops::conv_transpose::conv_transpose_2x2;
    for n in [1, 3] {
        let (xs, ws) = ([n, 4, 3, 5], [4, 3, 2, 2]);
        let x = random(xs.iter().product(), 31);
        let w = random(ws.iter().product(), 32);
        let b = random(3, 33);
        let t = |v: &[f64], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &Device::Cpu).expect("t");
        let (xt, wt, bt) = (t(&x, &xs), t(&w, &ws), t(&b, &[3]));
        check_gradient(
            &format!("conv_transpose_2x2 input (batch {n})"),
            &x,
            &xs,
            60,
            &|v| weighted_sum(&conv_transpose_2x2(v, &wt, Some(&bt)).expect("up"), 34),
        );
        check_gradient(
            &format!("conv_transpose_2x2 kernel (batch {n})"),
            &w,
            &ws,
            48,
            &|v| weighted_sum(&conv_transpose_2x2(&xt, v, Some(&bt)).expect("up"), 34),
        );
        check_gradient(
            &format!("conv_transpose_2x2 bias (batch {n})"),
            &b,
            &[3],
            3,
            &|v| weighted_sum(&conv_transpose_2x2(&xt, &wt, Some(v)).expect("up"), 34),
        );
    }
}

/// The project's fused BatchNorm + ReLU with a convolution bias, in training mode (batch
/// statistics) and in inference mode (running statistics): input gradient.
#[test]
fn fused_batch_norm_relu_both_modes() {
    use metricunet_ops::bn_relu::bias_batch_norm_relu;
    let vars = VarMap::new();
    let bn: BatchNorm =
        candle_nn::batch_norm(3, BatchNormConfig::default(), vb(&vars).pp("bn")).expect("bn");
    let bias = Tensor::from_vec(random(3, 40), 3, &Device::Cpu).expect("bias");
    let x = random(4 * 3 * 3 * 3, 41);
    // move the running statistics away from (0, 1) first
    bias_batch_norm_relu(
        &Tensor::from_vec(x.clone(), (4, 3, 3, 3), &Device::Cpu).expect("x"),
        Some(&bias),
        &bn,
        true,
    )
    .expect("train step");
    for train in [false, true] {
        let name = format!("bias_batch_norm_relu (train {train})");
        check_gradient(&name, &x, &[4, 3, 3, 3], 108, &|t| {
            weighted_sum(
                &bias_batch_norm_relu(t, Some(&bias), &bn, train).expect("fwd"),
                42,
            )
        });
    }
}
