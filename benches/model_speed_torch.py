#!/usr/bin/env python3
"""The PyTorch twin of benches/model_speed.rs: the same Llama shapes and the same training step
(forward + cross-entropy + backward + AdamW), on the CPU, timed the same way (median of --reps
after one warm-up). Prints one JSON line. Run by the Rust bench when a Python with torch exists.

Attention uses F.scaled_dot_product_attention(is_causal=True) (PyTorch's fastest CPU path);
RMSNorm, RoPE (rotate_half) and SwiGLU are written as transformers writes them.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        h, d = a.hidden, a.head_dim
        self.a = a
        self.q = torch.nn.Linear(h, a.heads * d, bias=False)
        self.k = torch.nn.Linear(h, a.kv_heads * d, bias=False)
        self.v = torch.nn.Linear(h, a.kv_heads * d, bias=False)
        self.o = torch.nn.Linear(a.heads * d, h, bias=False)
        self.gate = torch.nn.Linear(h, a.intermediate, bias=False)
        self.up = torch.nn.Linear(h, a.intermediate, bias=False)
        self.down = torch.nn.Linear(a.intermediate, h, bias=False)
        self.n1 = torch.nn.Parameter(torch.ones(h))
        self.n2 = torch.nn.Parameter(torch.ones(h))


def rms(x, w, eps=1e-5):
    v = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(v + eps))


def rot(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Model(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        self.embed = torch.nn.Embedding(a.vocab, a.hidden)
        self.blocks = torch.nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = torch.nn.Parameter(torch.ones(a.hidden))
        self.lm_head = None if a.tied else torch.nn.Linear(a.hidden, a.vocab, bias=False)
        for p in self.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=0.02)
        inv = 1.0 / (10000.0 ** (torch.arange(0, a.head_dim, 2).float() / a.head_dim))
        f = torch.outer(torch.arange(a.seq).float(), inv)
        emb = torch.cat((f, f), dim=-1)
        self.register_buffer("cos", emb.cos())
        self.register_buffer("sin", emb.sin())

    def forward(self, ids):
        a = self.a
        b, t = ids.shape
        x = self.embed(ids)
        g = a.heads // a.kv_heads
        for blk in self.blocks:
            y = rms(x, blk.n1)
            q = blk.q(y).view(b, t, a.heads, a.head_dim).transpose(1, 2)
            k = blk.k(y).view(b, t, a.kv_heads, a.head_dim).transpose(1, 2)
            v = blk.v(y).view(b, t, a.kv_heads, a.head_dim).transpose(1, 2)
            q = q * self.cos + rot(q) * self.sin
            k = k * self.cos + rot(k) * self.sin
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + blk.o(o.transpose(1, 2).reshape(b, t, -1))
            y = rms(x, blk.n2)
            x = x + blk.down(F.silu(blk.gate(y)) * blk.up(y))
        x = rms(x, self.norm)
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return x @ w.t()


SYNC = lambda: None  # noqa: E731  (torch.cuda.synchronize with --device cuda)


def timed(reps, f):
    f()
    SYNC()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        SYNC()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    for k, d in [("vocab", 4096), ("hidden", 384), ("intermediate", 1024), ("layers", 5), ("heads", 6),
                 ("kv-heads", 2), ("head-dim", 64), ("batch", 8), ("seq", 256), ("reps", 5), ("threads", 0)]:
        ap.add_argument("--" + k, type=int, default=d)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the Rust bench passes its own)")
    a = ap.parse_args()
    global SYNC
    dev = torch.device(a.device)
    if dev.type == "cuda":
        SYNC = torch.cuda.synchronize
        torch.backends.cuda.matmul.allow_tf32 = False  # pollard's f32 matmuls are full f32
    if a.threads > 0:  # the Rust bench passes its own thread count so both sides use the same
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n = 2048
    x, y = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    mm = timed(a.reps, lambda: x @ y)
    model = Model(a).to(dev)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=dev)
    inp, tgt = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        fwd = timed(a.reps, lambda: model(inp))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inp).reshape(-1, a.vocab), tgt.reshape(-1))
        loss.backward()
        opt.step()

    st = timed(a.reps, step)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"torch": torch.__version__, "device": a.device, "threads": torch.get_num_threads(), "params": params,
                      "forward_s": fwd, "step_s": st, "matmul_gflops": 2 * n ** 3 / mm / 1e9}))


if __name__ == "__main__":
    main()
