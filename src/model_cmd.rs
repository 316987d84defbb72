//! `pollard model ...`: inspect a checkpoint and run it on token ids (filled by the model layer).
