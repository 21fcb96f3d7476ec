"""The K-step student ``G = (G_1, ..., G_K)`` (METHODS §2).

Step ``k`` (0-based here) maps ``x_k`` at ``sigma_k`` to ``x0_hat_k = G_k(x_k, sigma_k, c)``; the
next input is ``x_{k+1} = (1 - sigma_{k+1}) x0_hat_k + sigma_{k+1} eps`` (fresh noise) or the
deterministic DDIM transition. ``sigma_0 = 1`` so ``x_0`` is pure noise.

Parameterisations (``Student.parameterization``):

* ``decoupled``: K full copies of the teacher, one per step (step-decoupled, Turbo++ §2);
* ``lora``: one frozen copy of the teacher shared by all steps plus one LoRA adapter per step
  (peft), so the steps are decoupled at a fraction of the memory;
* ``shared``: one copy used by every step (the usual few-step student; the ablation baseline).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from fewstep.denoiser import Denoiser
from fewstep.path import randn_like
from fewstep.samplers import Trajectory, Transition, sample

Parameterization = Literal["decoupled", "lora", "shared"]


class Student(nn.Module):
    """K-step generator initialised from a teacher denoiser.

    Args:
        teacher: the denoiser to copy (it is not modified or kept).
        sigmas: ``(K,)`` input noise levels, ``sigmas[0] == 1``, strictly decreasing.
        parameterization: ``decoupled`` | ``lora`` | ``shared`` (module docstring).
        transition: ``fresh`` or ``ddim`` transition between steps.
        lora_rank / lora_alpha / lora_targets: LoRA settings for ``parameterization="lora"``;
            ``lora_targets`` are module-name suffixes of ``nn.Linear`` layers (``None``: the
            network's ``lora_targets`` attribute if it has one, else every ``nn.Linear``).
    """

    def __init__(self, teacher: Denoiser, sigmas: Tensor, parameterization: Parameterization,
                 transition: Transition = "fresh", lora_rank: int = 16,
                 lora_alpha: float | None = None, lora_targets: list[str] | None = None) -> None:
        super().__init__()
        self.parameterization = parameterization
        self.transition = transition
        self.register_buffer("sigmas", sigmas.detach().float().clone(), persistent=False)
        k = int(sigmas.numel())
        self.lora = None
        if parameterization == "decoupled":
            self.steps = nn.ModuleList(_trainable_copy(teacher) for _ in range(k))
        elif parameterization == "shared":
            self.steps = nn.ModuleList([_trainable_copy(teacher)])
        elif parameterization == "lora":
            from fewstep.lora import PerStepLoRA

            lora_targets = resolve_lora_targets(teacher, lora_targets)
            self.lora = PerStepLoRA(copy.deepcopy(teacher), num_steps=k, rank=lora_rank,
                                    alpha=lora_alpha, target_modules=lora_targets)
            self.steps = nn.ModuleList()
        else:
            raise ValueError(f"parameterization must be decoupled|lora|shared, got "
                             f"{parameterization!r}")

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.numel())

    def step_denoiser(self, k: int) -> Denoiser:
        """The module that computes step ``k`` (for ``lora``: the shared base, whose active
        adapter :meth:`forward` selects)."""
        if self.lora is not None:
            return self.lora.base  # type: ignore[return-value]
        return self.steps[k if self.parameterization == "decoupled" else 0]  # type: ignore

    def forward(self, k: int, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """``x0_hat = G_k(x, sigma, cond)``; ``x`` is ``(B, ...)``, ``sigma`` is ``(B,)``."""
        if not 0 <= k < self.num_steps:
            raise IndexError(f"step {k} out of range for a {self.num_steps}-step student")
        with profile_label("student_forward"):
            if self.lora is not None:
                with self.lora.use_step(k):
                    return self.lora.base(x, sigma, cond)
            return self.step_denoiser(k)(x, sigma, cond)

    def step_parameters(self, k: int) -> Iterator[nn.Parameter]:
        """Trainable parameters that step ``k`` owns (shared ones for ``shared``)."""
        if self.lora is not None:
            yield from self.lora.step_parameters(k)
        else:
            yield from (p for p in self.step_denoiser(k).parameters() if p.requires_grad)

    def generate(self, noise: Tensor, cond: Any, *, step_noises: list[Tensor] | None = None,
                 generator: torch.Generator | None = None, num_steps: int | None = None,
                 detach_between_steps: bool = False) -> Trajectory:
        """Run the student from ``noise`` (``x_0``, at ``sigma = 1``). See :func:`sample`."""
        return sample(self, noise, cond, self.sigmas, self.transition, step_noises=step_noises,
                      generator=generator, stop_after=num_steps,
                      detach_between_steps=detach_between_steps)


def profile_label(name: str) -> contextlib.AbstractContextManager:
    """``record_function(name)`` while the torch profiler runs, else a no-op (the label costs
    ~15 us per call, measurable in 2-step sampling)."""
    if torch.autograd.profiler._is_profiler_enabled:
        return record_function(name)
    return contextlib.nullcontext()


def resolve_lora_targets(teacher: nn.Module, targets: list[str] | None) -> list[str] | None:
    """``targets``, or the wrapped network's ``lora_targets`` default, or ``None`` (all
    ``nn.Linear`` layers)."""
    if targets is not None:
        return targets
    default = getattr(getattr(teacher, "net", teacher), "lora_targets", None)
    return None if default is None else list(default)


def _trainable_copy(m: Denoiser) -> Denoiser:
    c = copy.deepcopy(m)
    c.requires_grad_(True)
    c.train()
    return c


def unroll_to_step(student: Student, noise: Tensor, cond: Any, k: int,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Backward simulation: steps ``0 .. k-1`` without gradient, step ``k`` with gradient.

    Returns ``(x_k, sigma_k (B,), x0_hat_k)``: the input of step ``k`` (no graph), its level,
    and the step's prediction (with graph). Used by DMD2, SiD (uniform mixture over ``k``) and
    Imagine Flash (backward distillation).
    """
    x = noise
    if k > 0:
        with torch.no_grad():
            traj = student.generate(noise, cond, generator=generator, num_steps=k)
            last_x0 = traj.x0s[-1]
            from fewstep.samplers import transition

            fresh = randn_like(noise, generator) if student.transition == "fresh" else None
            x = transition(traj.xs[-1], last_x0, traj.sigmas[-1].to(noise.device),
                           student.sigmas[k], student.transition, fresh)
    sigma = student.sigmas[k].to(noise.device).expand(noise.shape[0])
    return x, sigma, student(k, x, sigma, cond)


def random_step(student: Student, generator: torch.Generator | None = None) -> int:
    """Draw a step index ``k ~ U{0, ..., K-1}`` (0-based) with ``generator``, or with the
    student's ``step_generator`` when set (multi-process training: one stream shared by all
    ranks, so every rank runs the same step modules, as FSDP's collectives require)."""
    g = getattr(student, "step_generator", None) or generator
    return int(torch.randint(0, student.num_steps, (1,), generator=g))


def backward_simulate(student: Student, noise: Tensor, cond: Any,
                      generator: torch.Generator | None = None
                      ) -> tuple[int, Tensor, Tensor, Tensor]:
    """:func:`unroll_to_step` at a random step ``k ~ U{0..K-1}``: over many calls the outputs
    follow the *uniform mixture* of all steps' outputs. Returns ``(k, x_k, sigma_k, x0_hat_k)``.
    """
    k = random_step(student, generator)
    return (k, *unroll_to_step(student, noise, cond, k, generator))
