//! pollard-engine: manifest -> spec -> graph -> plan -> schedule -> execute. Knows nothing of
//! tensors: stage kinds come from the binary through the registry.

pub mod canonical;
pub mod command;
pub mod cuda_driver;
pub mod diag;
pub mod diff;
pub mod error;
pub mod exec;
pub mod executor;
pub mod expand;
pub mod fields;
pub mod graph;
pub mod history;
pub mod input_guard;
pub mod interp;
pub mod job;
pub mod lockfile;
pub mod manifest;
pub mod noop;
pub mod overrides;
pub mod plan;
pub mod quantity;
pub mod registry;
pub mod resources;
pub mod search;
pub mod select;
pub mod span;
pub mod spec;
pub mod stage;
pub mod stage_id;
pub mod watchdog;
pub mod workspace;
pub mod yaml;

pub use command::{CommandParams, CommandStage};
pub use diag::{Diagnostic, Diagnostics};
pub use diff::{diff, DiffRow, DiffWhat};
pub use error::EngineError;
pub use exec::{Event, Outcome, Reporter, RunOptions, RunSummary, Runner};
pub use lockfile::{lock_path_for, LockFile, LockWriter};
pub use manifest::Source;
pub use overrides::{experiment_lock_path, Override};
pub use plan::{status, Reason, Selection, StageStatus};
/// The typed names of the cache (a stage's key, an artifact, a content digest), so stages and
/// the command line name them through the engine.
pub use pollard_cache::{ArtifactId, CacheKey, Digest};
pub use quantity::{Bytes, Count};
pub use registry::{DecodeError, DecodedParams, ErasedStage, Registry};
pub use resources::Inventory;
pub use spec::{load, PipelineSpec, StageSpec};
pub use stage::{
    BoxError, InputArtifact, Inputs, OuterField, OuterShape, ParamError, PlanInput, PlanInputs,
    Progress, ProgressSink, Resources, Slots, Stage, StageCtx,
};
pub use stage_id::StageId;

/// What `pollard --version` prints: the version, and what the build targets (for a CUDA build
/// the CUDA toolkit version and the compute capability its kernels were compiled for).
pub const BUILD: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("POLLARD_BUILD_TARGET"),
    ")"
);
