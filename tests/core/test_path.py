"""The flow path, conversions, shift and CFG against hand computations."""

import torch

from fewstep.core.guidance import cfg_combine, w_from_zimage_scale, zimage_scale_from_w
from fewstep.core.path import FlowPath, shift_sigma


def _data():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    sigma = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    return x0, eps, sigma


def test_add_noise_matches_definition():
    x0, eps, sigma = _data()
    xs = FlowPath.add_noise(x0, eps, sigma)
    for i in range(5):
        torch.testing.assert_close(xs[i], (1 - sigma[i]) * x0[i] + sigma[i] * eps[i])


def test_conversions_round_trip():
    x0, eps, sigma = _data()
    xs = FlowPath.add_noise(x0, eps, sigma)
    v = FlowPath.velocity(x0, eps)
    torch.testing.assert_close(FlowPath.x0_from_velocity(xs, sigma, v), x0)
    torch.testing.assert_close(FlowPath.eps_from_velocity(xs, sigma, v), eps)
    torch.testing.assert_close(FlowPath.velocity_from_x0(xs, sigma, x0), v)
    torch.testing.assert_close(FlowPath.eps_from_x0(xs, sigma, x0), eps)
    torch.testing.assert_close(FlowPath.x0_from_eps(xs, sigma, eps), x0)


def test_velocity_is_path_derivative():
    x0, eps, _ = _data()
    s, h = 0.4, 1e-3
    fd = (FlowPath.add_noise(x0, eps, s + h) - FlowPath.add_noise(x0, eps, s - h)) / (2 * h)
    torch.testing.assert_close(fd, FlowPath.velocity(x0, eps), atol=1e-3, rtol=1e-3)


def test_shift_fixes_endpoints_and_matches_zimage_values():
    assert shift_sigma(0.0, 3.0) == 0.0 and shift_sigma(1.0, 3.0) == 1.0
    assert abs(shift_sigma(0.5, 3.0) - 0.75) < 1e-9
    assert abs(shift_sigma(0.5, 1.0) - 0.5) < 1e-9


def test_cfg_convention_and_zimage_conversion():
    u, c = torch.tensor([1.0]), torch.tensor([3.0])
    assert cfg_combine(u, c, 1.0).item() == 3.0  # w = 1: conditional only
    assert cfg_combine(u, c, 0.0).item() == 1.0  # w = 0: unconditional
    assert cfg_combine(u, c, 2.0).item() == 5.0
    g = 4.0  # Z-Image: pos + g (pos - neg)
    assert cfg_combine(u, c, w_from_zimage_scale(g)).item() == (c + g * (c - u)).item()
    assert zimage_scale_from_w(w_from_zimage_scale(g)) == g
