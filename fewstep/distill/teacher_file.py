"""Load a fewstep denoiser file as the frozen teacher (``teacher.kind: file``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewstep.assets import teacher_path
from fewstep.data.problem import get_problem
from fewstep.denoiser import Denoiser
from fewstep.distill.config import DistillConfig
from fewstep.errors import CheckpointError, ConfigError
from fewstep.io import read_metadata
from fewstep.teacher import load_denoiser


def resolve_teacher(cfg: DistillConfig, device: torch.device
                    ) -> tuple[Denoiser, dict[str, Any], str]:
    """Load the frozen teacher: ``(denoiser, its config, identity string)``.

    Missing files, files of another kind and teachers for another data set / sample shape are
    :class:`ConfigError` / :class:`CheckpointError` naming ``teacher.path``.
    """
    path = Path(cfg.teacher.path).expanduser() if cfg.teacher.path else teacher_path(cfg.data)
    if path.is_dir():
        raise ConfigError(f"teacher.path: {path} is a directory, expected a teacher file")
    if not path.is_file():
        hint = "" if cfg.teacher.path else (f" (no shipped teacher for data {cfg.data!r}; train "
                                            "one with `fewstep teacher train`)")
        raise ConfigError(f"teacher.path: teacher file not found: {path}{hint}")
    try:
        den, dcfg = load_denoiser(path, device)
    except CheckpointError as e:
        raise CheckpointError(f"teacher.path: {e}") from None
    if dcfg.get("data") not in (None, cfg.data):
        raise ConfigError(f"teacher.path: {path} was trained on {dcfg.get('data')!r} but data is "
                          f"{cfg.data!r}")
    shape = dcfg.get("network", {}).get("data_shape")
    want = tuple(get_problem(cfg.data).data_shape)
    if shape is not None and tuple(shape) != want:
        raise ConfigError(f"teacher.path: {path} takes samples of shape {tuple(shape)} but data "
                          f"{cfg.data!r} has shape {want}")
    den.requires_grad_(False).eval()
    return den, dcfg, read_metadata(path).get("sha256", str(path))
