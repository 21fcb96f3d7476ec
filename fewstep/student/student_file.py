"""The student file (``RUN/student.safetensors``): the trained (EMA) student with what rebuilds it.

Kind ``"student"`` (:mod:`fewstep.utils.files`); the config in its metadata is
``{"denoiser": teacher config, "student": student section, "sigmas", "method", "data",
"teacher_fingerprint"}`` (:func:`student_file_config`; the fingerprint is the teacher's
content identity, :func:`fewstep.teachers.base.identity_of`: ``eval`` / ``sample`` refuse to
pair the student with another teacher), plus ``base_fingerprint`` for a LoRA student, whose
file holds only the adapters (the base is the teacher's, re-read on load).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from fewstep.core.denoiser import Denoiser
from fewstep.errors import CheckpointError
from fewstep.student.factory import student_from_spec
from fewstep.student.spec import StudentSpec
from fewstep.student.student import Student
from fewstep.teachers import rebuild_denoiser
from fewstep.utils.files import load_tensors, save_tensors

STUDENT_FILE_KIND = "student"


def student_file_config(teacher_cfg: dict[str, Any], student: StudentSpec, sigmas: Tensor,
                        method: str, data: Any, teacher_fingerprint: str | None = None
                        ) -> dict[str, Any]:
    """What :func:`load_student_file` needs to rebuild the student (stored in the file): the
    teacher config, the ``student`` section, the step levels, the recipe, the data and the
    teacher's content fingerprint."""
    cfg = {"denoiser": teacher_cfg, "student": student.model_dump(),
           "sigmas": [float(s) for s in sigmas], "method": method, "data": data}
    if teacher_fingerprint is not None:
        cfg["teacher_fingerprint"] = teacher_fingerprint
    return cfg


class HasStateDict(Protocol):
    """A module, or a state taken once (FSDP's gathered snapshot of a student)."""

    def state_dict(self) -> dict[str, Any]: ...


def save_student_file(path: str | Path, student: HasStateDict, config: dict[str, Any]) -> None:
    """Write a student with what rebuilds it (atomic, safetensors): all steps' weights, or for a
    LoRA student only its adapters plus the fingerprint of the frozen base (the base is the
    teacher's, re-read on load)."""
    if isinstance(student, Student) and student.lora is not None:
        config = {**config, "base_fingerprint": student.base_fingerprint()}
        save_tensors(path, student.trainable_state_dict(), STUDENT_FILE_KIND, config)
        return
    save_tensors(path, student.state_dict(), STUDENT_FILE_KIND, config)


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


def load_student_file(path: str | Path, device: str | torch.device = "cpu",
                 like: Denoiser | None = None, allow_builders: Sequence[str] = ()
                 ) -> tuple[Student, dict[str, Any]]:
    """Rebuild a student written by :func:`save_student_file`; returns ``(student (eval), config)``.

    ``like``: the loaded teacher to build on (skips building a random one first; required for
    a LoRA student, whose file holds only the adapters);
    ``allow_builders``: custom teacher builders the run's config names (``teacher.builder``),
    the only ones a student file may make fewstep import."""
    tensors, config = load_tensors(path, kind=STUDENT_FILE_KIND)
    try:
        base = like if like is not None else rebuild_denoiser(config["denoiser"], allow_builders)
        st = student_from_spec(base, config["student"], torch.tensor(config["sigmas"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: student config is invalid ({e})") from None
    load_student_state(st, tensors, config, str(path))
    return st.to(device).eval(), config
