"""``teacher.kind: file`` -- a fewstep denoiser file (``teacher.path``; null: the shipped
teacher for ``data``). The problem is ``data``'s; sampling defaults come from the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fewstep.core.levels import resolve_teacher_sigmas
from fewstep.data.problem import builtin_names, get_problem
from fewstep.data.prompts import PROMPTS_DATA
from fewstep.data.registry import shipped_teacher
from fewstep.errors import CheckpointError, ConfigError
from fewstep.teachers.base import (
    TEACHER_KINDS,
    DataRef,
    LoadedTeacher,
    MetaTeacher,
    TeacherAdapter,
    sampling_config,
)
from fewstep.teachers.training import denoiser_from_config, denoiser_identity, load_denoiser
from fewstep.utils.files import read_metadata

if TYPE_CHECKING:
    from fewstep.teachers.spec import TeacherSpec


def _path(spec: TeacherSpec, data: DataRef) -> Path:
    if spec.path is None:
        shipped = shipped_teacher(data)
        if shipped is None or not shipped.is_file():
            raise ConfigError(f"teacher.path: no shipped teacher for data {data!r}; train one "
                              "with `fewstep teacher train` and set teacher.path")
        return shipped
    path = Path(spec.path).expanduser()
    if path.is_dir():
        raise ConfigError(f"teacher.path: {path} is a directory, expected a teacher file")
    if not path.is_file():
        raise ConfigError(f"teacher.path: teacher file not found: {path}")
    return path


@TEACHER_KINDS.register("file")
class FileTeacher(TeacherAdapter):
    fields = ("path",)

    def check(self, spec: TeacherSpec) -> None:
        super().check(spec)
        if spec.levels == "pipeline":
            raise ValueError("teacher.levels: 'pipeline' needs a diffusers teacher; use "
                             "uniform or a sigma list")

    def check_data(self, spec: TeacherSpec, data: DataRef) -> None:
        if data == PROMPTS_DATA:  # a built-in name or the user's own data (fewstep.data.spec)
            raise ValueError(f"data: a file teacher works on a data set "
                             f"({', '.join(builtin_names())} or your own images), got {data!r}")

    def load(self, spec: TeacherSpec, *, data: DataRef, cache_dir: str, device: torch.device
             ) -> LoadedTeacher:
        path = _path(spec, data)
        try:
            den, dcfg = load_denoiser(path, device)
        except CheckpointError as e:
            raise CheckpointError(f"teacher.path: {e}") from None
        if dcfg.get("data") not in (None, data):
            raise ConfigError(f"teacher.path: {path} was trained on {dcfg.get('data')!r} but "
                              f"data is {data!r}")
        shape = dcfg.get("network", {}).get("data_shape")
        want = tuple(get_problem(data).data_shape)
        if shape is not None and tuple(shape) != want:
            raise ConfigError(f"teacher.path: {path} takes samples of shape {tuple(shape)} but "
                              f"data {data!r} has shape {want}")
        den.requires_grad_(False).eval()
        samp = dict(dcfg.get("sampling", {}))
        shift = spec.shift or samp.get("shift", 1.0)
        sig, scale = resolve_teacher_sigmas(spec.levels or "uniform", spec.steps, shift)
        dcfg = {**dcfg, "sampling": {**samp, **sampling_config(
            spec, sig, shift, samp.get("cfg_scale", 1.0), scale)}}
        return LoadedTeacher(den, dcfg, denoiser_identity(path, den), get_problem(data))

    def meta(self, spec: TeacherSpec, *, data: DataRef) -> MetaTeacher:
        path = _path(spec, data)
        dcfg = json.loads(read_metadata(path).get("config", "{}"))
        with torch.device("meta"):
            den = denoiser_from_config(dcfg)
        prob = get_problem(data)
        return MetaTeacher(den, tuple(prob.data_shape), prob.num_classes,
                           {"kind": "file", "path": str(path)})
