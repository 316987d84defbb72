//! Checks that keep poisoned values out of the cache: a checkpoint's weights must be finite
//! and its `tokenizer.json` must load (both checked by `load` before anything is committed),
//! and every metric a stage writes must be a finite number (a NaN would be written as `null`
//! and read downstream as a missing value).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Result, StageError};

/// The first tensor (in name order) holding a NaN or an infinity, named with how many of its
/// values are not finite.
pub fn finite_weights(tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    for (name, t) in tensors {
        if !t.dtype().is_float() {
            continue;
        }
        let values = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| StageError::Tensor {
                name: name.clone(),
                message: format!("cannot read its values: {e}"),
            })?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            let first = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(StageError::Tensor {
                name: name.clone(),
                message: format!(
                    "{bad} of its {} values are not finite (the first, at flat index {first}, is {}); \
                     the checkpoint is damaged",
                    values.len(),
                    values[first]
                ),
            });
        }
    }
    Ok(())
}

/// A `tokenizer.json` beside the weights must load as a Hugging Face tokenizer.
pub fn tokenizer_loads(dir: &Path) -> Result<()> {
    let path = dir.join("tokenizer.json");
    if path.is_file() {
        pollard_data::Tokenizer::load(&path)?;
    }
    Ok(())
}

/// A metric's value, refused when it is NaN or infinite (naming the metric).
pub fn finite(metric: &str, v: f64) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(StageError::Param {
            field: metric.to_string(),
            message: format!(
                "the metric is {v}, not a finite number: the model or its data produced \
                 non-finite values; nothing is committed"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nan_weights_are_refused_naming_the_tensor() {
        let mut t = BTreeMap::new();
        let dev = Device::Cpu;
        t.insert(
            "a.weight".to_string(),
            Tensor::new(&[1f32, 2.0], &dev).unwrap(),
        );
        t.insert(
            "b.weight".to_string(),
            Tensor::new(&[1f32, f32::NAN, f32::INFINITY], &dev).unwrap(),
        );
        let e = finite_weights(&t).unwrap_err().to_string();
        assert_eq!(e, "tensor `b.weight`: 2 of its 3 values are not finite (the first, at flat index 1, is NaN); the checkpoint is damaged");
        t.remove("b.weight");
        finite_weights(&t).unwrap();
    }

    #[test]
    fn garbage_tokenizer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        tokenizer_loads(dir.path()).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
        assert!(tokenizer_loads(dir.path()).is_err());
    }

    #[test]
    fn nan_metrics_are_refused() {
        assert_eq!(finite("val_loss", 1.5).unwrap(), 1.5);
        let e = finite("val_loss", f64::NAN).unwrap_err().to_string();
        assert!(e.starts_with("field `val_loss`: the metric is NaN"), "{e}");
    }
}
