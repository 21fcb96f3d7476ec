"""The recipe benchmark: every row of a suite trained for a fixed budget over seeds, evaluated
from the same noise, with a cheap learning curve and the Turbo++ parts as paired differences.

A suite is a YAML file in ``benchmarks/suites/`` (see ``digits_narrow.yaml``): the problem (data
set, teacher, the preset every row starts from), the recipes as configured for that problem
(each written once: overrides on the base preset, or a preset of their own), the rows (a
recipe, a step count K and extra overrides), groups of rows, the Turbo++ ablation pairs and the
naive step counts of the teacher. Nothing about recipes lives in this script.

Usage (``run`` appends finished runs to ``<suite>_runs.jsonl`` and skips runs already there, so
a long plan can be split into several commands and resumed)::

    python -m benchmarks.recipes time digits_narrow --rows all --iterations 20
    python -m benchmarks.recipes run digits_narrow --rows k2 --seeds 3
    python -m benchmarks.recipes report digits_narrow

``report`` writes ``<suite>.json``, ``<suite>.md`` (mean ± 95 % t-interval over seeds; each
Turbo++ part as ablation minus reference, paired by seed and Welch) and ``<suite>_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.stats import cell, mean_ci, welch_diff
from fewstep.assets import ASSETS
from fewstep.core.levels import teacher_sigmas
from fewstep.core.samplers import euler_sample
from fewstep.data.problem import Problem, get_problem
from fewstep.data.registry import shipped_teacher
from fewstep.distill.config import DistillConfig, drop_foreign_sections
from fewstep.distill.trainer import Trainer
from fewstep.evaluation.evaluate import eval_noise, evaluate_samplers
from fewstep.evaluation.features import resolve_feature_space
from fewstep.evaluation.fid import frechet_distance
from fewstep.evaluation.toy_metrics import sliced_wasserstein
from fewstep.presets import preset_path
from fewstep.teachers.training import load_denoiser
from fewstep.utils.config_files import apply_overrides, load_yaml, validate

SUITES = Path(__file__).resolve().parent / "suites"


@dataclass
class Suite:
    """A suite file (see the module docstring)."""

    name: str
    data: str
    base: str
    teacher: str | None = None
    iterations: int = 800
    seeds: int = 3
    columns: list[str] = field(default_factory=list)
    naive_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    curve_every: int = 200
    recipes: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @classmethod
    def load(cls, name: str) -> Suite:
        path = Path(name) if name.endswith(".yaml") else SUITES / f"{name}.yaml"
        return cls(name=path.stem, **load_yaml(path))

    def teacher_path(self) -> Path:
        if self.teacher is None:
            path = shipped_teacher(self.data)
            assert path is not None, f"{self.data} has no shipped teacher"
            return path
        return ASSETS / self.teacher.removeprefix("assets:") \
            if self.teacher.startswith("assets:") else Path(self.teacher)

    def row_names(self, spec: str) -> list[str]:
        names: list[str] = []
        for part in spec.split(","):
            names += list(self.rows) if part == "all" else self.groups.get(part, [part])
        bad = [n for n in names if n not in self.rows]
        if bad:
            raise SystemExit(f"--rows: unknown row(s) {bad}; rows: {list(self.rows)}, "
                             f"groups: {list(self.groups)}")
        return names

    def config(self, row: str, seed: int, iterations: int, cache_dir: str | None
               ) -> tuple[DistillConfig, list[str]]:
        """The row's run config (recipe on top of the base preset, then the row's overrides)
        and the overrides that made it."""
        spec = self.rows[row]
        recipe = self.recipes[spec["recipe"]]
        if isinstance(recipe, dict):  # {preset: NAME, set: [...]}
            base, r_over = load_yaml(preset_path(recipe["preset"])), list(recipe.get("set", []))
        else:
            base, r_over = load_yaml(preset_path(self.base)), list(recipe)
        base["data"] = self.data
        base.setdefault("teacher", {})["path"] = str(self.teacher_path())
        if cache_dir:
            base.setdefault("cache", {})["dir"] = cache_dir
        over = [*r_over, *spec.get("set", []), f"student.num_steps={spec['K']}",
                f"train.iterations={iterations}", f"train.seed={seed}"]
        data = apply_overrides(base, [o for o in over if o.startswith("method=")])
        data = apply_overrides(drop_foreign_sections(data),
                               [o for o in over if not o.startswith("method=")])
        return validate(DistillConfig, data, f"suite {self.name}, row {row}"), over


# ------------------------------------------------------------------------------- one run
class CurveMetric:
    """The cheap metric of the learning curves: the problem's primary distance (Fréchet
    distance in its default feature space, or sliced W2 for points) of ``n`` samples from a
    fixed noise against the held-out split."""

    def __init__(self, problem: Problem, seed: int, device: torch.device, n: int = 1000):
        self.problem = problem
        ref, _ = problem.split("heldout")
        self.space = resolve_feature_space(problem, "auto", device)
        self.ref = ref.to(device) if problem.is_toy else self.space.features(ref.to(device))
        self.noise, self.cond = eval_noise(problem, n, seed, device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> float:
        if self.problem.is_toy:
            return float(sliced_wasserstein(x, self.ref, 256, 2.0,
                                            torch.Generator().manual_seed(0)))
        return frechet_distance(self.ref, self.space.features(x))

    def of_student(self, student: Any) -> float:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return self(student.generate(self.noise, self.cond, generator=g).sample)


def train_row(cfg: DistillConfig, curve_every: int, threads: int, time_only: bool = False
              ) -> dict[str, Any]:
    """Train one student (its own process) with a learning curve, then evaluate it."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, tmp, progress=False)
        tr.batches.prepare(False)
        t = tr.teacher
        curve_fn = None if time_only else CurveMetric(t.problem, cfg.eval.seed + 99, tr.device)
        curve = [] if curve_fn is None else [(0, curve_fn.of_student(tr.ema))]
        train_s = 0.0
        while tr.step < cfg.train.iterations:
            t0 = time.perf_counter()
            tr.train_iteration()
            train_s += time.perf_counter() - t0
            if curve_fn is not None and (tr.step % curve_every == 0
                                         or tr.step == cfg.train.iterations):
                curve.append((tr.step, curve_fn.of_student(tr.ema)))
        out: dict[str, Any] = {"seconds_per_iteration": train_s / cfg.train.iterations,
                               "train_seconds": train_s}
        if time_only:
            return out
        k = tr.ema.num_steps
        metrics, _ = evaluate_samplers(t.problem, [f"student_{k}"], t.denoiser, t.cfg_scale,
                                       t.shift, tr.ema, cfg.eval.num_samples, cfg.eval.seed,
                                       device=tr.device, timing=False)
    out.update({m: v for m, v in metrics[f"student_{k}"].items()})
    out["curve"] = curve
    return out


def _runs_path(out: Path, suite: Suite) -> Path:
    return out / f"{suite.name}_runs.jsonl"


def read_runs(out: Path, suite: Suite) -> list[dict[str, Any]]:
    p = _runs_path(out, suite)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] \
        if p.exists() else []


def cmd_run(suite: Suite, args: argparse.Namespace, time_only: bool = False) -> None:
    rows = suite.row_names(args.rows)
    iters = args.iterations or suite.iterations
    seeds = range(1) if time_only else range(args.seed0, args.seed0 + (args.seeds or suite.seeds))
    done = {(r["row"], r["seed"], r["iterations"]) for r in read_runs(args.out, suite)}
    jobs = [(row, s) for row in rows for s in seeds
            if time_only or (row, s, iters) not in done]
    # build each teacher cache once, before runs race to write the same shards
    for s in sorted({s for _, s in jobs}):
        for k in sorted({suite.rows[r]["K"] for r, _ in jobs}):
            row = next(r for r, _ in jobs if suite.rows[r]["K"] == k)
            cfg, _ = suite.config(row, s, 1, args.cache_dir)
            with tempfile.TemporaryDirectory() as tmp:
                Trainer(cfg, tmp, progress=False).batches.prepare(False)
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        futs = {}
        for row, s in jobs:
            cfg, over = suite.config(row, s, iters, args.cache_dir)
            futs[pool.submit(train_row, cfg, suite.curve_every, args.threads, time_only)] = \
                (row, s, over)
        for fut in as_completed(futs):
            row, s, over = futs[fut]
            r = fut.result()
            if time_only:
                est = r["seconds_per_iteration"] * suite.iterations * suite.seeds
                print(f"{row}: {r['seconds_per_iteration']:.3f} s/update -> {est / 60:.1f} "
                      f"CPU-min for {suite.seeds} x {suite.iterations} updates", flush=True)
                continue
            rec = {"row": row, "seed": s, "iterations": iters, "overrides": over, **r}
            with _runs_path(args.out, suite).open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{row}|{s}: " + ", ".join(f"{c}={r[c]:.3f}" for c in suite.columns[:2]
                                             if c in r), flush=True)


# ------------------------------------------------------------------------------- report
def naive_rows(suite: Suite) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """The teacher's naive few-step rows (full metrics) and their curve metric."""
    den, tcfg = load_denoiser(suite.teacher_path())
    samp = tcfg.get("sampling", {})
    w, shift = samp.get("cfg_scale", 1.0), samp.get("shift", 1.0)
    problem = get_problem(suite.data)
    metrics, _ = evaluate_samplers(problem, [f"teacher_{n}" for n in suite.naive_steps], den,
                                   w, shift, None, 2000, 1234, timing=False)
    cfg, _ = suite.config(next(iter(suite.rows)), 0, 1, None)
    curve = CurveMetric(problem, cfg.eval.seed + 99, torch.device("cpu"))
    with torch.no_grad():
        naive_curve = {f"teacher_{n}": curve(euler_sample(den, curve.noise, curve.cond,
                                                          teacher_sigmas(n, shift), w).sample)
                       for n in suite.naive_steps}
    return metrics, naive_curve


def cmd_report(suite: Suite, args: argparse.Namespace) -> None:
    iters = args.iterations or suite.iterations
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in read_runs(args.out, suite):
        if r["iterations"] == iters:
            by_row.setdefault(r["row"], []).append(r)
    naive, naive_curve = naive_rows(suite)
    cols = suite.columns
    lines = [f"Suite `{suite.name}`: {suite.data}, teacher {suite.teacher_path().name}, "
             f"{iters} generator updates; mean ± 95 % t-interval over seeds (n).", "",
             "| row | n | " + " | ".join(cols) + " | curve at 1/2, 3/4, end |",
             "|---|---" + "|---" * (len(cols) + 1) + "|"]
    for name, m in naive.items():
        lines.append(f"| naive {name} | – | " + " | ".join(
            f"{m[c]:.3f}" if isinstance(m.get(c), float) and m[c] == m[c] else "–"
            for c in cols) + " | – |")
    order = [r for r in suite.rows if r in by_row]
    marks = [iters // 2, 3 * iters // 4, iters]
    for row in order:
        rs = by_row[row]
        curve = " / ".join(f"{statistics.fmean(dict(r['curve'])[st] for r in rs):.2f}"
                           for st in marks if all(st in dict(r["curve"]) for r in rs))
        lines.append(f"| {row} | {len(rs)} | " + " | ".join(
            cell(*mean_ci([r[c] for r in rs if c in r])) for c in cols) + f" | {curve} |")
    effects = parts_table(suite, by_row, lines)
    table = "\n".join(lines) + "\n" + suite.notes
    payload = {"suite": suite.name, "data": suite.data, "iterations": iters,
               "teacher": suite.teacher_path().name, "naive": naive,
               "naive_curve": naive_curve,
               "rows": {row: {c: mean_ci([r[c] for r in by_row[row] if c in r]) for c in cols}
                        for row in order},
               "parts": effects, "runs": [r for rs in by_row.values() for r in rs]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{suite.name}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"{suite.name}.md").write_text(table)
    plot_curves(suite, by_row, args.out / f"{suite.name}_curves.png", naive_curve)
    print(table)


def parts_table(suite: Suite, by_row: dict[str, list[dict[str, Any]]], lines: list[str]
                ) -> dict[str, dict[str, tuple[float, float]]]:
    """Each ablation row minus the reference row: paired (same seed) and Welch differences of
    the suite's first two columns and of recall; appended to ``lines``."""
    ref_row, parts = suite.parts.get("reference"), suite.parts.get("rows", {})
    c0, c1 = suite.columns[:2]
    lines += ["", f"Parts of `{ref_row}`: ablation minus reference, mean and 95 % interval; "
              "*paired* = per-seed differences (same seed = same data stream and noise), "
              f"*Welch* = unpaired. Positive Δ {c0} / Δ {c1} and negative Δ recall mean the "
              "part helps.", "",
              f"| part removed | n | Δ {c0} (paired) | Δ {c0} (Welch) | Δ {c1} (paired) | "
              "Δ recall (paired) |", "|---|---|---|---|---|---|"]
    ref = {r["seed"]: r for r in by_row.get(ref_row, [])}
    effects: dict[str, dict[str, tuple[float, float]]] = {}
    for row, what in parts.items():
        abl = {r["seed"]: r for r in by_row.get(row, [])}
        seeds = sorted(set(abl) & set(ref))
        if len(seeds) < 2:
            continue
        eff = {f"{c}_paired": mean_ci([abl[s][c] - ref[s][c] for s in seeds])
               for c in (c0, c1, "recall") if c in ref[seeds[0]]}
        eff[f"{c0}_welch"] = welch_diff([r[c0] for r in abl.values()],
                                        [r[c0] for r in ref.values()])
        effects[what] = eff
        lines.append(f"| {what} | {len(seeds)} | " + " | ".join(
            cell(*eff.get(k, (math.nan, math.nan))) for k in (
                f"{c0}_paired", f"{c0}_welch", f"{c1}_paired", "recall_paired")) + " |")
    return effects


def plot_curves(suite: Suite, by_row: dict[str, list[dict[str, Any]]], path: Path,
                naive: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({suite.rows[r]["K"] for r in by_row})
    if not ks:
        return
    fig, axes = plt.subplots(1, len(ks), figsize=(4.5 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for row, rs in by_row.items():
            if suite.rows[row]["K"] != k:
                continue
            steps = [s for s, _ in rs[0]["curve"]]
            ms = [statistics.fmean(dict(r["curve"]).get(s, math.nan) for r in rs) for s in steps]
            ax.plot(steps, ms, marker=".", label=row.rsplit("_K", 1)[0])
        for n, ls in ((k, "--"), (max(suite.naive_steps), ":")):
            if f"teacher_{n}" in naive:
                ax.axhline(naive[f"teacher_{n}"], color="k", ls=ls, lw=0.8,
                           label=f"teacher, {n} Euler steps")
        ax.set(title=f"K = {k}", xlabel="generator updates", yscale="log",
               ylabel=f"{suite.columns[0]}, 1000 samples (mean over seeds)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("time", "run", "report"))
    ap.add_argument("suite", help="a suite name in benchmarks/suites/ or a .yaml path")
    ap.add_argument("--rows", default="all", help="row names or groups of the suite")
    ap.add_argument("--seeds", type=int, default=None, help="default: the suite's")
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--iterations", type=int, default=None, help="default: the suite's")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None, help="teacher cache folder")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    suite = Suite.load(args.suite)
    if args.command == "report":
        cmd_report(suite, args)
    else:
        cmd_run(suite, args, time_only=args.command == "time")


if __name__ == "__main__":
    main()
