"""``teacher.kind: file`` -- a fewstep denoiser file (``teacher.path``; null: the shipped
teacher for ``data``). The problem is ``data``'s; sampling defaults come from the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fewstep.assets import teacher_path
from fewstep.core.levels import resolve_teacher_sigmas
from fewstep.data.problem import PROBLEMS, get_problem
from fewstep.data.prompts import PROMPTS_DATA
from fewstep.errors import CheckpointError, ConfigError
from fewstep.teachers.base import LoadedTeacher, MetaTeacher, TeacherAdapter, register
from fewstep.teachers.training import denoiser_from_config, load_denoiser
from fewstep.utils.files import read_metadata

if TYPE_CHECKING:
    from fewstep.distill.config import DistillConfig
    from fewstep.teachers.spec import TeacherSpec


def _path(cfg: DistillConfig) -> Path:
    path = Path(cfg.teacher.path).expanduser() if cfg.teacher.path else teacher_path(cfg.data)
    if path.is_dir():
        raise ConfigError(f"teacher.path: {path} is a directory, expected a teacher file")
    if not path.is_file():
        hint = "" if cfg.teacher.path else (f" (no shipped teacher for data {cfg.data!r}; train "
                                            "one with `fewstep teacher train`)")
        raise ConfigError(f"teacher.path: teacher file not found: {path}{hint}")
    return path


@register
class FileTeacher(TeacherAdapter):
    kind = "file"
    fields = ("path",)

    def check(self, spec: TeacherSpec) -> None:
        super().check(spec)
        if spec.levels == "pipeline":
            raise ValueError("teacher.levels: 'pipeline' needs a diffusers teacher; use "
                             "uniform or a sigma list")

    def check_data(self, spec: TeacherSpec, data: str) -> None:
        if data == PROMPTS_DATA:  # a built-in name or the user's own data (fewstep.data.spec)
            raise ValueError(f"data: a file teacher works on a data set ({', '.join(PROBLEMS)}"
                             f" or your own images), got {data!r}")

    def load(self, cfg: DistillConfig, device: torch.device) -> LoadedTeacher:
        path = _path(cfg)
        try:
            den, dcfg = load_denoiser(path, device)
        except CheckpointError as e:
            raise CheckpointError(f"teacher.path: {e}") from None
        if dcfg.get("data") not in (None, cfg.data):
            raise ConfigError(f"teacher.path: {path} was trained on {dcfg.get('data')!r} but "
                              f"data is {cfg.data!r}")
        shape = dcfg.get("network", {}).get("data_shape")
        want = tuple(get_problem(cfg.data).data_shape)
        if shape is not None and tuple(shape) != want:
            raise ConfigError(f"teacher.path: {path} takes samples of shape {tuple(shape)} but "
                              f"data {cfg.data!r} has shape {want}")
        den.requires_grad_(False).eval()
        samp = dict(dcfg.get("sampling", {}))
        t = cfg.teacher
        shift = t.shift or samp.get("shift", 1.0)
        sig, scale = resolve_teacher_sigmas(t.levels or "uniform", t.steps, shift)
        dcfg = {**dcfg, "sampling": {**samp, "steps": t.steps, "shift": shift,
                                     "sigmas": sig.tolist(), "noise_scale": scale}}
        return LoadedTeacher(den, dcfg, read_metadata(path).get("sha256", str(path)),
                             get_problem(cfg.data))

    def meta(self, cfg: DistillConfig) -> MetaTeacher:
        path = _path(cfg)
        dcfg = json.loads(read_metadata(path).get("config", "{}"))
        with torch.device("meta"):
            den = denoiser_from_config(dcfg)
        prob = get_problem(cfg.data)
        return MetaTeacher(den, tuple(prob.data_shape), prob.num_classes,
                           {"kind": "file", "path": str(path)})
