"""Z-Image Turbo++ on a 2-D toy: real batches, switches, and a short run that beats naive
2-step sampling of the teacher."""

import pytest
import torch

from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.evaluation.evaluate import evaluate_samplers
from fewstep.testing.toys import toy_batch, toy_config, toy_context, toy_denoiser
from fewstep.utils.config_files import validate


def _cfg(teacher, tmp_path, **over):
    base = {"method": "turbo_pp", "data": "checkerboard", "teacher": {"path": str(teacher)},
            "cache": {"dir": str(tmp_path / "cache"), "size": 4000, "shard_size": 2000},
            "train": {"iterations": 150, "batch_size": 256, "lr": 3e-4, "ema_decay": 0.9},
            "eval": {"num_samples": 2000}}
    for k, v in over.items():
        base.setdefault(k, {})
        base[k] = {**base[k], **v} if isinstance(v, dict) else v
    return validate(DistillConfig, base)


def _rows_in(a: torch.Tensor, pool: torch.Tensor) -> bool:
    d = torch.cdist(a.flatten(1), pool.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    return bool((d.min(dim=1).values < 1e-6).all())


def test_real_batch_is_teacher_samples_unless_switched(toy_teacher_path, tmp_path):
    tr = Trainer(_cfg(toy_teacher_path, tmp_path), tmp_path / "a", progress=False)
    tr.batches.prepare(False)
    batch = tr.batches.next()
    assert _rows_in(batch.real, tr.batches.cache["sample"])
    data, _ = tr.teacher.problem.split("train")
    assert not _rows_in(batch.real, data)

    tr = Trainer(_cfg(toy_teacher_path, tmp_path, gan={"real": "dataset"}), tmp_path / "b",
                 progress=False)
    tr.batches.prepare(False)
    batch = tr.batches.next()
    assert _rows_in(batch.real, data)


def test_teacher_traj_target_is_teacher_estimate_from_same_noise(toy_teacher_path, tmp_path):
    from fewstep.core.levels import teacher_sigmas
    from fewstep.core.samplers import euler_sample

    tr = Trainer(_cfg(toy_teacher_path, tmp_path), tmp_path / "a", progress=False)
    tr.batches.prepare(False)
    b = tr.batches.next()
    traj = euler_sample(tr.teacher.denoiser, b.noise, b.cond, teacher_sigmas(8))
    torch.testing.assert_close(b.teacher_sample, traj.sample, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.teacher_mid, traj.x0s[4], atol=1e-5, rtol=0)  # sigma = 0.5


@pytest.mark.slow
def test_short_run_beats_naive_two_step_teacher(toy_teacher_path, tmp_path):
    torch.manual_seed(0)
    tr = Trainer(_cfg(toy_teacher_path, tmp_path), tmp_path / "run", progress=False)
    student = tr.train()
    metrics, _ = evaluate_samplers(tr.teacher.problem, ["teacher_2", "student_2"],
                                   tr.teacher.denoiser,
                                   student=student, num_samples=2000)
    assert metrics["student_2"]["swd"] < 0.9 * metrics["teacher_2"]["swd"], metrics


@pytest.mark.parametrize("end_to_end", [True, False])
def test_generator_loss_reaches_step_one_only_end_to_end(toy_teacher_path, tmp_path,
                                                          end_to_end):
    # no step-1 loss: whatever gradient step 1 gets must come through step 2
    cfg = _cfg(toy_teacher_path, tmp_path, step1={"loss": "none"},
               turbo={"end_to_end": end_to_end})
    tr = Trainer(cfg, tmp_path / "g", progress=False)
    tr.batches.prepare(False)
    loss, _ = tr.method.generator_loss(tr.batches.next(), step=0)
    tr.student.zero_grad(set_to_none=True)
    loss.backward()
    g0 = [p.grad for p in tr.student.step_parameters(0)]
    g1 = [p.grad for p in tr.student.step_parameters(1)]
    assert any(g is not None and g.abs().sum() > 0 for g in g1)
    reached = any(g is not None and g.abs().sum() > 0 for g in g0)
    assert reached == end_to_end


def _unit_ctx(**sections):
    den = toy_denoiser(init_std=None)
    return toy_context(toy_config("turbo_pp", **{"gan": {"layers": [-1, -2]}, **sections}), den,
                       [1.0, 0.5])


def _unit_batch(n: int = 8):
    return toy_batch(n)


def test_step1_dm_uses_a_fake_score_per_output(monkeypatch):
    from fewstep.distill.methods.turbo_pp import TurboPP
    from fewstep.distill.parts.fake_score import FakeScore

    seen: list[tuple[int, int]] = []  # (id of the fake score network, rows it trains on)
    orig = FakeScore.loss

    def record(self, x_g, cond, generator=None, **kw):
        seen.append((id(self), x_g.shape[0]))
        return orig(self, x_g, cond, generator, **kw)

    monkeypatch.setattr(FakeScore, "loss", record)
    m = TurboPP(_unit_ctx(gan={"weight": 0.0}, dm={"weight": 1.0}, step1={"loss": "dm"}))
    assert m.matching is not None and m.matching_1 is not None
    assert m.matching.fake is not m.matching_1.fake
    _, logs = m.aux_loss(_unit_batch(), 0)
    assert {"fake_loss", "fake_loss_1"} <= set(logs)
    assert seen == [(id(m.matching.fake), 8), (id(m.matching_1.fake), 8)]  # each its own rows
    # the generator's step-1 DM term uses the step-1 network's score
    calls: list[str] = []
    for name, mt in (("final", m.matching), ("step1", m.matching_1)):
        f = mt.loss
        monkeypatch.setattr(mt, "loss",
                            lambda x, c, g, _f=f, _n=name: calls.append(_n) or _f(x, c, g))
    m.generator_loss(_unit_batch(), 0)
    assert calls == ["final", "step1"]
    # both networks train at dm.fake_lr
    assert [g["lr"] for g in m.aux_updates().aux_groups] == [m.ctx.cfg.dm.fake_lr] * 2
    # the ablation: one network on the mixture of both outputs (2B rows)
    seen.clear()
    m2 = TurboPP(_unit_ctx(gan={"weight": 0.0}, step1={"loss": "dm", "fake_score": "shared"}))
    assert m2.matching_1 is None
    m2.aux_loss(_unit_batch(), 0)
    assert seen == [(id(m2.matching.fake), 16)]


def test_step1_adversarial_discriminator_shared_or_separate():
    from fewstep.distill.methods.turbo_pp import TurboPP

    shared = TurboPP(_unit_ctx(step1={"loss": "adversarial"}))
    assert shared.adversary_1 is None
    _, logs = shared.aux_loss(_unit_batch(), 0)
    assert "d_loss" in logs and "d_loss_1" not in logs
    sep = TurboPP(_unit_ctx(step1={"loss": "adversarial", "discriminator": "separate"}))
    assert sep.adversary_1 is not None
    _, logs = sep.aux_loss(_unit_batch(), 0)
    assert {"d_loss", "d_loss_1"} <= set(logs)
    heads = {id(p) for p in sep.adversary_1.parameters()}
    assert heads.isdisjoint(id(p) for p in sep.adversary.parameters())
    # the step-1 term goes through the step-1 heads, the final-output term through the others
    total, glogs = sep.generator_loss(_unit_batch(), 0)
    total.backward()
    assert "g_step1" in glogs and "g_adv" in glogs
    for adv in (sep.adversary, sep.adversary_1):
        assert any(p.grad is not None for p in adv.parameters() if p.requires_grad)
