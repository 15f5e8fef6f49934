//! The convolution ops with every 3x3 layer through Winograd F(2x2, 3x3)
//! (`METRICUNET_WINOGRAD=1`, set before the first convolution of this test binary, so every
//! test here takes that path): input and weight gradients against central finite differences
//! in f64, and values and gradients equal to candle's own conv2d and its backward.

use candle_core::{Device, Tensor, Var};
use metricunet_ops::conv::{conv2d_same, conv2d_same_cat};
use metricunet_ops::conv_cpu::Geometry;
use metricunet_ops::testing::{check_gradient, random, weighted_sum};
use metricunet_ops::winograd;

fn winograd_on() {
    std::env::set_var("METRICUNET_WINOGRAD", "1");
    let g = Geometry::square(1, 2, 2, 3, 3);
    assert!(winograd::chosen(&g), "Winograd not taken");
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|f| f.to_vec1::<f64>())
        .expect("f64 values")
}

fn assert_same(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs() / (1.0 + q.abs()))
        .fold(0.0, f64::max);
    assert!(worst < 1e-12, "{what}: differs from candle's by {worst}");
}

/// Odd height and width (tiles half outside the image), one image and three.
#[test]
fn winograd_convolution_gradients_by_finite_differences() {
    winograd_on();
    for n in [1usize, 3] {
        let (xs, ws) = ([n, 3, 5, 7], [4usize, 3, 3, 3]);
        let x = random(xs.iter().product(), 41);
        let w = random(ws.iter().product(), 42);
        let t = |v: &[f64], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &Device::Cpu).expect("t");
        let (xt, wt) = (t(&x, &xs), t(&w, &ws));
        check_gradient(&format!("Winograd input (batch {n})"), &x, &xs, 60, &|v| {
            weighted_sum(&conv2d_same(v, &wt).expect("conv"), 43)
        });
        check_gradient(
            &format!("Winograd weight (batch {n})"),
            &w,
            &ws,
            108,
            &|v| weighted_sum(&conv2d_same(&xt, v).expect("conv"), 43),
        );
        // values and gradients equal to candle's conv2d (direct loops over im2col)
        let (xv, wv) = (
            Var::from_vec(x.clone(), &xs[..], &Device::Cpu).expect("x"),
            Var::from_vec(w.clone(), &ws[..], &Device::Cpu).expect("w"),
        );
        let ours = conv2d_same(&xv, &wv).expect("ours");
        let theirs = xv.conv2d(&wv, 1, 1, 1, 1).expect("candle");
        assert_same("forward", &values(&ours), &values(&theirs));
        let (go, gt) = (
            weighted_sum(&ours, 44).backward().expect("bwd"),
            weighted_sum(&theirs, 44).backward().expect("bwd"),
        );
        for (name, v) in [("input gradient", &xv), ("weight gradient", &wv)] {
            assert_same(
                name,
                &values(go.get(v).expect("ours")),
                &values(gt.get(v).expect("candle's")),
            );
        }
    }
}

/// The decoder's convolution of the skip concatenation through Winograd: all three gradients
/// against finite differences.
#[test]
fn winograd_concatenating_convolution_by_finite_differences() {
    winograd_on();
    let (as_, bs, ws) = ([2usize, 2, 4, 5], [2usize, 3, 4, 5], [3usize, 5, 3, 3]);
    let a = random(as_.iter().product(), 51);
    let b = random(bs.iter().product(), 52);
    let w = random(ws.iter().product(), 53);
    let t = |v: &[f64], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &Device::Cpu).expect("t");
    let (at, bt, wt) = (t(&a, &as_), t(&b, &bs), t(&w, &ws));
    check_gradient("Winograd cat: first input", &a, &as_, 80, &|v| {
        weighted_sum(&conv2d_same_cat(v, &bt, &wt).expect("conv"), 54)
    });
    check_gradient("Winograd cat: second input", &b, &bs, 120, &|v| {
        weighted_sum(&conv2d_same_cat(&at, v, &wt).expect("conv"), 54)
    });
    check_gradient("Winograd cat: weight", &w, &ws, 135, &|v| {
        weighted_sum(&conv2d_same_cat(&at, &bt, v).expect("conv"), 54)
    });
}
