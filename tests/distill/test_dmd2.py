"""DMD2: backward simulation over the K steps, the GAN head on the fake score network, every
recipe through the one Trainer, and a short run on the 2-D toy."""

import pytest
import torch

from fewstep.distill.config import DistillConfig
from fewstep.distill.context import DistillContext
from fewstep.distill.methods import config_class, method_names
from fewstep.distill.methods.dmd2 import DMD2
from fewstep.distill.trainer import Trainer
from fewstep.student import student as student_mod
from fewstep.student.student import backward_simulate
from fewstep.testing.toys import toy_batch, toy_config, toy_context, toy_denoiser
from fewstep.utils.config_files import validate


def _ctx(**sections) -> DistillContext:
    den = toy_denoiser()
    return toy_context(toy_config("dmd2", **sections), den, [1.0, 0.6, 0.3])


_batch = toy_batch


def test_backward_simulation_draws_every_step_uniformly():
    ctx = _ctx()
    ks = [backward_simulate(ctx.student, torch.randn(1, 2), None, ctx.generator)[0]
          for _ in range(240)]
    counts = torch.bincount(torch.tensor(ks), minlength=3)
    assert counts.min() > 50, counts  # expected 80 each


def test_generator_gradient_reaches_only_step_k(monkeypatch):
    ctx = _ctx(gan={"weight": 0.0})
    m = DMD2(ctx)
    with torch.no_grad():  # at init fake == teacher, so the DM gradient would be exactly 0
        for p in m.fake.parameters():
            p.add_(0.05 * torch.randn_like(p))
    monkeypatch.setattr(student_mod, "random_step", lambda student, generator=None: 2)
    loss, logs = m.generator_loss(_batch(), 0)
    loss.backward()
    assert int(logs["step_k"]) == 2
    for k in range(3):
        got = [p.grad is not None and p.grad.abs().sum() > 0
               for p in ctx.student.step_parameters(k)]
        assert any(got) == (k == 2), k


def test_gan_head_lives_on_the_fake_score_network():
    ctx = _ctx(gan={"weight": 0.1, "real": "dataset", "lr": 3e-4})
    m = DMD2(ctx)
    assert m.needs_real and m.fake.head is not None
    groups = m.aux_updates().aux_groups
    head_ids = {id(p) for p in m.fake.head.parameters()}
    # the head learns at the GAN block's rate, the fake score trunk at dm.fake_lr
    assert [g["lr"] for g in groups] == [ctx.cfg.dm.fake_lr, 3e-4]
    assert head_ids == {id(p) for p in groups[1]["params"]}
    b = _batch()
    aux, alogs = m.aux_loss(b, 0)
    assert {"fake_loss", "d_loss", "d_real", "d_fake"} <= set(alogs)
    aux.backward()  # the D loss trains the head and the fake score trunk
    assert m.fake.head.out.weight.grad is not None
    total, logs = m.generator_loss(b, 0)
    torch.testing.assert_close(total, logs["g_dm"] + 0.1 * logs["g_adv"])
    # without the GAN: plain DMD (two-time-scale fake updates only)
    m0 = DMD2(_ctx(gan={"weight": 0.0}))
    assert m0.fake.head is None and not m0.needs_real
    assert "d_loss" not in m0.aux_loss(b, 0)[1]


@pytest.mark.parametrize("method", method_names())
def test_every_recipe_trains_through_the_trainer(method, toy_teacher_path, tmp_path):
    own = {"gan": {"weight": 0.1, "real": "dataset"}, "sid": {"gan_weight": 0.5}}
    cfg = validate(DistillConfig, {
        "method": method, "data": "checkerboard", "teacher": {"path": str(toy_teacher_path)},
        **{k: v for k, v in own.items() if k in config_class(method).sections()},
        "cache": {"dir": str(tmp_path / "cache"), "size": 64, "shard_size": 64},
        "train": {"iterations": 3, "batch_size": 32, "aux_ratio": 2}})
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr.train()
    assert len(tr.losses.history) == 3 and (tmp_path / "run" / "student.safetensors").exists()


@pytest.mark.slow
def test_short_run_improves_two_step_student(toy_distill):
    r = toy_distill("dmd2", dm={"fake_lr": 1e-3}, gan={"weight": 0.0})
    assert r["trained"] < 0.8 * r["init"], r
