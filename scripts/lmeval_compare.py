#!/usr/bin/env python3
"""Score the same Hugging Face checkpoint and the same JSONL task files with pollard's `evaluate`
and with lm-evaluation-harness (PyPI `lm-eval`, 0.4.x, its `hf` backend on the CPU), and compare
item by item: the choice picked by `acc` (summed log-likelihood) and by `acc_norm`, and the
log-likelihoods themselves.

Not part of CI (it needs torch, transformers and lm-eval). Setup, as used for the numbers in the
project's notes (torch from PyPI needs its CUDA libraries even on a CPU-only machine; see
tests/fixtures/README.md for the list):

    python3 -m venv /work/lmeval-env
    /work/lmeval-env/bin/pip install --no-deps torch==2.15.0   # + the nvidia-* wheels it links
    /work/lmeval-env/bin/pip install transformers==5.24.0 safetensors==0.8.0 tokenizers==0.23.3 'lm-eval==0.4.*'

Usage (MODEL is any folder pollard wrote or loads: config.json, model.safetensors,
tokenizer.json, tokenizer_config.json):

    /work/lmeval-env/bin/python scripts/lmeval_compare.py --model MODEL \\
        --task agreement=path/agreement.jsonl --task recall=path/recall.jsonl [--shots 0] \\
        [--layouts]   # also rewrite each generic file into the ARC, MMLU, HellaSwag, PIQA and
                      # Winogrande layouts and score those with the harness's own task configs

The script writes a small manifest (a `load` of MODEL, a tiny `dataset` with MODEL's tokenizer for
`evaluate`'s val loss, an `evaluate` with the tasks), runs `pollard run` on it, and reads
`tasks/<name>.jsonl` from the evaluation's output. For the harness it writes one task YAML per
file: the generic layout maps `context` / `choices` / `gold` directly; the other layouts
`include:` the harness's own task YAML (lm_eval/tasks/...) with only the data source changed
(test split = few-shot split = the file, as pollard draws few-shot examples from the same file).
Exit status 0 when every item agrees.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def to_layouts(name, path, out_dir):
    """Rewrites a generic file into the other layouts that fit its number of choices."""
    items = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    n = len(items[0]["choices"])
    letters = "ABCDEFGH"
    out = {}

    def write(layout, rows):
        p = out_dir / f"{name}_{layout}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[f"{name}_{layout}"] = (layout, p)

    write("arc", [{"question": it["context"], "choices": {"text": it["choices"],
           "label": list(letters[:len(it["choices"])])},
           "answerKey": letters[it["gold"]]} for it in items])
    # HellaSwag: ctx_b empty makes the context end in a space, which must move to the
    # continuation; the harness's preprocess also applies.
    write("hellaswag", [{"activity_label": "Story", "ctx_a": it["context"], "ctx_b": "",
           "endings": it["choices"], "label": str(it["gold"])} for it in items])
    if n == 4:
        write("mmlu", [{"question": it["context"], "subject": "synthetic_world",
               "choices": it["choices"], "answer": it["gold"]} for it in items])
    if n == 2:
        write("piqa", [{"goal": it["context"], "sol1": it["choices"][0],
               "sol2": it["choices"][1], "label": it["gold"]} for it in items])
        write("winogrande", [{"sentence": it["context"] + " _ again.",
               "option1": it["choices"][0], "option2": it["choices"][1],
               "answer": str(it["gold"] + 1)} for it in items])
    return out


def harness_yaml(task, layout, path, tasks_root):
    data = (f"dataset_path: json\n"
            f"dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(path))}\n"
            f"training_split: null\nvalidation_split: null\n"
            f"test_split: test\nfewshot_split: test\n")
    if layout == "generic":
        return (f"task: {task}\n{data}output_type: multiple_choice\n"
                "doc_to_text: \"{{context}}\"\ndoc_to_choice: choices\ndoc_to_target: gold\n"
                "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    include = {
        "arc": "arc/arc_easy.yaml",
        "hellaswag": "hellaswag/hellaswag.yaml",
        "piqa": "piqa/piqa.yaml",
        "winogrande": "winogrande/default.yaml",
        "mmlu": "mmlu/default/_default_template_yaml",
    }[layout]
    extra = ""
    if layout == "mmlu":
        # The per-subject YAMLs add this description; pollard reads it from `subject`.
        extra = ("description: \"The following are multiple choice questions (with answers) "
                 "about synthetic world.\\n\\n\"\nfewshot_config:\n  sampler: default\n")
    # HellaSwag's process_docs and Winogrande's doc_to_* functions come with the included YAML.
    return (f"include: {tasks_root / include}\ntask: {task}\ntag: []\n{data}{extra}"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def run_pollard(pollard, model, tasks, shots, work):
    tasks_yaml = ", ".join(
        f"{{ name: {n}, path: {json.dumps(str(p))}, shots: {shots} }}" for n, p in tasks.items())
    manifest = f"""pipeline: lmeval-compare
stages:
  model: {{ kind: load, with: {{ path: {json.dumps(str(model))} }} }}
  data:
    kind: dataset
    with:
      text: {{ synthetic: {{ words: 20K, seed: 1 }} }}
      tokenizer: {{ file: {json.dumps(str(Path(model) / "tokenizer.json"))} }}
  eval:
    kind: evaluate
    inputs: {{ model: model, data: data }}
    with: {{ samples: 4, seq_len: 64, batch: 16, tasks: [{tasks_yaml}] }}
"""
    (work / "pollard.yaml").write_text(manifest)
    subprocess.run([pollard, "run", "-f", "pollard.yaml"], cwd=work, check=True)
    out = subprocess.run([pollard, "show", "eval", "-f", "pollard.yaml", "--path"], cwd=work,
                         check=True, capture_output=True, text=True).stdout.strip()
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    items = {n: [json.loads(l) for l in (Path(out) / "tasks" / f"{n}.jsonl").read_text().splitlines()]
             for n in tasks}
    return metrics, items


def run_harness(model, tasks, shots, work):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    inc = work / "harness_tasks"
    inc.mkdir(exist_ok=True)
    names = {}
    for n, (layout, p) in tasks.items():
        t = f"pollard_{n}"
        (inc / f"{t}.yaml").write_text(harness_yaml(t, layout, p, tasks_root))
        names[n] = t
    tm = TaskManager(include_path=str(inc))
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model},dtype=float32",
        tasks=list(names.values()),
        num_fewshot=shots,
        batch_size=16,
        device="cpu",
        log_samples=True,
        task_manager=tm,
        fewshot_random_seed=1234,
    )
    out = {}
    for n, t in names.items():
        samples = sorted(res["samples"][t], key=lambda s: s["doc_id"])
        out[n] = ([{"lls": [float(r[0]) for r in s["filtered_resps"]],
                    "acc": s.get("acc"), "acc_norm": s.get("acc_norm")} for s in samples],
                  res["results"][t])
    return out, lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?"


def argmax(xs):
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--task", action="append", required=True, help="NAME=PATH.jsonl (generic layout)")
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--layouts", action="store_true")
    ap.add_argument("--pollard", default=str(ROOT / "target/debug/pollard"))
    args = ap.parse_args()

    model = args.model.resolve()
    work = Path(tempfile.mkdtemp(prefix="lmeval-compare-"))
    tasks = {}
    for spec in args.task:
        n, p = spec.split("=", 1)
        tasks[n] = ("generic", Path(p).resolve())
        if args.layouts:
            tasks.update(to_layouts(n, p, work))
    metrics, ours = run_pollard(args.pollard, model, {n: p for n, (_, p) in tasks.items()},
                                args.shots, work)
    theirs, version = run_harness(model, tasks, args.shots, work)

    print(f"\nlm-eval {version}, {args.shots}-shot, model {model}")
    print(f"{'task':<24} {'items':>5} {'acc agree':>9} {'norm agree':>10} {'max |dll|':>10}"
          f" {'acc pollard':>11} {'acc lm-eval':>11} {'acc_norm pollard':>16} {'acc_norm lm-eval':>16}")
    all_ok = True
    for n in tasks:
        lls_h, res_h = theirs[n]
        mine = ours[n]
        if len(mine) != len(lls_h):
            print(f"{n}: {len(mine)} items in pollard, {len(lls_h)} in lm-eval")
            all_ok = False
            continue
        agree = sum(1 for a, b in zip(mine, lls_h) if a["pred"] == argmax(b["lls"]))
        # acc_norm: the same verdict (right or wrong) per item; the harness logs it per sample.
        choices_norm_ok = sum(1 for a, b in zip(mine, lls_h)
                              if float(a["pred_norm"] == a["gold"]) == float(b["acc_norm"]))
        dll = max(abs(x - y) for a, b in zip(mine, lls_h) for x, y in zip(a["lls"], b["lls"]))
        m = metrics["tasks"][n]
        print(f"{n:<24} {len(mine):>5} {agree:>9} {choices_norm_ok:>10} {dll:>10.2e}"
              f" {m['acc']:>11.4f} {res_h.get('acc,none', float('nan')):>11.4f}"
              f" {m['acc_norm']:>16.4f} {res_h.get('acc_norm,none', float('nan')):>16.4f}")
        all_ok &= agree == len(mine) and choices_norm_ok == len(mine)
    print("all items agree" if all_ok else "SOME ITEMS DIFFER")
    sys.exit(0 if all_ok else 1)




if __name__ == "__main__":
    main()
