"""LADD: the generator and discriminator losses against a hand-written computation (value and
gradient), its declarations, and a short run on the 2-D toy."""

import pytest
import torch
import torch.nn.functional as F

from fewstep.app.plan import graph_forwards
from fewstep.distill.config import DistillConfig
from fewstep.distill.context import Batch, DistillContext
from fewstep.distill.methods.ladd import LADD
from fewstep.errors import ConfigError
from fewstep.testing.toys import toy_batch, toy_config, toy_context, toy_denoiser
from fewstep.utils.config_files import validate


def _ctx(parameterization: str = "shared", **sections) -> DistillContext:
    den = toy_denoiser()
    cfg = toy_config("ladd", student={"parameterization": parameterization},
                     gan={"layers": [-1, -2], "weight": 0.7}, **sections)
    return toy_context(cfg, den, [1.0, 0.6], parameterization)


def _batch(n: int = 16) -> Batch:
    return toy_batch(n, teacher_sample=True)


def _by_hand_logits(m: LADD, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """D at x re-noised with s^ = sigmoid(N(1, 1)) (draws: levels, then noise)."""
    s_hat = torch.sigmoid(torch.randn(x.shape[0], generator=g) * 1.0 + 1.0)
    eps = torch.randn(x.shape, generator=g)
    x_hat = (1 - s_hat[:, None]) * x + s_hat[:, None] * eps
    feats = m.ctx.teacher.features(x_hat, s_hat, None)
    heads = m.disc.heads
    return torch.stack([h(feats[i], s_hat, None) for h, i in zip(heads, [-1, -2], strict=True)])


def test_generator_loss_value_and_gradient_match_a_hand_computation():
    ctx = _ctx()
    m = LADD(ctx)
    b = _batch()
    loss, logs = m.generator_loss(b, 0)
    loss.backward()
    got = [p.grad.clone() for p in ctx.student.parameters() if p.requires_grad]
    ctx.student.zero_grad(set_to_none=True)
    # the same maths written out: a level per sample, the teacher sample re-noised to it, the
    # shared network's x0, then the hinge generator loss -D at a logit-normal level
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 2, (16,), generator=g)
    s_k = torch.tensor([1.0, 0.6])[k]
    x_k = (1 - s_k[:, None]) * b.teacher_sample + s_k[:, None] * torch.randn(16, 2, generator=g)
    x0 = ctx.student.steps[0](x_k, s_k, None)
    want = 0.7 * -_by_hand_logits(m, x0, g).mean(1).sum()   # -sum over heads (ADD eq. 3)
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logs["g_adv"], want.detach() / 0.7)
    ref = [p.grad for p in ctx.student.parameters() if p.requires_grad]
    assert all(r is not None and r.abs().sum() > 0 for r in ref)
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r)
    assert all(p.grad is None for p in ctx.teacher.parameters())  # frozen feature network


def test_discriminator_loss_is_the_hinge_on_real_and_student_samples():
    ctx = _ctx()
    m = LADD(ctx)
    b = _batch()
    loss, logs = m.aux_loss(b, 0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        k = torch.randint(0, 2, (16,), generator=g)
        s_k = torch.tensor([1.0, 0.6])[k]
        x_k = (1 - s_k[:, None]) * b.teacher_sample + s_k[:, None] * torch.randn(16, 2,
                                                                                generator=g)
        x0 = ctx.student.steps[0](x_k, s_k, None)
    lr = _by_hand_logits(m, b.real, g)
    lf = _by_hand_logits(m, x0, g)
    want = (F.relu(1 - lr).mean(1) + F.relu(1 + lf).mean(1)).sum()   # per-head hinge, summed
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logs["d_real"], lr.mean().detach())
    loss.backward()
    assert all(p.grad is not None for p in m.disc.parameters() if p.requires_grad)


def test_declarations():
    ctx = _ctx("decoupled")
    m = LADD(ctx)
    needs = m.data_needs()
    assert needs.teacher_pairs and needs.real == "teacher_cache"
    sched = m.aux_updates()
    assert [gr["lr"] for gr in sched.aux_groups] == [ctx.cfg.gan.lr]
    assert graph_forwards(ctx.cfg) == 2
    # decoupled: one step module per batch, gradient only into that step's network
    loss, _ = m.generator_loss(_batch(), 0)
    loss.backward()
    used = [any(p.grad is not None for p in ctx.student.step_parameters(k)) for k in range(2)]
    assert sum(used) == 1
    # defaults: LADD's single shared network and hinge loss; the DM section is not LADD's
    for sections in ({}, {"student": {"num_steps": 2}, "gan": {"weight": 0.5}}):
        cfg = validate(DistillConfig, {"method": "ladd", **sections})
        assert cfg.student.parameterization == "shared" and cfg.gan.loss == "hinge"
    with pytest.raises(ConfigError, match="dm: section not used by method ladd"):
        validate(DistillConfig, {"method": "ladd", "dm": {"weight": 1.0}})
    with pytest.raises(ConfigError, match=r"gan\.weight: must be > 0"):
        validate(DistillConfig, {"method": "ladd", "gan": {"weight": 0.0}})


@pytest.mark.slow
def test_short_run_improves_two_step_student(toy_distill):
    # low-noise discriminator levels: at s^ ~ 0.73 (the default) a 2-D checkerboard is blurred
    r = toy_distill("ladd", gan={"layers": [-1, -2], "lr": 1e-3}, ladd={"sigma_mean": 0.0},
                    train={"iterations": 400})
    assert r["trained"] < 0.9 * r["init"], r
