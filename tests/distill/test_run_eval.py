"""Evaluation while training (``train.eval_every``): curves read back from the TensorBoard
event file, ``eval.jsonl`` cut back on resume, the W&B tracker in its offline mode, and the
refusals (2-D toys, W&B not installed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.errors import ConfigError
from fewstep.utils.config_files import validate


def _cfg(tmp_path: Path, data: str = "digits", **train: Any) -> DistillConfig:
    t = {"iterations": 4, "batch_size": 16, "log_every": 1, "eval_every": 2, **train}
    return validate(DistillConfig, {
        "method": "turbo_pp", "data": data, "teacher": {"steps": 4},
        "student": {"num_steps": 2, "parameterization": "decoupled"},
        "cache": {"dir": str(tmp_path / "cache"), "size": 32, "shard_size": 32},
        "train": t, "eval": {"num_samples": 10, "prompts": 5, "seeds": 3}})


def _scalars(tb: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(tb), size_guidance={SCALARS: 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_eval_curves_in_tensorboard_and_eval_log(tmp_path):
    run = tmp_path / "run"
    Trainer(_cfg(tmp_path), run, progress=False).train()
    curves = _scalars(run / "tb")
    for tag in ("eval/fid_t", "eval/fid_t_teacher_floor", "eval/diversity_ratio",
                "eval/brightness_ratio", "eval/contrast"):
        assert [s for s, _ in curves[tag]] == [2, 4], tag
    assert "loss/g_total" in curves  # the losses still go there
    rows = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[0]["features"] == "digits_classifier" and rows[0]["num_images"] == 15
    assert [v for _, v in curves["eval/fid_t"]] == pytest.approx([r["fid_t"] for r in rows])
    assert (run / "samples" / "eval_step000004.png").is_file()
    # a resumed run continues the log from its checkpoint: rows after it are dropped
    (run / "eval.jsonl").write_text((run / "eval.jsonl").read_text()
                                    + json.dumps({"step": 9, "fid_t": 1.0}) + "\n")
    tr = Trainer(_cfg(tmp_path, iterations=6), run, progress=False, resume=True)
    tr.train()
    steps = [json.loads(x)["step"] for x in (run / "eval.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_toy_data_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.eval_every: 2-D toy data"):
        Trainer(_cfg(tmp_path, "checkerboard"), tmp_path / "run", progress=False).train()


def test_wandb_missing_is_a_config_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.trackers: wandb is not installed"):
        _cfg(tmp_path, trackers=["tensorboard", "wandb"])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed "
                    "(optional: pip install wandb)")
def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    Trainer(_cfg(tmp_path, iterations=2, trackers=["wandb"]), run, progress=False).train()
    (file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data = file.read_bytes()
    assert b"eval/fid_t" in data and b"loss/g_total" in data and b"eval/grid" in data
    assert not (run / "tb").exists()  # only the trackers asked for
