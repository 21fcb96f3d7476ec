"""All recipes compared in one run (METHODS §7): same teacher, same number of generator
updates, same evaluation noise, >= 3 seeds, K = 1 and 2 (and 3 for Imagine Flash), on digits
and on the 2-D checkerboard, plus naive few-step sampling of the teacher.

Usage::

    python -m benchmarks.methods --data checkerboard --seeds 3
    python -m benchmarks.methods --data digits --seeds 3 --iterations 400

Writes ``methods_<data>.json``, ``methods_<data>.md`` (mean ± std over seeds; seconds per
generator update and the run's peak resident memory) and ``methods_<data>.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import (
    PRIMARY,
    REPORTED,
    add_run_args,
    markdown_table,
    run_comparison,
    teacher_rows,
    write_comparison,
)

#: per-recipe settings on top of the data set's Turbo++ preset (everything else shared)
METHODS: dict[str, list[str]] = {
    "turbo_pp": [],
    "regression": ["method=regression"],
    "dmd2": ["method=dmd2", "gan.weight=0.1", "train.aux_ratio=2"],
    "sid": ["method=sid"],
    "imagine_flash": ["method=imagine_flash", "imagine_flash.tau_min=0.02",
                      "imagine_flash.tau_max=0.5"],
    # LADD (METHODS §6b): one shared network, hinge loss, the preset's discriminator layers
    "ladd": ["method=ladd", "student.parameterization=shared", "gan.loss=hinge"],
}
STEPS = {"imagine_flash": (1, 2, 3)}
PRESET = {"digits": "demo", "checkerboard": "turbo_pp_checkerboard"}


def plot(rows: dict[str, dict[str, tuple[float, float]]], teacher: dict[str, dict[str, float]],
         metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    methods = sorted({k.rsplit("_K", 1)[0] for k in rows})
    for m in methods:
        ks = sorted(int(k.rsplit("_K", 1)[1]) for k in rows if k.rsplit("_K", 1)[0] == m)
        ys = [rows[f"{m}_K{k}"][metric] for k in ks]
        ax.errorbar(ks, [y[0] for y in ys], yerr=[y[1] for y in ys], marker="o", capsize=3,
                    label=m)
    tk = sorted(int(k.split("_")[1]) for k in teacher)
    ax.plot(tk, [teacher[f"teacher_{k}"][metric] for k in tk], "k--", marker="x",
            label="teacher (naive)")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(metric + " (lower is better)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(ap, PRESET, "checkerboard")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    results, rows = run_comparison(
        args, PRESET[args.data], {f"{m}_K{k}": [*METHODS[m], f"student.num_steps={k}"]
                                  for m in args.methods.split(",") for k in STEPS.get(m, (1, 2))})
    teacher = teacher_rows(args.data, [1, 2, 3, 8])
    trows = {name: {c: (v, 0.0) for c, v in m.items()} for name, m in teacher.items()}
    cols = (*REPORTED[args.data], "seconds_per_iteration", "peak_rss_mb")
    table = markdown_table({**trows, **rows}, cols)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, teacher, PRIMARY[args.data], args.out / f"methods_{args.data}.png")
    write_comparison(args, "methods", results, table, teacher=teacher)


if __name__ == "__main__":
    main()
