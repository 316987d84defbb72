//! Tests of the losses: known values, fused-vs-primitive parity (values and gradients),
//! finite-difference gradient checks in f64, no gradient into the teacher, and input errors.

use candle_core::{DType, Device, Tensor, Var};

use super::kernels::KlKind;
use super::*;

fn noise(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn tensor(dims: &[usize], seed: u64, amp: f32, dtype: DType) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(noise(n, seed, amp), dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn targets(n: usize, v: usize, seed: u64) -> Tensor {
    let ids: Vec<u32> = noise(n, seed, 1.0)
        .iter()
        .map(|x| ((x.abs() * 1e4) as usize % v) as u32)
        .collect();
    Tensor::from_vec(ids, n, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    scalar(
        &(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap(),
    )
}

/// Every loss as (name, fused, reference) on a student Var and a teacher tensor of the same
/// shape (cross-entropy uses fixed targets instead of the teacher).
type LossFn = Box<dyn Fn(&Tensor, &Tensor) -> Tensor>;

fn cases(targets_for_ce: Tensor) -> Vec<(&'static str, LossFn, LossFn)> {
    let (t1, t2) = (targets_for_ce.clone(), targets_for_ce);
    let as_rows = |x: &Tensor| x.reshape(((), *x.dims().last().unwrap())).unwrap();
    vec![
        (
            "cross_entropy",
            Box::new(move |s, _| cross_entropy(s, &t1).unwrap()),
            Box::new(move |s, _| {
                reference::cross_entropy(&as_rows(s), &t2.flatten_all().unwrap()).unwrap()
            }),
        ),
        (
            "forward_kl T=1",
            Box::new(|s, t| forward_kl(s, t, 1.0).unwrap()),
            Box::new(move |s, t| {
                reference::kl(KlKind::Forward, &as_rows(s), &as_rows(t), 1.0).unwrap()
            }),
        ),
        (
            "forward_kl T=2.5",
            Box::new(|s, t| forward_kl(s, t, 2.5).unwrap()),
            Box::new(move |s, t| {
                reference::kl(KlKind::Forward, &as_rows(s), &as_rows(t), 2.5).unwrap()
            }),
        ),
        (
            "reverse_kl T=0.7",
            Box::new(|s, t| reverse_kl(s, t, 0.7).unwrap()),
            Box::new(move |s, t| {
                reference::kl(KlKind::Reverse, &as_rows(s), &as_rows(t), 0.7).unwrap()
            }),
        ),
        (
            "cosine",
            Box::new(|s, t| cosine(s, t).unwrap()),
            Box::new(move |s, t| reference::cosine(&as_rows(s), &as_rows(t)).unwrap()),
        ),
        (
            "mse",
            Box::new(|s, t| mse(s, t).unwrap()),
            Box::new(move |s, t| reference::mse(&as_rows(s), &as_rows(t)).unwrap()),
        ),
    ]
}

/// The fused losses (on the CPU) or their device path agree with the primitive composition.
fn losses_case(dev: &Device) {
    // Rank 3 input (batch, seq, vocab) exercises the flattening; big enough for parallel rows.
    let dims = [3, 50, 300];
    let ids = targets(150, 300, 9).reshape((3, 50)).unwrap();
    for (name, fused, reference) in cases(ids.to_device(dev).unwrap()) {
        let s =
            Var::from_tensor(&tensor(&dims, 1, 4.0, DType::F32).to_device(dev).unwrap()).unwrap();
        let t = tensor(&dims, 2, 4.0, DType::F32).to_device(dev).unwrap();
        let (lf, lr) = (fused(s.as_tensor(), &t), reference(s.as_tensor(), &t));
        let (vf, vr) = (scalar(&lf), scalar(&lr));
        assert!(
            (vf - vr).abs() <= 1e-5 * vr.abs().max(1.0),
            "{name}: fused {vf} vs reference {vr}"
        );
        let gf = lf.backward().unwrap().get(s.as_tensor()).cloned().unwrap();
        let gr = lr.backward().unwrap().get(s.as_tensor()).cloned().unwrap();
        assert_eq!(gf.dims(), &dims, "{name}: gradient has the input's shape");
        let scale = scalar(&gr.abs().unwrap().max_all().unwrap());
        let d = max_abs_diff(&gf, &gr);
        // f32 on both sides: differences of probabilities lose ~1e-5 of the largest gradient.
        assert!(
            d <= 1e-4 * scale.max(1e-6),
            "{name}: max |grad diff| {d} (grad scale {scale})"
        );
    }
}

#[test]
fn fused_losses_match_primitive_reference_in_value_and_gradient() {
    losses_case(&Device::Cpu);
}

#[cfg(feature = "cuda")]
#[test]
fn losses_cuda() {
    losses_case(&Device::new_cuda(0).unwrap());
}

#[test]
fn finite_difference_gradient_checks_in_f64() {
    let (n, w) = (4, 7);
    for (name, fused, _) in cases(targets(n, w, 5)) {
        let x0 = tensor(&[n, w], 11, 2.0, DType::F64);
        let t = tensor(&[n, w], 12, 2.0, DType::F64);
        let s = Var::from_tensor(&x0).unwrap();
        // Scale the loss by 3 so the incoming gradient is not 1 (checks its propagation).
        let loss = (fused(s.as_tensor(), &t) * 3.0).unwrap();
        let analytic: Vec<f64> = loss
            .backward()
            .unwrap()
            .get(s.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for k in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[k] += delta;
                let x = Tensor::from_vec(v, (n, w), &Device::Cpu).unwrap();
                3.0 * scalar(&fused(&x, &t))
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - analytic[k]).abs() <= 1e-7 + 1e-6 * numeric.abs(),
                "{name}: element {k}: finite difference {numeric} vs analytic {}",
                analytic[k]
            );
        }
    }
}

#[test]
fn known_values() {
    // Uniform logits: cross-entropy is ln(v) whatever the target.
    let z = Tensor::zeros((5, 64), DType::F32, &Device::Cpu).unwrap();
    let ce = scalar(&cross_entropy(&z, &targets(5, 64, 1)).unwrap());
    assert!((ce - 64f64.ln()).abs() < 1e-6, "{ce}");
    // A confident correct prediction has near-zero loss; i64 targets work too.
    let z = Tensor::new(&[[20f32, 0.0, 0.0]], &Device::Cpu).unwrap();
    let t = Tensor::new(&[0i64], &Device::Cpu).unwrap();
    assert!(scalar(&cross_entropy(&z, &t).unwrap()) < 1e-8);
    // Identical distributions: both KLs are zero, cosine is 0, mse is 0.
    let a = tensor(&[6, 10], 3, 3.0, DType::F32);
    assert!(scalar(&forward_kl(&a, &a, 2.0).unwrap()).abs() < 1e-6);
    assert!(scalar(&reverse_kl(&a, &a, 2.0).unwrap()).abs() < 1e-6);
    assert!(scalar(&cosine(&a, &a).unwrap()).abs() < 1e-6);
    assert_eq!(scalar(&mse(&a, &a).unwrap()), 0.0);
    // Opposite vectors: cosine loss 2. mse of a vs 0 is mean a².
    let neg = a.neg().unwrap();
    assert!((scalar(&cosine(&a, &neg).unwrap()) - 2.0).abs() < 1e-6);
    let zero = a.zeros_like().unwrap();
    let expect = scalar(&a.sqr().unwrap().mean_all().unwrap());
    assert!((scalar(&mse(&a, &zero).unwrap()) - expect).abs() < 1e-6);
    // bf16 inputs are computed in f32.
    let bf = a.to_dtype(DType::BF16).unwrap();
    assert!(scalar(&forward_kl(&bf, &bf, 1.0).unwrap()).abs() < 1e-6);
}

#[test]
fn teacher_side_gets_no_gradient() {
    let s = Var::from_tensor(&tensor(&[4, 9], 1, 1.0, DType::F32)).unwrap();
    let t = Var::from_tensor(&tensor(&[4, 9], 2, 1.0, DType::F32)).unwrap();
    for loss in [
        forward_kl(s.as_tensor(), t.as_tensor(), 1.0).unwrap(),
        reverse_kl(s.as_tensor(), t.as_tensor(), 1.0).unwrap(),
        cosine(s.as_tensor(), t.as_tensor()).unwrap(),
        mse(s.as_tensor(), t.as_tensor()).unwrap(),
    ] {
        let g = loss.backward().unwrap();
        assert!(g.get(s.as_tensor()).is_some());
        assert!(
            g.get(t.as_tensor()).is_none(),
            "the teacher must not receive a gradient"
        );
    }
}

#[test]
fn bad_inputs_give_errors_naming_the_problem() {
    let z = tensor(&[2, 5], 1, 1.0, DType::F32);
    let bad = Tensor::new(&[1u32, 7], &Device::Cpu).unwrap();
    let e = cross_entropy(&z, &bad).unwrap_err().to_string();
    assert!(
        e.contains("target 7") && e.contains("row 1") && e.contains("vocabulary of 5"),
        "{e}"
    );
    let e = cross_entropy(&z, &Tensor::new(&[1u32], &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 targets") && e.contains("2 rows"), "{e}");
    let e = cross_entropy(&z, &z).unwrap_err().to_string();
    assert!(e.contains("integer"), "{e}");
    let e = forward_kl(&z, &tensor(&[2, 6], 1, 1.0, DType::F32), 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("forward_kl") && e.contains("[2, 5]") && e.contains("[2, 6]"),
        "{e}"
    );
    let e = reverse_kl(&z, &z, 0.0).unwrap_err().to_string();
    assert!(e.contains("temperature"), "{e}");
    let e = mse(
        &Tensor::new(1f32, &Device::Cpu).unwrap(),
        &Tensor::new(1f32, &Device::Cpu).unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("scalar"), "{e}");
}
