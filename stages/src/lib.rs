//! pollard-stages: the built-in stage kinds (load, train, score, prune, distill, evaluate,
//! report, dataset) that the binary registers with the engine. Each kind lives in one file
//! under `kinds/`; the shared pieces (shapes, checkpoints, scores, pruning surgery) sit beside.

pub mod checkpoint;
pub mod common;
pub mod error;
pub mod kinds;
pub mod runtime;
pub mod scores;
pub mod shape;
pub mod surgery;
pub mod trainer;

pub use error::StageError;
