"""Toy metrics: sliced Wasserstein vs exact 1-D solvers; mode coverage on collapsed samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import wasserstein_distance

from fewstep.data import toy_modes, toy_sample
from fewstep.evaluation import evaluate_toy, mode_stats, sliced_wasserstein
from fewstep.evaluation.toy_metrics import random_directions


def test_swd_one_projection_matches_scipy_unequal_sizes() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = toy_sample("moons", 137, g), toy_sample("8gaussians", 211, g)
    got = sliced_wasserstein(x, y, num_projections=1, p=1.0,
                             generator=torch.Generator().manual_seed(5))
    theta = random_directions(1, 2, torch.Generator().manual_seed(5))[0].numpy()
    want = wasserstein_distance(x.double().numpy() @ theta, y.double().numpy() @ theta)
    assert got == pytest.approx(want, rel=1e-10)


def test_swd_p2_matches_assignment() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 2, generator=g), torch.rand(60, 2, generator=g)
    theta = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    got = sliced_wasserstein(x, y, p=2.0, directions=theta)
    u, v = (x.double() @ theta.T)[:, 0].numpy(), (y.double() @ theta.T)[:, 0].numpy()
    cost = (u[:, None] - v[None, :]) ** 2
    r, c = linear_sum_assignment(cost)
    assert got == pytest.approx(np.sqrt(cost[r, c].mean()), rel=1e-10)


def test_swd_ranks_and_is_reproducible() -> None:
    g = torch.Generator().manual_seed(2)
    ref, same = toy_sample("8gaussians", 2000, g), toy_sample("8gaussians", 2000, g)
    collapsed = toy_modes("8gaussians")[:1].repeat(2000, 1)
    e_same = evaluate_toy(same, ref, "8gaussians")
    e_coll = evaluate_toy(collapsed, ref, "8gaussians")
    e_shift = evaluate_toy(same + 0.5, ref, "8gaussians")
    assert e_same["swd"] < 0.25 < e_shift["swd"] < e_coll["swd"]
    assert evaluate_toy(same, ref, "8gaussians")["swd"] == e_same["swd"]


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard", "moons"])
def test_mode_coverage_full_vs_collapsed(name: str) -> None:
    full = toy_sample(name, 4000, torch.Generator().manual_seed(3))
    modes = toy_modes(name)
    collapsed = modes[:2].repeat(500, 1) + 0.01 * torch.randn(1000, 2)
    s_full, s_coll = mode_stats(full, name), mode_stats(collapsed, name)
    assert s_full["mode_coverage"] == 1.0
    assert s_coll["mode_coverage"] == pytest.approx(2 / len(modes))
    assert s_coll["quality"] == 1.0
    if name != "moons":  # moons' modes are only the arc ends and apexes
        assert s_full["quality"] > 0.95
    far = torch.full((100, 2), 10.0)
    assert mode_stats(far, name) == {"mode_coverage": 0.0, "quality": 0.0}
