"""``benchmarks.perf`` with tiny settings: the JSON structure and finite, positive ratios
(timings are never asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import perf


def _finite_positive(x: float) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny() -> perf.Settings:
    return perf.Settings(batch=8, sampling_repeats=2, warmup=1, iterations=1,
                         profile_iterations=1, rounds=1, cache_size=64,
                         scaling_batches=(8, 16), scaling_sizes=(8, 16), scaling_iterations=1,
                         demo_eval_samples=50, compile=False, subprocess_memory=False)


@pytest.fixture(scope="module")
def teacher(digits_teacher_path: Path) -> Path:
    return digits_teacher_path


def test_sampling_ratio_finite(teacher: Path, tiny: perf.Settings) -> None:
    r = perf.sampling_throughput(teacher, tiny)
    assert set(r["ratio"]) == {"decoupled", "shared", "lora", "lora_checked"}
    assert all(_finite_positive(v) for v in r["ratio"].values())
    assert all(_finite_positive(v) for v in r["images_per_second"].values())
    assert r["limit"] == 4.0


def test_recipe_breakdown_structure(teacher: Path, tiny: perf.Settings, tmp_path: Path) -> None:
    r = perf.recipe_benchmark("turbo_pp", teacher, tmp_path, tiny)
    assert _finite_positive(r["seconds_per_iteration"])
    assert set(r["phases_ms"]) == {*perf.PHASES, "other"}
    assert set(r["components_ms"]) == set(perf.COMPONENTS)
    # Turbo++ runs every labelled phase, the teacher (features) and the discriminator
    for k in (*perf.PHASES, ):
        assert r["phases_ms"][k] > 0, k
    assert r["components_ms"]["teacher_forward"] > 0
    assert r["components_ms"]["discriminator"] > 0
    assert r["components_ms"]["student_forward"] > 0
    assert r["static_bytes"]["total"] > 0 and r["peak_transient_bytes"] > 0
    assert r["max_rss_bytes"] > 0
    json.dumps(r)


def test_lora_memory_ratios(teacher: Path) -> None:
    r = perf.lora_memory(teacher, rank=4)
    ratios = r["ratio_to_one_student"]
    assert all(_finite_positive(v) for v in ratios.values())
    assert ratios["one_student"] == 1.0
    assert ratios["two_full_copies"] == pytest.approx(2.0)
    assert ratios["lora_r4"] < ratios["two_full_copies"]


def test_turbo_iteration_and_demo_estimate(teacher: Path, tiny: perf.Settings,
                                           tmp_path: Path) -> None:
    r = perf.turbo_iteration(teacher, tmp_path, tiny)
    assert set(r["seconds_per_iteration"]) == {"eager"}
    assert all(_finite_positive(v) for v in r["seconds_per_iteration"].values())
    assert _finite_positive(r["demo_estimate"]["total_seconds_eager"])


def test_scaling_and_plot(tiny: perf.Settings, tmp_path: Path) -> None:
    sc = perf.scaling(tiny)
    assert len(sc["points"]) == 4
    for p in sc["points"]:
        assert _finite_positive(p["seconds_per_iteration"]) and p["peak_tensor_bytes"] > 0
    perf.plot_scaling(sc, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_label_totals_counts_nested_label_once() -> None:
    from torch.profiler import record_function

    def run() -> None:
        with record_function("teacher_forward"), record_function("teacher_forward"):
            torch.ones(4).sum()

    prof = perf.profiled(run)
    nested = perf.label_totals(prof, ("teacher_forward",))["teacher_forward"]
    outer = [e.cpu_time_total / 1e3 for e in prof.events() if e.name == "teacher_forward"]
    assert nested == pytest.approx(max(outer))
