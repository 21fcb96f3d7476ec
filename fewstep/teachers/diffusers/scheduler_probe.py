"""What a diffusers scheduler means, read from its behaviour (not its class name).

For each timestep ``t`` of a scheduler as ``__call__`` set it up:

* ``alpha_t, sigma_t``: its noising, ``add_noise`` (or ``scale_noise``) of ``x0 = 1, eps = 0`` and
  ``x0 = 0, eps = 1``: the scheduler's sample is ``x_t = alpha_t x0 + sigma_t eps``;
* ``k_t``: ``scale_model_input`` of ones (1 if absent): the network sees ``k_t x_t``;
* our flow level ``s = sigma_t / (alpha_t + sigma_t)`` and ``x_flow = x_t / (alpha_t + sigma_t)``.

The *model path* is the path of ``k_t x_t``: ``flow`` when ``k alpha + k sigma = 1`` (then the
network sees ``x_flow``), ``vp`` when ``(k alpha)^2 + (k sigma)^2 = 1`` (it sees
``x_vp = x_flow / sqrt((1-s)^2 + s^2)``). The prediction type is the config's
``prediction_type`` (``epsilon``, ``v_prediction``, ``sample``, ``flow_prediction``); a
scheduler without one on the flow path predicts the velocity ``eps - x0`` (``flow``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow", "flow_prediction")


def _fresh(sched: Any) -> Any:
    s = copy.deepcopy(sched)
    for attr in ("_step_index", "_begin_index"):
        if hasattr(s, attr):
            setattr(s, attr, None)
    return s


def noise_coeffs(sched: Any, ts: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha_t, sigma_t)`` (float64, one per timestep) of the scheduler's own noising."""
    ts = torch.as_tensor(ts).flatten()
    n = ts.numel()
    one, zero = torch.ones(n, 1, dtype=torch.float64), torch.zeros(n, 1, dtype=torch.float64)

    def run(x0: Tensor, eps: Tensor) -> Tensor:
        s = _fresh(sched)
        if hasattr(s, "add_noise"):
            return s.add_noise(x0, eps, ts).flatten().double()
        if hasattr(s, "scale_noise"):
            return s.scale_noise(x0, ts, eps).flatten().double()
        raise ValueError(f"{type(sched).__name__}: neither add_noise nor scale_noise; cannot "
                         "read its noise levels")
    return run(one, zero), run(zero, one)


def input_scale(sched: Any, t: Tensor) -> float:
    """``k_t``: the factor ``scale_model_input`` applies at ``t`` (1 without one)."""
    if not hasattr(sched, "scale_model_input"):
        return 1.0
    return float(_fresh(sched).scale_model_input(torch.ones(1, 1), torch.as_tensor(t)).flatten()[0])


@dataclass
class SchedulerProbe:
    """Per-step facts of one configured scheduler (see module docstring)."""

    timesteps: Tensor  # (N,) as __call__ iterates them
    alpha: Tensor  # (N,) float64
    sigma: Tensor  # (N,)
    k: Tensor  # (N,) scale_model_input factor
    path: str  # flow | vp
    prediction: str  # one of PREDICTIONS
    final_level: float  # our level after the last step (0, or DDIM's final_alpha_cumprod)

    @property
    def levels(self) -> Tensor:
        """Our flow levels ``s_k`` (N,), then the final one: ``(N + 1,)``."""
        s = self.sigma / (self.alpha + self.sigma)
        return torch.cat([s, torch.tensor([self.final_level], dtype=s.dtype)])

    def distinct_levels(self) -> Tensor:
        """:attr:`levels` without a repeated level (PNDM evaluates one timestep twice):
        strictly decreasing, ``(N' + 1,)`` float32."""
        lev = self.levels
        keep = torch.ones_like(lev, dtype=torch.bool)
        keep[1:] = lev[1:] < lev[:-1]
        return lev[keep].float()

    @property
    def scale(self) -> Tensor:
        """``c_k = alpha_k + sigma_k``: ``x_t = c_k x_flow``."""
        return self.alpha + self.sigma


def probe(sched: Any) -> SchedulerProbe:
    """Probe a scheduler after ``set_timesteps`` (e.g. the snapshot of a recording)."""
    ts = torch.as_tensor(sched.timesteps).flatten()
    a, s = noise_coeffs(sched, ts)
    k = torch.tensor([input_scale(sched, t) for t in ts], dtype=torch.float64)
    am, sm = k * a, k * s
    if bool(((am + sm - 1).abs() < 1e-4).all()):
        path = "flow"
    elif bool(((am**2 + sm**2 - 1).abs() < 1e-4).all()):
        path = "vp"
    else:
        raise ValueError(f"{type(sched).__name__}: the network input is neither on the flow path "
                         "nor on the variance-preserving path (cannot read its noise levels)")
    pred = sched.config.get("prediction_type") or ("flow" if path == "flow" else None)
    if pred not in PREDICTIONS:
        raise ValueError(f"{type(sched).__name__}: unsupported prediction_type {pred!r} "
                         f"(supported: {', '.join(PREDICTIONS)})")
    final = 0.0
    fac = getattr(sched, "final_alpha_cumprod", None)
    if fac is not None and float(fac) < 1.0:  # DDIM / PNDM with set_alpha_to_one=False
        fa = float(fac) ** 0.5
        fs = (1 - float(fac)) ** 0.5
        final = fs / (fa + fs)
    return SchedulerProbe(ts, a, s, k, path, pred, final)


def flow_time_table(sched: Any) -> tuple[Tensor, Tensor]:
    """``(s, t)`` pairs of a (dense) flow scheduler: its levels and timesteps, ascending in s."""
    ts = torch.as_tensor(sched.timesteps).flatten().double()
    a, sg = noise_coeffs(sched, ts)
    s = sg / (a + sg)
    order = torch.argsort(s)
    return s[order], ts[order]


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear ``f(x)`` through ``(xp, fp)`` (ascending ``xp``), linear beyond ends."""
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


__all__ = ["PREDICTIONS", "SchedulerProbe", "flow_time_table", "input_scale", "interp",
           "noise_coeffs", "probe"]
