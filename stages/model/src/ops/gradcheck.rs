//! Test helper: central finite differences against candle's backward for the custom ops.

use candle_core::{DType, Device, Tensor, Var};

use crate::rng::SeededRng;

/// A tensor of N(0,1) samples from a seeded generator.
pub fn rand_tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(SeededRng::new(seed).normal_vec(n, 0.0, 1.0), shape, dev)
        .expect("shape matches length")
}

/// The largest `|a - b|` over all elements, compared in f32.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Checks d/d(inputs) of `sum(f(inputs) * P)` (P a fixed random projection) against central
/// differences with step 1e-2, on up to 64 elements of every input. Fails when
/// `|numeric - analytic| > tol * (1 + |analytic|)`.
pub fn check_grads(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    tol: f64,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let vt: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&vt).unwrap();
    let p = rand_tensor(y.dims(), 4242, y.device());
    let loss = |y: &Tensor| -> f64 {
        (y.to_dtype(DType::F64).unwrap() * p.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = (y * &p).unwrap().sum_all().unwrap().backward().unwrap();
    let h = 1e-2f32;
    for (i, v) in vars.iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("input {i} received no gradient"))
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = inputs[i].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let step = (base.len() / 64).max(1);
        for k in (0..base.len()).step_by(step) {
            let eval = |delta: f32| {
                let mut x = base.clone();
                x[k] += delta;
                let xt = Tensor::from_vec(x, inputs[i].dims(), inputs[i].device()).unwrap();
                let mut args = inputs.to_vec();
                args[i] = xt;
                loss(&f(&args).unwrap())
            };
            let num = (eval(h) - eval(-h)) / (2.0 * h as f64);
            let ana = g[k] as f64;
            assert!(
                (num - ana).abs() <= tol * (1.0 + ana.abs()),
                "input {i} element {k}: finite difference {num} vs backward {ana}"
            );
        }
    }
}

/// Checks that `composed` (the primitive composition that runs off-CPU) gives the same output
/// and the same input gradients (of `sum(y * P)`) as `op` (the CPU kernel), within `tol`.
pub fn assert_same_as_composition(
    inputs: &[Tensor],
    op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    composed: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    tol: f32,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let vt: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (op(&vt).unwrap(), composed(&vt).unwrap());
    let max = |t: Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let d = max((&a - &b).unwrap());
    assert!(d <= tol, "forward differs by {d}");
    let p = rand_tensor(a.dims(), 4343, a.device());
    let ga = (a * &p).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * &p).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in vt.iter().enumerate() {
        let d = max((ga.get(v).unwrap() - gb.get(v).unwrap()).unwrap());
        assert!(d <= tol * 10.0, "gradient of input {i} differs by {d}");
    }
}
