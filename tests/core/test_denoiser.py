"""Adapters turn velocity / eps / x0 / -v networks with any native time input into x0."""

import pytest
import torch
from torch import nn

from fewstep.core.denoiser import NetworkDenoiser
from fewstep.core.path import FlowPath


class Oracle(nn.Module):
    """Knows x0 and eps; returns the requested parameterisation and records ``t``."""

    def __init__(self, x0, eps, kind, time_of_sigma):
        super().__init__()
        self.x0, self.eps, self.kind, self.time_of_sigma = x0, eps, kind, time_of_sigma
        self.seen_t = None

    def forward(self, x, t, cond):
        self.seen_t = t
        v = self.eps - self.x0
        return {"velocity": v, "neg_velocity": -v, "epsilon": self.eps, "x0": self.x0}[self.kind]


@pytest.mark.parametrize("kind", ["velocity", "neg_velocity", "epsilon", "x0"])
@pytest.mark.parametrize("time_input,fn", [("sigma", lambda s: s),
                                           ("one_minus_sigma", lambda s: 1 - s),
                                           ("sigma_1000", lambda s: 1000 * s),
                                           ("one_minus_sigma_1000", lambda s: 1000 * (1 - s))])
def test_adapter_recovers_x0_and_passes_native_time(kind, time_input, fn):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    sigma = torch.tensor([0.2, 0.4, 0.6, 0.8])
    net = Oracle(x0, eps, kind, fn)
    den = NetworkDenoiser(net, prediction=kind, time_input=time_input)
    out = den(FlowPath.add_noise(x0, eps, sigma), sigma)
    torch.testing.assert_close(out, x0)
    torch.testing.assert_close(net.seen_t, fn(sigma))


def test_guided_uses_null_cond_and_w():
    class Lin(nn.Module):
        def forward(self, x, t, labels):
            return x * 0 + labels.float()[:, None]  # "x0" prediction = label value

    den = NetworkDenoiser(Lin(), prediction="x0", null_cond=lambda c: torch.zeros_like(c))
    x, s, c = torch.zeros(3, 2), torch.full((3,), 0.5), torch.tensor([2, 2, 2])
    torch.testing.assert_close(den.guided(x, s, c, 1.0), torch.full((3, 2), 2.0))
    torch.testing.assert_close(den.guided(x, s, c, 3.0), torch.full((3, 2), 6.0))


def test_bad_prediction_rejected():
    with pytest.raises(ValueError, match="prediction"):
        NetworkDenoiser(nn.Identity(), prediction="score")  # type: ignore[arg-type]
