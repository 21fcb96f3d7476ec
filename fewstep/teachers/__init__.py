"""Teachers: one registered adapter per ``teacher.kind`` (see docs/adapters.md).

* :func:`load_teacher` -- the ``teacher`` section (+ the run's data, the cache folder) ->
  :class:`LoadedTeacher`, for any kind;
* :func:`meta_teacher` -- the network on the ``meta`` device (``fewstep plan``);
* :func:`rebuild_denoiser` -- a teacher-shaped denoiser from a saved teacher config (student
  reload), honouring the custom builders the run's config allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fewstep.core.denoiser import Denoiser
from fewstep.errors import ConfigError
from fewstep.teachers import file as _file  # noqa: F401  (registers kind file)
from fewstep.teachers import unet_eps as _unet_eps  # noqa: F401  (unet_eps)
from fewstep.teachers.base import (
    TEACHER_KINDS,
    DataRef,
    LoadedTeacher,
    MetaTeacher,
    TeacherAdapter,
    get_adapter,
    teacher_kinds,
)
from fewstep.teachers.custom import CustomTeacher, allow_builder, custom_denoiser
from fewstep.teachers.diffusers import adapter as _diffusers  # noqa: F401  (diffusers, zimage)
from fewstep.teachers.spec import TeacherSpec
from fewstep.teachers.training import denoiser_from_config
from fewstep.utils.imports import TRUSTED_BUILDERS, import_callable


def load_teacher(spec: TeacherSpec, *, data: DataRef, cache_dir: str,
                 device: torch.device | str) -> LoadedTeacher:
    """The frozen teacher ``spec`` describes (any ``teacher.kind``) for the run's ``data``."""
    return get_adapter(spec.kind).load(spec, data=data, cache_dir=cache_dir,
                                       device=torch.device(device))


def meta_teacher(spec: TeacherSpec, *, data: DataRef) -> MetaTeacher:
    """The teacher network on ``meta`` from configs only."""
    return get_adapter(spec.kind).meta(spec, data=data)


def rebuild_denoiser(teacher_config: dict[str, Any], allow_builders: Sequence[str] = ()
                     ) -> Denoiser:
    """A randomly initialised denoiser of the saved teacher's architecture: its ``builder``
    (``unet_eps`` / custom teachers) or the fewstep network config (``file``). A diffusers
    pipeline teacher is read from its pipeline: its students are rebuilt on the loaded teacher
    (``load_student_file(..., like=teacher)``) or from their export."""
    for b in allow_builders:
        allow_builder(b)
    if "pipeline_class" in teacher_config:
        raise ConfigError(f"a student of the diffusers teacher {teacher_config.get('pretrained')}"
                          " is rebuilt on its teacher: export the run (fewstep export) and "
                          "sample the export, or load the run's teacher")
    if "builder" not in teacher_config:
        return denoiser_from_config(teacher_config)
    target, kwargs = teacher_config["builder"]
    if target == "fewstep.teachers.custom:custom_denoiser":
        return custom_denoiser(**kwargs)
    return import_callable(target, TRUSTED_BUILDERS)(**kwargs)


__all__ = [
    "TEACHER_KINDS",
    "CustomTeacher",
    "DataRef",
    "LoadedTeacher",
    "MetaTeacher",
    "TeacherAdapter",
    "TeacherSpec",
    "allow_builder",
    "get_adapter",
    "load_teacher",
    "meta_teacher",
    "rebuild_denoiser",
    "teacher_kinds",
]
