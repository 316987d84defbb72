#!/usr/bin/env python3
"""Checks that Hugging Face transformers loads what `pollard prune` writes, for every family,
and records transformers' logits so that CI (tests/pruned_in_transformers.rs) guards the result.

Not run in CI (it needs torch + transformers). Environment as in the fixtures' README
("How to regenerate": torch 2.15.0, transformers 5.24.0, CPU, float32). Usage, from the repo root:

    cargo build --bin pollard
    /path/to/venv/bin/python scripts/check_pruned_in_transformers.py
    cargo test --test pruned_in_transformers -- --nocapture   # pollard vs these references

For each family fixture (tests/fixtures/tiny-{llama,nemotron,qwen3}) it runs one manifest that
loads it and prunes every axis at once (hidden channels, MLP neurons, query heads under GQA, and
one layer), loads the result with AutoModelForCausalLM (the class must be the input's), runs the
fixture's input ids through it, and writes tests/fixtures/pruned-in-transformers/<family>.json
(the case, the class, the config transformers read, all logits).
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pruned-in-transformers")
POLLARD = os.path.join(ROOT, "target", "debug", "pollard")

# family -> (fixture, prune params). Must match CASES in tests/pruned_in_transformers.rs.
CASES = {
    "llama": ("tiny-llama", "{ method: magnitude, target: { hidden: 48, ffn: 128, heads: 4, layers: 3 }, depth: { drop: [2] } }"),
    "nemotron": ("tiny-nemotron", "{ method: magnitude, target: { hidden: 48, ffn: 128, heads: 4, layers: 3 }, depth: { drop: [1] } }"),
    "qwen3": ("tiny-qwen3", "{ method: magnitude, target: { hidden: 48, ffn: 96, heads: 2, layers: 2 }, depth: { drop: [1] } }"),
}


def run(args, cwd):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    for family, (fixture, params) in CASES.items():
        src = os.path.join(ROOT, "tests", "fixtures", fixture)
        ref = json.load(open(os.path.join(src, "reference.json")))
        with tempfile.TemporaryDirectory() as ws:
            with open(os.path.join(ws, "pollard.yaml"), "w") as f:
                f.write(f"pipeline: check\nstages:\n  base:\n    kind: load\n    with: {{ path: {src} }}\n"
                        f"  prune:\n    kind: prune\n    inputs: {{ model: base }}\n    with: {params}\n")
            run([POLLARD, "run", "--plain"], ws)
            pruned = run([POLLARD, "show", "prune", "--path"], ws).strip()
            m, info = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32, attn_implementation="eager",
                                                           output_loading_info=True)
            m.eval()
            bad = {k: v for k, v in info.items() if v and k != "error_msgs" or (k == "error_msgs" and v)}
            assert not bad, (family, bad)  # every tensor read, none missing or left over
            want = type(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)).__name__
            assert type(m).__name__ == want, (type(m).__name__, want)
            ids = torch.tensor(ref["input_ids"], dtype=torch.int64)
            with torch.no_grad():
                logits = m(input_ids=ids, use_cache=False).logits
        cfg = m.config
        rec = {
            "family": family, "fixture": fixture, "prune": params, "class": type(m).__name__,
            "transformers": transformers.__version__, "torch": torch.__version__,
            "config_read": {k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                          "num_key_value_heads", "head_dim", "num_hidden_layers")},
            "input_ids": ref["input_ids"],
            "logits": [[[float(x) for x in row] for row in seq] for seq in logits],
        }
        with open(os.path.join(OUT, f"{family}.json"), "w") as f:
            json.dump(rec, f)
            f.write("\n")
        print(family, type(m).__name__, rec["config_read"], "logits", tuple(logits.shape))


if __name__ == "__main__":
    main()
