"""Evidence where capacity binds: every recipe on digits with a capacity-tight teacher.

The teacher is ``fewstep/assets/teacher_digits_narrow.safetensors`` (a 67 k-parameter ResMLP,
hidden 64, depth 2; see ``fewstep/presets/teacher_digits_narrow.yaml``); students start from it
as usual, so the two-step student is as narrow as the teacher. Every row shares the ``demo``
preset's settings (batch 128, lr 1e-4, EMA 0.99, same teacher cache) and differs only by the
overrides in :data:`ROWS`; every run is evaluated from the same noise (2000 samples, seed 1234).

Rows: at K = 2 Turbo++ (``turbo_pp``) and its ablations (``shared``, ``detached``,
``step1=none``, ``dataset_real``), LADD, DMD2, SiD and Imagine Flash; at K = 1 and 4 Turbo++,
LADD and DMD2; plus naive sampling of the teacher at 1, 2, 4 and 8 steps.

A training curve (FID of the EMA student on 1000 samples from a fixed noise vs the held-out
split, the cheap metric) is recorded every ``--curve-every`` generator updates.

Usage (each command appends finished runs to ``evidence_<data>_runs.jsonl`` and skips runs
already there, so a long plan can be split into several commands and resumed)::

    python -m benchmarks.evidence time --rows all --iterations 20      # seconds / update
    python -m benchmarks.evidence run --rows k2 --seeds 3 --iterations 800
    python -m benchmarks.evidence run --rows k14 --seeds 3 --iterations 800
    python -m benchmarks.evidence report                               # tables + plot

``report`` writes ``evidence_<data>.json``, ``evidence_<data>.md`` (mean ± 95 % t-interval
over seeds, and each Turbo++ part's effect as a difference to the full recipe with a Welch
95 % interval) and ``evidence_<data>_curves.png``.
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
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from benchmarks.common import row_config
from fewstep.assets import ASSETS
from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.evaluation.digits_classifier import load_default_classifier
from fewstep.evaluation.evaluate import eval_noise, evaluate_samplers
from fewstep.evaluation.fid import extract_features, frechet_distance
from fewstep.presets import preset_path
from fewstep.utils.config_files import load_yaml, validate

#: teacher file, base preset and the teacher's naive step counts per data set
SETUPS: dict[str, dict[str, Any]] = {
    "digits": {"teacher": ASSETS / "teacher_digits_narrow.safetensors", "preset": "demo",
               "naive": (1, 2, 4, 8)},
}

DMD2 = ["method=dmd2", "gan.weight=0.1", "train.aux_ratio=2"]
#: LADD (METHODS §6b) as in benchmarks/methods.py: one shared network, hinge loss
LADD = ["method=ladd", "student.parameterization=shared", "gan.loss=hinge"]
#: row name -> (overrides on top of the preset, student steps K)
ROWS: dict[str, tuple[list[str], int]] = {
    "turbo_pp_K2": ([], 2),
    "turbo_pp-shared_K2": (["student.parameterization=shared"], 2),
    "turbo_pp-detached_K2": (["turbo.end_to_end=false"], 2),
    "turbo_pp-step1=none_K2": (["step1.loss=none"], 2),
    "turbo_pp-dataset_real_K2": (["gan.real=dataset"], 2),
    "ladd_K2": (LADD, 2),
    "dmd2_K2": (DMD2, 2),
    "sid_K2": (["method=sid"], 2),
    "imagine_flash_K2": (["method=imagine_flash", "imagine_flash.tau_min=0.02",
                          "imagine_flash.tau_max=0.5"], 2),
    "turbo_pp_K1": ([], 1),
    "ladd_K1": (LADD, 1),
    "dmd2_K1": (DMD2, 1),
    "turbo_pp_K4": ([], 4),
    "ladd_K4": (LADD, 4),
    "dmd2_K4": (DMD2, 4),
}
GROUPS = {
    "all": list(ROWS),
    "k2": [r for r in ROWS if r.endswith("_K2")],
    "k14": [r for r in ROWS if not r.endswith("_K2")],
}
#: Turbo++ parts: ablation row -> what removing it tests
PARTS = {
    "turbo_pp-shared_K2": "step decoupling (decoupled vs one shared network)",
    "turbo_pp-detached_K2": "end-to-end training (vs stop-gradient between steps)",
    "turbo_pp-step1=none_K2": "step-1 loss (teacher_traj vs none)",
    "turbo_pp-dataset_real_K2": "teacher generations as GAN reals (vs the data set)",
}
#: how the committed results were produced (printed under the tables)
NOTES = """
Commands (2-core machine shared with ~7 other jobs; `nice -n 10`, 1 torch thread per run,
at most 2 runs at once; each `run` appends to `evidence_digits_runs.jsonl`):

    fewstep teacher train --config fewstep/presets/teacher_digits_narrow.yaml \\
        --out fewstep/assets/teacher_digits_narrow.safetensors          # 28.5 s
    python -m benchmarks.evidence time --rows <every row but LADD> --iterations 30
    python -m benchmarks.evidence run --rows dmd2_K2,turbo_pp-dataset_real_K2,sid_K2,\\
        turbo_pp-step1=none_K2,turbo_pp-detached_K2,turbo_pp_K2,turbo_pp-shared_K2,\\
        imagine_flash_K2 --seeds 3                                      # 00:12 -> 01:18
    python -m benchmarks.evidence run --rows ladd_K2 --seeds 3 --workers 1
    python -m benchmarks.evidence run --rows dmd2_K4,turbo_pp_K4,dmd2_K1,ladd_K4,\\
        turbo_pp_K1,ladd_K1 --seeds 1 --workers 1
    python -m benchmarks.evidence run --rows turbo_pp_K1,ladd_K1,turbo_pp_K4,ladd_K4 \\
        --seed0 1 --seeds 1 --workers 1
    python -m benchmarks.evidence run --rows dmd2_K1,dmd2_K4 --seed0 1 --seeds 1 --workers 1
    python -m benchmarks.evidence run --rows turbo_pp_K1,dmd2_K1,turbo_pp_K4 --seed0 2 \\
        --seeds 1 --workers 1
    python -m benchmarks.evidence run --rows ladd_K1,ladd_K4,dmd2_K4 --seed0 2 --seeds 1 \\
        --workers 1
    python -m benchmarks.evidence report

(all with `--iterations 800 --cache-dir /tmp/edges/cache`, 01:19 -> 01:52 for LADD and
K = 1 / 4). The K = 2 rows except LADD ran on the branch before the core refactor was merged,
LADD and the K = 1 / 4 rows after it; re-running `turbo_pp_K2` seed 0 after the merge gave
the identical result (FID 14.968, fid_vs_teacher 4.467). Cut for time: the harder (16x16)
problem was not run. `seconds_per_iteration` is wall time on the shared machine (load 6 to
14 during the runs): compare costs with `python -m benchmarks.evidence time`, not this column.
"""
COLS = ("fid", "fid_vs_teacher", "precision", "recall", "class_accuracy",
        "seconds_per_iteration")


def base_config(data: str, cache_dir: str | None) -> dict[str, Any]:
    setup = SETUPS[data]
    base = load_yaml(preset_path(setup["preset"]))
    base["data"] = data
    base.setdefault("teacher", {})["path"] = str(setup["teacher"])
    if cache_dir:
        base.setdefault("cache", {})["dir"] = cache_dir
    return base


def row_overrides(row: str, seed: int, iterations: int) -> list[str]:
    ov, k = ROWS[row]
    return [*ov, f"student.num_steps={k}", f"train.iterations={iterations}",
            f"train.seed={seed}"]


@torch.no_grad()
def cheap_fid(student: torch.nn.Module, noise: torch.Tensor, cond: torch.Tensor | None,
              classifier: torch.nn.Module, ref_features: torch.Tensor) -> float:
    """FID of the student's samples from fixed ``noise`` vs precomputed reference features."""
    g = torch.Generator().manual_seed(0)
    x = student.generate(noise, cond, generator=g).sample  # type: ignore[operator]
    return frechet_distance(ref_features, extract_features(classifier, x))


def train_row(base: dict[str, Any], overrides: list[str], curve_every: int,
              threads: int, num_samples: int = 2000, curve_samples: int = 1000,
              time_only: bool = False) -> dict[str, Any]:
    """Train one student (its own process) with a cheap FID curve, then evaluate it."""
    torch.set_num_threads(threads)
    cfg = row_config(base, overrides, "evidence config")
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, tmp, progress=False)
        tr.batches.prepare(False)
        curve: list[tuple[int, float]] = []
        if not time_only:
            clf = load_default_classifier(tr.device)
            ref, _ = tr.teacher.problem.split("heldout")
            ref_f = extract_features(clf, ref.to(tr.device))
            noise, cond = eval_noise(tr.teacher.problem, curve_samples, cfg.eval.seed + 99,
                                     tr.device)
            curve.append((0, cheap_fid(tr.ema, noise, cond, clf, ref_f)))
        train_s = 0.0
        while tr.step < cfg.train.iterations:
            t0 = time.perf_counter()
            tr.train_iteration()
            train_s += time.perf_counter() - t0
            if not time_only and (tr.step % curve_every == 0
                                  or tr.step == cfg.train.iterations):
                curve.append((tr.step, cheap_fid(tr.ema, noise, cond, clf, ref_f)))
        out: dict[str, Any] = {"seconds_per_iteration": train_s / cfg.train.iterations,
                               "train_seconds": train_s}
        if time_only:
            return out
        k = tr.ema.num_steps
        t = tr.teacher
        metrics, _ = evaluate_samplers(t.problem, [f"student_{k}"], t.denoiser, t.cfg_scale,
                                       t.shift, tr.ema, num_samples, cfg.eval.seed,
                                       device=tr.device, timing=False)
    out.update({m: float(v) for m, v in metrics[f"student_{k}"].items()})
    out["curve"] = curve
    return out


def _runs_path(out: Path, data: str) -> Path:
    return out / f"evidence_{data}_runs.jsonl"


def read_runs(out: Path, data: str) -> list[dict[str, Any]]:
    p = _runs_path(out, data)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _rows(spec: str) -> list[str]:
    names: list[str] = []
    for part in spec.split(","):
        names += GROUPS.get(part, [part])
    bad = [n for n in names if n not in ROWS]
    if bad:
        raise SystemExit(f"--rows: unknown row(s) {bad}; rows: {list(ROWS)}, groups: "
                         f"{list(GROUPS)}")
    return names


def cmd_run(args: argparse.Namespace, time_only: bool = False) -> None:
    base = base_config(args.data, args.cache_dir)
    rows = _rows(args.rows)
    seeds = range(1) if time_only else range(args.seed0, args.seed0 + args.seeds)
    done = {(r["row"], r["seed"], r["iterations"]) for r in read_runs(args.out, args.data)}
    jobs = [(row, s) for row in rows for s in seeds
            if time_only or (row, s, args.iterations) not in done]
    # build the teacher caches once, before runs race to write the same shards
    for k in sorted({ROWS[r][1] for r, _ in jobs}):
        for s in sorted({s for _, s in jobs}):
            cfg = row_config(base, row_overrides(
                f"turbo_pp_K{k}" if f"turbo_pp_K{k}" in ROWS else "turbo_pp_K2", s, 1),
                "evidence config")
            with tempfile.TemporaryDirectory() as tmp:
                Trainer(cfg, tmp, progress=False).prepare_data()
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        futs = {pool.submit(train_row, base, row_overrides(row, s, args.iterations),
                            args.curve_every, args.threads, time_only=time_only): (row, s)
                for row, s in jobs}
        for fut in as_completed(futs):
            row, s = futs[fut]
            r = fut.result()
            if time_only:
                est = r["seconds_per_iteration"] * args.plan_iterations * args.plan_seeds
                print(f"{row}: {r['seconds_per_iteration']:.3f} s/update -> "
                      f"{est / 60:.1f} CPU-min for {args.plan_seeds} x "
                      f"{args.plan_iterations} updates", flush=True)
                continue
            rec = {"row": row, "seed": s, "iterations": args.iterations,
                   "overrides": row_overrides(row, s, args.iterations), **r}
            with _runs_path(args.out, args.data).open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{row}|{s}: fid={r['fid']:.3f} fid_vs_teacher={r['fid_vs_teacher']:.3f} "
                  f"{r['seconds_per_iteration']:.3f} s/update", flush=True)


def mean_ci(vals: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (0 for one value)."""
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return m, 0.0
    t = float(stats.t.ppf(0.975, len(vals) - 1))
    return m, t * statistics.stdev(vals) / math.sqrt(len(vals))


def welch_diff(a: list[float], b: list[float]) -> tuple[float, float]:
    """``mean(a) - mean(b)`` and the half-width of its Welch 95 % interval."""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return ma - mb, 0.0
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return ma - mb, float(stats.t.ppf(0.975, dof)) * se


def _cell(m: float, h: float) -> str:
    if m != m:
        return "–"
    return f"{m:.3f} ± {h:.3f}" if h > 0 else f"{m:.3f}"


def cmd_report(args: argparse.Namespace) -> None:
    runs = [r for r in read_runs(args.out, args.data) if r["iterations"] == args.iterations]
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_row.setdefault(r["row"], []).append(r)
    setup = SETUPS[args.data]
    from fewstep.data.problem import get_problem
    from fewstep.teachers.training import load_denoiser

    den, tcfg = load_denoiser(setup["teacher"])
    samp = tcfg.get("sampling", {})
    naive, _ = evaluate_samplers(get_problem(args.data), [f"teacher_{n}" for n in setup["naive"]],
                                 den, samp.get("cfg_scale", 1.0), samp.get("shift", 1.0), None,
                                 2000, 1234)
    lines = [f"Digits, capacity-tight teacher ({setup['teacher'].name}), "
             f"{args.iterations} generator updates; mean ± 95 % t-interval over seeds (n).", "",
             "| row | n | " + " | ".join(COLS) + " | curve FID at 400 / 600 / 800 |",
             "|---|---" + "|---" * (len(COLS) + 1) + "|"]
    for name, m in naive.items():
        lines.append(f"| naive {name} | – | " + " | ".join(
            f"{m[c]:.3f}" if c in m and m[c] == m[c] else "–" for c in COLS) + " | – |")
    order = [r for r in ROWS if r in by_row]
    for row in order:
        rs = by_row[row]
        curve = " / ".join(f"{statistics.fmean(dict(r['curve'])[st] for r in rs):.1f}"
                           for st in (400, 600, 800) if all(st in dict(r["curve"]) for r in rs))
        lines.append(f"| {row} | {len(rs)} | " + " | ".join(
            _cell(*mean_ci([r[c] for r in rs])) for c in COLS) + f" | {curve} |")
    verdicts = ["", "Turbo++ parts at K = 2: ablation minus full recipe, mean and 95 % interval; "
                "*paired* = per-seed differences (rows with the same seed share the data "
                "stream and initial noise), *Welch* = unpaired. Positive Δ fid / Δ "
                "fid_vs_teacher and negative Δ recall mean the part helps.", "",
                "| part removed | Δ fid (paired) | Δ fid (Welch) | Δ fid_vs_teacher (paired) "
                "| Δ recall (paired) |", "|---|---|---|---|---|"]
    full = {r["seed"]: r for r in by_row.get("turbo_pp_K2", [])}
    effects: dict[str, dict[str, tuple[float, float]]] = {}
    for row, what in PARTS.items():
        if row not in by_row or len(full) < 2 or len(by_row[row]) < 2:
            continue
        abl = {r["seed"]: r for r in by_row[row]}
        seeds = sorted(set(abl) & set(full))
        eff = {f"{c}_paired": mean_ci([abl[s][c] - full[s][c] for s in seeds])
               for c in ("fid", "fid_vs_teacher", "recall")}
        eff["fid_welch"] = welch_diff([r["fid"] for r in abl.values()],
                                      [r["fid"] for r in full.values()])
        effects[what] = eff
        verdicts.append(f"| {what} | " + " | ".join(_cell(*eff[k]) for k in (
            "fid_paired", "fid_welch", "fid_vs_teacher_paired", "recall_paired")) + " |")
    curve_naive = naive_curve_fid(args.data)
    table = "\n".join(lines + verdicts) + "\n" + NOTES
    payload = {"data": args.data, "iterations": args.iterations,
               "teacher": str(setup["teacher"].name), "naive": naive,
               "rows": {row: {c: mean_ci([r[c] for r in by_row[row]]) for c in COLS}
                        for row in order},
               "turbo_pp_parts": effects, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"evidence_{args.data}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"evidence_{args.data}.md").write_text(table)
    payload["naive_curve_fid"] = curve_naive
    (args.out / f"evidence_{args.data}.json").write_text(json.dumps(payload, indent=1))
    plot_curves(by_row, args.out / f"evidence_{args.data}_curves.png", curve_naive)
    print(table)


@torch.no_grad()
def naive_curve_fid(data: str, curve_samples: int = 1000) -> dict[str, float]:
    """The curve metric (1000-sample FID, same noise as the curves) of the teacher's naive
    K-step Euler sampler, so the curves have a reference on their own scale."""
    from fewstep.core.levels import teacher_sigmas
    from fewstep.core.samplers import euler_sample
    from fewstep.data.problem import get_problem
    from fewstep.teachers.training import load_denoiser

    setup = SETUPS[data]
    den, tcfg = load_denoiser(setup["teacher"])
    samp = tcfg.get("sampling", {})
    base = validate(DistillConfig, base_config(data, None), "evidence config")
    problem = get_problem(data)
    clf = load_default_classifier()
    ref, _ = problem.split("heldout")
    ref_f = extract_features(clf, ref)
    noise, cond = eval_noise(problem, curve_samples, base.eval.seed + 99)
    out = {}
    for n in setup["naive"]:
        x = euler_sample(den, noise, cond, teacher_sigmas(n, samp.get("shift", 1.0)),
                         samp.get("cfg_scale", 1.0)).sample
        out[f"teacher_{n}"] = frechet_distance(ref_f, extract_features(clf, x))
    return out


def plot_curves(by_row: dict[str, list[dict[str, Any]]], path: Path,
                naive: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({ROWS[r][1] for r in by_row})
    fig, axes = plt.subplots(1, len(ks), figsize=(4.5 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for row, rs in by_row.items():
            if ROWS[row][1] != k:
                continue
            steps = [s for s, _ in rs[0]["curve"]]
            vals = [[dict(r["curve"]).get(s, math.nan) for r in rs] for s in steps]
            ms = [statistics.fmean(v) for v in vals]
            ax.plot(steps, ms, marker=".", label=row.rsplit("_K", 1)[0])
        for n, ls in ((k, "--"), (8, ":")):
            if f"teacher_{n}" in naive:
                ax.axhline(naive[f"teacher_{n}"], color="k", ls=ls, lw=0.8,
                           label=f"teacher, {n} Euler steps")
        ax.set_title(f"K = {k}")
        ax.set_xlabel("generator updates")
        ax.set_ylabel("FID, 1000 samples (mean over seeds)")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("time", "run", "report"))
    ap.add_argument("--data", choices=sorted(SETUPS), default="digits")
    ap.add_argument("--rows", default="all", help=f"row names or groups {list(GROUPS)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--iterations", type=int, default=800, help="generator updates")
    ap.add_argument("--curve-every", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None, help="teacher cache folder")
    ap.add_argument("--plan-iterations", type=int, default=800, help="time: estimate for")
    ap.add_argument("--plan-seeds", type=int, default=3, help="time: estimate for")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    if args.command == "report":
        cmd_report(args)
    else:
        cmd_run(args, time_only=args.command == "time")


if __name__ == "__main__":
    main()
