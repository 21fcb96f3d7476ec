"""Turbo++ ablation (METHODS §3): the full recipe vs. one switch at a time, >= 3 seeds.

Same teacher, same number of generator updates, same evaluation noise for every row. Rows:

* ``full``: the default preset;
* ``shared``: one parameter set for both steps (no step decoupling);
* ``lora``: step decoupling by per-step LoRA instead of full copies;
* ``dataset_real``: the discriminator's real samples are data, not teacher generations;
* ``detached``: stop-gradient between step 1 and step 2 (no end-to-end training);
* ``step1=none|adversarial|dm``: the step-1 loss options (``teacher_traj`` is ``full``);
* ``+dm``: the optional distribution-matching term on the final output.

Usage::

    python -m benchmarks.ablation --data digits --seeds 3 --out benchmarks/results
    python -m benchmarks.ablation --data checkerboard --seeds 3

Writes ``ablation_<data>.json`` and ``ablation_<data>.md`` (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import PRIMARY, REPORTED, aggregate, markdown_table, run_one, write_results
from fewstep.config import load_yaml
from fewstep.presets import preset_path

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "shared": ["student.parameterization=shared"],
    "lora": ["student.parameterization=lora"],
    "dataset_real": ["gan.real=dataset"],
    "detached": ["turbo.end_to_end=false"],
    "step1=none": ["step1.loss=none"],
    "step1=adversarial": ["step1.loss=adversarial"],
    "step1=dm": ["step1.loss=dm"],
    "+dm": ["dm.weight=1.0"],
}
PRESET = {"digits": "demo", "checkerboard": "turbo_pp_checkerboard"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(PRESET), default="digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=None, help="override the preset's")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_yaml(preset_path(PRESET[args.data]))
    extra = [f"train.iterations={args.iterations}"] if args.iterations else []
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            for seed in range(args.seeds):
                ov = [*VARIANTS[name], *extra, f"train.seed={seed}"]
                r = run_one(base, ov, Path(tmp) / f"{name}_{seed}")
                results.setdefault(name, []).append(r)
                print(f"{name} seed {seed}: {PRIMARY[args.data]}={r[PRIMARY[args.data]]:.4f} "
                      f"({r['train_seconds']:.0f} s)", flush=True)
    rows = {k: aggregate(v) for k, v in results.items()}
    cols = (*REPORTED[args.data], "seconds_per_iteration")
    table = markdown_table(rows, cols)
    write_results(args.out, f"ablation_{args.data}",
                  {"data": args.data, "seeds": args.seeds, "extra_overrides": extra,
                   "runs": results}, table)


if __name__ == "__main__":
    main()
