//! Parity with transformers: every fixture in tests/fixtures (Llama, Llama 3.1, pruned Llama,
//! Nemotron, Qwen3), in both config styles, against the reference values transformers computed
//! (see tests/fixtures/*/reference.json).

use std::path::{Path, PathBuf};

use pollard_model::candle_core::{DType, Device, Tensor};
use pollard_model::{load_hf, mean_next_token_logprob, next_token_logprobs, Llama, Mode, TapSpec};
use serde_json::Value;

const FIXTURES: [&str; 5] = [
    "tiny-llama",
    "tiny-llama31",
    "tiny-llama-pruned",
    "tiny-nemotron",
    "tiny-qwen3",
];
/// The fixtures with full reference tensors (made by make_fixtures.py).
const LLAMA_FIXTURES: [&str; 3] = ["tiny-llama", "tiny-llama31", "tiny-llama-pruned"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn ids(r: &Value, dev: &Device) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(r["input_ids"].clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), dev).unwrap()
}

/// A copy of a fixture folder whose config.json is the legacy-style config.
fn legacy_copy(src: &Path) -> tempfile::TempDir {
    let td = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "reference.json"] {
        std::fs::copy(src.join(f), td.path().join(f)).unwrap();
    }
    std::fs::copy(
        src.join("config.legacy.json"),
        td.path().join("config.json"),
    )
    .unwrap();
    td
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn mean_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn check_fixture(dir: &Path, dev: &Device) {
    let r = reference(dir);
    let model = Llama::load_hf(dir, DType::F32, dev, Mode::Frozen).unwrap();
    let ids = ids(&r, dev);
    let spec = TapSpec {
        residual_out: true,
        final_norm: true,
        ..TapSpec::none()
    };
    let (logits, taps) = model.forward_with_taps(&ids, &spec).unwrap();
    let (b, t, v) = logits.dims3().unwrap();

    let want: Vec<Vec<f32>> = serde_json::from_value(r["last_position_logits"].clone()).unwrap();
    let want = Tensor::from_vec(want.concat(), (b, v), dev).unwrap();
    let got = logits.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(
        d < 1e-4,
        "{}: last-position logits differ by {d}",
        dir.display()
    );
    let mut layer_diff = 0f64;

    let lp = mean_next_token_logprob(&logits, &ids).unwrap();
    let want_lp = r["mean_next_token_logprob"].as_f64().unwrap();
    assert!(
        (lp - want_lp).abs() < 1e-5,
        "{}: mean log-prob {lp} vs {want_lp}",
        dir.display()
    );

    let want_layers: Vec<f64> = serde_json::from_value(r["layer_output_mean_abs"].clone()).unwrap();
    assert_eq!(want_layers.len(), taps.layers.len());
    for (i, (lt, w)) in taps.layers.iter().zip(&want_layers).enumerate() {
        let got = mean_abs(lt.residual_out.as_ref().unwrap());
        layer_diff = layer_diff.max((got - w).abs());
        assert!(
            (got - w).abs() < 1e-4,
            "{}: layer {i} mean |h| {got} vs {w}",
            dir.display()
        );
    }
    // The figures a report quotes (`cargo test -p pollard-model --test parity -- --nocapture`).
    eprintln!(
        "parity {}: max |logits diff| {d:.2e}, |mean log-prob diff| {:.2e}, max |layer mean |h| diff| {layer_diff:.2e}",
        dir.display(),
        (lp - want_lp).abs()
    );
    if let Some(want_fin) = r["final_norm_output_mean_abs"].as_f64() {
        let fin = mean_abs(taps.final_norm.as_ref().unwrap());
        assert!(
            (fin - want_fin).abs() < 1e-4,
            "final norm mean |h| {fin} vs {want_fin}"
        );
    }
}

fn parity_case(dev: &Device) {
    for name in FIXTURES {
        let dir = fixture(name);
        check_fixture(&dir, dev);
        let legacy = legacy_copy(&dir);
        check_fixture(legacy.path(), dev);
    }
}

#[test]
fn parity_with_transformers_cpu() {
    parity_case(&Device::Cpu);
}

#[cfg(feature = "cuda")]
#[test]
fn parity_with_transformers_cuda() {
    parity_case(&Device::new_cuda(0).unwrap());
}

/// Whole hidden-state tensors (not only their mean) match transformers' forward hooks.
#[test]
fn every_layer_output_matches_reference_tensors() {
    let dev = Device::Cpu;
    for name in LLAMA_FIXTURES {
        let dir = fixture(name);
        let refs = pollard_model::candle_core::safetensors::load(
            dir.join("reference_tensors.safetensors"),
            &dev,
        )
        .unwrap();
        let model = Llama::load_hf(&dir, DType::F32, &dev, Mode::Frozen).unwrap();
        let ids = refs["input_ids"].to_dtype(DType::U32).unwrap();
        let (logits, taps) = model.forward_with_taps(&ids, &TapSpec::all()).unwrap();
        assert!(
            max_abs_diff(&logits, &refs["logits"]) < 1e-4,
            "{name}: logits"
        );
        let lp = next_token_logprobs(&logits, &ids).unwrap();
        assert!(
            max_abs_diff(&lp, &refs["next_token_logprob"]) < 1e-4,
            "{name}: token log-probs"
        );
        for (i, lt) in taps.layers.iter().enumerate() {
            let d = max_abs_diff(
                lt.residual_out.as_ref().unwrap(),
                &refs[&format!("hidden.layer_{i}")],
            );
            assert!(d < 1e-4, "{name}: layer {i} output differs by {d}");
        }
        let d0 = max_abs_diff(
            taps.layers[0].residual_in.as_ref().unwrap(),
            &refs["hidden.embed"],
        );
        assert_eq!(d0, 0.0, "{name}: embedding output");
        let df = max_abs_diff(
            taps.final_norm.as_ref().unwrap(),
            &refs["hidden.final_norm"],
        );
        assert!(df < 1e-4, "{name}: final norm differs by {df}");
    }
}

/// The pruned fixture is tiny-llama without layer 2 and with 48 MLP neurons dropped; skipping
/// layer 2 via TapSpec and zeroing those neurons' down_proj columns must give the same function.
#[test]
fn skipping_a_layer_equals_the_structurally_pruned_model() {
    let dev = Device::Cpu;
    let r = reference(&fixture("tiny-llama-pruned"));
    let (cfg, mut w) = load_hf(&fixture("tiny-llama"), DType::F32, &dev).unwrap();
    let kept = &r["pruning"]["mlp_kept_neurons_by_original_layer"];
    for layer in [0usize, 1, 3] {
        let keep: Vec<usize> = serde_json::from_value(kept[layer.to_string()].clone()).unwrap();
        let mut mask = vec![0f32; cfg.intermediate_size];
        keep.iter().for_each(|&j| mask[j] = 1.0);
        let mask = Tensor::from_vec(mask, (1, cfg.intermediate_size), &dev).unwrap();
        let name = pollard_model::names::layer(layer, pollard_model::names::LayerTensor::Down);
        let masked = w[&name].broadcast_mul(&mask).unwrap();
        w.insert(name, masked);
    }
    let masked = Llama::new(cfg, w, Mode::Frozen).unwrap();
    let pruned = Llama::load_hf(
        &fixture("tiny-llama-pruned"),
        DType::F32,
        &dev,
        Mode::Frozen,
    )
    .unwrap();
    let ids = ids(&r, &dev);
    let a = masked
        .forward_with_taps(&ids, &TapSpec::skipping([2]))
        .unwrap()
        .0;
    let b = pruned.forward(&ids).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(
        d < 1e-4,
        "skip-layer forward differs from the pruned model by {d}"
    );
    // And skipping really changes the result.
    let full = masked.forward(&ids).unwrap();
    assert!(max_abs_diff(&full, &b) > 1e-2);
}

/// bf16 and f16 weights load, run, and stay close to the f32 result.
#[test]
fn half_precision_loads_and_runs_close_to_f32() {
    let dev = Device::Cpu;
    let dir = fixture("tiny-llama31");
    let r = reference(&dir);
    let ids = ids(&r, &dev);
    let want = r["mean_next_token_logprob"].as_f64().unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let model = Llama::load_hf(&dir, dtype, &dev, Mode::Frozen).unwrap();
        assert_eq!(model.dtype(), dtype);
        let logits = model.forward(&ids).unwrap();
        assert_eq!(logits.dtype(), dtype);
        let lp = mean_next_token_logprob(&logits, &ids).unwrap();
        let tol = if dtype == DType::BF16 { 0.1 } else { 0.01 };
        assert!(
            (lp - want).abs() < tol,
            "{dtype:?}: mean log-prob {lp} vs f32 reference {want}"
        );
    }
}
