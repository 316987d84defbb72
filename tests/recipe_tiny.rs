//! Every recipe in pipelines/ validates and plans through the engine with the built-in stage
//! kinds, and the paper recipes estimate memory for their real shapes without any weights. The
//! tiny recipe's end-to-end run is in `recipe_tiny_cli.rs` (through the binary).

use std::path::{Path, PathBuf};

use pollard_engine::exec::plan_resources;
use pollard_engine::plan::Selection;
use pollard_engine::{Inventory, PipelineSpec, Registry, Source};

fn registry() -> Registry {
    let mut reg = Registry::new();
    pollard_stages::register(&mut reg);
    reg
}

fn pipelines() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

fn load(name: &str) -> PipelineSpec {
    let text = std::fs::read_to_string(pipelines().join(name)).unwrap();
    let src = Source::new(name, pipelines(), text);
    match pollard_engine::load(&src, &registry()) {
        Ok(s) => s,
        Err(d) => panic!("{name} does not validate:\n{d:?}"),
    }
}

/// No GPUs, and host memory not limited: the paper recipes plan here though this machine could
/// not run them.
fn any_host() -> Inventory {
    Inventory {
        host_memory: 0,
        ..Inventory::resolve(Some("none")).unwrap()
    }
}

#[test]
fn every_recipe_validates_and_plans() {
    for name in [
        "tiny.yaml",
        "ablations.yaml",
        "nemotron-15b-8b-4b.yaml",
        "llama-3.1-8b-minitron-4b.yaml",
        "tiny-nemotron.yaml",
        "qwen3-8b-6b.yaml",
    ] {
        let spec = load(name);
        let sel = Selection::new(&spec, &[], &[], false).unwrap();
        let res =
            plan_resources(&spec, &sel, &any_host()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(res.len(), spec.stages.len());
    }
}

#[test]
fn paper_recipes_estimate_gpu_memory_for_the_real_shapes() {
    let spec = load("llama-3.1-8b-minitron-4b.yaml");
    let sel = Selection::new(&spec, &[], &[], false).unwrap();
    let res = plan_resources(&spec, &sel, &any_host()).unwrap();
    let by_id = |id: &str| {
        res[spec
            .ids()
            .position(|s| s == id)
            .unwrap_or_else(|| panic!("no stage {id}"))]
    };
    // Llama-3.1-8B in bf16: 16 GB of weights; teacher correction trains it (4 copies + activations).
    let correct = by_id("teacher_correction");
    assert!(correct.gpu_memory > 64_000_000_000, "{correct:?}");
    // Distilling the 4.5B width student adds the 8B teacher's forward to the student's training.
    let width = by_id("width_distill");
    assert!(width.gpu_memory > 4 * 2 * 4_500_000_000u64, "{width:?}");
    let spec = load("nemotron-15b-8b-4b.yaml");
    assert!(spec.ids().any(|s| s == "shrink.to_4b.distill"));
}

/// The Qwen3 recipe plans from `expect`: Qwen3-8B's 8.19B parameters (per-head q/k norms
/// included), and the width-pruned student at ~6.18B.
#[test]
fn qwen3_recipe_plans_an_8b_to_6b_width_prune() {
    let spec = load("qwen3-8b-6b.yaml");
    let sel = Selection::new(&spec, &[], &[], false).unwrap();
    let res = plan_resources(&spec, &sel, &any_host()).unwrap();
    let distill = res[spec.ids().position(|s| s == "distill").unwrap()];
    // The 8B teacher's bf16 weights alone are 16 GB; the student trains on top of them.
    assert!(distill.gpu_memory > 16_000_000_000, "{distill:?}");
    let p = |h: usize, f: usize| {
        pollard_model::LlamaConfig::new(151936, h, f, 36, 32, 8, 128)
            .with_family(pollard_model::Family::Qwen3)
            .param_count()
            .total()
    };
    assert_eq!(p(4096, 12288), 8_190_735_360);
    assert_eq!(p(3584, 9728), 6_175_990_272);
}

/// `search:` counts a candidate's parameters as the model layer does, for every family (it
/// used to count every shape as a Llama, so Nemotron candidates were placed off the budget).
#[test]
fn search_counts_parameters_as_the_model_layer_does_for_every_family() {
    use pollard_engine::search::{param_count, Base, Counting, Family};
    let families = [
        (Family::Llama, pollard_model::Family::Llama),
        (Family::Nemotron, pollard_model::Family::Nemotron),
        (Family::Qwen3, pollard_model::Family::Qwen3),
    ];
    for (ours, model) in families {
        for tied in [false, true] {
            let base = Base {
                head_dim: 16,
                kv_heads: 2,
                vocab: Some(300),
                tied,
                family: ours,
            };
            let mut cfg =
                pollard_model::LlamaConfig::new(300, 96, 160, 3, 4, 2, 16).with_family(model);
            cfg.tie_word_embeddings = tied;
            let p = cfg.param_count();
            assert_eq!(
                param_count(&base, 3, 96, 4, 160, Counting::Total),
                p.total(),
                "{ours:?} tied={tied}"
            );
            assert_eq!(
                param_count(&base, 3, 96, 4, 160, Counting::NonEmbedding),
                p.total() - p.embed - p.lm_head,
                "{ours:?} tied={tied}"
            );
        }
    }
}
