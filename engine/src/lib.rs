//! pollard-engine: manifest -> spec -> graph -> plan -> schedule -> execute. Knows nothing of
//! tensors: stage kinds come from the binary through the registry.

pub mod quantity;
pub mod stage;

pub use quantity::{Bytes, Count};
pub use stage::{BoxError, InputArtifact, Inputs, ParamError, PlanInput, PlanInputs, Progress, ProgressSink, Resources, Slots, Stage, StageCtx};
