"""Turbo++ ablation (METHODS §3): the full recipe vs. one switch at a time, >= 3 seeds.

Same teacher, same number of generator updates, same evaluation noise for every row. Rows:

* ``full``: the default preset;
* ``shared``: one parameter set for both steps (no step decoupling);
* ``lora``: step decoupling by per-step LoRA instead of full copies;
* ``dataset_real``: the discriminator's real samples are data, not teacher generations;
* ``detached``: stop-gradient between step 1 and step 2 (no end-to-end training);
* ``step1=none|adversarial|dm``: the step-1 loss options (``teacher_traj`` is ``full``);
* ``no_dm``: without the distribution-matching term on the final output.

Usage::

    python -m benchmarks.ablation --data digits --seeds 3 --out benchmarks/results
    python -m benchmarks.ablation --data checkerboard --seeds 3

Writes ``ablation_<data>.json`` and ``ablation_<data>.md`` (mean ± std over seeds).
"""

from __future__ import annotations

import argparse

from benchmarks.common import (
    REPORTED,
    add_run_args,
    markdown_table,
    run_comparison,
    write_comparison,
)

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "shared": ["student.parameterization=shared"],
    "lora": ["student.parameterization=lora"],
    "dataset_real": ["gan.real=dataset"],
    "detached": ["turbo.end_to_end=false"],
    "step1=none": ["step1.loss=none"],
    "step1=adversarial": ["step1.loss=adversarial"],
    "step1=dm": ["step1.loss=dm"],
    "no_dm": ["dm.weight=0.0"],
}
PRESET = {"digits": "demo", "checkerboard": "turbo_pp_checkerboard"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(ap, PRESET, "digits")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    results, rows = run_comparison(args, PRESET[args.data],
                                   {n: VARIANTS[n] for n in args.variants.split(",")})
    table = markdown_table(rows, (*REPORTED[args.data], "seconds_per_iteration"))
    write_comparison(args, "ablation", results, table)


if __name__ == "__main__":
    main()
