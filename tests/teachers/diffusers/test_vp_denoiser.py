"""VPEpsilonDenoiser: flow sigma <-> VP mapping, timestep interpolation, x0 conversion."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from fewstep.core.path import FlowPath
from fewstep.teachers.diffusers.vp import (
    VPEpsilonDenoiser,
    flow_sigma_from_alpha_bar,
    timestep_from_alpha_bar,
    vp_alpha_bar,
    vp_input_scale,
)
from fewstep.testing import tiny_unet_config


@pytest.fixture(scope="module")
def sched():
    return DDPMScheduler(num_train_timesteps=1000)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(**tiny_unet_config(sample_size=8)).eval()


def test_flow_and_vp_paths_agree():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.05, 0.3, 0.7, 0.99])
    x_flow = FlowPath.add_noise(x0, eps, sigma)
    ab = vp_alpha_bar(sigma)[:, None, None, None]
    x_vp = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(x_flow * vp_input_scale(sigma)[:, None, None, None], x_vp)
    torch.testing.assert_close(flow_sigma_from_alpha_bar(vp_alpha_bar(sigma)), sigma)


def test_timestep_interpolation(sched):
    ac = sched.alphas_cumprod
    # exact discrete levels map to their own index
    idx = torch.tensor([0, 1, 10, 500, 998, 999])
    torch.testing.assert_close(timestep_from_alpha_bar(ac[idx], ac), idx.float(), atol=1e-3,
                               rtol=0)
    # the log-SNR midpoint between two steps maps to t + 0.5
    lsnr = (ac / (1 - ac)).log()
    mid = torch.sigmoid((lsnr[100] + lsnr[101]) / 2)
    assert abs(float(timestep_from_alpha_bar(mid[None], ac)) - 100.5) < 1e-3
    # outside the range: clamped; inside: monotone in sigma
    assert float(timestep_from_alpha_bar(torch.tensor([1.0]), ac)) == 0.0
    assert float(timestep_from_alpha_bar(torch.tensor([0.0]), ac)) == 999.0
    t = timestep_from_alpha_bar(vp_alpha_bar(torch.linspace(0.01, 0.99, 50)), ac)
    assert bool((t[1:] >= t[:-1]).all())


@torch.no_grad()
def test_x0_equals_hand_conversion(unet, sched):
    den = VPEpsilonDenoiser.from_scheduler(unet, sched)
    ac = sched.alphas_cumprod
    steps = torch.tensor([50, 700])
    sigma = flow_sigma_from_alpha_bar(ac[steps]).float()  # levels that sit on integer timesteps
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scale = ((1 - sigma) ** 2 + sigma**2).rsqrt()[:, None, None, None]
    eps_hat = unet(x * scale, steps, return_dict=False)[0]
    s = sigma[:, None, None, None]
    x0_hand = (x - s * eps_hat) / (1 - s)
    torch.testing.assert_close(den(x, sigma), x0_hand, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(den.timestep(sigma), steps.float(), atol=1e-3, rtol=0)


@torch.no_grad()
def test_sigma_one_is_clamped_and_finite(unet, sched):
    den = VPEpsilonDenoiser.from_scheduler(unet, sched)
    assert 0.99 < den.sigma_max < 1.0 and den.min_one_minus_sigma == pytest.approx(
        1 - den.sigma_max)
    x = torch.randn(2, 3, 8, 8)
    out = den(x, torch.ones(2))
    assert torch.isfinite(out).all()
    eps_hat = den.raw(x, torch.ones(2))
    torch.testing.assert_close(out, (x - eps_hat) / den.min_one_minus_sigma)


@torch.no_grad()
def test_v_prediction_conversion(unet):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    den = VPEpsilonDenoiser.from_scheduler(unet, sched)
    assert den.prediction_type == "v_prediction"
    sigma = torch.tensor([0.2, 1.0])
    x = torch.randn(2, 3, 8, 8)
    v = den.raw(x, sigma)
    ab = vp_alpha_bar(sigma)[:, None, None, None]
    x_vp = x * vp_input_scale(sigma)[:, None, None, None]
    torch.testing.assert_close(den(x, sigma), ab.sqrt() * x_vp - (1 - ab).sqrt() * v)


@torch.no_grad()
def test_class_conditional_and_cfg(sched):
    torch.manual_seed(0)
    unet = UNet2DModel(**tiny_unet_config(sample_size=8, num_class_embeds=11)).eval()
    with torch.no_grad():
        unet.class_embedding.weight.normal_()
    den = VPEpsilonDenoiser.from_scheduler(unet, sched, null_class=10)
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.5, 0.5])
    labels = torch.tensor([3, 7])
    c, u = den(x, sigma, labels), den(x, sigma, None)
    assert not torch.allclose(c, u)
    torch.testing.assert_close(den(x, sigma, den.null_cond(labels)), u)
    torch.testing.assert_close(den.guided(x, sigma, labels, 3.0), u + 3.0 * (c - u))
