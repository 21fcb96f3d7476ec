"""Noise correction (Imagine Flash, docs/methods.md §6): a finite first step for epsilon-prediction
models with zero terminal SNR; a no-op for velocity / x0 models. A student of such a teacher
is trained through it (``Student(noise_correction=...)``: its step at ``sigma = 1`` returns the
corrected prediction in training, sampling and export).

The problem. On our path ``x_sigma = (1 - sigma) x0 + sigma eps`` an epsilon model gives
``x0_hat = (x - sigma eps_hat) / (1 - sigma)``, which is 0/0 at ``sigma = 1``: there ``x`` *is*
the noise, so the exact prediction is ``eps*(x, 1) = x`` and carries no information about x0.
(The Bayes answer, ``E[x0 | x_1] = E[x0 | c]``, is what a velocity model returns there.) Near
``sigma = 1`` the formula divides the network's error by ``1 - sigma``, so evaluating the model
slightly below 1 is finite but (for a real network) badly wrong.

The formula. At ``sigma = 1`` (rows with ``sigma >= 1 - 1e-6``) we return, with
``s' = 1 - delta``::

    x0_hat(x, 1, c) = x + s' (eps_hat(x, 1, c) - eps_hat(x, s', c)) / (1 - s')

Why: for the exact predictor ``eps*(x, 1) = x``, so the usual formula at ``s'`` can be written
``x0*(x, s') = x + s' (eps*(x, 1) - eps*(x, s')) / (1 - s')``. Using the *network's* own
``eps_hat(x, 1)`` in place of the known value ``x`` turns its error at ``sigma = 1`` (where the
target is known exactly) into a control variate: the part of the network's error that varies
slowly with sigma cancels in the difference instead of being amplified by ``s' / (1 - s')``
(this is the "bias correction"). With an exact model it is ``x0*(x, s')``, which tends to
``E[x0 | c]`` as ``delta -> 0``; ``delta`` trades that O(delta) bias against amplification of
the error's sigma-dependence (default 0.05). The network input at ``s'`` is ``x`` itself
(an O(delta) approximation of ``x_{s'}``).

The transition out of ``sigma = 1`` is unchanged and already uses the known input noise: on the
linear path ``eps_hat = (x - (1 - sigma) x0_hat) / sigma = x`` at ``sigma = 1`` whatever
``x0_hat`` is (see :func:`fewstep.core.samplers.transition`), so only ``x0_hat`` needed fixing.

When it applies (:func:`default_noise_correction`): epsilon-prediction denoisers whose noise
schedule reaches zero SNR at ``sigma = 1`` -- every :class:`~fewstep.core.denoiser.NetworkDenoiser`
with ``prediction="epsilon"`` (our path ends in pure noise) and VP adapters whose last timestep
has ``alphas_cumprod ~ 0`` (a "zero terminal SNR" schedule). There the naive first step is 0/0
(or, with the VP adapter's clamp of ``1 - sigma``, a huge finite extrapolation), so every sampler
that starts at ``sigma = 1`` turns the correction on by default: the teacher's Euler sampler
(:func:`fewstep.core.samplers.euler_sample`), the student's sampler
(:func:`fewstep.core.samplers.student_sample`), ``fewstep sample`` / ``fewstep eval``
(``--noise-correction / --no-noise-correction``; sampler names ``<name>_nc`` / ``<name>_naive``
force it). A VP schedule with a non-zero terminal SNR is left to its clamp (the network *was*
trained at its last timestep).

Usage: ``euler_sample(noise_corrected(teacher), noise, cond, sigmas)``; for a K-step student,
:func:`corrected_student_step` (one step) or :func:`student_step_fn` (a sampler step function),
e.g. for an exporter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fewstep.core.denoiser import _TIME_INPUTS, Denoiser, NetworkDenoiser
from fewstep.core.path import FlowPath, expand_like

TERMINAL_TOL = 1e-6
#: a VP schedule is "zero terminal SNR" when its last level is this close to sigma = 1
#: (``alphas_cumprod[-1] <~ 1e-6``; diffusers' rescaled schedules store 2**-24)
ZERO_SNR_TOL = 1e-3
DEFAULT_DELTA = 0.05


def is_epsilon_model(den: Denoiser) -> bool:
    """True for denoisers whose network predicts epsilon (``NetworkDenoiser`` or VP adapter)."""
    return getattr(den, "prediction", None) == "epsilon" or \
        getattr(den, "prediction_type", None) == "epsilon"


def is_zero_terminal_snr(den: Denoiser) -> bool:
    """True when ``den``'s input at ``sigma = 1`` is pure noise *and* the network was trained
    there: a :class:`NetworkDenoiser` (our flow path), or an adapter whose ``sigma_max`` (the
    flow level of its last trained timestep) is within :data:`ZERO_SNR_TOL` of 1. Wrappers
    exposing ``inner`` are looked through."""
    while isinstance(den, NoiseCorrected):
        den = den.inner
    if isinstance(den, NetworkDenoiser):
        return True
    sigma_max = getattr(den, "sigma_max", None)
    return sigma_max is not None and float(sigma_max) >= 1.0 - ZERO_SNR_TOL


def default_noise_correction(den: Denoiser) -> bool:
    """The default of every sampler's ``noise_correction`` option: on for zero-terminal-SNR
    epsilon-prediction denoisers, off otherwise (where it would be a no-op or not needed)."""
    return is_epsilon_model(den) and is_zero_terminal_snr(den)


def resolve_noise_correction(den: Denoiser, option: bool | None) -> bool:
    """``option`` if given, else :func:`default_noise_correction`. ``True`` for a velocity /
    x0 model is accepted and is a no-op."""
    return default_noise_correction(den) if option is None else bool(option)


def epsilon_prediction(den: Denoiser, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
    """The native ``eps_hat(x, sigma, cond)`` of an epsilon-prediction denoiser, valid at
    ``sigma = 1`` too. ``x`` is ``(B, ...)``, ``sigma`` is ``(B,)``."""
    if isinstance(den, NetworkDenoiser):
        t = _TIME_INPUTS[den.time_input](sigma).to(x.dtype)
        return den.net(x, t, cond).to(x.dtype)
    floor = getattr(den, "min_one_minus_sigma", None)
    if floor is not None:  # VP adapter: x0 = (x - s eps) / max(1 - s, m)
        s = expand_like(sigma, x)
        denom = (1.0 - s).clamp_min(float(floor))
        return (x - denom * den(x, sigma, cond)) / s
    raise TypeError(f"cannot read the epsilon prediction of {type(den).__name__}")


class NoiseCorrected(Denoiser):
    """Wrap ``inner`` so that its x0 prediction at ``sigma = 1`` is the bias-corrected estimate
    of the module docstring. Identical to ``inner`` at ``sigma < 1``, and everywhere when
    ``inner`` is not an epsilon-prediction model.

    Args:
        inner: any :class:`Denoiser`.
        delta: ``1 - s'``, the offset of the second evaluation level (0 < delta < 1).
    """

    def __init__(self, inner: Denoiser, delta: float = DEFAULT_DELTA) -> None:
        super().__init__()
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {delta}")
        self.inner = inner
        self.delta = float(delta)
        self.active = is_epsilon_model(inner)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        if not self.active:
            return self.inner(x, sigma, cond)
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        s = s.expand(x.shape[0]) if s.ndim == 0 else s
        terminal = s >= 1.0 - TERMINAL_TOL
        if not bool(terminal.any()):
            return self.inner(x, s, cond)
        s_eval = torch.where(terminal, torch.full_like(s, 1.0 - self.delta), s)
        out = self.inner(x, s_eval, cond)                      # exact for non-terminal rows
        eps_p = FlowPath.eps_from_x0(x, s_eval, out)           # eps_hat(x, s') (s' < 1)
        eps_1 = epsilon_prediction(self.inner, x, torch.ones_like(s), cond)
        sp = expand_like(s_eval, x)
        corrected = x + sp * (eps_1 - eps_p) / (1.0 - sp)
        return torch.where(terminal.reshape(-1, *([1] * (x.ndim - 1))), corrected, out)

    def null_cond(self, cond: Any) -> Any:
        return self.inner.null_cond(cond)

    def features(self, x: Tensor, sigma: Tensor, cond: Any = None) -> list[Tensor]:
        return self.inner.features(x, sigma, cond)


def noise_corrected(den: Denoiser, delta: float = DEFAULT_DELTA) -> Denoiser:
    """``den`` with noise correction at ``sigma = 1`` (a pass-through for non-epsilon models)."""
    return NoiseCorrected(den, delta)


def corrected_student_step(student: Any, k: int, x: Tensor, sigma: Tensor, cond: Any = None,
                           delta: float = DEFAULT_DELTA) -> Tensor:
    """Step ``k`` of a K-step student (:class:`fewstep.student.student.Student`) with noise
    correction: rows at ``sigma = 1`` get the bias-corrected ``x0_hat`` of the step's own
    network (its epsilon prediction at 1 and at ``1 - delta``); other rows and non-epsilon
    students are ``student(k, x, sigma, cond)`` exactly. Differentiable (it can be trained
    through). ``x`` is ``(B, ...)``, ``sigma`` ``(B,)``."""
    den = student.step_denoiser(k)
    if not is_epsilon_model(den):
        return student(k, x, sigma, cond)
    lora = getattr(student, "lora", None)
    if lora is not None:
        with lora.use_step(k):
            return NoiseCorrected(den, delta)(x, sigma, cond)
    return NoiseCorrected(den, delta)(x, sigma, cond)


def student_step_fn(student: Any, noise_correction: bool | None = None,
                    delta: float = DEFAULT_DELTA) -> Callable[[int, Tensor, Tensor, Any], Tensor]:
    """A sampler step function ``(k, x, sigma, cond) -> x0_hat`` for ``student``, with noise
    correction at ``sigma = 1`` when ``noise_correction`` (``None``: the default for the
    student's first-step network, see :func:`default_noise_correction`). A
    :class:`~fewstep.student.student.Student` of a zero-terminal-SNR epsilon teacher corrects
    by itself (it is trained that way); ``noise_correction=False`` turns that off too."""
    on = resolve_noise_correction(student.step_denoiser(0), noise_correction)

    def fn(k: int, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        if on:
            return corrected_student_step(student, k, x, sigma, cond, delta)
        if hasattr(student, "noise_correction"):
            return student(k, x, sigma, cond, noise_correction=False)
        return student(k, x, sigma, cond)
    return fn


__all__ = ["DEFAULT_DELTA", "NoiseCorrected", "corrected_student_step",
           "default_noise_correction", "epsilon_prediction", "is_epsilon_model",
           "is_zero_terminal_snr", "noise_corrected", "resolve_noise_correction",
           "student_step_fn"]
