"""The training loop's bookkeeping: losses.jsonl consistent with the state, rollback walking
back through older checkpoints, the method's aux updates, the config union."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fewstep.distill.config import DistillConfig
from fewstep.distill.engine.state import list_checkpoints
from fewstep.distill.methods import config_class, method_names
from fewstep.distill.trainer import Trainer
from fewstep.errors import ConfigError, DivergenceError
from fewstep.utils.config_files import validate


def _cfg(teacher: Path, tmp_path: Path, **train: Any) -> DistillConfig:
    t = {"iterations": 6, "batch_size": 32, "log_every": 1, **train}
    return validate(DistillConfig, {
        "method": "turbo_pp", "data": "checkerboard", "teacher": {"path": str(teacher)},
        "gan": {"layers": [-1, -2]},
        "cache": {"dir": str(tmp_path / "cache"), "size": 128, "shard_size": 128},
        "train": t, "eval": {"num_samples": 10}})


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "losses.jsonl").read_text().splitlines()]


def test_fresh_start_and_resume_without_checkpoint_empty_the_log(toy_teacher_path, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # rows of a run killed before its first checkpoint
    (run / "losses.jsonl").write_text("".join(json.dumps({"step": i, "g_total": 1.0}) + "\n"
                                              for i in (1, 2, 3)))
    tr = Trainer(_cfg(toy_teacher_path, tmp_path, iterations=2), run, progress=False,
                 resume=True)
    tr.train()
    assert _steps(run) == [1, 2] and [r["step"] for r in tr.losses.history] == [1, 2]


def test_rollback_walks_back_when_the_newest_checkpoint_keeps_diverging(toy_teacher_path,
                                                                       tmp_path):
    run = tmp_path / "run"
    tr = Trainer(_cfg(toy_teacher_path, tmp_path, iterations=6, ckpt_every=2, keep_last=5,
                      on_divergence="rollback", max_rollbacks=3), run, progress=False)
    orig = tr.method.generator_loss
    hits: list[int] = []

    def nan_at_5_twice(batch, step):
        loss, logs = orig(batch, step)
        if step + 1 == 5 and len(hits) < 2:  # the state at step 4 "keeps diverging"
            hits.append(step + 1)
            nan = torch.tensor(float("nan"))
            loss, logs = loss + nan, {**logs, "g_total": logs["g_total"] + nan}
        return loss, logs

    tr.method.generator_loss = nan_at_5_twice
    tr.train()
    # first rollback to ckpt 4; diverging again from it walks back to ckpt 2 (and drops ckpt 4,
    # which lies on the diverging branch); the run then completes
    assert hits == [5, 5] and tr.rollbacks == 2 and tr.step == 6
    assert tr.lr_scale == pytest.approx(0.25)
    assert _steps(run) == [1, 2, 3, 4, 5, 6]
    assert [int(p.name[5:13]) for p in list_checkpoints(run / "checkpoints")] == [0, 2, 4, 6]


def test_rollback_gives_up_when_no_checkpoint_is_left(toy_teacher_path, tmp_path):
    run = tmp_path / "run"
    tr = Trainer(_cfg(toy_teacher_path, tmp_path, iterations=4, on_divergence="rollback",
                      max_rollbacks=5), run, progress=False)
    orig = tr.method.generator_loss

    def always_nan(batch, step):
        loss, logs = orig(batch, step)
        nan = torch.tensor(float("nan"))
        return loss + nan, {**logs, "g_total": logs["g_total"] + nan}

    tr.method.generator_loss = always_nan
    with pytest.raises(DivergenceError, match="gave up after 1 rollbacks"):
        tr.train()


def test_aux_updates_set_the_aux_optimizer(toy_teacher_path, tmp_path):
    cfg = _cfg(toy_teacher_path, tmp_path, aux_ratio=3, aux_grad_clip=0.5)
    cfg = cfg.model_copy(update={"gan": cfg.gan.model_copy(update={"lr": 5e-4})})
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    sched = tr.method.aux_updates()
    assert sched.aux_per_generator == 3 and sched.aux_clip == 0.5
    assert tr.optim.aux is not None
    assert [g["lr"] for g in tr.optim.aux.param_groups] == [5e-4, cfg.dm.fake_lr][
        :len(tr.optim.aux.param_groups)]


def test_config_union_and_section_errors():
    assert set(method_names()) >= {"turbo_pp", "dmd2", "sid", "imagine_flash", "regression",
                                   "ladd"}
    for m in method_names():
        cfg = validate(DistillConfig, {"method": m})
        assert type(cfg) is config_class(m) and cfg.method == m
    assert validate(DistillConfig, {}).method == "turbo_pp"
    with pytest.raises(ConfigError, match=r"method: Input should be .*'turbo_pp'"):
        validate(DistillConfig, {"method": "nope"})
    with pytest.raises(ConfigError, match="step1: section not used by method dmd2 "
                                          r"\(its sections: gan, dm, dmd2\)"):
        validate(DistillConfig, {"method": "dmd2", "step1": {"loss": "dm"}})
    # a foreign section that sets only defaults changes nothing: dropped (older run configs)
    assert type(validate(DistillConfig, {"method": "dmd2", "step1": {"loss": "teacher_traj"}})
                ) is config_class("dmd2")
    with pytest.raises(ConfigError, match="bogus: unknown key"):
        validate(DistillConfig, {"method": "dmd2", "bogus": 1})
    # YAML reads a bare `no` as false
    assert validate(DistillConfig, {"train": {"mixed_precision": False}}
                    ).train.mixed_precision == "no"
