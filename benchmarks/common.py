"""Shared helpers for the benchmark scripts: run one distillation, aggregate, write tables."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from fewstep.data.problem import get_problem
from fewstep.data.registry import shipped_teacher
from fewstep.distill.config import DistillConfig, drop_foreign_sections
from fewstep.distill.trainer import Trainer
from fewstep.evaluation.evaluate import evaluate_samplers
from fewstep.presets import preset_path
from fewstep.teachers.training import load_denoiser
from fewstep.utils.config_files import apply_overrides, load_yaml, validate

#: the metric each data set is ranked by (lower is better), and the ones reported
PRIMARY = {"digits": "fid", "checkerboard": "swd"}
REPORTED = {"digits": ("fid", "fid_vs_teacher", "precision", "recall", "class_accuracy"),
            "checkerboard": ("swd", "swd_vs_teacher", "mode_coverage", "quality")}


def add_run_args(ap: argparse.ArgumentParser, presets: dict[str, str], default_data: str
                 ) -> None:
    """The options both comparison scripts take (data set, seeds, budget, parallelism)."""
    ap.add_argument("--data", choices=sorted(presets), default=default_data)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=None, help="override the preset's")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted.key=value overrides")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")


def extra_overrides(args: argparse.Namespace) -> list[str]:
    """``--iterations`` and ``--set`` as config overrides."""
    extra = [f"train.iterations={args.iterations}"] if args.iterations else []
    return extra + list(args.set)


def row_config(base: dict[str, Any], overrides: list[str], what: str = "benchmark config"
               ) -> DistillConfig:
    """``base`` switched to the row's method (dropping the sections only other methods read),
    then the row's other overrides, validated (``what`` names it in an error)."""
    data = apply_overrides(base, [o for o in overrides if o.startswith("method=")])
    data = apply_overrides(drop_foreign_sections(data), [o for o in overrides
                                                if not o.startswith("method=")])
    return validate(DistillConfig, data, what)


def run_one(base: dict[str, Any], overrides: list[str], run_dir: Path,
            num_samples: int = 2000) -> dict[str, Any]:
    """Train one student and evaluate it at its own step count from the eval noise."""
    cfg = row_config(base, overrides)
    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()
    tr = Trainer(cfg, run_dir, progress=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    student = tr.train()
    train_s = time.perf_counter() - t0
    k = student.num_steps
    t = tr.teacher
    metrics, _ = evaluate_samplers(t.problem, [f"student_{k}"], t.denoiser, t.cfg_scale,
                                   t.shift, student, num_samples, cfg.eval.seed,
                                   device=tr.device)
    out = dict(metrics[f"student_{k}"])
    out["train_seconds"] = train_s
    out["seconds_per_iteration"] = train_s / cfg.train.iterations
    return out


def _child(base: dict[str, Any], overrides: list[str], run_dir: str, num_samples: int,
           threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = run_one(base, overrides, Path(run_dir), num_samples)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss_mb"] = rss1 / 1024.0  # Linux reports KiB
    out["peak_rss_over_imports_mb"] = (rss1 - rss0) / 1024.0
    return out


def run_many(jobs: list[tuple[str, dict[str, Any], list[str], Path]], workers: int = 1,
             threads: int = 1, num_samples: int = 2000) -> dict[str, dict[str, Any]]:
    """Run ``(key, base, overrides, run_dir)`` jobs, each in a fresh process (so its peak RSS is
    its own), ``workers`` at a time with ``threads`` torch threads each."""
    ctx = mp.get_context("spawn")
    results: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        futs = {key: pool.submit(_child, base, ov, str(rd), num_samples, threads)
                for key, base, ov, rd in jobs}
        for key, fut in futs.items():
            results[key] = fut.result()
            r = results[key]
            prim = r.get("fid", r.get("swd"))
            print(f"{key}: primary={prim:.4f} train={r['train_seconds']:.0f}s "
                  f"rss={r['peak_rss_mb']:.0f}MB", flush=True)
    return results


def run_rows(args: argparse.Namespace, preset: str, rows: dict[str, list[str]]
             ) -> dict[str, list[dict[str, Any]]]:
    """Train and evaluate every row (its overrides on top of ``preset``) for ``args.seeds``
    seeds, each run in its own process; returns ``{row: [result per seed]}``."""
    base = load_yaml(preset_path(preset))
    extra = extra_overrides(args)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(f"{name}|{s}", base, [*ov, *extra, f"train.seed={s}"],
                 Path(tmp) / f"run{i}_{s}")
                for i, (name, ov) in enumerate(rows.items()) for s in range(args.seeds)]
        flat = run_many(jobs, args.workers, args.threads)
    return {name: [flat[f"{name}|{s}"] for s in range(args.seeds)] for name in rows}


def run_comparison(args: argparse.Namespace, preset: str, rows: dict[str, list[str]]
                   ) -> tuple[dict[str, list[dict[str, Any]]],
                              dict[str, dict[str, tuple[float, float]]]]:
    """:func:`run_rows`, then :func:`aggregate` per row: ``({row: [result per seed]},
    {row: {metric: (mean, std)}})``."""
    results = run_rows(args, preset, rows)
    return results, {name: aggregate(v) for name, v in results.items()}


def teacher_rows(data: str, steps: list[int], num_samples: int = 2000,
                 seed: int = 1234) -> dict[str, dict[str, float]]:
    """Naive few-step sampling of the shipped teacher (the baseline rows)."""
    den, cfg = load_denoiser(shipped_teacher(data))
    samp = cfg.get("sampling", {})
    m, _ = evaluate_samplers(get_problem(data), [f"teacher_{s}" for s in steps], den,
                             samp.get("cfg_scale", 1.0), samp.get("shift", 1.0), None,
                             num_samples, seed)
    return m


def aggregate(runs: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and (sample) standard deviation of every numeric metric over seeds (labels such as
    ``feature_space`` are skipped)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if not math.isnan(r[k])]
        if not vals:
            out[k] = (math.nan, math.nan)
            continue
        out[k] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def markdown_table(rows: dict[str, dict[str, tuple[float, float]]], cols: tuple[str, ...]
                   ) -> str:
    head = "| variant | " + " | ".join(cols) + " |\n|---" + "|---" * len(cols) + "|\n"
    lines = []
    for name, agg in rows.items():
        cells = []
        for c in cols:
            m, s = agg.get(c, (math.nan, math.nan))
            cells.append(f"{m:.3f} ± {s:.3f}" if s == s and s > 0 else f"{m:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_results(out_dir: Path, name: str, payload: dict[str, Any], table: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (out_dir / f"{name}.md").write_text(table)
    print(table)



def write_comparison(args: argparse.Namespace, name: str, results: dict[str, Any], table: str,
                     **more: Any) -> None:
    """:func:`write_results` of a comparison script: ``<name>_<data>.json`` holds the data set,
    seeds, extra overrides (``--iterations`` / ``--set``), ``more`` and the per-seed runs;
    ``<name>_<data>.md`` the table."""
    write_results(args.out, f"{name}_{args.data}",
                  {"data": args.data, "seeds": args.seeds, "extra_overrides": extra_overrides(args),
                   **more, "runs": results}, table)
