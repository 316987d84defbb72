#!/usr/bin/env python3
"""Generate the benchmark pipeline (CHAINS x DEPTH stages: 20 chains give the 500-stage case of
benches/engine_vs_dvc.sh, 200 the 5,000-stage case of benches/engine_scale.sh) twice: as a
pollard manifest and as the equivalent DVC project (the same graph for both tools).

Usage: engine_gen.py OUT_DIR CHAINS [DEPTH=25]
  OUT_DIR/pollard/pollard.yaml      pollard manifest (command stages)
  OUT_DIR/dvc/dvc.yaml + params.yaml + inputs/   DVC project (git + dvc init by the caller)
  OUT_DIR/dvc/run_all.sh            runs every DVC stage's command in topological order

Stage s_c_j (chain c, depth j) reads s_c_{j-1} and s_{(c+1)%CHAINS}_{j-1}; five "big" stages
also read a raw input and write a 100 MB output; every stage with (c*DEPTH+j) % 5 == 4 folds a
param into its output.
"""
import json
import os
import sys


def main(out, chains, depth=25):
    pol = os.path.join(out, "pollard")
    dvc = os.path.join(out, "dvc")
    for d in (pol, dvc):
        os.makedirs(os.path.join(d, "inputs"), exist_ok=True)
    os.makedirs(os.path.join(dvc, "data"), exist_ok=True)
    big = {(k * chains // 5, 2 + 5 * k): k for k in range(5)}
    for d in (pol, dvc):
        for c in range(chains):
            with open(os.path.join(d, f"inputs/in_{c}.txt"), "w") as f:
                f.write(f"input {c}\n")
        for k in range(5):
            with open(os.path.join(d, f"inputs/big_{k}.txt"), "w") as f:
                f.write(f"big input {k}\n")
    params = []
    dv = ["stages:"]
    po = ["pipeline: bench", "params:"]
    po_stages = ["stages:"]
    run_all = ["#!/usr/bin/env bash", "set -euo pipefail", "cd \"$(dirname \"$0\")\""]
    for j in range(depth):
        for c in range(chains):
            name = f"s_{c}_{j}"
            out_path = f"data/{name}.out"
            if j == 0:
                deps = [f"inputs/in_{c}.txt"]
                ups = []
            else:
                ups = list(dict.fromkeys([f"s_{c}_{j-1}", f"s_{(c + 1) % chains}_{j-1}"]))
                deps = [f"data/{u}.out" for u in ups]
            has_param = (c * depth + j) % 5 == 4
            raw = list(deps) if j == 0 else []
            if (c, j) in big:
                k = big[(c, j)]
                deps.append(f"inputs/big_{k}.txt")
                raw.append(f"inputs/big_{k}.txt")
                dcmd = f"{{ cat {' '.join(deps)}; head -c 100000000 /dev/zero; }} > {out_path}"
                pin = " ".join([f"$POLLARD_IN_U{i}/out" for i in range(len(ups))] + raw)
                pcmd = f"{{ cat {pin}; head -c 100000000 /dev/zero; }} > $POLLARD_OUT/out"
            elif has_param:
                dcmd = f"{{ cat {' '.join(deps)}; grep '^{name}:' params.yaml; }} | md5sum > {out_path}"
                pin = " ".join([f"$POLLARD_IN_U{i}/out" for i in range(len(ups))] + raw)
                pcmd = f"{{ cat {pin}; echo '{name}: ${{params.{name}}}'; }} | md5sum > $POLLARD_OUT/out"
            else:
                dcmd = f"cat {' '.join(deps)} | md5sum > {out_path}"
                pin = " ".join([f"$POLLARD_IN_U{i}/out" for i in range(len(ups))] + raw)
                pcmd = f"cat {pin} | md5sum > $POLLARD_OUT/out"
            dv.append(f"  {name}:")
            dv.append(f"    cmd: {json.dumps(dcmd)}")
            dv.append("    deps:")
            dv += [f"      - {d}" for d in deps]
            if has_param and (c, j) not in big:
                params.append(name)
                dv.append("    params:")
                dv.append(f"      - {name}")
            dv.append("    outs:")
            dv.append(f"      - {out_path}")
            run_all.append(dcmd)
            po_stages.append(f"  {name}:")
            po_stages.append("    kind: command")
            if ups:
                po_stages.append("    inputs: { " + ", ".join(f"u{i}: {u}" for i, u in enumerate(ups)) + " }")
            if raw:
                po_stages.append("    deps: [" + ", ".join(raw) + "]")
            po_stages.append(f"    cmd: {json.dumps(pcmd)}")
    po += [f"  {p}: 1" for p in params] or ["  {}"]
    with open(os.path.join(dvc, "dvc.yaml"), "w") as f:
        f.write("\n".join(dv) + "\n")
    with open(os.path.join(dvc, "params.yaml"), "w") as f:
        f.write("".join(f"{p}: 1\n" for p in params))
    with open(os.path.join(dvc, "run_all.sh"), "w") as f:
        f.write("\n".join(run_all) + "\n")
    with open(os.path.join(pol, "pollard.yaml"), "w") as f:
        f.write("\n".join(po + po_stages) + "\n")
    print(f"stages={chains * depth} params={len(params)} big={len(big)}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 25)
