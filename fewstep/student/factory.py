"""Build, save and load the K-step student: the one place a :class:`Student` is made from a
config.

* :func:`build_student` -- a fresh student from the teacher and the run's ``student`` section
  (step levels from :func:`fewstep.core.levels.student_sigmas`);
* :func:`save_student` / :func:`load_student` -- ``student.safetensors``: the student's weights
  with what rebuilds it (``{"denoiser": teacher config, "student": student section, "sigmas",
  "method", "data"}``, see :func:`student_file_config`);
* :func:`student_from_spec` -- the constructor call both use (with the LoRA check);
* training switches: :func:`float32_trainables`, :func:`enable_gradient_checkpointing`,
  :func:`compile_student`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.levels import student_sigmas, student_sigmas_from_levels
from fewstep.core.noise_correction import TERMINAL_TOL, is_epsilon_model, is_zero_terminal_snr
from fewstep.distill.config import DistillConfig, StudentSpec
from fewstep.errors import CheckpointError, ConfigError
from fewstep.student.lora import find_lora_targets
from fewstep.student.student import Student, resolve_lora_targets
from fewstep.teachers import rebuild_denoiser
from fewstep.utils.files import load_tensors, save_tensors

STUDENT_KIND = "student"


def check_lora(teacher: nn.Module, rank: int, targets: list[str] | None) -> None:
    """:class:`ConfigError` naming ``student.lora_*`` if the LoRA settings do not fit."""
    try:
        find_lora_targets(teacher, resolve_lora_targets(teacher, targets), rank)
    except ValueError as e:
        field = "student.lora_rank" if "rank" in str(e) else "student.lora_targets"
        raise ConfigError(f"{field}: {e}") from None


def student_from_spec(like: Denoiser, spec: StudentSpec | Mapping[str, Any], sigmas: Tensor
                      ) -> Student:
    """``Student(like, sigmas, ...)`` from a ``student`` section (model or its dump), its
    trainable parts in float32 (:func:`float32_trainables`)."""
    s = spec if isinstance(spec, StudentSpec) else StudentSpec.model_validate(dict(spec))
    if s.parameterization == "lora":
        check_lora(like, s.lora_rank, s.lora_targets)
    student = Student(like, sigmas, s.parameterization, s.transition, s.lora_rank,
                      s.lora_alpha, s.lora_targets)
    float32_trainables(student)
    return student


def build_student(teacher: Denoiser, cfg: DistillConfig, teacher_shift: float,
                  teacher_levels: Tensor | None = None) -> Student:
    """A fresh K-step student initialised from ``teacher`` (``cfg.student``).

    Step levels: ``student.sigmas`` if set; else every ``N // K``-th of the teacher's own
    ``N + 1`` levels ``teacher_levels`` (its schedule: uniform, the pipeline's or a list); else
    (no levels, or ``K`` does not divide ``N``) the shifted uniform levels."""
    s = cfg.student
    n = cfg.teacher.steps
    if s.sigmas is None and teacher_levels is not None and n % s.num_steps == 0:
        sig = student_sigmas_from_levels(teacher_levels, s.num_steps)
    else:
        sig = student_sigmas(s.num_steps, n, teacher_shift, s.sigmas)
    check_trainable_first_step(teacher, float(sig[0]))
    return student_from_spec(teacher, s, sig)


def check_trainable_first_step(teacher: Denoiser, sigma0: float) -> None:
    """:class:`ConfigError` when the student's first step cannot be trained: an epsilon
    teacher with zero terminal SNR gives ``x0 = (x - sigma eps) / (1 - sigma)`` = 0/0 at
    ``sigma = 1`` (NaN at the first update). Sampling fixes that with the noise correction;
    the recipes do not train through it (see ``benchmarks/noise_correction.py`` for a
    regression loop that does)."""
    if sigma0 >= 1.0 - TERMINAL_TOL and is_epsilon_model(teacher) and \
            is_zero_terminal_snr(teacher):
        raise ConfigError(
            "teacher: it predicts epsilon on a schedule that reaches pure noise, so the "
            "student's first step at sigma = 1 is 0/0 (x0 = (x - sigma eps) / (1 - sigma)); "
            "the recipes cannot train it: use a velocity or x0 teacher (`fewstep teacher "
            "train ... prediction=velocity`)")


def float32_trainables(student: Student) -> None:
    """Keep what trains in float32 (master weights) whatever ``teacher.dtype`` is: the step
    copies (``decoupled`` / ``shared``) or the LoRA weights; a LoRA base keeps the teacher's
    dtype. A no-op for float32 teachers."""
    for m in student.steps:
        m.float()
    for p in student.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def student_file_config(cfg: DistillConfig, teacher_cfg: dict[str, Any], sigmas: Tensor
                        ) -> dict[str, Any]:
    """What :func:`load_student` needs to rebuild the student (stored in the file)."""
    return {"denoiser": teacher_cfg, "student": cfg.student.model_dump(),
            "sigmas": [float(s) for s in sigmas], "method": cfg.method, "data": cfg.data}


def save_student(path: str | Path, student: nn.Module, config: dict[str, Any]) -> None:
    """Write a student with what rebuilds it (atomic, safetensors): all steps' weights, or for a
    LoRA student only its adapters plus the fingerprint of the frozen base (the base is the
    teacher's, re-read on load)."""
    if isinstance(student, Student) and student.lora is not None:
        config = {**config, "base_fingerprint": student.base_fingerprint()}
        save_tensors(path, student.trainable_state_dict(), STUDENT_KIND, config)
        return
    save_tensors(path, student.state_dict(), STUDENT_KIND, config)


def load_student_state(student: Student, tensors: dict[str, Tensor], config: dict[str, Any],
                       where: str) -> None:
    """Load a student file's tensors (full or trainable-only state) into ``student``;
    :class:`CheckpointError` if they do not fit or the recorded base fingerprint differs from
    the base ``student`` was built on (a LoRA file must be loaded on its own teacher)."""
    want = config.get("base_fingerprint")
    if want is not None and want != student.base_fingerprint():
        raise CheckpointError(f"{where}: this LoRA student holds only its adapters and was "
                              "trained on another base; load it with its teacher")
    try:
        student.load_trainable_state_dict(tensors)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def load_student(path: str | Path, device: str | torch.device = "cpu",
                 like: Denoiser | None = None, allow_builders: Sequence[str] = ()
                 ) -> tuple[Student, dict[str, Any]]:
    """Rebuild a student written by :func:`save_student`; returns ``(student (eval), config)``.

    ``like``: the loaded teacher to build on (skips building a random one first; required for
    a LoRA student, whose file holds only the adapters);
    ``allow_builders``: custom teacher builders the run's config names (``teacher.builder``),
    the only ones a student file may make fewstep import."""
    tensors, config = load_tensors(path, kind=STUDENT_KIND)
    try:
        base = like if like is not None else rebuild_denoiser(config["denoiser"], allow_builders)
        st = student_from_spec(base, config["student"], torch.tensor(config["sigmas"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: student config is invalid ({e})") from None
    load_student_state(st, tensors, config, str(path))
    return st.to(device).eval(), config


def enable_gradient_checkpointing(student: Student, others: Iterable[nn.Module]) -> None:
    """``train.gradient_checkpointing``: block-level checkpointing in the student's step
    networks (with per-step LoRA: its ``checkpoint_fn``, so recomputation uses the adapter that
    was active in forward), and in ``others`` that support it (the method's trainable teacher
    copies, the frozen teacher whose features carry gradients to the student's samples).
    Denoisers expose it as ``set_gradient_checkpointing(enabled, checkpoint_fn)``;
    :class:`ConfigError` if the student's cannot."""
    if student.lora is not None:
        mods, fn = [student.lora.base], student.lora.checkpoint_fn
    else:
        mods, fn = list(student.steps), None
    for m in mods:
        if not hasattr(m, "set_gradient_checkpointing"):
            raise ConfigError(f"train.gradient_checkpointing: {type(m).__name__} does not "
                              "support gradient checkpointing (use a zimage / unet_eps teacher)")
        m.set_gradient_checkpointing(True, checkpoint_fn=fn)
    for m in others:
        if hasattr(m, "set_gradient_checkpointing"):
            m.set_gradient_checkpointing(True)


def compile_student(student: Student) -> None:
    """``torch.compile`` every step module in place (state-dict keys unchanged)."""
    mods = [student.lora.base] if student.lora is not None else list(student.steps)
    for m in mods:
        m.compile()
