//! `pollard model info|forward` through the binary, against the transformers fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn pollard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pollard"))
        .args(args)
        .output()
        .expect("the pollard binary runs")
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
        .unwrap()
}

fn ids_file(dir: &Path, ids: &Value) -> PathBuf {
    let p = dir.join("ids.json");
    std::fs::write(&p, ids.to_string()).unwrap();
    p
}

#[test]
fn model_forward_json_matches_transformers_for_every_fixture() {
    let td = tempfile::tempdir().unwrap();
    for name in ["tiny-llama", "tiny-llama31", "tiny-llama-pruned"] {
        let r = reference(name);
        let ids = ids_file(td.path(), &r["input_ids"]);
        let out = pollard(&[
            "model",
            "forward",
            "--model",
            fixture(name).to_str().unwrap(),
            "--ids",
            ids.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let lp = v["mean_next_token_logprob"].as_f64().unwrap();
        let want = r["mean_next_token_logprob"].as_f64().unwrap();
        assert!((lp - want).abs() < 1e-5, "{name}: {lp} vs {want}");
        let got: Vec<Vec<f64>> = serde_json::from_value(v["last_position_logits"].clone()).unwrap();
        let want: Vec<Vec<f64>> =
            serde_json::from_value(r["last_position_logits"].clone()).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len());
            let d = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(d < 1e-4, "{name}: logits differ by {d}");
        }
    }
}

#[test]
fn model_info_prints_exact_parameter_counts_and_dtype() {
    let out = pollard(&["model", "info", fixture("tiny-llama31").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("LlamaForCausalLM"), "{text}");
    // 256*96 embed + 3*(96*96*2 + 2*96*32) attention + 3*3*96*256 mlp + 7*96 norms, tied head.
    assert!(text.contains("total      320160"), "{text}");
    assert!(text.contains("lm_head    0"), "{text}");
    assert!(text.contains("dtype: f32"), "{text}");

    let out = pollard(&[
        "model",
        "info",
        fixture("tiny-llama").to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored: u64 = reference("tiny-llama")["tensors_in_model_safetensors"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    assert_eq!(v["parameters"]["total"].as_u64().unwrap(), stored);
    assert_eq!(v["stored_parameters"].as_u64().unwrap(), stored);
}

#[test]
fn model_errors_exit_2_and_name_the_problem() {
    let td = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    let cases: Vec<(Value, &str)> = vec![
        (
            serde_json::json!([[1, 2, 3], [4, 5]]),
            "sequence 1 has 2 tokens",
        ),
        (serde_json::json!([[1, 2, 300]]), "token id 300"),
        (serde_json::json!({"ids": [1]}), "list of lists"),
    ];
    for (ids, want) in cases {
        let p = ids_file(td.path(), &ids);
        let out = pollard(&[
            "model",
            "forward",
            "--model",
            model,
            "--ids",
            p.to_str().unwrap(),
            "--json",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ids}: {err}");
        assert!(err.contains(want), "{ids}: {err}");
    }
    let out = pollard(&["model", "info", td.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn a_missing_model_folder_is_said_once_not_twice() {
    // The I/O error used to be printed after the message that already embeds it.
    let out = pollard(&["model", "info", "/nonexistent-model-folder"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "error: cannot inspect model /nonexistent-model-folder: cannot read /nonexistent-model-folder/config.json: No such file or directory (os error 2)"
    );
}
