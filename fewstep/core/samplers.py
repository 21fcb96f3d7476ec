"""Samplers: the teacher's N-step Euler sampler and the K-step student sampler.

Both take explicit noise so that different samplers can be compared from the same noise.

A *step function* ``step_fn(k, x, sigma, cond) -> x0_hat`` predicts clean data at step ``k``
(0-based). The teacher's step function ignores ``k``; a step-decoupled student uses it to pick
its per-step parameters.

Transitions from ``sigma`` to ``sigma_next`` given ``x0_hat``:

* ``ddim`` (deterministic): reuse ``eps_hat = (x - (1 - sigma) x0_hat) / sigma``; on the linear
  path this *is* the Euler step ``x + (sigma_next - sigma) v_hat``.
* ``fresh``: ``x_next = (1 - sigma_next) x0_hat + sigma_next eps_fresh``.

Noise correction (:mod:`fewstep.core.noise_correction`): the teacher's and the student's samplers
start at ``sigma = 1``, where an epsilon-prediction network's ``x0_hat`` is 0/0. Their
``noise_correction`` option (``None`` = on for zero-terminal-SNR epsilon models, off otherwise)
replaces that first prediction by the bias-corrected estimate; it never changes velocity / x0
models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from fewstep.core.denoiser import Denoiser
from fewstep.core.noise_correction import DEFAULT_DELTA, noise_corrected, resolve_noise_correction
from fewstep.core.noise_correction import student_step_fn as _student_step_fn
from fewstep.core.path import FlowPath, expand_like, randn_like
from fewstep.errors import NonFiniteError

StepFn = Callable[[int, Tensor, Tensor, Any], Tensor]
Transition = Literal["ddim", "fresh"]


@dataclass
class Trajectory:
    """What a sampler saw: inputs ``xs[k]`` at ``sigmas[k]`` and predictions ``x0s[k]``; a
    sampler whose last state is not its last prediction (a multistep scheduler) sets
    ``final``."""

    sigmas: Tensor
    xs: list[Tensor] = field(default_factory=list)
    x0s: list[Tensor] = field(default_factory=list)
    final: Tensor | None = None

    @property
    def sample(self) -> Tensor:
        """The final sample (``final``, else the prediction of the last step)."""
        return self.final if self.final is not None else self.x0s[-1]


def transition(x: Tensor, x0_hat: Tensor, sigma: Tensor | float, sigma_next: Tensor | float,
               mode: Transition = "ddim", noise: Tensor | None = None) -> Tensor:
    """Move from ``x`` at ``sigma`` to ``sigma_next`` given ``x0_hat`` (see module docstring)."""
    if mode == "ddim":
        eps_hat = FlowPath.eps_from_x0(x, sigma, x0_hat)
    elif mode == "fresh":
        if noise is None:
            raise ValueError("fresh transition needs noise")
        eps_hat = noise
    else:
        raise ValueError(f"unknown transition {mode!r}; use 'ddim' or 'fresh'")
    return FlowPath.add_noise(x0_hat, eps_hat, sigma_next)


def sample(step_fn: StepFn, noise: Tensor, cond: Any, sigmas: Sequence[float] | Tensor,
           transition_mode: Transition = "ddim", step_noises: Sequence[Tensor] | None = None,
           generator: torch.Generator | None = None, stop_after: int | None = None,
           detach_between_steps: bool = False) -> Trajectory:
    """Run ``len(sigmas)`` steps from ``x = noise`` at ``sigmas[0]``.

    Args:
        step_fn: ``(k, x, sigma, cond) -> x0_hat``.
        noise: ``(B, ...)`` initial noise; ``x_1 = noise`` when ``sigmas[0] == 1``, otherwise
            ``x_1 = sigmas[0] * noise`` is *not* assumed: pass already-noised inputs.
        sigmas: the input level of each step (decreasing, ``> 0``). A trailing 0 is dropped.
        transition_mode: ``ddim`` or ``fresh`` (see module docstring).
        step_noises: fresh noise per transition (``len(sigmas) - 1`` tensors); drawn with
            ``generator`` when missing.
        stop_after: run only the first ``stop_after`` steps.
        detach_between_steps: stop-gradient on each step's input (backward simulation).

    Returns:
        the :class:`Trajectory`; ``trajectory.sample`` is the last ``x0_hat``.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if s.numel() > 0 and float(s[-1]) == 0.0:
        s = s[:-1]
    if s.numel() < 1:
        raise ValueError("need at least one step")
    n = s.numel() if stop_after is None else min(stop_after, s.numel())
    traj = Trajectory(sigmas=s[:n])
    x = noise
    for k in range(n):
        if detach_between_steps:
            x = x.detach()
        sig = s[k].to(noise.device).expand(noise.shape[0])
        x0_hat = step_fn(k, x, sig, cond)
        traj.xs.append(x)
        traj.x0s.append(x0_hat)
        if k + 1 < n:
            fresh = None
            if transition_mode == "fresh":
                fresh = step_noises[k] if step_noises is not None else randn_like(noise, generator)
            x = transition(x, x0_hat, sig, s[k + 1].to(noise.device), transition_mode, fresh)
    return traj


def teacher_step_fn(teacher: Denoiser, cfg_scale: float = 1.0) -> StepFn:
    """Step function of a (guided) teacher: ignores the step index."""
    def fn(k: int, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        return teacher.guided(x, sigma, cond, cfg_scale)
    return fn


@torch.no_grad()
def euler_sample(teacher: Denoiser, noise: Tensor, cond: Any, sigmas: Sequence[float] | Tensor,
                 cfg_scale: float = 1.0, noise_correction: bool | None = None,
                 delta: float = DEFAULT_DELTA) -> Trajectory:
    """The teacher's deterministic N-step Euler sampler (= DDIM on the linear path).

    ``sigmas`` are N + 1 levels ending at 0 (see :func:`fewstep.core.levels.teacher_sigmas`) or N
    levels; the output is the last step's ``x0_hat`` which equals the Euler step to ``sigma=0``.
    ``noise_correction``: see the module docstring (``None``: the teacher's default).
    """
    if resolve_noise_correction(teacher, noise_correction):
        teacher = noise_corrected(teacher, delta)
    return sample(teacher_step_fn(teacher, cfg_scale), noise, cond, sigmas, "ddim")


def student_sample(student: Any, noise: Tensor, cond: Any, *,
                   noise_correction: bool | None = None, delta: float = DEFAULT_DELTA,
                   step_noises: Sequence[Tensor] | None = None,
                   generator: torch.Generator | None = None, num_steps: int | None = None
                   ) -> Trajectory:
    """Run a K-step student (:class:`fewstep.student.student.Student`: its ``sigmas`` and
    ``transition``) from ``noise`` at ``sigma = 1``, like ``student.generate``, with the
    ``noise_correction`` option (``None``: on for a zero-terminal-SNR epsilon student)."""
    fn = _student_step_fn(student, noise_correction, delta)
    return sample(fn, noise, cond, student.sigmas, student.transition, step_noises=step_noises,
                  generator=generator, stop_after=num_steps)


def first_non_finite_step(traj: Trajectory) -> int | None:
    """Index of the first step whose input or prediction holds NaN / Inf (``None`` if all
    finite). The per-step flags stay on the device; one host read for the whole trajectory."""
    if not traj.x0s:
        return None
    flags = torch.stack([torch.isfinite(x0).all() & torch.isfinite(x).all()
                         for x, x0 in zip(traj.xs, traj.x0s, strict=True)])
    bad = (~flags).nonzero()
    return int(bad[0, 0]) if bad.numel() else None  # the one host sync


def check_finite(traj: Trajectory, sampler: str, where: str = "sample") -> Trajectory:
    """``traj`` if every step is finite; else :class:`~fewstep.errors.NonFiniteError` naming
    the sampler and the first bad step, e.g. ``sample: teacher_8 produced NaN / Inf at step 1
    of 8 (sigma 1.000 -> 0.875)``. For ``sample`` and ``eval``."""
    k = first_non_finite_step(traj)
    if k is None:
        return traj
    s = traj.sigmas
    nxt = f"{float(s[k + 1]):.3f}" if k + 1 < s.numel() else "0"
    what = "its input" if not bool(torch.isfinite(traj.xs[k]).all()) else "its prediction"
    raise NonFiniteError(f"{where}: {sampler} produced NaN / Inf at step {k + 1} of "
                         f"{s.numel()} (sigma {float(s[k]):.3f} -> {nxt}; {what} is not "
                         "finite): the model's weights or its sampling settings are broken")


def renoise(x0: Tensor, sigma: Tensor | float, generator: torch.Generator | None = None,
            noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Return ``(x_sigma, eps)`` with fresh ``eps`` unless ``noise`` is given."""
    eps = noise if noise is not None else randn_like(x0, generator)
    return FlowPath.add_noise(x0, eps, sigma), eps


__all__ = ["Trajectory", "check_finite", "euler_sample", "expand_like", "first_non_finite_step",
           "renoise", "sample", "student_sample", "teacher_step_fn", "transition"]
