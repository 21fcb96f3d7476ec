"""The K-step student ``G = (G_1, ..., G_K)`` (docs/methods.md §2).

Step ``k`` (0-based here) maps ``x_k`` at ``sigma_k`` to ``x0_hat_k = G_k(x_k, sigma_k, c)``; the
next input is ``x_{k+1} = (1 - sigma_{k+1}) x0_hat_k + sigma_{k+1} eps`` (fresh noise) or the
deterministic DDIM transition. ``sigma_0 = 1`` so ``x_0`` is pure noise.

Parameterisations (``Student.parameterization``):

* ``decoupled``: K full copies of the teacher, one per step (step-decoupled, Turbo++ §2);
* ``lora``: the teacher's own frozen weights shared by all steps plus one LoRA adapter per step
  (:mod:`fewstep.student.lora`), so the steps are decoupled at a fraction of the memory. The base is
  a structural copy of the teacher whose parameters and buffers *are* the teacher's tensors:
  one copy of the base weights exists, and a teacher call is the base with adapters off;
* ``shared``: one copy used by every step (the usual few-step student; the ablation baseline).

Trainable state (for EMA, checkpoints and exports): :meth:`Student.trainable_state_dict` holds
only what training changes (the adapters, or the step copies); a LoRA student's frozen base is
identified by :meth:`Student.base_fingerprint` (equal to :func:`weights_fingerprint` of the
teacher's state dict) and re-read from the teacher. :meth:`Student.ema_copy` is the
EMA's model (:mod:`fewstep.utils.ema`): trainable tensors copied, the base shared.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from fewstep.core.denoiser import Denoiser
from fewstep.core.noise_correction import (
    corrected_student_step,
    is_epsilon_model,
    resolve_noise_correction,
)
from fewstep.core.path import randn_like
from fewstep.core.samplers import Trajectory, Transition, sample, transition
from fewstep.student.lora import PerStepLoRA

Parameterization = Literal["decoupled", "lora", "shared"]


class Student(nn.Module):
    """K-step generator initialised from a teacher denoiser.

    Args:
        teacher: the denoiser to copy (``decoupled`` / ``shared``: not modified or kept;
            ``lora``: its weights become the shared frozen base, the teacher module itself is
            not modified).
        sigmas: ``(K,)`` input noise levels, ``sigmas[0] == 1``, strictly decreasing.
        parameterization: ``decoupled`` | ``lora`` | ``shared`` (module docstring).
        transition: ``fresh`` or ``ddim`` transition between steps.
        lora_rank / lora_alpha / lora_targets: LoRA settings for ``parameterization="lora"``;
            ``lora_targets`` are module-name suffixes of ``nn.Linear`` layers (``None``: the
            network's ``lora_targets`` attribute if it has one, else every ``nn.Linear``).
        noise_correction: every step's x0 prediction at ``sigma = 1`` is the noise-corrected
            one (:mod:`fewstep.core.noise_correction`): in training, sampling and export.
            ``None``: on for a zero-terminal-SNR epsilon teacher (there the plain prediction
            is 0/0), off otherwise (where it would change nothing).
    """

    def __init__(self, teacher: Denoiser, sigmas: Tensor, parameterization: Parameterization,
                 transition: Transition = "fresh", lora_rank: int = 16,
                 lora_alpha: float | None = None, lora_targets: list[str] | None = None,
                 noise_correction: bool | None = None) -> None:
        super().__init__()
        self.parameterization = parameterization
        #: x0 at sigma = 1 through the noise correction (:meth:`forward`)
        self.noise_correction = resolve_noise_correction(teacher, noise_correction)
        self.transition = transition
        #: the step-choice stream shared by all processes (set by multi-process training)
        self.step_generator: torch.Generator | None = None
        #: ``(K,)`` step levels, kept on the host (not a buffer): samplers read them without a
        #: device sync, and every use moves them to its tensors' device
        self.sigmas = sigmas.detach().float().cpu().clone()
        k = int(sigmas.numel())
        self.lora = None
        if parameterization == "decoupled":
            self.steps = nn.ModuleList(_trainable_copy(teacher) for _ in range(k))
        elif parameterization == "shared":
            self.steps = nn.ModuleList([_trainable_copy(teacher)])
        elif parameterization == "lora":
            lora_targets = resolve_lora_targets(teacher, lora_targets)
            self.lora = PerStepLoRA(share_weights_copy(teacher), num_steps=k, rank=lora_rank,
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

    def forward(self, k: int, x: Tensor, sigma: Tensor, cond: Any = None,
                noise_correction: bool | None = None) -> Tensor:
        """``x0_hat = G_k(x, sigma, cond)``; ``x`` is ``(B, ...)``, ``sigma`` is ``(B,)``.

        Rows at ``sigma = 1`` of an epsilon-prediction step get the noise-corrected prediction
        (:func:`fewstep.core.noise_correction.corrected_student_step`, differentiable) when
        ``noise_correction`` (``None``: the student's own setting); other rows, and velocity /
        x0 steps, are the step network's plain prediction."""
        if not 0 <= k < self.num_steps:
            raise IndexError(f"step {k} out of range for a {self.num_steps}-step student")
        nc = self.noise_correction if noise_correction is None else noise_correction
        if nc and is_epsilon_model(self.step_denoiser(k)):
            with profile_label("student_forward"):
                return corrected_student_step(self, k, x, sigma, cond)
        with profile_label("student_forward"):
            if self.lora is not None:
                return self.lora.step_forward(k, x, sigma, cond)
            return self.step_denoiser(k)(x, sigma, cond)

    def step_parameters(self, k: int) -> Iterator[nn.Parameter]:
        """Trainable parameters that step ``k`` owns (shared ones for ``shared``)."""
        if self.lora is not None:
            yield from self.lora.step_parameters(k)
        else:
            yield from (p for p in self.step_denoiser(k).parameters() if p.requires_grad)

    # -- trainable state, base identity, EMA -----------------------------------------------
    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(state-dict name, parameter)`` of everything training updates: every step's
        adapter (``lora``) or the step copies (``decoupled`` / ``shared``); never the base."""
        if self.lora is not None:
            for k in range(self.num_steps):
                for n, p in self.lora.named_step_parameters(k):
                    yield f"lora.base.{n}", p
        else:
            yield from self.steps.named_parameters(prefix="steps")

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The state that distinguishes this student from its teacher (detached tensors, the
        names of :meth:`state_dict`): the adapters, or all of the step copies (with buffers)."""
        if self.lora is not None:
            return {n: p.detach() for n, p in self.named_trainable_parameters()}
        return self.state_dict()

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a :meth:`trainable_state_dict` (strict on names and shapes; tensors keep this
        student's dtypes). A full :meth:`state_dict` is accepted too: its base entries must then
        equal this student's base (checked by :func:`weights_fingerprint`)."""
        own = self.trainable_state_dict()
        extra = set(state) - set(own)
        if extra and self.lora is not None:
            base = {n: t for n, t in state.items() if n in extra}
            mine = {f"lora.base.{n}": t for n, t in self.lora.base.state_dict().items()
                    if ".lora_" not in n}
            if set(base) != set(mine) or weights_fingerprint(base) != weights_fingerprint(mine):
                raise ValueError("the state's base weights differ from this student's base "
                                 "(another teacher?)")
            state = {n: t for n, t in state.items() if n in own}
            extra = set()
        missing = set(own) - set(state)
        if missing or extra:
            raise KeyError(f"trainable state keys differ: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(extra)[:5]}")
        for n, t in state.items():
            if own[n].shape != t.shape:
                raise ValueError(f"{n}: shape {tuple(t.shape)} != {tuple(own[n].shape)}")
        self.load_state_dict(state, strict=False)

    def base_fingerprint(self) -> str | None:
        """:func:`weights_fingerprint` of the frozen base under its original names (= the
        teacher's ``state_dict()``), or ``None`` when the student has no shared base."""
        if self.lora is None:
            return None
        return weights_fingerprint(self.lora.base_state_dict())

    def ema_copy(self) -> Student:
        """A copy for an exponential moving average: trainable tensors copied, the frozen base
        shared (``lora``: still one base in memory). Eval mode, nothing requires grad."""
        shared = [] if self.lora is None else [*self.lora.base_parameters(),
                                                *self.lora.base.buffers()]
        ema = copy.deepcopy(self, {id(t): t for t in shared})
        return ema.eval().requires_grad_(False)

    def merged(self) -> contextlib.AbstractContextManager:
        """Sampling block (under ``no_grad`` / ``inference_mode``) in which a LoRA student
        uses per-step merged weights built once on entry (:meth:`PerStepLoRA.merged`); the
        weights must not change inside. A no-op for ``decoupled`` / ``shared`` students."""
        return self.lora.merged() if self.lora is not None else contextlib.nullcontext()

    def generate(self, noise: Tensor, cond: Any, *, step_noises: list[Tensor] | None = None,
                 generator: torch.Generator | None = None, num_steps: int | None = None,
                 detach_between_steps: bool = False) -> Trajectory:
        """Run the student from ``noise`` (``x_0``, at ``sigma = 1``). See :func:`sample`."""
        return sample(self, noise, cond, self.sigmas, self.transition, step_noises=step_noises,
                      generator=generator, stop_after=num_steps,
                      detach_between_steps=detach_between_steps)


class TrainableStateView:
    """``state_dict()`` / ``load_state_dict()`` of a student's trainable state only, for code
    that saves and restores modules through those two methods (training checkpoints)."""

    def __init__(self, student: Student) -> None:
        self.student = student

    def state_dict(self) -> dict[str, Tensor]:
        return self.student.trainable_state_dict()

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True) -> None:
        self.student.load_trainable_state_dict(state)


def share_weights_copy(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` (new module objects) whose parameters and buffers are
    the very same tensors: modifying the copy's structure (e.g. inserting LoRA layers) leaves
    ``module`` untouched while no weight is duplicated."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def weights_fingerprint(tensors: dict[str, Tensor], samples: int = 4096) -> str:
    """sha256 over every tensor's name, dtype, shape and ``samples`` evenly strided values
    (float64): identifies a set of weights in milliseconds, independent of device."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // samples)
            h.update(flat[::step][:samples].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()


def profile_label(name: str) -> contextlib.AbstractContextManager:
    """``record_function(name)`` while the torch profiler runs, else a no-op (the label costs
    ~15 us per call, measurable in 2-step sampling)."""
    if torch.autograd.profiler._is_profiler_enabled:
        return record_function(name)
    return contextlib.nullcontext()


def resolve_lora_targets(teacher: nn.Module, targets: list[str] | None) -> list[str] | None:
    """``targets``, or the default ``lora_targets`` of the denoiser itself (a diffusers
    wrapper holds its family's targets), else of the network it wraps (``teacher.net``), or
    ``None`` (all ``nn.Linear`` layers)."""
    if targets is not None:
        return targets
    default = getattr(teacher, "lora_targets", None)
    if default is None:
        default = getattr(getattr(teacher, "net", None), "lora_targets", None)
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
            fresh = randn_like(noise, generator) if student.transition == "fresh" else None
            x = transition(traj.xs[-1], last_x0, traj.sigmas[-1].to(noise.device),
                           student.sigmas[k], student.transition, fresh)
    sigma = student.sigmas[k].to(noise.device).expand(noise.shape[0])
    return x, sigma, student(k, x, sigma, cond)


def random_step(student: Student, generator: torch.Generator | None = None) -> int:
    """Draw a step index ``k ~ U{0, ..., K-1}`` (0-based) with ``generator``, or with the
    student's ``step_generator`` when set (multi-process training: one stream shared by all
    ranks, so every rank runs the same step modules, as FSDP's collectives require)."""
    g = student.step_generator or generator
    return int(torch.randint(0, student.num_steps, (1,), generator=g))


def backward_simulate(student: Student, noise: Tensor, cond: Any,
                      generator: torch.Generator | None = None
                      ) -> tuple[int, Tensor, Tensor, Tensor]:
    """:func:`unroll_to_step` at a random step ``k ~ U{0..K-1}``: over many calls the outputs
    follow the *uniform mixture* of all steps' outputs. Returns ``(k, x_k, sigma_k, x0_hat_k)``.
    """
    k = random_step(student, generator)
    return (k, *unroll_to_step(student, noise, cond, k, generator))
