//! pollard-stages: the built-in stage kinds (load, train, score, prune, distill, evaluate,
//! report, dataset) that the binary registers with the engine. Each kind lives in one file
//! under `kinds/`; the shared pieces (shapes, checkpoints, scores, pruning surgery) sit beside.

pub mod checkpoint;
pub mod common;
pub mod error;
pub mod hf_tokens;
pub mod kinds;
pub mod plot;
pub mod runtime;
pub mod scores;
pub mod shape;
pub mod surgery;
pub mod tasks;
pub mod trainer;
pub mod validate;

pub use error::StageError;
use pollard_engine::Stage as _;

#[cfg(test)]
mod flow_tests;

/// Registers every built-in kind with the engine (the binary calls this once).
pub fn register(reg: &mut pollard_engine::Registry) {
    reg.register(kinds::dataset::Dataset);
    reg.register(kinds::load::Load);
    reg.register(kinds::train::Train);
    reg.register(kinds::score::Score);
    reg.register(kinds::prune::Prune);
    reg.register(kinds::distill::Distill);
    reg.register(kinds::evaluate::Evaluate);
    reg.register(kinds::report::Report);
    reg.register(kinds::select::Select);
    // A model stage runs on the first GPU it is granted (common::device): until training is
    // spread over devices, more GPUs would sit idle while other stages wait for them.
    for kind in [
        kinds::dataset::Dataset::KIND,
        kinds::load::Load::KIND,
        kinds::train::Train::KIND,
        kinds::score::Score::KIND,
        kinds::prune::Prune::KIND,
        kinds::distill::Distill::KIND,
        kinds::evaluate::Evaluate::KIND,
        kinds::report::Report::KIND,
        kinds::select::Select::KIND,
    ] {
        reg.limit_gpus(kind, 1, MULTI_GPU);
    }
}

const MULTI_GPU: &str =
    "built-in kinds run on one device (multi-GPU training does not exist yet); use gpus: 1";
