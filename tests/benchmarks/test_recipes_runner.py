"""``benchmarks.recipes`` on a tiny suite: rows from the suite file, runs appended and skipped
when done, a report with the naive rows, the rows and the Turbo++ part (structure only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import recipes

SUITE = """
data: checkerboard
base: turbo_pp_checkerboard
iterations: 2
seeds: 2
curve_every: 1
naive_steps: [1, 2]
columns: [swd, swd_vs_teacher, mode_coverage, seconds_per_iteration]
recipes:
  turbo_pp: [cache.size=128, cache.shard_size=128, train.batch_size=32, eval.num_samples=64]
  regression: [method=regression, cache.size=128, cache.shard_size=128, train.batch_size=32,
               eval.num_samples=64]
rows:
  turbo_pp_K2: {recipe: turbo_pp, K: 2}
  turbo_pp-detached_K2: {recipe: turbo_pp, K: 2, set: [turbo.end_to_end=false]}
  regression_K1: {recipe: regression, K: 1}
groups:
  turbo: [turbo_pp_K2, turbo_pp-detached_K2]
parts:
  reference: turbo_pp_K2
  rows: {turbo_pp-detached_K2: end-to-end training}
notes: ""
"""


@pytest.mark.slow
def test_tiny_suite_runs_and_reports(tmp_path: Path, toy_teacher_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(SUITE + f"teacher: {toy_teacher_path}\n")
    suite = recipes.Suite.load(str(path))
    assert suite.row_names("turbo") == ["turbo_pp_K2", "turbo_pp-detached_K2"]
    cfg, _over = suite.config("regression_K1", 1, 2, str(tmp_path / "cache"))
    assert cfg.method == "regression" and cfg.student.num_steps == 1 and cfg.train.seed == 1
    args = argparse.Namespace(rows="all", seeds=None, seed0=0, iterations=None, workers=1,
                              threads=1, cache_dir=str(tmp_path / "cache"), out=tmp_path / "out")
    recipes.cmd_run(suite, args)
    runs = recipes.read_runs(args.out, suite)
    assert sorted((r["row"], r["seed"]) for r in runs) == sorted(
        (row, s) for row in suite.rows for s in (0, 1))
    assert all([step for step, _ in r["curve"]] == [0, 1, 2] for r in runs)
    recipes.cmd_run(suite, args)  # every run is done: nothing is appended
    assert len(recipes.read_runs(args.out, suite)) == len(runs)
    recipes.cmd_report(suite, args)
    payload = json.loads((args.out / "tiny.json").read_text())
    assert set(payload["rows"]) == set(suite.rows)
    assert set(payload["naive"]) == {"teacher_1", "teacher_2"}
    assert "end-to-end training" in payload["parts"]
    assert (args.out / "tiny.md").read_text().count("| naive teacher_") == 2
    assert (args.out / "tiny_curves.png").stat().st_size > 0
