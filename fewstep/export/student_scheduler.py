"""The scheduler that lets a stock diffusers pipeline's own ``__call__`` run a K-step student.

Its source is written into every exported pipeline student's model card (it imports only torch
and diffusers): the card sets it as ``pipe.scheduler`` and calls ``pipe(prompts, ...)``, so the
pipeline's own prompt encoding, latent preparation, time-input map and decoding run unchanged.

At step ``k`` the pipeline hands it the network's output ``m`` (after the pipeline's own sign /
learned-variance handling) and its sample ``x_m``, the network's input: on the flow path
``x_m = x = (1 - s) x0 + s eps``; on the variance-preserving path ``x_m = x / n``,
``n = sqrt((1 - s)^2 + s^2)``. It recovers ``x0`` by the prediction type exactly as fewstep's
denoiser does (``epsilon``: ``(x - s m) / max(1 - s, min_one_minus_sigma)``, finite at
``s = 1``), moves to the next level ``s'`` with the student's transition (``fresh``: new noise
from :attr:`generator`; ``ddim``: the noise implied by ``x0``) and calls :attr:`on_step`
``(k + 1)`` so the pipeline's next network call uses step ``k + 1``'s parameters.
``timesteps`` are the scheduler's own times of the student's levels (``t(s)``), which the
pipeline maps to its network's time input as it always does; ``num_train_timesteps`` is the
teacher scheduler's (some pipelines read it).

Why not a stock scheduler: most pipelines do not pass their generator to ``scheduler.step``
(``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`` would draw the fresh noise from
the global RNG), and the student's first step at ``sigma = 1`` with the continuous time input
it was trained with has no counterpart in the variance-preserving schedulers.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput


# diffusers types ConfigMixin.config_name as None and SchedulerMixin's as str; every diffusers
# scheduler has these two bases in this order (its own typing conflict, not ours)
class StudentScheduler(SchedulerMixin, ConfigMixin):  # type: ignore[misc]
    """The student's K steps inside a pipeline's ``__call__`` (see module docstring)."""

    order = 1

    @register_to_config
    def __init__(self, sigmas: tuple[float, ...] = (1.0,), times: tuple[float, ...] = (1000.0,),
                 vp: bool = False, prediction: str = "flow", transition: str = "fresh",
                 min_one_minus_sigma: float = 1e-3, num_train_timesteps: int = 1000) -> None:
        self.init_noise_sigma, self.generator, self.on_step, self.k = 1.0, None, None, 0
        self.timesteps, self.sigmas = torch.tensor(times), torch.tensor([*sigmas, 0.0])

    def set_timesteps(self, num_inference_steps: Any = None, device: Any = None,
                      timesteps: Any = None, sigmas: Any = None, **kwargs: Any) -> None:
        self.timesteps, self.k = torch.tensor(self.config["times"], device=device), 0
        if self.on_step is not None:
            self.on_step(0)

    def set_begin_index(self, begin_index: int = 0) -> None:
        pass

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             return_dict: bool = True, **kwargs: Any) -> Any:
        c = self.config  # a FrozenDict (typed as a dict): read by key
        levels = [*c["sigmas"], 0.0]
        s, s1 = levels[self.k], levels[self.k + 1]

        def n(v: float) -> float:
            return ((1 - v) ** 2 + v**2) ** 0.5 if c["vp"] else 1.0

        a, sg = (1 - s) / n(s), s / n(s)  # x_m = a x0 + sg eps
        xm, m = sample.float(), model_output.float()
        x = xm * n(s)
        if c["prediction"] == "epsilon":
            x0 = (x - s * m) / max(1 - s, c["min_one_minus_sigma"])
        elif c["prediction"] == "v_prediction":
            x0 = (a * xm - sg * m) / (a * a + sg * sg)
        elif c["prediction"] == "sample":
            x0 = m
        else:  # flow: the velocity eps - x0
            x0 = (xm - sg * m) / (a + sg)
        if s1 > 0 and c["transition"] == "fresh":
            eps = torch.randn(x.shape, generator=self.generator).to(x.device)
        else:
            eps = (x - (1 - s) * x0) / s
        prev = (((1 - s1) * x0 + s1 * eps) / n(s1)).to(sample.dtype)
        self.k += 1
        if self.k < len(c["sigmas"]) and self.on_step is not None:
            self.on_step(self.k)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)


__all__ = ["StudentScheduler"]
