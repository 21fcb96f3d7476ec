"""SiD few-step: guidance variants (what the fake net is conditioned on), the loss noise level,
the diffusion-GAN head with warm-up, and a short run on the 2-D toy."""

import pytest
import torch

from fewstep.core.denoiser import Denoiser
from fewstep.data.problem import Problem
from fewstep.distill.context import Batch, DistillContext
from fewstep.distill.methods.sid import SiD
from fewstep.distill.parts.losses import sid_loss
from fewstep.testing.toys import toy_config, toy_context, toy_denoiser

NULL = 3  # null class of the 3-class toy network


class Recorder(Denoiser):
    """Wraps a denoiser and records the ``(sigma, cond)`` of every call."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, sigma, cond=None):
        self.calls.append((torch.as_tensor(sigma).detach().clone(),
                           None if cond is None else cond.clone()))
        return self.inner(x, sigma, cond)

    def null_cond(self, cond):
        return self.inner.null_cond(cond)

    def features(self, x, sigma, cond=None):
        return self.inner.features(x, sigma, cond)


def _ctx(**sid) -> tuple[DistillContext, Recorder]:
    teacher = Recorder(toy_denoiser(num_classes=3, null_class=NULL))
    ctx = toy_context(toy_config("sid", sid=sid), teacher, [1.0, 0.5],
                      problem=Problem("toy3", (2,), 3), example_cond=torch.tensor([0, 1]))
    return ctx, teacher


def _batch(n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(1)
    cond = torch.arange(n) % 3
    return Batch(torch.randn(n, 2, generator=g), cond, real=torch.randn(n, 2, generator=g),
                 real_cond=cond)


def test_zero_cfg_drops_the_fake_nets_condition():
    ctx, teacher = _ctx(guidance="zero_cfg", real_cfg_scale=4.0)
    m = SiD(ctx)
    b = _batch()
    teacher.calls.clear()
    m.generator_loss(b, 0)
    m.aux_loss(b, 0)
    fake_calls = m.fake.den.calls
    assert fake_calls, "fake net was not called"
    assert all(c is not None and bool((c == NULL).all()) for _, c in fake_calls)
    # teacher without CFG: called once, only with the real condition (w = 1 despite the 4.0)
    assert len(teacher.calls) == 1 and torch.equal(teacher.calls[0][1], b.cond)


def test_standard_and_anti_cfg_guidance_scales():
    for guidance, w_attr in (("standard", "fake_cfg_scale"), ("anti_cfg", "anti_cfg_scale")):
        ctx, _ = _ctx(guidance=guidance, real_cfg_scale=2.0, fake_cfg_scale=1.5,
                      anti_cfg_scale=-0.7)
        m = SiD(ctx)
        w = getattr(ctx.cfg.sid, w_attr)
        x, s, c = torch.randn(5, 2), torch.full((5,), 0.4), torch.tensor([0, 1, 2, 0, 1])
        fu, fc = m.fake(x, s, torch.full_like(c, NULL)), m.fake(x, s, c)
        torch.testing.assert_close(m.fake_pred(x, s, c), fu + w * (fc - fu))
        tu, tc = ctx.teacher(x, s, torch.full_like(c, NULL)), ctx.teacher(x, s, c)
        torch.testing.assert_close(m.real_pred(x, s, c), tu + 2.0 * (tc - tu))


def test_loss_sigma_is_logit_normal_ln2_1p6():
    ctx, _ = _ctx()
    z = torch.logit(SiD(ctx).loss_sigma(200_000).double())
    assert abs(z.mean().item() - 0.6931) < 0.02 and abs(z.std().item() - 1.6) < 0.02


def test_generator_loss_is_weighted_sid_loss_on_a_random_step():
    ctx, _ = _ctx(guidance="standard", alpha=1.2)
    m = SiD(ctx)
    b = _batch()
    g0 = ctx.generator.get_state()
    loss, logs = m.generator_loss(b, 0)
    # replay the same randomness by hand
    ctx.generator.set_state(g0)
    from fewstep.core.path import FlowPath
    from fewstep.student.student import backward_simulate
    _, _, _, x_g = backward_simulate(ctx.student, b.noise, b.cond, ctx.generator)
    sigma = m.loss_sigma(8)
    x_t = FlowPath.add_noise(x_g, ctx.randn_like(x_g), sigma)
    expect = sid_loss(x_g, ctx.teacher(x_t, sigma, b.cond), m.fake(x_t, sigma, b.cond), 1.2,
                      weight=1 - sigma, legacy=False)   # flow teacher: SiD-DiT's 1_minus_sigma
    torch.testing.assert_close(loss, expect)
    assert int(logs["step_k"]) in (0, 1)


def test_diffusion_gan_head_with_warmup():
    ctx, _ = _ctx(guidance="standard", gan_weight=0.5, gan_warmup=3)
    m = SiD(ctx)
    assert m.needs_real and m.fake.head is not None
    b = _batch()
    _, logs = m.generator_loss(b, 2)
    _, alogs = m.aux_loss(b, 2)
    assert "g_adv" not in logs and "d_loss" not in alogs          # still warming up
    total, logs = m.generator_loss(b, 3)
    torch.testing.assert_close(total, 0.5 * logs["g_sid"] + 0.5 * logs["g_adv"])
    _, alogs = m.aux_loss(b, 3)
    sp = torch.nn.functional.softplus
    # 0.5 [BCE(D_real, 1) + BCE(D_fake, 0)] is at least 0.5 * (softplus(-mean) + softplus(mean))
    assert alogs["d_loss"] >= 0.5 * (sp(-alogs["d_real"]) + sp(alogs["d_fake"])) - 1e-6
    # the aux loss trains the head (and trunk); the generator loss reaches the student
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.student.parameters())


@pytest.mark.slow
def test_short_run_improves_two_step_student(toy_distill):
    r = toy_distill("sid", dm={"fake_lr": 1e-3}, sid={"guidance": "standard"})
    assert r["trained"] < 0.8 * r["init"], r
