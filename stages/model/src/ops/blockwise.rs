//! Causal grouped-query attention in linear memory on any device, composed from candle's
//! device-generic ops (cuBLAS matmuls and candle's CUDA kernels on a GPU).
//!
//! The forward walks blocks of query rows; each block's scores against the keys it can see
//! (`[b, kv_heads, group * rows, keys]`) exist only while that block is computed, and only the
//! output and each row's log-sum-exp are kept. The backward recomputes each block's
//! probabilities from the log-sum-exp (flash-attention 2's recurrences, one query block at a
//! time: `dV += P^T dO`, `dS = scale P (dO V^T - rowsum(dO * O))`, `dQ = dS K`, `dK += dS^T Q`).
//! Peak extra memory is one block's scores, `O(t x block)`, instead of the `O(t^2)`
//! probabilities autograd keeps through the materialised version ([`super::attention::composed`]).
//!
//! Autograd sees one `CustomOp3` whose forward hands back the output computed here (a copy of its
//! storage, so the op runs on whatever device the tensors live on) and whose backward is the
//! blockwise composition. Computation is in f32 whatever the input dtype (scores and softmax
//! statistics must be); the result is cast back. The same code runs on the CPU in the tests,
//! against the fused kernel and the materialised version.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor, D};

/// Rows of one query block: the largest multiple of 16 (at least 16, at most 512) whose scores
/// `[b, heads, rows, t]` in f32 fit in 64 MiB (large enough blocks keep a GPU busy).
pub fn block_rows(b: usize, heads: usize, t: usize) -> usize {
    // Saturating: memory estimates call this with shapes not yet checked.
    let per_row = b
        .saturating_mul(heads)
        .saturating_mul(t)
        .saturating_mul(4)
        .max(1);
    ((64 << 20) / per_row / 16 * 16).clamp(16, 512)
}

/// Blockwise attention with query blocks of `rows` rows (see the module docs; layouts as in
/// [`super::attention`]).
pub fn blockwise_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
    rows: usize,
) -> candle_core::Result<Tensor> {
    let dtype = q.dtype();
    let f32 = |x: &Tensor| x.to_dtype(DType::F32);
    let (q, k, v) = (f32(q)?, f32(k)?, f32(v)?);
    let geo = Geometry::of(&q, &k, scale, window, rows.max(1))?;
    // Computed untracked; autograd sees only the op below and its blockwise backward.
    let (o, lse) = geo.forward(&q.detach(), &k.detach(), &v.detach())?;
    q.apply_op3(&k, &v, Blockwise { geo, o, lse })?
        .to_dtype(dtype)
}

/// Shapes and constants of one attention call.
#[derive(Clone, Copy)]
struct Geometry {
    b: usize,
    nh: usize,
    nkv: usize,
    t: usize,
    d: usize,
    scale: f32,
    window: Option<usize>,
    rows: usize,
}

impl Geometry {
    fn of(
        q: &Tensor,
        k: &Tensor,
        scale: f32,
        window: Option<usize>,
        rows: usize,
    ) -> candle_core::Result<Self> {
        let (b, nh, t, d) = q.dims4()?;
        Ok(Geometry {
            b,
            nh,
            nkv: k.dim(1)?,
            t,
            d,
            scale,
            window,
            rows,
        })
    }

    fn g(&self) -> usize {
        self.nh / self.nkv
    }

    /// Query blocks `(r0, rows)`.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (t, rows) = (self.t, self.rows);
        (0..t).step_by(rows).map(move |r0| (r0, rows.min(t - r0)))
    }

    /// Additive mask `[rows, r0 + rows]`: 0 where query `r0 + i` sees key `j`, else -inf.
    fn mask(&self, r0: usize, nr: usize, dev: &candle_core::Device) -> candle_core::Result<Tensor> {
        let s = r0 + nr;
        let mut m = vec![f32::NEG_INFINITY; nr * s];
        for i in 0..nr {
            let p = r0 + i;
            let lo = self.window.map_or(0, |w| (p + 1).saturating_sub(w));
            m[i * s + lo..i * s + p + 1].fill(0.0);
        }
        Tensor::from_vec(m, (nr, s), dev)
    }

    /// Rows `r0..r0+nr` of `x` `[b, heads, t, n]` as `[b, kv_heads, group * nr, n]`.
    fn q_block(&self, x: &Tensor, r0: usize, nr: usize) -> candle_core::Result<Tensor> {
        let n = x.dim(3)?;
        x.narrow(2, r0, nr)?
            .contiguous()?
            .reshape((self.b, self.nkv, self.g() * nr, n))
    }

    /// Scaled, masked scores of a query block: `[b, kv_heads, group, nr, r0 + nr]`.
    fn scores(
        &self,
        qb: &Tensor,
        kb: &Tensor,
        r0: usize,
        nr: usize,
    ) -> candle_core::Result<Tensor> {
        let s = (qb.matmul(&kb.t()?)? * self.scale as f64)?;
        s.reshape((self.b, self.nkv, self.g(), nr, r0 + nr))?
            .broadcast_add(&self.mask(r0, nr, qb.device())?)
    }

    /// Output `[b, t, heads, d]` and log-sum-exp `[b, heads, t]`; inputs f32, `v` as
    /// `[b, t, kv_heads, d]`.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let vt = v.transpose(1, 2)?.contiguous()?;
        let (mut outs, mut lses) = (Vec::new(), Vec::new());
        for (r0, nr) in self.blocks() {
            let keys = r0 + nr;
            let qb = self.q_block(q, r0, nr)?;
            let kb = k.narrow(2, 0, keys)?;
            let s = self.scores(&qb, &kb, r0, nr)?;
            let m = s.max_keepdim(D::Minus1)?;
            let e = s.broadcast_sub(&m)?.exp()?;
            let l = e.sum_keepdim(D::Minus1)?;
            let e = e.reshape((self.b, self.nkv, self.g() * nr, keys))?;
            let ob = e
                .matmul(&vt.narrow(2, 0, keys)?.contiguous()?)?
                .reshape((self.b, self.nkv, self.g(), nr, self.d))?
                .broadcast_div(&l)?;
            outs.push(ob.reshape((self.b, self.nh, nr, self.d))?);
            lses.push((m + l.log()?)?.reshape((self.b, self.nh, nr))?);
        }
        let o = Tensor::cat(&outs, 2)?.transpose(1, 2)?.contiguous()?;
        Ok((o, Tensor::cat(&lses, 2)?))
    }

    /// Gradients of q, k, v (f32, in their layouts) from `go` `[b, t, heads, d]`.
    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        go: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, nkv, g, t, d) = (self.b, self.nkv, self.g(), self.t, self.d);
        let vt = v.transpose(1, 2)?.contiguous()?;
        let go_t = go.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?; // [b, nh, t, d]
        let o_t = o.transpose(1, 2)?.contiguous()?;
        let delta = (&go_t * &o_t)?.sum_keepdim(D::Minus1)?; // [b, nh, t, 1]
        let mut dk = Tensor::zeros((b, nkv, t, d), DType::F32, q.device())?;
        let mut dv = Tensor::zeros((b, nkv, t, d), DType::F32, q.device())?;
        let mut dqs = Vec::new();
        for (r0, nr) in self.blocks() {
            let keys = r0 + nr;
            let qb = self.q_block(q, r0, nr)?;
            let kb = k.narrow(2, 0, keys)?;
            let vb = vt.narrow(2, 0, keys)?;
            let lb = lse.narrow(2, r0, nr)?.reshape((b, nkv, g, nr, 1))?;
            let p = self
                .scores(&qb, &kb, r0, nr)?
                .broadcast_sub(&lb)?
                .exp()?
                .reshape((b, nkv, g * nr, keys))?;
            let gob = self.q_block(&go_t, r0, nr)?;
            let db = self.q_block(&delta, r0, nr)?; // [b, nkv, g * nr, 1]
            let pad = |x: Tensor| x.pad_with_zeros(2, 0, t - keys);
            dv = (dv + pad(p.t()?.matmul(&gob)?)?)?;
            let dp = gob.matmul(&vb.t()?)?;
            let ds = ((p * dp.broadcast_sub(&db)?)? * self.scale as f64)?;
            dqs.push(ds.matmul(&kb.contiguous()?)?.reshape((b, self.nh, nr, d))?);
            dk = (dk + pad(ds.t()?.matmul(&qb)?)?)?;
        }
        let dv = dv.transpose(1, 2)?.contiguous()?;
        Ok((Tensor::cat(&dqs, 2)?, dk, dv))
    }
}

struct Blockwise {
    geo: Geometry,
    /// The output computed by [`Geometry::forward`] (`[b, t, heads, d]`, f32, contiguous).
    o: Tensor,
    lse: Tensor,
}

impl Blockwise {
    fn output(&self) -> candle_core::Result<(Storage, Shape)> {
        let (storage, layout) = self.o.storage_and_layout();
        Ok((storage.try_clone(layout)?, self.o.shape().clone()))
    }
}

impl CustomOp3 for Blockwise {
    fn name(&self) -> &'static str {
        "pollard-blockwise-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.output()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("blockwise attention: output and inputs on different devices"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self.output()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("blockwise attention: output and inputs on different devices"),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _o: &Tensor,
        go: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.geo.backward(
            &q.detach(),
            &k.detach(),
            &v.detach(),
            &self.o,
            &self.lse,
            &go.detach(),
        )?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
