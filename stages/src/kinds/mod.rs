//! The stage kinds, one file each: what `register` hands to the engine.

pub mod load;
pub mod prune;
pub mod score;
pub mod distill;
pub mod train;
