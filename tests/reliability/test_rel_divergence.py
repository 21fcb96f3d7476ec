"""Divergence guard: NaN / Inf stops the run naming step and term, never checkpoints a NaN
state, keeps the last good checkpoint; optional rollback with a lower learning rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rel_helpers import tiny_distill_config

from fewstep.distill.engine.state import first_non_finite, list_checkpoints, load_train_state
from fewstep.distill.trainer import Trainer
from fewstep.errors import DivergenceError
from fewstep.utils.files import load_tensors, read_metadata


def _trainer(teacher: Path, cache: Path, run: Path, **train: Any) -> Trainer:
    return Trainer(tiny_distill_config(teacher, cache, **train), run, progress=False)


def _inject(tr: Trainer, at_update: int, term: str = "g_adv", times: int | None = None,
            phase: str = "generator") -> list[int]:
    """Make ``term`` (and the loss) NaN at generator update ``at_update`` (1-based)."""
    calls: list[int] = []
    name = "generator_loss" if phase == "generator" else "aux_loss"
    orig = getattr(tr.method, name)

    def patched(batch: Any, step: int) -> Any:
        loss, logs = orig(batch, step)
        if step + 1 >= at_update and (times is None or len(calls) < times):
            calls.append(step + 1)
            nan = torch.tensor(float("nan"))
            logs = {**logs, term: logs[term] + nan}
            loss = loss + nan
        return loss, logs

    setattr(tr.method, name, patched)
    return calls


def _assert_checkpoints_finite(run: Path) -> list[int]:
    steps = []
    for p in list_checkpoints(run / "checkpoints"):
        t, _ = load_tensors(p, kind="train_state")
        assert first_non_finite(t) is None, p
        steps.append(int(p.name[5:13]))
    return steps


def test_nan_loss_stops_naming_step_and_term(rel_teacher_path: Path, rel_cache_dir: Path,
                                             tmp_path: Path) -> None:
    run = tmp_path / "run"
    tr = _trainer(rel_teacher_path, rel_cache_dir, run, iterations=8, ckpt_every=2)
    _inject(tr, 5, "g_adv")
    with pytest.raises(DivergenceError) as e:
        tr.train()
    msg = str(e.value)
    assert "generator loss term 'g_adv' is nan at step 5" in msg
    assert "last good checkpoint:" in msg and "ckpt_00000004" in msg and "\n" not in msg
    assert _assert_checkpoints_finite(run) == [2, 4]
    assert not (run / "student.safetensors").exists()
    # the last good checkpoint is intact and loadable into a fresh trainer
    tr2 = _trainer(rel_teacher_path, rel_cache_dir, run, iterations=8, ckpt_every=2)
    st = tr2.state()
    assert load_train_state(run / "checkpoints" / "ckpt_00000004.safetensors", st.modules,
                            st.optimizers, {"data": tr2.rng.data}, st.schedulers)["step"] == 4


def test_nan_gradient_names_the_parameter(rel_teacher_path: Path, rel_cache_dir: Path,
                                          tmp_path: Path) -> None:
    tr = _trainer(rel_teacher_path, rel_cache_dir, tmp_path / "run", iterations=4)
    orig = tr.method.generator_loss
    p0 = next(p for p in tr.student.parameters() if p.requires_grad)

    def finite_loss_nan_grad(batch: Any, step: int) -> Any:
        loss, logs = orig(batch, step)
        if step + 1 == 3:  # sqrt at 0: value 0, gradient 0 * inf = NaN
            loss = loss + torch.sqrt((p0 - p0.detach()).pow(2).sum())
        return loss, logs

    tr.method.generator_loss = finite_loss_nan_grad
    with pytest.raises(DivergenceError, match=r"generator gradient of 'student\.steps\.0\..*' "
                                              r"is not finite at step 3"):
        tr.train()


def test_nan_auxiliary_loss_is_named(rel_teacher_path: Path, rel_cache_dir: Path,
                                     tmp_path: Path) -> None:
    tr = _trainer(rel_teacher_path, rel_cache_dir, tmp_path / "run", iterations=4)
    _inject(tr, 2, "d_loss", phase="aux")
    with pytest.raises(DivergenceError, match="auxiliary loss term 'd_loss' is nan at step 2; "
                                              "no checkpoint was written"):
        tr.train()


def test_non_finite_state_is_never_written(rel_teacher_path: Path, rel_cache_dir: Path,
                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    tr = _trainer(rel_teacher_path, rel_cache_dir, run)
    good = tr.save_checkpoint()
    before = good.read_bytes()
    with torch.no_grad():
        next(tr.student.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(DivergenceError, match="refusing to write checkpoint ckpt_00000000"):
        tr.save_checkpoint()
    assert good.read_bytes() == before  # the good file was not replaced
    assert [p.name for p in (run / "checkpoints").iterdir()] == [good.name]  # no temp file


def test_rollback_continues_with_a_lower_lr(rel_teacher_path: Path, rel_cache_dir: Path,
                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    tr = _trainer(rel_teacher_path, rel_cache_dir, run, iterations=8, ckpt_every=2,
                  on_divergence="rollback", rollback_lr_factor=0.25, max_rollbacks=2)
    calls = _inject(tr, 5, "g_adv", times=1)
    tr.train()
    assert calls == [5] and tr.step == 8 and tr.rollbacks == 1
    lr = tr.cfg.train.lr
    assert all(g["lr"] == pytest.approx(lr * 0.25) for g in tr.optim.g.param_groups)
    assert tr.optim.sched_g.base_lrs == [pytest.approx(lr * 0.25)]
    assert tr.optim.aux is not None
    assert [g["lr"] for g in tr.optim.aux.param_groups] == pytest.approx(
        [tr.cfg.gan.lr * 0.25])
    counters = json.loads(read_metadata(run / "checkpoints" / "ckpt_00000008.safetensors")
                          ["counters"])
    assert counters["rollbacks"] == 1 and counters["lr_scale"] == 0.25
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert (run / "student.safetensors").exists()
    # the lowered LR survives a resume
    tr2 = _trainer(rel_teacher_path, rel_cache_dir, run, iterations=8, ckpt_every=2,
                   on_divergence="rollback", rollback_lr_factor=0.25, max_rollbacks=2)
    tr2.resume = True
    assert tr2.try_resume() and tr2.lr_scale == 0.25
    assert tr2.optim.g.param_groups[0]["lr"] == pytest.approx(lr * 0.25)


def test_rollback_gives_up_after_max_rollbacks(rel_teacher_path: Path, rel_cache_dir: Path,
                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    tr = _trainer(rel_teacher_path, rel_cache_dir, run, iterations=6, ckpt_every=2,
                  on_divergence="rollback", max_rollbacks=2)
    calls = _inject(tr, 3, "g_adv")
    with pytest.raises(DivergenceError, match=r"at step 3; gave up after 2 rollbacks .*"
                                              r"ckpt_00000002"):
        tr.train()
    assert calls == [3, 3, 3]
    assert _assert_checkpoints_finite(run) == [0, 2]
