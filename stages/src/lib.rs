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
}
