"""Each recipe's loss value and gradient against an independent computation of its official
formula, on identical tensors (the same draws, replayed from the loss generator, through the same
networks). The references are written out here in plain torch from the official code, never
with fewstep's loss functions:

* SiD: apple-aiml-research/ml-sid-dit ``training/sid_dit_training_loop.py::training_loop``
  (generator block: ``loss = (y_real - y_fake) * ((y_real - images) - alpha * (y_real -
  y_fake)) * weight_factor``, ``loss.sum() * loss_scaling_G / batch``, ``loss_scaling_G = 100``;
  ``weighting_scheme`` ``1_minus_sigma`` / ``sid_legacy``; the diffusion-GAN generator term
  ``BCE(clamp(D, +-10), 1) * weight_factor * C*H*W``, ``0.5 L_SiD + 0.5 L_GAN``; fake-score
  block: ``mse_loss(noise - images, flow_pred, reduction="sum") / batch`` at the generator's
  ``sigmoid(N(ln 2, 1.6))`` levels); legacy weight as in mingyuanzhou/SiD
  ``training/sid_loss.py::SID_EDMLoss.generator_loss``.
* DMD2: tianweiy/DMD2 ``main/edm/edm_guidance.py::compute_distribution_matching_loss``
  (``grad = (p_real - p_fake) / |p_real|.mean``, ``0.5 * mse(x, (x - grad).detach())``), the
  generator GAN term ``softplus(-D).mean() * gen_cls_loss_weight`` and the guidance loss
  ``fake loss + cls_loss_weight * (softplus(D_fake) + softplus(-D_real)).mean()``
  (``main/train_edm.py``; released weights 3e-3 and 1e-2).
* LADD (no code released): ADD's hinge summed over heads, arXiv 2311.17042 eqs. 2-3.

Scale: SiD-DiT sums over elements and multiplies by 100; fewstep takes the element mean, so
the official value and gradient are ``100 * D`` times fewstep's (``D`` elements per sample) --
the same direction and the same relative weights of every term.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fewstep.distill.methods.dmd2 import DMD2
from fewstep.distill.methods.ladd import LADD
from fewstep.distill.methods.sid import SiD, default_weighting
from fewstep.networks.registry import network_denoiser
from fewstep.testing.toys import toy_batch, toy_config, toy_context, toy_denoiser

B, D = 16, 2  # batch and elements per sample of the 2-D toy


def _perturb(module: torch.nn.Module, std: float = 0.05, seed: int = 3) -> None:
    """Move the fake network away from the teacher so that f_real != f_fake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def _student_grads(ctx) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in ctx.student.parameters() if p.requires_grad]
    ctx.student.zero_grad(set_to_none=True)
    return out


def _check(fs_value, fs_grads, off_value, off_grads, scale: float) -> None:
    """Official = scale * fewstep, value and every gradient (and not trivially zero)."""
    torch.testing.assert_close(off_value, scale * fs_value.detach(), rtol=1e-5, atol=1e-7)
    flat_fs = torch.cat([g.flatten() for g in fs_grads])
    flat_off = torch.cat([g.flatten() for g in off_grads])
    assert flat_off.abs().sum() > 0
    torch.testing.assert_close(flat_off, scale * flat_fs, rtol=1e-4, atol=1e-7)
    assert F.cosine_similarity(flat_off, flat_fs, dim=0) > 1 - 1e-6


def _sid(**sid):
    ctx = toy_context(toy_config("sid", sid=sid), toy_denoiser(), [1.0])
    m = SiD(ctx)
    _perturb(m.fake)
    return ctx, m


def _replay_student_step(ctx, b):
    """The draws before the loss: the step index (K = 1), then the one student step."""
    torch.randint(0, 1, (1,), generator=ctx.generator)
    return ctx.student.steps[0](b.noise, torch.ones(B), None)


def _official_sid_generator(ctx, m, b, alpha: float, scheme: str, gan: float = 0.0):
    """SiD-DiT's generator loss, re-drawn from the loss generator; returns (loss, grads)."""
    g = ctx.generator
    images = _replay_student_step(ctx, b)
    sigma = torch.sigmoid(torch.randn(B, generator=g) * 1.6 + math.log(2.0))
    noise = torch.randn(images.shape, generator=g)
    s = sigma[:, None]
    x_t = (1 - s) * images + s * noise
    y_real = ctx.teacher(x_t, sigma, None)
    y_fake = m.fake.den(x_t, sigma, None)
    with torch.no_grad():
        if scheme == "1_minus_sigma":
            weight_factor = 1 - s
        else:  # sid_legacy: loss / |images - y_real|.mean(...).clip(min=1e-5)
            weight_factor = 1 / (images - y_real).abs().mean(dim=1, keepdim=True).clip(min=1e-5)
    loss = (y_real - y_fake) * ((y_real - images) - alpha * (y_real - y_fake)) * weight_factor
    loss = loss.sum() * 100 / B
    if gan:
        logits = m.fake.logits(x_t, sigma, None).clamp(-10, 10)
        bce = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits),
                                                 reduction="none")
        loss_gan = (bce * weight_factor[:, 0] * D).sum() * 1 / B
        loss = (1 - gan) * loss + gan * loss_gan
    loss.backward()
    return loss.detach(), _student_grads(ctx)


@pytest.mark.parametrize("scheme,alpha", [("1_minus_sigma", 1.0), ("sid_legacy", 1.0),
                                          ("sid_legacy", 1.2)])
def test_sid_generator_loss_and_gradient_match_sid_dit(scheme, alpha):
    weighting = {"1_minus_sigma": "one_minus_sigma", "sid_legacy": "legacy"}[scheme]
    ctx, m = _sid(weighting=weighting, alpha=alpha, sigma_clamp=1e-6)
    b = toy_batch(B)
    g0 = ctx.generator.get_state()
    loss, _ = m.generator_loss(b, 0)
    loss.backward()
    fs = _student_grads(ctx)
    ctx.generator.set_state(g0)
    off, off_grads = _official_sid_generator(ctx, m, b, alpha, scheme)
    _check(loss, fs, off, off_grads, 100 * D)


def test_sid_defaults_are_the_releases():
    ctx, m = _sid()
    s = ctx.cfg.sid
    assert (m.weighting, s.alpha, s.guidance, s.fake_level, s.gan_weight) == \
        ("one_minus_sigma", 1.0, "standard", "loss", 0.0)          # SiD-DiT, flow teacher
    eps = network_denoiser({"type": "resmlp", "data_shape": [2], "hidden": 8, "depth": 1,
                            "emb": 8}, prediction="epsilon")
    assert default_weighting(eps) == "legacy"                       # SiD / SiD-LSG


def test_sid_with_diffusion_gan_matches_sid_dit():
    ctx, m = _sid(gan_weight=0.5, sigma_clamp=1e-6)
    _perturb(m.fake.head, std=0.5, seed=4)
    b = toy_batch(B)
    g0 = ctx.generator.get_state()
    loss, logs = m.generator_loss(b, 0)
    assert "g_adv" in logs
    loss.backward()
    fs = _student_grads(ctx)
    ctx.generator.set_state(g0)
    off, off_grads = _official_sid_generator(ctx, m, b, 1.0, "1_minus_sigma", gan=0.5)
    _check(loss, fs, off, off_grads, 100 * D)


def test_sid_fake_score_trains_on_the_generator_levels_like_sid_dit():
    ctx, m = _sid(sigma_clamp=1e-6)
    b = toy_batch(B)
    g0 = ctx.generator.get_state()
    loss, _ = m.aux_loss(b, 0)
    loss.backward()
    fs = [p.grad.clone() for p in m.fake.den.parameters()]
    m.fake.zero_grad(set_to_none=True)
    ctx.generator.set_state(g0)
    g = ctx.generator
    with torch.no_grad():
        images = _replay_student_step(ctx, b)
    sigma = torch.sigmoid(torch.randn(B, generator=g) * 1.6 + math.log(2.0))  # loss law
    noise = torch.randn(images.shape, generator=g)
    s = sigma[:, None]
    x_t = (1 - s) * images + s * noise
    flow_pred = (x_t - m.fake.den(x_t, sigma, None)) / s         # velocity of the fake net
    off = F.mse_loss(noise - images, flow_pred, reduction="sum") / B
    off.backward()
    off_grads = [p.grad.clone() for p in m.fake.den.parameters()]
    _check(loss, fs, off.detach(), off_grads, D)


def _dmd2(**sections):
    ctx = toy_context(toy_config("dmd2", **sections), toy_denoiser(), [1.0])
    m = DMD2(ctx)
    _perturb(m.fake)
    if m.fake.head is not None:
        _perturb(m.fake.head, std=0.5, seed=4)
    return ctx, m


def test_dmd2_generator_loss_and_gradient_match_the_release():
    ctx, m = _dmd2(gan={"real": "dataset"})
    assert (ctx.cfg.gan.weight, ctx.cfg.dmd2.d_weight, ctx.cfg.train.aux_ratio) == \
        (3e-3, 1e-2, 5)
    b = toy_batch(B)
    g0 = ctx.generator.get_state()
    loss, _ = m.generator_loss(b, 0)
    loss.backward()
    fs = _student_grads(ctx)
    ctx.generator.set_state(g0)
    g = ctx.generator
    x = _replay_student_step(ctx, b)
    t = 0.02 + (0.98 - 0.02) * torch.rand(B, generator=g)       # min/max_step_percent
    noise = torch.randn(x.shape, generator=g)
    with torch.no_grad():                                       # compute_distribution_matching_loss
        noisy = (1 - t[:, None]) * x + t[:, None] * noise
        pred_real_image = ctx.teacher(noisy, t, None)
        pred_fake_image = m.fake.den(noisy, t, None)
        p_real = x - pred_real_image
        p_fake = x - pred_fake_image
        grad = (p_real - p_fake) / torch.abs(p_real).mean(dim=1, keepdim=True)
        grad = torch.nan_to_num(grad)
    loss_dm = 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="mean")
    t_d = 1e-3 + (0.999 - 1e-3) * torch.rand(B, generator=g)    # all levels
    noisy_d = (1 - t_d[:, None]) * x + t_d[:, None] * torch.randn(x.shape, generator=g)
    gen_cls_loss = F.softplus(-m.fake.logits(noisy_d, t_d, None)).mean()
    off = loss_dm + 3e-3 * gen_cls_loss                          # gen_cls_loss_weight
    off.backward()
    _check(loss, fs, off.detach(), _student_grads(ctx), 1.0)


def test_dmd2_guidance_loss_puts_the_d_loss_on_the_fake_trunk_at_1e_2():
    ctx, m = _dmd2(gan={"real": "dataset"})
    b = toy_batch(B)
    g0 = ctx.generator.get_state()
    loss, _ = m.aux_loss(b, 0)
    loss.backward()
    params = [*m.fake.den.parameters(), *m.fake.head.parameters()]
    fs = [p.grad.clone() for p in params]
    m.fake.zero_grad(set_to_none=True)
    ctx.generator.set_state(g0)
    g = ctx.generator
    with torch.no_grad():
        x = _replay_student_step(ctx, b)
    # fake score: the teacher's own objective (flow matching at its sigmoid(N(0, 1)) levels)
    t = torch.sigmoid(torch.randn(B, generator=g))
    noise = torch.randn(x.shape, generator=g)
    x_t = (1 - t[:, None]) * x + t[:, None] * noise
    loss_fake = (((m.fake.den(x_t, t, None) - x) / t[:, None].clamp_min(1e-2)) ** 2).mean()

    def logits(y):
        t_d = 1e-3 + (0.999 - 1e-3) * torch.rand(B, generator=g)
        y_d = (1 - t_d[:, None]) * y + t_d[:, None] * torch.randn(y.shape, generator=g)
        return m.fake.logits(y_d, t_d, None)

    pred_real = logits(b.real)
    pred_fake = logits(x)
    cls = F.softplus(pred_fake).mean() + F.softplus(-pred_real).mean()
    off = loss_fake + 1e-2 * cls                                 # cls_loss_weight
    off.backward()
    _check(loss, fs, off.detach(), [p.grad for p in params], 1.0)


def test_ladd_discriminator_loss_and_gradient_are_the_per_head_hinge():
    ctx = toy_context(toy_config("ladd", gan={"layers": [-1, -2]}), toy_denoiser(), [1.0, 0.6],
                      "shared")
    m = LADD(ctx)
    _perturb(m.disc, std=1.0, seed=5)    # heads past the margin: mean-hinge != per-head hinge
    b = toy_batch(B, teacher_sample=True)
    g0 = ctx.generator.get_state()
    loss, _ = m.aux_loss(b, 0)
    loss.backward()
    fs = [p.grad.clone() for p in m.disc.parameters()]
    m.disc.zero_grad(set_to_none=True)
    ctx.generator.set_state(g0)
    g = ctx.generator
    with torch.no_grad():
        k = torch.randint(0, 2, (B,), generator=g)
        s_k = torch.tensor([1.0, 0.6])[k][:, None]
        x_k = (1 - s_k) * b.teacher_sample + s_k * torch.randn(B, 2, generator=g)
        x0 = ctx.student.steps[0](x_k, s_k[:, 0], None)

    def heads(y):
        s = torch.sigmoid(torch.randn(B, generator=g) + 1.0)  # ladd sigma_mean 1, std 1
        y_s = (1 - s[:, None]) * y + s[:, None] * torch.randn(y.shape, generator=g)
        feats = ctx.teacher.features(y_s, s, None)
        return [h(feats[i], s, None) for h, i in zip(m.disc.heads, [-1, -2], strict=True)]

    d_real, d_fake = heads(b.real), heads(x0)
    off = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(d_real, d_fake,
                                                                            strict=True))
    saturated = float(torch.stack([*[r > 1 for r in d_real], *[f < -1 for f in d_fake]])
                      .float().mean())
    assert saturated > 0.05, saturated   # the case where the hinge of the mean differs
    off.backward()
    _check(loss, fs, off.detach(), [p.grad for p in m.disc.parameters()], 1.0)
