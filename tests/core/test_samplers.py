"""Euler == DDIM on the linear path; schedules; an exact denoiser is solved in one step."""

import pytest
import torch
from torch import nn

from fewstep.core.denoiser import NetworkDenoiser
from fewstep.core.levels import student_sigmas, teacher_sigmas
from fewstep.core.path import FlowPath
from fewstep.core.samplers import euler_sample, sample, transition


def test_zimage_turbo_schedule():
    want = [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0.0]
    torch.testing.assert_close(teacher_sigmas(8, 3.0), torch.tensor(want), atol=1e-4, rtol=0)


def test_student_sigmas_default_and_custom():
    torch.testing.assert_close(student_sigmas(2, 8, 3.0), torch.tensor([1.0, 0.75]))
    torch.testing.assert_close(student_sigmas(2, 8, 1.0), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(student_sigmas(1), torch.tensor([1.0]))
    with pytest.raises(ValueError):
        student_sigmas(2, custom=[0.9, 0.5])
    with pytest.raises(ValueError):
        student_sigmas(0)


def test_ddim_transition_equals_euler_step():
    g = torch.Generator().manual_seed(0)
    x, x0 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    s, sn = torch.full((6,), 0.7), 0.4
    v = FlowPath.velocity_from_x0(x, s, x0)
    torch.testing.assert_close(transition(x, x0, s, sn, "ddim"), x + (sn - 0.7) * v)


def test_fresh_transition_uses_given_noise():
    x0, n = torch.ones(2, 2), torch.full((2, 2), 3.0)
    out = transition(torch.zeros(2, 2), x0, 1.0, 0.25, "fresh", n)
    torch.testing.assert_close(out, 0.75 * x0 + 0.25 * n)


class PointMass(nn.Module):
    """Exact velocity for data concentrated at ``c``: v = (x - c) / sigma."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t, cond):
        return (x - self.c) / t[:, None]


def test_exact_denoiser_lands_on_data_for_any_step_count():
    c = torch.tensor([[1.5, -2.0]])
    den = NetworkDenoiser(PointMass(c), prediction="velocity")
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    for n in (1, 2, 8):
        torch.testing.assert_close(euler_sample(den, noise, None, teacher_sigmas(n)).sample,
                                   c.expand(8, 2))


def test_sample_records_trajectory_and_stops_early():
    calls = []

    def step(k, x, s, c):
        calls.append((k, float(s[0])))
        return torch.zeros_like(x)

    traj = sample(step, torch.ones(2, 1), None, [1.0, 0.5, 0.25, 0.0], stop_after=2)
    assert calls == [(0, 1.0), (1, 0.5)]
    assert len(traj.xs) == 2 and len(traj.x0s) == 2
    torch.testing.assert_close(traj.xs[1], 0.5 * torch.ones(2, 1))  # ddim: eps_hat = x
