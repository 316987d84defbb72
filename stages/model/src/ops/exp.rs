//! `exp` for f32 without a libm call, shared by every CPU kernel that exponentiates (the fused
//! attention, softmax and SwiGLU ops here, the fused losses in pollard-train): a loop over it
//! vectorises, where a loop calling `f32::exp` makes one libm call per element.

/// `exp` for f32 without a libm call, so loops over it vectorise (Cephes `expf`: range
/// reduction by ln 2, a degree-6 polynomial, the exponent set through the bits). Within 2 ulp of
/// `f32::exp` on [-87, 88] (tested); below -87.3 it returns 1.26e-38 instead of 0, which
/// no softmax can tell apart. NaN propagates.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer with plain adds.
    const ROUND: f32 = 12_582_912.0;
    // Comparisons rather than `clamp`/`as i32`, whose NaN handling adds branches that stop
    // vectorisation; a NaN passes both tests and poisons `y`, so it still comes out NaN.
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.3 { 88.3 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits (|n| < 2^22).
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits());
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // n is in [-126, 127] after the clamp, so the biased exponent is a normal one.
    y * f32::from_bits(ni.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_within_two_ulp_of_std() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (fast_exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(f32::NEG_INFINITY) < 1.3e-38);
        assert!(fast_exp(f32::NAN).is_nan());
    }
}
