"""The shared distillation losses against independent computations on fixed tensors."""

import torch
import torch.nn.functional as F

from fewstep.core.path import FlowPath
from fewstep.distill.parts.losses import (
    d_loss,
    denoising_loss,
    dmd_gradient,
    dmd_loss,
    g_loss,
    sid_loss,
)


def _fixed(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _omega(x_g, f_r):
    """Independent SiD normaliser: 1 / mean|x_g - f_r| per sample, clipped at 1e-5."""
    pairs = zip(x_g, f_r, strict=True)
    return torch.tensor([1.0 / max((a - b).abs().mean().item(), 1e-5) for a, b in pairs])


def test_sid_loss_equals_expanded_form():
    x_g, f_r, f_f = _fixed(0, 4, 3, 2), _fixed(1, 4, 3, 2), _fixed(2, 4, 3, 2)
    wt = torch.tensor([0.1, 0.5, 0.9, 1.0])
    for alpha in (1.0, 1.2):
        d = f_r - f_f
        # (1 - a) ||f_phi - f_psi||^2 + (f_phi - f_psi)^T (f_psi - x_g), per element
        per = (1 - alpha) * d**2 + d * (f_f - x_g)
        expect = (_omega(x_g, f_r)[:, None, None] * per).mean()
        torch.testing.assert_close(sid_loss(x_g, f_r, f_f, alpha), expect)
        expect_w = (_omega(x_g, f_r)[:, None, None] * wt[:, None, None] * per).mean()
        torch.testing.assert_close(sid_loss(x_g, f_r, f_f, alpha, weight=wt), expect_w)


def test_sid_gradient_with_detached_predictions_is_omega_times_difference():
    x_g = _fixed(0, 4, 6).requires_grad_(True)
    f_r, f_f = _fixed(1, 4, 6), _fixed(2, 4, 6)
    sid_loss(x_g, f_r, f_f, 1.2).backward()
    # d/dx_g of w d ((f_r - x_g) - a d) with w, d constant: -w d (element mean)
    expect = -_omega(x_g.detach(), f_r)[:, None] * (f_r - f_f) / x_g.numel()
    torch.testing.assert_close(x_g.grad, expect)


def test_sid_gradient_reaches_generator_only_through_x_g_with_frozen_nets():
    torch.manual_seed(0)
    real, fake = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    real.requires_grad_(False)
    fake.requires_grad_(False)
    theta = torch.nn.Parameter(_fixed(3, 3))
    z, eps = _fixed(4, 5, 3), _fixed(5, 5, 3)
    x_g = z * theta                                      # a "generator"
    x_t = FlowPath.add_noise(x_g, eps, 0.4)
    loss = sid_loss(x_g, real(x_t), fake(x_t), 1.2)
    (g_x,) = torch.autograd.grad(loss, x_g, retain_graph=True)
    loss.backward()
    assert real.weight.grad is None and fake.weight.grad is None
    torch.testing.assert_close(theta.grad, (g_x * z).sum(0))  # chain rule through x_g only
    # the through-x_t part is present: it differs from the detached-prediction gradient
    x_d = x_g.detach().requires_grad_(True)
    sid_loss(x_d, real(x_t).detach(), fake(x_t).detach(), 1.2).backward()
    assert not torch.allclose(g_x, x_d.grad)


def test_dmd_gradient_points_from_fake_toward_real():
    x = _fixed(0, 8, 4)
    real, fake = _fixed(1, 8, 4), _fixed(2, 8, 4)
    g = dmd_gradient(x, real, fake)
    norm = (x - real).abs().mean(dim=1, keepdim=True)
    torch.testing.assert_close(g, (fake - real) / norm)
    # descending the DM loss moves x along real - fake, i.e. toward the real denoiser
    xp = x.clone().requires_grad_(True)
    dmd_loss(xp, g).backward()
    torch.testing.assert_close(xp.grad, g / x.numel())
    step = -xp.grad
    cos = F.cosine_similarity(step.flatten(), (real - fake).flatten(), dim=0)
    assert cos > 0.5


def test_dmd_step_moves_samples_toward_teacher_mode():
    """Fake denoiser says 'here', teacher says 'there': SGD on L_DM walks toward 'there'."""
    x = torch.zeros(16, 2, requires_grad=True)
    there, here = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 0.0])
    opt = torch.optim.SGD([x], lr=1.0)
    for _ in range(20):
        real, fake = there.expand_as(x), (here + 0.5 * x.detach())
        opt.zero_grad()
        dmd_loss(x, dmd_gradient(x.detach(), real, fake)).backward()
        opt.step()
    assert (x.detach() - there).norm(dim=1).max() < (here - there).norm()


def test_gan_losses_are_bce_forms():
    lr, lf = _fixed(0, 32), _fixed(1, 32)
    ones, zeros = torch.ones(32), torch.zeros(32)
    bce = F.binary_cross_entropy_with_logits
    torch.testing.assert_close(d_loss(lr, lf, "non_saturating"), bce(lr, ones) + bce(lf, zeros))
    torch.testing.assert_close(g_loss(lf, "non_saturating"), bce(lf, ones))
    hinge = torch.clamp(1 - lr, min=0).mean() + torch.clamp(1 + lf, min=0).mean()
    torch.testing.assert_close(d_loss(lr, lf, "hinge"), hinge)
    torch.testing.assert_close(g_loss(lf, "hinge"), -lf.mean())


def test_denoising_loss_is_velocity_mse():
    x0, eps = _fixed(0, 6, 2), _fixed(1, 6, 2)
    sigma = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    xs = FlowPath.add_noise(x0, eps, sigma)
    pred = _fixed(2, 6, 2)
    v_pred = FlowPath.velocity_from_x0(xs, sigma, pred)
    torch.testing.assert_close(denoising_loss(pred, x0, sigma),
                               (v_pred - FlowPath.velocity(x0, eps)).pow(2).mean())
