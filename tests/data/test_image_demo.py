"""``fewstep demo --data``: the whole pipeline on tiny generated 8x8 images within a small
budget (teacher by preset, Turbo++ stopped by its time share, pixel-space evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from fewstep.app.cli import app


def test_demo_on_own_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.zeros((60, 1, 8, 8), np.uint8)
    y = np.arange(60) % 2
    x[y == 0, :, 1:7, 2:4] = 255   # class 0: vertical bar
    x[y == 1, :, 2:4, 1:7] = 255   # class 1: horizontal bar
    x = np.clip(x.astype(np.int64) + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "bars.npz", x=x, y=y)
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--data", str(tmp_path / "bars.npz"), "--minutes",
                                 "0.6", "--out", str(out), "--quiet", "eval.num_samples=100",
                                 "cache.size=128", "cache.shard_size=128",
                                 "train.batch_size=16"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"teacher_8", "teacher_2", "student_2"}
    for m in metrics.values():
        assert m["feature_space"] == "pixels" and np.isfinite(m["fd"])
        assert "class_accuracy" not in m and "fid" not in m
    timing = json.loads((out / "timing.json").read_text())
    assert timing["teacher_network"] == "resmlp" and timing["teacher_steps"] > 0
    assert timing["distill_iterations"] >= 1
    assert set(timing["planned_seconds"]) == {"teacher", "distill", "evaluate"}
    assert "feature_space: pixels" in (out / "report.html").read_text()
    assert (out / "teacher.safetensors").is_file()
