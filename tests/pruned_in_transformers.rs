//! What `prune` writes computes, in pollard, the logits transformers computes from the same
//! folder: for each family (Llama, Nemotron, Qwen3), every axis pruned at once (hidden channels,
//! MLP neurons, query heads under GQA, one layer). The references in
//! tests/fixtures/pruned-in-transformers were written by scripts/check_pruned_in_transformers.py
//! (transformers 5.24, CPU, float32), which also checked that transformers loads each output as
//! the input's class.

use std::path::Path;
use std::process::Command;

use pollard_model::candle_core::{DType, Device, Tensor};
use pollard_model::{Llama, Mode};

/// Must match CASES in scripts/check_pruned_in_transformers.py.
const CASES: [(&str, &str, &str); 3] = [
    ("llama", "tiny-llama", "{ method: magnitude, target: { hidden: 48, ffn: 128, heads: 4, layers: 3 }, depth: { drop: [2] } }"),
    ("nemotron", "tiny-nemotron", "{ method: magnitude, target: { hidden: 48, ffn: 128, heads: 4, layers: 3 }, depth: { drop: [1] } }"),
    ("qwen3", "tiny-qwen3", "{ method: magnitude, target: { hidden: 48, ffn: 96, heads: 2, layers: 2 }, depth: { drop: [1] } }"),
];

fn pollard(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pollard"))
        .args(args)
        .current_dir(dir)
        .env_remove("POLLARD_GPUS")
        .env_remove("POLLARD_CACHE_DIR")
        .output()
        .expect("pollard runs");
    assert!(
        out.status.success(),
        "pollard {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

#[test]
fn pruned_outputs_compute_the_logits_transformers_computes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (family, fixture, params) in CASES {
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                root.join("tests/fixtures/pruned-in-transformers")
                    .join(format!("{family}.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            r["prune"], params,
            "{family}: the reference was made for other params"
        );
        let ws = tempfile::tempdir().unwrap();
        let src = root.join("tests/fixtures").join(fixture);
        std::fs::write(
            ws.path().join("pollard.yaml"),
            format!(
                "pipeline: check\nstages:\n  base:\n    kind: load\n    with: {{ path: {} }}\n  prune:\n    kind: prune\n    inputs: {{ model: base }}\n    with: {params}\n",
                src.display()
            ),
        )
        .unwrap();
        pollard(ws.path(), &["run", "--plain"]);
        let out = pollard(ws.path(), &["show", "prune", "--path"]);
        let m = Llama::load_hf(
            Path::new(out.trim()),
            DType::F32,
            &Device::Cpu,
            Mode::Frozen,
        )
        .unwrap();
        let c = m.config();
        let read = &r["config_read"];
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
                c.num_hidden_layers
            ),
            (
                read["hidden_size"].as_u64().unwrap() as usize,
                read["intermediate_size"].as_u64().unwrap() as usize,
                read["num_attention_heads"].as_u64().unwrap() as usize,
                read["num_key_value_heads"].as_u64().unwrap() as usize,
                read["head_dim"].as_u64().unwrap() as usize,
                read["num_hidden_layers"].as_u64().unwrap() as usize,
            ),
            "{family}: transformers read other sizes"
        );
        let rows: Vec<Vec<u32>> = serde_json::from_value(r["input_ids"].clone()).unwrap();
        let (b, t) = (rows.len(), rows[0].len());
        let ids = Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap();
        let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(r["logits"].clone()).unwrap();
        let v = want[0][0].len();
        let want: Vec<f32> = want.into_iter().flatten().flatten().collect();
        let want = Tensor::from_vec(want, (b, t, v), &Device::Cpu).unwrap();
        let got = m.forward(&ids).unwrap();
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!(
            "{family} ({}): max |pollard - transformers| logits = {d:.2e}",
            r["class"]
        );
        assert!(
            d < 1e-4,
            "{family}: logits differ from transformers' by {d}"
        );
    }
}
