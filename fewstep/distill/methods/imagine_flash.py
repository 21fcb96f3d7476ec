"""Imagine Flash (docs/methods.md §6): backward distillation with the shifted reconstruction loss.

Generator update on a batch (noise ``eps``, condition ``c``)::

    k ~ U{0..K-1};  x_k = the student's own no-grad path from pure noise to step k's input
                    (backward distillation: no data ever enters the inputs; x_0 = eps)
    x0_theta = G_k(x_k, sigma_k, c)
    tau = beta(sigma_k) = tau_min + (tau_max - tau_min) sigma_k^p       (p = beta_power; 1: linear)
    x_tau = (1 - tau) sg(x0_theta) + tau e
    L = ||x0_theta - sg(T_w(x_tau, tau, c))||^2                         (T_w: teacher, CFG w)

The noise ``e`` (``imagine_flash.renoise``; the method reference leaves it open): ``student``
(default) reuses the noise the student's own input implies, ``e_k = (x_k - (1 - sigma_k)
sg(x0_theta)) / sigma_k`` (``= eps`` at k = 0), so ``x_tau`` lies on the student's straight line
from ``x_k`` to ``x0_theta`` and the target is a deterministic function of the input; ``fresh``
draws new noise, which makes the regression optimum an average over ``e`` of the teacher's posterior
means: a contraction that, chased by the student, collapses a 2-D toy to its mean within a few
hundred updates (measured). ``imagine_flash.target_steps = N > 1`` replaces ``T_w(x_tau, tau)`` by
the teacher's N-step Euler solve from ``(x_tau, tau)`` to 0 (levels ``tau (1 - i/N)``); the method
reference's default is N = 1 (docs/methods.md §6).

``w = imagine_flash.cfg_scale`` (null: the teacher's own). ``beta`` rises with the step's level:
at high noise the target keeps the student's layout (large tau re-generates it), at low noise it
only adds detail. No auxiliary network. Noise correction for epsilon-prediction teachers is an
inference option: :mod:`fewstep.core.noise_correction`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from fewstep.core.noise_correction import noise_corrected
from fewstep.core.path import FlowPath
from fewstep.core.samplers import transition
from fewstep.distill.config import DistillConfig
from fewstep.distill.context import Batch, DistillContext, Logs
from fewstep.distill.methods.base import DistillMethod
from fewstep.distill.methods.registry import METHODS
from fewstep.student.student import backward_simulate
from fewstep.utils.config_files import StrictModel


def power_beta(tau_min: float, tau_max: float, power: float = 1.0) -> Callable[[Tensor], Tensor]:
    """``beta(t) = tau_min + (tau_max - tau_min) t^power`` (``power = 1``: linear, the default)."""
    def beta(t: Tensor) -> Tensor:
        return tau_min + (tau_max - tau_min) * t.clamp(0.0, 1.0) ** power
    return beta


class ImagineFlashSpec(StrictModel):
    tau_min: float = Field(0.1, ge=0.0, le=1.0)
    tau_max: float = Field(0.9, ge=0.0, le=1.0)
    beta_power: float = Field(1.0, gt=0.0, description="tau = tau_min + (tau_max - tau_min) "
                              "t^p; 1 = linear")
    renoise: Literal["fresh", "student"] = Field(
        "student", description="noise of x_tau: fresh N(0, I), or the noise the student's own "
        "input implies, eps_k = (x_k - (1 - sigma_k) x0_theta) / sigma_k")
    target_steps: int = Field(1, ge=1, description="1: the teacher's x0 prediction at "
                              "(x_tau, tau) (docs/methods.md §6); N > 1: its N-step Euler "
                              "solve tau -> 0")
    cfg_scale: float | None = None

    @model_validator(mode="after")
    def _range(self) -> ImagineFlashSpec:
        if self.tau_min > self.tau_max:
            raise ValueError(f"imagine_flash.tau_min ({self.tau_min}) > imagine_flash.tau_max "
                             f"({self.tau_max})")
        return self


class ImagineFlashConfig(DistillConfig):
    method: Literal["imagine_flash"] = "imagine_flash"
    imagine_flash: ImagineFlashSpec = ImagineFlashSpec()


@METHODS.register("imagine_flash")
class ImagineFlash(DistillMethod[ImagineFlashConfig]):
    """No auxiliary network and no data beyond noise: one student step with gradient."""

    config_class = ImagineFlashConfig

    @classmethod
    def graph_forwards(cls, cfg: DistillConfig) -> int:
        return 1

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        s = self.cfg.imagine_flash
        #: ``sigma_k (B,) -> tau (B,)``; replace for other shift functions
        self.beta: Callable[[Tensor], Tensor] = power_beta(s.tau_min, s.tau_max, s.beta_power)
        self.cfg_scale = s.cfg_scale if s.cfg_scale is not None else ctx.teacher_cfg_scale
        # finite at tau = 1 for epsilon-prediction teachers; a pass-through otherwise
        self._teacher = [noise_corrected(ctx.teacher)]

    @torch.no_grad()
    def teacher_target(self, x_tau: Tensor, tau: Tensor, cond: Any) -> Tensor:
        """The SRL target at ``(x_tau (B, ...), tau (B,))``: one guided teacher prediction, or
        its ``target_steps``-step Euler (DDIM) solve to ``sigma = 0``."""
        n = self.cfg.imagine_flash.target_steps
        teacher, x = self._teacher[0], x_tau
        for i in range(n):
            s_i = tau * (1.0 - i / n)
            x0 = teacher.guided(x, s_i, cond, self.cfg_scale)
            if i + 1 < n:
                x = transition(x, x0, s_i, tau * (1.0 - (i + 1) / n), "ddim")
        return x0

    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        k, x_k, sigma_k, x0 = backward_simulate(self.ctx.student, batch.noise, batch.cond,
                                                self.ctx.generator)
        tau = self.beta(sigma_k)
        with torch.no_grad():
            if self.cfg.imagine_flash.renoise == "student":
                eps = FlowPath.eps_from_x0(x_k, sigma_k, x0.detach())
            else:
                eps = self.ctx.randn_like(x0)
            x_tau = FlowPath.add_noise(x0.detach(), eps, tau)
            target = self.teacher_target(x_tau, tau, batch.cond)
        loss = F.mse_loss(x0, target)
        return loss, {"g_srl": loss.detach(), "tau": tau.mean(), "step_k": torch.tensor(float(k))}
