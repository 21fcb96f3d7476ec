"""``fewstep eval --run RUN``: the text-to-image figures of a finished prompt run's student
(:mod:`fewstep.evaluation.t2i`) against its teacher's own N-step samples, on a fixed grid of
prompts x seeds (:mod:`fewstep.evaluation.t2i_eval`), in feature networks the user names by
local path. Writes nothing itself; the command prints / writes the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewstep.errors import ConfigError


def reference_images(folder: str, size: int, channels: int) -> torch.Tensor:
    """Every image of ``folder`` at ``size`` x ``size`` (centre crop), in ``[-1, 1]``."""
    from fewstep.data.images import load_image_data

    spec = {"path": folder, "resolution": size, "labels": False, "heldout": folder,
            "channels": "rgb" if channels == 3 else "grey"}  # no split: every image
    try:
        x, _ = load_image_data(spec).split("train")
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"--reference: {str(e).removeprefix('data: ')}") from None
    return x


def evaluate_run(run_dir: str | Path, features: str = "pixels", clip: str | None = None,
                 reference: str | None = None, num_prompts: int = 8, seeds: int = 4,
                 seed: int = 1234, device: str = "cpu", batch: int = 8) -> dict[str, Any]:
    """``{"student_<K>": figures, "settings": ...}`` of ``run_dir`` (see module docstring)."""
    from fewstep.distill.config import DistillConfig, load_run_teacher
    from fewstep.evaluation.features import named_feature_space
    from fewstep.evaluation.t2i_eval import FixedEval
    from fewstep.student.student_file import load_student_file
    from fewstep.utils.config_files import load_config

    run = Path(run_dir).expanduser()
    if not (run / "config.yaml").is_file() or not (run / "student.safetensors").is_file():
        raise ConfigError(f"--run: {run} is not a finished run (needs config.yaml and "
                          "student.safetensors)")
    space = named_feature_space(features, device)
    if space is None:
        raise ConfigError(f"--features {features}: with --run use pixels, clip:FOLDER, "
                          "torchscript:FILE or builder:pkg.mod:fn")
    clip_space = named_feature_space(f"clip:{clip}", device) if clip else None
    cfg = load_config(DistillConfig, run / "config.yaml")
    dev = torch.device(device)
    loaded = load_run_teacher(cfg, dev)
    student, _ = load_student_file(run / "student.safetensors", dev, like=loaded.denoiser)
    ref_images = None
    if reference:  # at the size of the decoded samples
        decoded = getattr(loaded.problem, "decode", None) is not None
        size = int(loaded.config.get("resolution") or loaded.problem.data_shape[-1])
        ref_images = reference_images(reference, size,
                                      3 if decoded else loaded.problem.data_shape[0])
    fixed = FixedEval(loaded, space, num_prompts, seeds, seed, clip_space, ref_images, dev,
                      batch)
    figures, _ = fixed(student)
    figures["feature_space"] = space.name
    settings = {"run": str(run), "prompts": int(fixed.grid.ids.unique().numel()),
                "seeds": seeds, "seed": seed, "teacher_steps": len(loaded.sigmas) - 1,
                "teacher_cfg_scale": loaded.cfg_scale, "student_sigmas":
                [float(s) for s in student.sigmas]}
    return {f"student_{student.num_steps}": figures, "settings": settings}


__all__ = ["evaluate_run", "reference_images"]
