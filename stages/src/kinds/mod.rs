//! The stage kinds, one file each: what `register` hands to the engine.

pub mod dataset;
pub mod distill;
pub mod evaluate;
pub mod load;
pub mod prune;
pub mod report;
pub mod score;
pub mod select;
pub mod train;
