"""Build the K-step student: the one place a :class:`Student` is made from a config.

* :func:`build_student` -- a fresh student from the teacher and the run's ``student`` section
  (step levels from :func:`fewstep.core.levels.student_sigmas`);
* :func:`student_from_spec` -- the constructor call it and the student file's reader
  (:mod:`fewstep.student.student_file`) use (with the LoRA check);
* training switches: :func:`float32_trainables`, :func:`enable_gradient_checkpointing`,
  :func:`compile_student`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fewstep.core.denoiser import Denoiser, SupportsGradientCheckpointing
from fewstep.core.levels import student_sigmas, student_sigmas_from_levels
from fewstep.errors import ConfigError
from fewstep.student.lora import find_lora_targets
from fewstep.student.spec import StudentSpec
from fewstep.student.student import Student, resolve_lora_targets


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


def build_student(teacher: Denoiser, s: StudentSpec, teacher_steps: int, teacher_shift: float,
                  teacher_levels: Tensor | None = None) -> Student:
    """A fresh K-step student initialised from ``teacher`` (the ``student`` section ``s``).

    Step levels: ``student.sigmas`` if set; else every ``N // K``-th of the teacher's own
    ``N + 1`` levels ``teacher_levels`` (uniform, the pipeline's or a list; ``N`` =
    ``teacher_steps``); else (no levels, or ``K`` does not divide ``N``) the shifted uniform
    levels."""
    n = teacher_steps
    if s.sigmas is None and teacher_levels is not None and n % s.num_steps == 0:
        sig = student_sigmas_from_levels(teacher_levels, s.num_steps)
    else:
        sig = student_sigmas(s.num_steps, n, teacher_shift, s.sigmas)
    return student_from_spec(teacher, s, sig)


def float32_trainables(student: Student) -> None:
    """Keep what trains in float32 (master weights) whatever ``teacher.dtype`` is: the step
    copies (``decoupled`` / ``shared``) or the LoRA weights; a LoRA base keeps the teacher's
    dtype. A no-op for float32 teachers."""
    for m in student.steps:
        m.float()
    for p in student.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


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
        if not isinstance(m, SupportsGradientCheckpointing):
            raise ConfigError(f"train.gradient_checkpointing: {type(m).__name__} does not "
                              "support gradient checkpointing (use a zimage / unet_eps teacher)")
        m.set_gradient_checkpointing(True, checkpoint_fn=fn)
    for m in others:
        if isinstance(m, SupportsGradientCheckpointing):
            m.set_gradient_checkpointing(True)


def compile_student(student: Student) -> None:
    """``torch.compile`` every step module in place (state-dict keys unchanged)."""
    mods = [student.lora.base] if student.lora is not None else list(student.steps)
    for m in mods:
        m.compile()
